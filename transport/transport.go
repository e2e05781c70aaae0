// Package transport is the contract between the SR engine (package
// volume) and the drivers that connect a host to an SR's storage (nvme,
// iscsi): the Transport interface and the values that cross it. It
// imports no sanvol package but host, so drivers depend on it and never
// on the engine; rules about what xapi expects (a probe result with an
// sr_uuid is complete) belong to the engine, not here.
package transport

import "context"

// Transport connects this host to the storage of one SR type (NVMe/TCP or
// iSCSI). It is given the SR's device-config and hands back the block
// device; the engine never sees portals, sessions or controllers.
type Transport interface {
	// Type is the SR type as typed in `xe sr-create type=…`.
	Type() string
	// ConfigKeys documents every device-config key (Plugin.query's
	// "configuration" field).
	ConfigKeys() map[string]string
	// Prepare validates a create-time device-config and returns the keys
	// to add to the configuration SR.create hands back to xapi: the stable
	// identity of the LUN or namespace (WWID, NGUID/UUID), never a device
	// name. It may connect to look the identity up.
	Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error)
	// DeviceID is the stable identity of the LUN or namespace a complete
	// configuration names (WWID; NQN and namespace identifier), read from
	// the configuration alone, without touching the host. Two
	// configurations with the same DeviceID name the same device; the
	// engine uses it to keep one SR's calls off another SR's device.
	DeviceID(cfg map[string]string) (string, error)
	// Attach connects every path, idempotently, and returns the SR's
	// block device on this host. Partial success is success: the Device
	// then reports fewer live paths.
	Attach(ctx context.Context, cfg map[string]string) (Device, error)
	// Detach releases what Attach made, leaving alone anything that one
	// of the other SRs attached on this host (their device-configs are in
	// others) still uses: a device another SR names is never flushed,
	// deleted or disconnected. The engine has already checked that no
	// volume of this SR is active. Repeating it succeeds.
	Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error
	// Health reports the state of every path.
	Health(ctx context.Context, cfg map[string]string) (Health, error)
	// Probe discovers what a partial configuration can reach. inspect
	// looks at a connected device for an existing sanvol SR; the transport
	// calls it for each LUN/namespace it can see and cleans up after.
	Probe(ctx context.Context, cfg map[string]string, inspect Inspector) ([]Candidate, error)
	// Diagnostics describes the transport's state on this host as text.
	Diagnostics(ctx context.Context) string
}

// Rescanner is a transport that can notice its LUN grew on the array: it
// re-reads the size on every path and grows the multipath device. The
// iSCSI transport is one.
type Rescanner interface {
	Rescan(ctx context.Context, cfg map[string]string) (grew bool, err error)
}

// DeviceResolver is implemented by a transport whose recorded device
// path must be checked before each use: ResolveDevice returns the path
// that names, now, the device the configuration names (nvmetcp: the
// by-id link of the namespace, re-pointed or migrated from a kernel name).
type DeviceResolver interface {
	ResolveDevice(ctx context.Context, cfg map[string]string, recorded string) (string, error)
}

// Device is the SR's block device on this host.
type Device struct {
	// Path is a stable path (by-id or /dev/mapper/<wwid>) that names the
	// same LUN on every host and across reconnects.
	Path string
	// Health at the end of Attach.
	Health Health
}

// Health summarises the paths to the SR's storage.
type Health struct {
	// ID names the LUN or namespace as multipath does: the SCSI WWID
	// (iSCSI) or the namespace's wwid, "eui.<nguid>" or "uuid.<uuid>"
	// (NVMe). The PBD's other-config key is "mpath-<ID>".
	ID    string
	Total int // paths configured
	Live  int // paths carrying I/O
	// Detail names the paths that are not live, e.g.
	// "1 of 2 paths live: 127.0.0.2:4420 connecting".
	Detail string
}

// Degraded reports whether any path is down.
func (h Health) Degraded() bool { return h.Live < h.Total }

// Down reports whether no path serves I/O.
func (h Health) Down() bool { return h.Total > 0 && h.Live == 0 }

// FoundSR is an existing sanvol SR seen on a device.
type FoundSR struct {
	UUID        string
	Name        string
	Description string
	TotalSpace  int64
	FreeSpace   int64
}

// Inspector looks at a block device for an existing sanvol SR. It returns
// nil, nil when the device holds none.
type Inspector func(ctx context.Context, device string) (*FoundSR, error)

// Candidate is one thing a probe found: a target, a LUN or namespace.
type Candidate struct {
	// Configuration is the device-config that reaches it, as complete as
	// the probe could make it.
	Configuration map[string]string
	// Complete is true when Configuration is enough for SR.create.
	Complete bool
	// SR is set when the LUN already holds a sanvol SR.
	SR *FoundSR
	// Extra carries details for `xe sr-probe-ext` (size, vendor, NGUID…).
	Extra map[string]string
}

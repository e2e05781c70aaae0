package iscsi

import (
	"context"

	"github.com/sanvol/sanvol/host"
)

// This file is the transport's read-only face for `sanvol doctor` and
// `sanvol status`: the same device-config parser, defaults, WWID
// spelling and sysfs and tool readers that SR.attach uses, so that a
// check can never read an SR differently from the transport that
// attached it. Nothing here writes to the host or starts a daemon.

// Defaults the transport applies.
const (
	DefaultPort               = defaultPort
	DefaultReplacementTimeout = defaultReplacementTimeout
	DefaultQueueSeconds       = defaultQueueSeconds
	DefaultPollingInterval    = defaultPollingInterval
	// WildcardIQN is the targetIQN that asks for every IQN the portals
	// return.
	WildcardIQN = wildcardIQN
	// DefaultIface is open-iscsi's iface record for an unbound path.
	DefaultIface = defaultIface
	// InitiatorFile holds the host's initiator name.
	InitiatorFile = initiatorFile
	// IscsidUnit is the systemd unit the transport starts iscsid with.
	IscsidUnit = iscsidUnit
)

// ParseConfig validates a device-config as SR.attach does, resolving host
// names in target with the transport's resolver. It needs neither
// targetIQN nor SCSIid (a pre-flight check has neither yet) and leaves
// the CHAP secrets unread.
func (t *Transport) ParseConfig(ctx context.Context, cfg map[string]string) (Config, error) {
	c, err := t.parseConfig(ctx, SRType, cfg, parseNeeds{})
	if err != nil {
		return Config{}, err
	}
	return *c, nil
}

// CheckIQN says why s is not an iSCSI name (RFC 3720), or nil.
func CheckIQN(s string) error { return checkIQN(s) }

// NormaliseWWID spells a LUN identity (SCSIid, sysfs wwid) the way
// multipath names the LUN's map.
func NormaliseWWID(s string) string { return normaliseWWID(s) }

// IfaceName is the iscsiadm iface record that carries a path bound to
// nic, or DefaultIface for an unbound path ("").
func IfaceName(nic string) string {
	if nic == "" {
		return defaultIface
	}
	return ifaceName(nic)
}

// NoPathRetry is the no_path_retry the transport gives a map for a
// path-loss-policy of queueSeconds under multipathd's checker interval.
func NoPathRetry(queueSeconds, interval int) string { return noPathRetry(queueSeconds, interval) }

// Session is one iSCSI session as sysfs shows it.
type Session struct {
	ID          int
	Target      string
	Portal      Portal
	Iface       string
	State       string
	RecoveryTmo int
}

// Sessions lists every iSCSI session on the host.
func (t *Transport) Sessions() ([]Session, error) {
	ss, err := t.sys.sessions()
	out := make([]Session, 0, len(ss))
	for _, s := range ss {
		out = append(out, Session{ID: s.sid, Target: s.target, Portal: s.portal, Iface: ifaceOf(s), State: s.state, RecoveryTmo: s.recoveryTmo})
	}
	return out, err
}

// NodeRecord reads one node record through iscsiadm, whose settings
// iscsid copies at every login; ok is false when the record does not
// exist.
func (t *Transport) NodeRecord(ctx context.Context, iqn string, p Portal, iface string) (rec map[string]string, ok bool, err error) {
	res, err := t.iscsiadm(ctx, t.to.Command, nil, nodeArgs(path{Portal: p, IQN: iqn, Iface: iface})...)
	switch {
	case exitCode(err) == errNoObjsFound:
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	return parseRecord(res.Stdout), true, nil
}

// Map is a dm-multipath map.
type Map struct {
	Dev       string // dm-N
	Name      string
	WWID      string
	Slaves    []string
	Holders   []string
	Suspended bool
}

// FindMap returns the multipath map of a WWID (NormaliseWWID's spelling),
// or nil when there is none.
func (t *Transport) FindMap(wwid string) (*Map, error) {
	m, err := t.sys.findMap(wwid, nil)
	if m == nil || err != nil {
		return nil, err
	}
	return &Map{Dev: m.dev, Name: m.name, WWID: m.wwid, Slaves: m.slaves, Holders: m.holders, Suspended: m.suspended}, nil
}

// MapTable is the device-mapper table of a map (`dmsetup table`), whose
// features say whether it queues I/O when every path is down.
func (t *Transport) MapTable(ctx context.Context, name string) (string, error) {
	res, err := t.run.Run(ctx, host.Cmd{Name: "dmsetup", Args: []string{"table", name}, Timeout: t.to.Command})
	return string(res.Stdout), err
}

// MultipathdConfig is the part of multipathd's running configuration
// that the transport's stanzas rely on.
type MultipathdConfig struct {
	// PollingInterval is the checker interval no_path_retry counts in.
	PollingInterval int
	// NoPathRetry is the no_path_retry of each WWID's multipaths stanza.
	NoPathRetry map[string]string
}

// RunningMultipathd reads multipathd's running configuration (`show
// config`): what the daemon applies, whatever the files on disk say.
func (t *Transport) RunningMultipathd(ctx context.Context) (MultipathdConfig, error) {
	out, err := t.multipathd(ctx, "show config")
	if err != nil {
		return MultipathdConfig{}, err
	}
	c := MultipathdConfig{NoPathRetry: map[string]string{}}
	for w, s := range parseDropIn(out) {
		c.NoPathRetry[w] = s.noPathRetry
	}
	c.PollingInterval = parsePollingInterval(out)
	return c, nil
}

// IscsiadmVersion is the line where iscsiadm names its version
// ("iscsiadm version 2.1.8"), or why it could not be read.
func (t *Transport) IscsiadmVersion(ctx context.Context) string {
	return t.toolVersion(ctx, "iscsiadm", "--version")
}

// MultipathVersion is the line where multipath names its version
// ("multipath-tools v0.9.4 (12/19, 2022)"), or why it could not be read.
func (t *Transport) MultipathVersion(ctx context.Context) string {
	return t.toolVersion(ctx, "multipath", "-h")
}

// InitiatorName is the host's initiator IQN. A file that cannot be read
// is the error's cause; a file without a name gives an error without one.
func (t *Transport) InitiatorName() (string, error) { return t.initiatorName(SRType) }

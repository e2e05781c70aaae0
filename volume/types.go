package volume

import "github.com/sanvol/sanvol/transport"

// Volume is one virtual disk as SR.ls, Volume.stat and Volume.create
// report it (the fields of the contract's `volume` record).
type Volume struct {
	Key                 string
	UUID                string
	Name                string
	Description         string
	ReadWrite           bool
	Sharable            bool
	VirtualSize         int64
	PhysicalUtilisation int64
	URI                 []string
	// Keys are the Volume.set pairs, verbatim.
	Keys map[string]string
	// Incomplete is non-empty when a resize of the volume did not finish
	// (the process died): the grown part may not be zeroed yet. The
	// datapath must refuse to attach such a volume; repeating the resize
	// (xe vdi-resize) finishes it.
	Incomplete string
}

// HealthState is what the engine concludes about an attached SR. The
// plugin decides what xapi is told (xapi-storage's health variant).
type HealthState string

// The health states of an attached SR.
const (
	// Healthy: I/O can be served, over every path or only some. A
	// degraded SR is Healthy because xapi scans only Healthy SRs
	// (xen-api ocaml/xapi-storage-script/main.ml sr_scan2_impl
	// stat_with_retry); the path counts go to the PBD instead.
	Healthy HealthState = "Healthy"
	// Unreachable: no path serves I/O.
	Unreachable HealthState = "Unreachable"
)

// SRStat is the answer of SR.stat (the contract's `sr_stat`).
type SRStat struct {
	SR          string // the handle
	UUID        string
	Name        string
	Description string
	TotalSpace  int64
	FreeSpace   int64
	Health      HealthState
	// HealthDetail is the message of the health variant, e.g.
	// "1 of 2 paths live: 127.0.0.2:4420 connecting".
	HealthDetail string
	// Paths is the transport's view the health was derived from.
	Paths transport.Health
}

// ProbeResult is one entry of SR.probe's answer (the contract's
// `probe_result`). The engine keeps the daemon's consistency rules: SR is
// set only with Configuration["sr_uuid"], and sr_uuid implies Complete.
type ProbeResult struct {
	Configuration map[string]string
	Complete      bool
	SR            *SRStat
	ExtraInfo     map[string]string
}

// Features lists the Plugin.query features the engine implements for
// real. VDI_DESTROY is the name to declare (the daemon renames it to
// VDI_DELETE). VDI_SNAPSHOT and VDI_CLONE match the Volume.snapshot and
// Volume.clone method files, from which the daemon derives them (and
// VDI_RESET_ON_BOOT/2) anyway; SR_STATS is avoided on purpose (it
// would make xapi create an RRD VDI on the SR). VDI_ATTACH_OFFLINE is what
// xapi requires of an SR before it puts the HA statefile and redo log on
// it (xha_statefile.ml, check_sr_can_host_statefile): static-vdis then
// attaches those volumes at boot, before xapi runs, through the
// positional form of the method files, which sanvol serves.
func Features() []string {
	return []string{"SR_PROBE", "SR_UPDATE", "VDI_ATTACH_OFFLINE", "VDI_CREATE", "VDI_DESTROY", "VDI_RESIZE", "VDI_UPDATE", "VDI_SNAPSHOT", "VDI_CLONE"}
}

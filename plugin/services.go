package plugin

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// CrashEnv names the fault-injection hook used by the lab's crash tests:
// when set to one of volume.FaultSteps(), the process kills itself with
// SIGKILL right after that step, as a power cut or OOM kill would.
const CrashEnv = "SANVOL_TEST_CRASH_AT"

// srServices serves one SR type on this host.
type srServices struct {
	deps      *Deps
	srType    string
	transport transport.Transport
	keep      bool // secrets resolved are kept for boot (host.BootSecrets)
}

// Engine builds the SR engine; it reads the pool role, so it is built
// only for the calls that need it.
func (s *srServices) Engine() (*volume.Engine, error) {
	role, err := host.ReadRole(s.deps.Root)
	if err != nil {
		return nil, host.NewError(host.KindInternal, "read pool role", err.Error(),
			"check "+host.PoolConf+" (it should hold \"master\" or \"slave:<master address>\")", err)
	}
	lc := newLVM(s.deps)
	if role.Master {
		lc = lc.WithWriteGuard(func() error { return stillMaster(s.deps.Root) })
	}
	return volume.New(volume.Options{
		LVM:       lc,
		Transport: s.transport,
		Runner:    s.deps.Runner,
		Locker:    host.FileLocker{Root: s.deps.Root},
		Root:      s.deps.Root,
		Role:      role,
		Log:       s.deps.Log,
		Fault:     crashHook(),
		Version:   s.deps.Version,
		HostID:    host.ID(s.deps.Root),
		Remote:    NewRemote(s.deps.Root),
		Inactive:  datapath.Inactive(s.deps.Root),
	})
}

// stillMaster reads the pool role again before each LVM metadata change
// of a call that started on the master. xapi's pool.designate_new_master
// rewrites pool.conf and restarts xapi without draining the storage calls
// under way (xen-api ocaml/xapi/xapi_pool.ml, designate_new_master), so a
// create or resize of the old master, between its lvm commands, must stop
// before its next metadata write rather than race the new master: the
// window of two writers shrinks from the whole call to one lvm command.
func stillMaster(root host.Root) error {
	role, err := host.ReadRole(root)
	if err == nil && role.Master {
		return nil
	}
	why := "pool.conf now names master " + role.MasterAddr
	if err != nil {
		why = err.Error()
	}
	return host.NewError(host.KindNotMaster, "pool role", "this host stopped being the pool master during the call ("+why+"); sanvol stopped before its next SR metadata change",
		"run the operation again: xapi sends it to the new master (xe task-list shows what was running)", err)
}

func crashHook() volume.FaultHook {
	at := os.Getenv(CrashEnv)
	if at == "" || !slices.Contains(volume.FaultSteps(), at) {
		return nil
	}
	return func(step string) {
		if step == at {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // SIGKILL is not instantaneous; never run past the step
		}
	}
}

// newLVM is the LVM client of the calls that read volumes: the report
// cache reads the PV's label and metadata area headers with O_DIRECT
// (another host writes them), and LV/LVs take this host's activation
// state from the kernel's device-mapper (/dev/mapper/control; `lvs` where
// there is none), so that a call whose VG metadata is unchanged starts no
// lvm process to read an LV.
func newLVM(d *Deps) *lvm.Client {
	return lvm.New(d.Runner, d.Log).WithVersionCache(d.Root).
		WithReportCache(d.Root, host.ExecBlockReader{Run: d.Runner}).
		WithDMStatus(host.DMControl{Root: d.Root})
}

func newServices(d *Deps, srType string) (*srServices, error) {
	var t transport.Transport
	// XenAPI first; with xapi down (boot), the copy static-vdis' own
	// calls kept (host.BootSecrets).
	secrets := host.BootSecrets{Root: d.Root, XenAPI: host.NewXenAPI(d.Root), Keep: d.StaticVDIs}
	switch srType {
	case TypeNVMeTCP:
		t = nvme.New(nvme.Deps{
			Runner:  d.Runner,
			Root:    d.Root,
			Locker:  host.FileLocker{Root: d.Root},
			Secrets: secrets,
			Router:  nvme.NetlinkRouter{},
			Log:     d.Log,
		})
	case TypeISCSI:
		t = iscsi.New(iscsi.Deps{
			Runner:  d.Runner,
			Root:    d.Root,
			Locker:  host.FileLocker{Root: d.Root},
			Secrets: secrets,
			Log:     d.Log,
			SMAPIv1: d.SMAPIv1,
		})
	default:
		return nil, host.NewError(host.KindInvalid, "", fmt.Sprintf("unknown SR type %q", srType), "use nvmetcp or iscsi-ng", nil)
	}
	return &srServices{deps: d, srType: srType, transport: t, keep: secrets.Keep}, nil
}

func (s *srServices) Describe() Description {
	d := Description{Features: volume.Features(), Configuration: s.transport.ConfigKeys()}
	switch s.srType {
	case TypeNVMeTCP:
		d.Name = "sanvol NVMe/TCP shared SR"
		d.Description = "Shared SR on an NVMe/TCP namespace with native NVMe multipath; every VDI is an LVM logical volume."
	default:
		d.Name = "sanvol iSCSI shared SR"
		d.Description = "Shared SR on an iSCSI LUN with dm-multipath; every VDI is an LVM logical volume."
	}
	return d
}

func (s *srServices) Diagnostics(ctx context.Context) string {
	return s.transport.Diagnostics(ctx)
}

// newDatapath builds the datapath plugin's implementation.
func newDatapath(d *Deps) (*datapath.Datapath, error) {
	role, err := host.ReadRole(d.Root)
	if err != nil {
		return nil, err
	}
	lc := newLVM(d)
	return datapath.New(datapath.Deps{
		LVM:    lc,
		Stack:  &volume.Stack{DM: blockdev.NewDM(d.Runner, 0), LVM: lc, Root: d.Root, Log: d.Log, MemoryWarnOnly: SnapshotMemoryWarnOnly(d.Root)},
		Root:   d.Root,
		Locker: host.FileLocker{Root: d.Root},
		Log:    d.Log,
		Lookup: func(uuid string) (datapath.SR, error) {
			a, err := volume.LoadAttached(d.Root, uuid)
			if err != nil {
				return datapath.SR{}, err
			}
			return datapath.SR{UUID: a.UUID, VG: a.VG, Device: a.Device}, nil
		},
		LVName: volume.LVName,
		Usable: volume.Usable,
		Role:   role,
	}), nil
}

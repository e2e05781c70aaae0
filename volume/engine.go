// Package volume implements the SR.* and Volume.* semantics: an SR is an
// LVM volume group on one shared LUN or namespace, and every volume is a
// logical volume in it, with its metadata in LVM tags.
package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
)

// rollbackTimeout bounds the undo of a failed call (releasing what an
// attach connected, removing the LV of a failed create), which runs even
// when the call's own context is cancelled (host.RollbackContext).
const rollbackTimeout = 2 * time.Minute

// FaultHook is called after every step of the operations that change
// metadata, with the step's name (see FaultSteps). Tests kill the process
// there to prove that a crash at any point leaves a consistent SR.
type FaultHook func(step string)

// The steps a FaultHook sees, in the order each operation runs them.
const (
	StepSRCreateAttach    = "SR.create:attach"
	StepSRCreateWipe      = "SR.create:wipe"
	StepSRCreatePVCreate  = "SR.create:pvcreate"
	StepSRCreateVGCreate  = "SR.create:vgcreate"
	StepSRSetTags         = "SR.set:vgchange"
	StepSRDestroyGC       = "SR.destroy:gc"
	StepSRDestroyVGRemove = "SR.destroy:vgremove"
	StepSRDestroyPVRemove = "SR.destroy:pvremove"
	StepSRDestroyDetach   = "SR.destroy:detach"
	StepSRDetachTransport = "SR.detach:transport"

	StepVolumeCreateLVCreate   = "Volume.create:lvcreate"
	StepVolumeCreateZero       = "Volume.create:zero"
	StepVolumeCreateDeactivate = "Volume.create:deactivate"
	StepVolumeCreateCommit     = "Volume.create:commit"
	StepVolumeDestroyLVRemove  = "Volume.destroy:lvremove"
	StepVolumeResizeMark       = "Volume.resize:mark"
	StepVolumeResizeLVExtend   = "Volume.resize:lvextend"
	StepVolumeResizeZero       = "Volume.resize:zero"
	StepVolumeResizeDeactivate = "Volume.resize:deactivate"
	StepVolumeResizeCommit     = "Volume.resize:commit"
	StepVolumeSetTags          = "Volume.set:lvchange"
)

// FaultSteps lists every step name a FaultHook can see.
func FaultSteps() []string {
	return []string{
		StepSRCreateAttach, StepSRCreateWipe, StepSRCreatePVCreate, StepSRCreateVGCreate,
		StepSRSetTags,
		StepSRDestroyGC, StepSRDestroyVGRemove, StepSRDestroyPVRemove, StepSRDestroyDetach,
		StepSRDetachTransport,
		StepVolumeCreateLVCreate, StepVolumeCreateZero, StepVolumeCreateDeactivate, StepVolumeCreateCommit,
		StepVolumeDestroyLVRemove,
		StepVolumeResizeMark, StepVolumeResizeLVExtend, StepVolumeResizeZero, StepVolumeResizeDeactivate, StepVolumeResizeCommit,
		StepVolumeSetTags,
	}
}

// Options are the engine's dependencies.
type Options struct {
	LVM       *lvm.Client
	Transport transport.Transport
	// Runner runs the non-LVM tools: blkid, wipefs.
	Runner host.Runner
	// Zeroer zeroes new extents; nil means blockdev's BLKZEROOUT on the
	// devices under Root.
	Zeroer Zeroer
	Locker host.Locker
	Root   host.Root
	// Role is this host's pool role (host.ReadRole): only the master
	// changes metadata.
	Role host.Role
	Log  *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Fault is the crash-injection hook; nil in production.
	Fault FaultHook
	// Version is sanvol's version, recorded in the VG of every new SR.
	Version string
	// LockWait bounds the wait for the per-SR lock; 0 means 5 minutes.
	LockWait time.Duration
	// HostID identifies this host in the create marks of new volumes
	// (host.ID); empty means unknown, and then no mark is taken for this
	// host's own.
	HostID string
	// DM drives device-mapper for the snapshot stacks; nil means dmsetup
	// through Runner.
	DM *blockdev.DM
	// DevNum returns a device node's "major:minor"; nil stats it.
	DevNum func(path string) (string, error)
	// SnapMagic reports whether a COW carries an exception store header;
	// nil reads it (blockdev.HasSnapMagic).
	SnapMagic func(ctx context.Context, dev string) (bool, error)
	// MergePoll is how often a merge's progress is read; 0 means from
	// 250 ms, doubling up to 2 s (Stack.MergePoll).
	MergePoll time.Duration
	// Remote reaches the host where a volume is active when that is not
	// this one (remote.go); nil treats such a volume as idle.
	Remote Remote
	// Inactive reports whether this host's datapath holds a volume
	// attached for no active domain (Stack.Inactive); nil: never.
	Inactive func(sr, key string) (bool, error)
	// MoveWait bounds how long a merge waits for its volume to settle
	// on a host after a live migration moved it (finishMerge); 0 means
	// 3 minutes.
	MoveWait time.Duration
}

// Engine implements SR.* and Volume.* for one SR type (one Transport).
type Engine struct {
	lvm      *lvm.Client
	t        transport.Transport
	run      host.Runner
	locker   host.Locker
	root     host.Root
	role     host.Role
	log      *zap.Logger
	now      func() time.Time
	fault    FaultHook
	version  string
	lockWait time.Duration
	moveWait time.Duration
	hostID   string
	zeroer   Zeroer
	stack    *Stack
	magic    func(ctx context.Context, dev string) (bool, error)
	remote   Remote
}

// New builds an engine.
func New(o Options) (*Engine, error) {
	if o.LVM == nil || o.Transport == nil || o.Runner == nil || o.Locker == nil {
		return nil, fmt.Errorf("volume.New: LVM, Transport, Runner and Locker are required")
	}
	e := &Engine{lvm: o.LVM, t: o.Transport, run: o.Runner, locker: o.Locker, root: o.Root, role: o.Role,
		log: o.Log, now: o.Now, fault: o.Fault, version: o.Version, lockWait: o.LockWait, hostID: o.HostID, zeroer: o.Zeroer, remote: o.Remote}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.zeroer == nil {
		e.zeroer = blockdev.New(e.root, e.log)
	}
	if e.now == nil {
		e.now = time.Now
	}
	dm := o.DM
	if dm == nil {
		dm = blockdev.NewDM(o.Runner, 0)
	}
	e.stack = &Stack{DM: dm, LVM: o.LVM, DevNum: o.DevNum, Root: e.root, Log: e.log, MergePoll: o.MergePoll, Inactive: o.Inactive}
	e.moveWait = o.MoveWait
	if e.moveWait == 0 {
		e.moveWait = 3 * time.Minute
	}
	e.magic = o.SnapMagic
	if e.magic == nil {
		e.magic = func(_ context.Context, dev string) (bool, error) { return blockdev.HasSnapMagic(e.root, dev) }
	}
	if e.lockWait == 0 {
		e.lockWait = 5 * time.Minute
	}
	if e.version == "" {
		e.version = "unknown"
	}
	return e, nil
}

func (e *Engine) step(name string) {
	e.log.Debug("step done", zap.String("step", name))
	if e.fault != nil {
		e.fault(name)
	}
}

// requireMaster refuses a metadata change on a pool member: two writers of
// one VG's metadata is the classic way to lose a shared LVM SR.
func (e *Engine) requireMaster(op string) error {
	if e.role.Master {
		return nil
	}
	return host.NewError(host.KindNotMaster, op,
		fmt.Sprintf("this host is a pool member; only the pool master (%s) changes SR metadata", e.role.MasterAddr),
		fmt.Sprintf("run it on the pool master %s (xapi sends SR and VDI operations there; check /etc/xensource/pool.conf if this is unexpected)", e.role.MasterAddr), nil)
}

// lock takes a host-wide lock, bounded by LockWait.
func (e *Engine) lock(ctx context.Context, op, name string) (func(), error) {
	return transport.Lock(ctx, e.locker, e.lockWait, op, name, "another sanvol call on this host ("+name+")")
}

// begin starts a metadata change of an attached SR: on the master only,
// under the SR lock. The caller must call unlock.
func (e *Engine) begin(ctx context.Context, op, sr string) (a Attached, unlock func(), err error) {
	if err := e.requireMaster(op); err != nil {
		return Attached{}, nil, err
	}
	if a, err = e.attached(ctx, sr); err != nil {
		return Attached{}, nil, err
	}
	if unlock, err = e.lock(ctx, op, srLock(a.UUID)); err != nil {
		return Attached{}, nil, err
	}
	return a, unlock, nil
}

// tryLock takes a lock only if it is free now. It hands the Locker an
// already-cancelled context: host.FileLocker tries flock once before it
// looks at the context. A Locker that looked first would make tryLock
// always fail, which only delays the cleanup that depends on it. held is
// false with a nil error when the lock is taken; err is a lock that
// cannot be taken at all (host.LockError), which is no proof of a holder.
func (e *Engine) tryLock(ctx context.Context, name string) (unlock func(), held bool, err error) {
	lctx, cancel := context.WithCancel(ctx)
	cancel()
	unlock, err = e.locker.Lock(lctx, name)
	if errors.Is(err, host.ErrLockTimeout) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return unlock, false, nil
}

func srLock(uuid string) string       { return "sr-" + uuid }
func initLock(key string) string      { return "volinit-" + key }
func volLock(key string) string       { return "vol-" + key }
func vgName(uuid string) string       { return "VG_sanvol-" + uuid }
func lvName(key string) string        { return "v-" + key }
func volumeURI(sr, key string) string { return "sanvol://" + sr + "/" + key }

// keyOfLV returns the volume key of a sanvol LV name.
func keyOfLV(name string) (string, bool) {
	if len(name) != 2+36 || name[:2] != "v-" || !IsUUID(name[2:]) {
		return "", false
	}
	return name[2:], true
}

// scope is what LVM may see for an attached SR: its stable device path
// and, when it is a symlink, the kernel device it points to now.
func (e *Engine) scope(dev string) lvm.Scope {
	// A pool member only reads, and never needs activation state here:
	// its reports run without LVM locks and cannot write (Unlocked).
	s := lvm.Scope{Devices: []string{dev}, ReadOnly: !e.role.Master, Unlocked: !e.role.Master}
	if real, err := e.root.EvalSymlinks(dev); err == nil && real != dev {
		s.Devices = append(s.Devices, real)
	}
	return s
}

// attached loads the attach record behind an SR handle, with its device
// checked to be the SR's device now (resolved).
func (e *Engine) attached(ctx context.Context, sr string) (Attached, error) {
	a, err := e.attachRecord(sr)
	if err != nil {
		return a, err
	}
	return e.resolved(ctx, a)
}

// attachRecord loads the attach record behind an SR handle as written.
func (e *Engine) attachRecord(sr string) (Attached, error) {
	typ, uuid, err := ParseHandle(sr)
	if err != nil {
		return Attached{}, err
	}
	if typ != e.t.Type() {
		return Attached{}, host.NewError(host.KindInvalid, "SR "+sr, fmt.Sprintf("handle is for SR type %q, this plugin serves %q", typ, e.t.Type()), "", nil)
	}
	return LoadAttached(e.root, uuid)
}

package volume

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// The steps of the snapshot operations a FaultHook sees, in order.
const (
	StepSnapshotCOW    = "snapshot:lvcreate"
	StepSnapshotZero   = "snapshot:zero"
	StepSnapshotIntent = "snapshot:intent"
	StepSnapshotSwitch = "snapshot:switch"
	StepSnapshotCommit = "snapshot:commit"

	StepMergeIntent = "merge:intent"
	StepMergeStart  = "merge:start"
	StepMergeDone   = "merge:done"
	StepMergeCommit = "merge:commit"
	StepMergeStack  = "merge:collapse"
	StepMergeRemove = "merge:lvremove"
)

// SnapshotSteps lists the snapshot and merge steps in order.
func SnapshotSteps() []string {
	return []string{StepSnapshotCOW, StepSnapshotZero, StepSnapshotIntent, StepSnapshotSwitch, StepSnapshotCommit,
		StepMergeIntent, StepMergeStart, StepMergeDone, StepMergeCommit, StepMergeStack, StepMergeRemove}
}

// cowHeaderBytes is how much of a new COW is zeroed: the persistent
// exception store's header and first metadata area live in its first
// chunks, and a stale header there would be read as an existing store.
const cowHeaderBytes = 64 << 10

// cowExtents sizes a COW for a volume of size bytes: room for every
// chunk of the volume to be written once, plus the exception metadata
// (16 bytes per 8 KiB chunk, 1/512, rounded up generously to 1/256) and
// the header, so an overlay never fills: a full COW invalidates K.
func cowExtents(size, extent int64) int64 {
	need := size + size/256 + cowHeaderBytes
	return (need + extent - 1) / extent
}

// snapCtx is a chain operation's hold on volume K: the datapath lock of
// K on this host, then the SR lock.
type snapCtx struct {
	a      Attached
	w      where
	key    string
	unlock func()
	// unlockSR releases the SR lock alone; nil while it is not held.
	unlockSR func()
	// unlockDP releases this host's datapath lock on K; nil while it is
	// not held.
	unlockDP func()
	// after runs once an idle volume's stack is down (merge.go).
	after []func(context.Context) error
	// merged is the snapshot a repair in this call finished merging.
	merged string
}

func (e *Engine) holdChain(ctx context.Context, op, sr, key string) (*snapCtx, error) {
	if err := e.requireMaster(op); err != nil {
		return nil, err
	}
	a, err := e.attached(ctx, sr)
	if err != nil {
		return nil, err
	}
	if !IsUUID(key) {
		return nil, notFound(op, a, key)
	}
	unlockDP, err := e.lock(ctx, op, DatapathLock(a.UUID, key))
	if err != nil {
		return nil, err
	}
	unlockSR, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		unlockDP()
		return nil, err
	}
	sc := &snapCtx{a: a, w: where{sr: a.UUID, vg: a.VG, scope: e.scope(a.Device)}, key: key, unlockSR: unlockSR, unlockDP: unlockDP}
	sc.unlock = func() {
		if sc.unlockSR != nil {
			sc.unlockSR()
		}
		if sc.unlockDP != nil {
			sc.unlockDP()
		}
	}
	return sc, nil
}

// commitChain replaces the chain tags of K's base LV with one lvchange.
func (e *Engine) commitChain(ctx context.Context, sc *snapCtx, c Chain, snaps []string, in *Intent) (Chain, error) {
	add := chainTags(snaps, in)
	del, add := diffTags(c.tags, add)
	if len(del)+len(add) > 0 {
		if err := e.lvm.LVChangeTags(ctx, sc.w.scope, sc.w.vg, lvName(sc.key), del, add); err != nil {
			return c, err
		}
	}
	return Chain{Key: c.Key, Snaps: snaps, Intent: in, tags: chainTags(snaps, in)}, nil
}

// Snapshot freezes volume key's data as a new snapshot volume and returns
// it. K keeps running: on the host where its device is (here, or another
// host of the pool through its host plugin: remote.go), K's table
// switches from the base (or the newest frozen layer) to a snapshot
// target writing into a new COW, in one suspend/reload/resume. On an idle
// volume only the tags change; the next attach builds the stack.
//
// LVM commits: lvcreate of the COW (carrying the snapshot's own tags);
// then the base's intent "snap S" once the COW's header is zeroed; then,
// after the switch, the chain with S and no intent. A crash before the
// intent leaves a COW no chain refers to, which repair removes; after
// it, repair rolls forward if the COW has an exception store header (a
// snapshot target was built on it, so K may have written there) and back
// otherwise.
func (e *Engine) Snapshot(ctx context.Context, sr, key, name, description string) (Volume, error) {
	const op = "snapshot"
	if err := checkNameDescription(op, name, description); err != nil {
		return Volume{}, err
	}
	sc, err := e.holdChain(ctx, op, sr, key)
	if err != nil {
		return Volume{}, err
	}
	defer sc.unlock()
	l, c, err := e.repairLocked(ctx, op, sc)
	if err != nil {
		return Volume{}, err
	}
	// Snapshots deleted while clones used them go once those clones
	// have (clone.go); one a killed call left behind goes here.
	if l, c, err = e.reapLocked(ctx, op, sc, l, c); err != nil {
		return Volume{}, err
	}
	return e.snapshotLocked(ctx, op, sc, l, c, name, description, false)
}

// snapshotLocked takes the snapshot under the chain hold; hidden makes
// the snapshot's COW carry the hidden mark from its lvcreate on, for the
// snapshot a clone of K takes (clone.go): it is never listed, and goes
// when its clone does.
func (e *Engine) snapshotLocked(ctx context.Context, op string, sc *snapCtx, l lvm.LV, c Chain, name, description string, hidden bool) (Volume, error) {
	key := sc.key
	if len(c.Snaps) >= MaxDepth {
		return Volume{}, host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s already has %d snapshots, the most sanvol keeps", key, len(c.Snaps)),
			"delete its oldest snapshot first (Xen Orchestra does so after each backup)", nil)
	}
	snap, err := host.NewUUID()
	if err != nil {
		return Volume{}, host.NewError(host.KindInternal, op, "no randomness for a snapshot uuid", "", err)
	}
	cow := cowName(snap)
	fields := map[string]string{volFieldKey: snap, volFieldOverlayOf: key, volFieldName: name, volFieldDescription: description}
	if hidden {
		fields[volFieldHidden] = hiddenForClone
	}
	tags := lvm.EncodeFields(fields)
	extents := cowExtents(l.Size, sc.a.ExtentSize)
	// dom0 memory for the new overlay's table, before anything is made:
	// here if K runs here (this host's datapath lock keeps it so); on
	// the host where K runs, its host plugin checks at the switch below.
	// An idle volume's overlay loads at its next activate, on a host not
	// known yet: that activate warns (Stack.AssembleLV).
	if here, err := e.stack.inUse(ctx, sc.a.UUID, key); err != nil {
		return Volume{}, err
	} else if here {
		if err := e.stack.checkOverlayHere(op, key, l.Size, extents*sc.a.ExtentSize); err != nil {
			return Volume{}, err
		}
	}
	if err := e.lvm.LVCreate(ctx, sc.w.scope, sc.w.vg, cow, extents, tags); err != nil {
		return Volume{}, err
	}
	e.step(StepSnapshotCOW)
	if err := e.zero(ctx, op, lvm.DevicePath(sc.w.vg, cow), 0, cowHeaderBytes); err != nil {
		e.dropCOW(ctx, sc, snap)
		return Volume{}, err
	}
	e.step(StepSnapshotZero)
	c, err = e.commitChain(ctx, sc, c, c.Snaps, &Intent{Op: IntentSnap, Snap: snap})
	if err != nil {
		e.dropCOW(ctx, sc, snap)
		return Volume{}, err
	}
	e.step(StepSnapshotIntent)
	at, err := e.activeAt(ctx, sc)
	if err != nil {
		return Volume{}, err
	}
	live := at.local
	if live {
		if _, _, err := e.stack.assemble(ctx, sc.w, key); err != nil {
			// The intent stays: the next call on K looks at the COW's
			// header and rolls forward or back.
			return Volume{}, err
		}
	} else if err := e.lvm.Deactivate(ctx, sc.w.scope, sc.w.vg, cow); err != nil {
		return Volume{}, err
	} else if at.host != "" {
		// K runs on another host: that host checks its dom0 memory and
		// switches (remote.go). If it does not answer, the intent stays
		// for repair; if it refuses, nothing was built on the COW, and
		// the snapshot is undone here.
		rc := remoteChain(sc.a.UUID, c, nil, uint64(l.Size/512))
		rc.CheckMemory = true
		if err := e.convergeRC(ctx, op, sc, at.host, rc); err != nil {
			if errors.Is(err, host.ErrNoSpace) {
				e.undoSnapshot(ctx, sc, c, snap)
			}
			return Volume{}, err
		}
	}
	e.step(StepSnapshotSwitch)
	if _, err := e.commitChain(ctx, sc, c, append(c.Snaps, snap), nil); err != nil {
		return Volume{}, err
	}
	e.step(StepSnapshotCommit)
	e.log.Info("snapshot taken", zap.String("sr", sc.a.UUID), zap.String("key", key), zap.String("snapshot", snap), zap.Bool("live", live))
	return Volume{Key: snap, UUID: snap, Name: name, Description: description, VirtualSize: l.Size, PhysicalUtilisation: l.Size,
		URI: []string{volumeURI(sc.a.UUID, snap)}, Keys: map[string]string{}}, nil
}

// undoSnapshot takes back a snapshot whose intent is committed but
// whose overlay the host where K runs refused to load: the intent goes,
// then the COW, as repair's roll-back would, and only if the COW has no
// exception store header (cowUsed), i.e. no snapshot target was ever
// built on it. Otherwise, or if a step fails, the intent stays and the
// next call on K repairs from the tags.
func (e *Engine) undoSnapshot(ctx context.Context, sc *snapCtx, c Chain, snap string) {
	rctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
	defer cancel()
	used, err := e.cowUsed(rctx, sc, snap)
	if err != nil || used {
		e.log.Warn("a refused snapshot stays recorded; the next call on the volume finishes or undoes it", zap.String("key", sc.key), zap.String("snapshot", snap), zap.Bool("cow_used", used), zap.Error(err))
		return
	}
	if _, err := e.commitChain(rctx, sc, c, c.Snaps, nil); err != nil {
		e.log.Warn("could not remove the intent of a refused snapshot; the next call on the volume does", zap.String("key", sc.key), zap.String("snapshot", snap), zap.Error(err))
		return
	}
	e.dropCOW(ctx, sc, snap)
}

// dropCOW removes the COW of a snapshot that failed before any device
// used it.
func (e *Engine) dropCOW(ctx context.Context, sc *snapCtx, snap string) {
	ctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
	defer cancel()
	if err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, cowName(snap)); err != nil {
		e.log.Warn("could not remove the COW of a failed snapshot; the next call on the volume does", zap.String("lv", cowName(snap)), zap.Error(err))
	}
}

package volume

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// overlayOf returns the volume whose snapshot snap is, from its COW's tags.
func (e *Engine) overlayOf(ctx context.Context, op string, a Attached, snap string) (string, error) {
	if !IsUUID(snap) {
		return "", notFound(op, a, snap)
	}
	l, err := e.lvm.LV(ctx, e.scope(a.Device), a.VG, cowName(snap))
	if errors.Is(err, host.ErrNotFound) {
		return "", notFound(op, a, snap)
	}
	if err != nil {
		return "", err
	}
	f, _, _ := lvm.DecodeEachField(l.Tags)
	k := f[volFieldOverlayOf]
	if !IsUUID(k) || f[volFieldKey] != snap {
		return "", host.NewError(host.KindInternal, op, fmt.Sprintf("LV %s does not say whose snapshot it is", l.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", a.VG, l.Name), nil)
	}
	return k, nil
}

// DeleteSnapshot deletes snapshot snap of a volume by merging its COW back
// into the layer below, live: K's data never moves, and the cost is what K
// wrote while the snapshot lived. Only the oldest snapshot can go (Xen
// Orchestra deletes the previous backup's snapshot after taking the
// next); the newer one's image is unchanged throughout.
//
// LVM commits: the base's intent "merge S"; after the merge, the chain
// without S; then lvremove of S's COW. The merge itself is in the kernel:
// a crash anywhere is repaired by merging again (a merged COW merges at
// once), on whichever host K is then active, or on the master if none.
func (e *Engine) DeleteSnapshot(ctx context.Context, sr, snap string) error {
	const op = "delete snapshot"
	a, err := e.attached(ctx, sr)
	if err != nil {
		return err
	}
	key, err := e.overlayOf(ctx, op, a, snap)
	if err != nil {
		return err
	}
	sc, err := e.holdChain(ctx, op, sr, key)
	if err != nil {
		return err
	}
	defer sc.unlock()
	_, c, err := e.repairLocked(ctx, op, sc)
	if err != nil {
		return err
	}
	switch {
	case !c.Holds(snap) && sc.merged == snap:
		// A delete that failed after its intent (its host died) and
		// was retried: the repair just finished it.
		return nil
	case !c.Holds(snap):
		return notFound(op, a, snap)
	case c.Snaps[0] != snap:
		return host.NewError(host.KindUnsupported, op, fmt.Sprintf("snapshot %s is not the oldest snapshot of volume %s", snap, key),
			"delete the older snapshot first", nil)
	}
	if err := e.refuseClones(ctx, op, sc, c); err != nil {
		return err
	}
	c, err = e.commitChain(ctx, sc, c, c.Snaps, &Intent{Op: IntentMerge, Snap: snap})
	if err != nil {
		return err
	}
	e.step(StepMergeIntent)
	return e.finishMerge(ctx, op, sc, c)
}

// finishMerge runs a merge whose intent is committed to its end.
func (e *Engine) finishMerge(ctx context.Context, op string, sc *snapCtx, c Chain) error {
	snap := c.Intent.Snap
	at, err := e.activeAt(ctx, sc)
	if err != nil {
		return err
	}
	if at.host != "" {
		return e.finishMergeOn(ctx, op, sc, at.host, c)
	}
	live := at.local
	if !live {
		// An idle volume merges on the master, in a stack built for the
		// merge and taken down after it.
		unlock, err := e.activateForMerge(ctx, sc)
		if err != nil {
			return err
		}
		defer unlock()
	}
	l, c, err := e.stack.assemble(ctx, sc.w, sc.key)
	if err != nil {
		return err
	}
	e.step(StepMergeStart)
	sectors := uint64(l.Size / 512)
	merging := DevName(sc.a.UUID, sc.key)
	if len(c.Snaps) == 2 {
		merging = DevName(sc.a.UUID, c.Snaps[1])
	}
	if err := e.waitMergedUnlocked(ctx, op, sc, merging); err != nil {
		return err
	}
	base := lvm.DevicePath(sc.w.vg, lvName(sc.key))
	if err := e.stack.DM.Switch(ctx, merging, blockdev.Linear(base, sectors)); err != nil {
		return err
	}
	e.step(StepMergeDone)
	rest := c.Snaps[1:]
	if _, err := e.commitChain(ctx, sc, c, rest, nil); err != nil {
		return err
	}
	e.step(StepMergeCommit)
	if live {
		if _, _, err := e.stack.assemble(ctx, sc.w, sc.key); err != nil {
			return err
		}
	}
	e.step(StepMergeStack)
	if !live {
		// activateForMerge's unlock takes the stack down; the COW must
		// go after it.
		return e.removeMergedCOW(ctx, sc, snap, true)
	}
	return e.removeMergedCOW(ctx, sc, snap, false)
}

// waitMergedUnlocked waits for the merge without the SR lock: the kernel
// copies as much as K wrote while the snapshot lived, which may take
// minutes, and only this volume's (datapath) lock is needed meanwhile;
// other calls on the SR go on.
func (e *Engine) waitMergedUnlocked(ctx context.Context, op string, sc *snapCtx, name string) error {
	sc.unlockSR()
	sc.unlockSR = nil
	werr := e.stack.waitMerged(ctx, name)
	unlock, err := e.lock(ctx, op, srLock(sc.a.UUID))
	if err != nil {
		return errors.Join(werr, err)
	}
	sc.unlockSR = unlock
	return werr
}

// removeMergedCOW removes a merged COW; deferred says the stack still maps
// it until the caller's deferred teardown, so it is removed there.
func (e *Engine) removeMergedCOW(ctx context.Context, sc *snapCtx, snap string, deferred bool) error {
	remove := func(ctx context.Context) error {
		if err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, cowName(snap)); err != nil && !errors.Is(err, host.ErrNotFound) {
			return err
		}
		e.step(StepMergeRemove)
		e.log.Info("snapshot deleted (merged)", zap.String("sr", sc.a.UUID), zap.String("key", sc.key), zap.String("snapshot", snap))
		return nil
	}
	if deferred {
		sc.after = append(sc.after, remove)
		return nil
	}
	return remove(ctx)
}

// activateForMerge builds K's stack on the master for a merge of an idle
// volume; the returned function takes it down and deactivates the LVs.
func (e *Engine) activateForMerge(ctx context.Context, sc *snapCtx) (func(), error) {
	base := lvName(sc.key)
	if err := e.lvm.Activate(ctx, sc.w.scope, sc.w.vg, base); err != nil {
		return nil, err
	}
	return func() {
		rctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
		defer cancel()
		if err := e.stack.Disassemble(rctx, sc.w.scope, sc.w.sr, sc.w.vg, sc.key); err != nil {
			e.log.Warn("could not take down the merge's stack", zap.String("key", sc.key), zap.Error(err))
			return
		}
		if err := e.lvm.Deactivate(rctx, sc.w.scope, sc.w.vg, base); err != nil {
			e.log.Warn("could not deactivate the merged volume", zap.String("key", sc.key), zap.Error(err))
			return
		}
		for _, f := range sc.after {
			if err := f(rctx); err != nil {
				e.log.Warn("could not remove the merged COW; the next call on the volume does", zap.String("key", sc.key), zap.Error(err))
			}
		}
		sc.after = nil
	}, nil
}

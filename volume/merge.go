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
//
// K may move meanwhile: a live migration stops the merge on the source
// at its Datapath.deactivate (Stack.StopMerge) and the destination's
// activate resumes it from the tags. The steps then fail Busy: the
// source answers that K left it, xapi says the VM is migrating
// (ActiveHost), or K's device here is parked (activeAt). finishMerge
// lets go of the SR lock and of this host's datapath lock on K (an
// incoming migration's attach and activate here need it), waits, and
// goes on where K is active then, from the tags, for up to moveWait;
// after that the Busy error goes back to the caller, the intent stays,
// and the next call on K finishes the merge. It never reports success
// before the chain no longer holds the snapshot.
func (e *Engine) finishMerge(ctx context.Context, op string, sc *snapCtx, c Chain) error {
	snap := c.Intent.Snap
	wctx, cancel := context.WithTimeout(ctx, e.moveWait)
	defer cancel()
	var last error
	err := host.Poll(wctx, e.moveWait/60, func(context.Context) (bool, error) {
		if sc.unlockDP == nil {
			if err := e.relock(ctx, op, sc); err != nil {
				return false, err
			}
			l, cc, err := e.stack.chainOf(ctx, sc.w, sc.key)
			if err != nil {
				return false, err
			}
			if cc.Holds(snap) && (cc.Intent == nil || *cc.Intent != (Intent{Op: IntentMerge, Snap: snap})) {
				return false, host.NewError(host.KindInternal, op, fmt.Sprintf("the merge of snapshot %s of volume %s was replaced by step %v", snap, sc.key, cc.Intent),
					fmt.Sprintf("inspect lvs -o+tags %s/%s", sc.w.vg, l.Name), nil)
			}
			c = cc
		}
		var err error
		if c.Holds(snap) {
			err = e.finishMergeOnce(ctx, op, sc, c)
		} else {
			// Committed; only the devices and the COW are left.
			err = e.dropMerged(ctx, op, sc, c, snap)
		}
		if !errors.Is(err, host.ErrBusy) {
			return true, err
		}
		last = err
		e.log.Info("the volume moves while its snapshot merges; waiting for it to settle", zap.String("key", sc.key), zap.String("snapshot", snap), zap.Error(err))
		e.unlockChain(sc)
		return false, nil
	})
	var timeout *host.TimeoutError
	if errors.As(err, &timeout) && last != nil {
		return last
	}
	return err
}

// unlockChain lets go of the SR lock and this host's datapath lock on K.
func (e *Engine) unlockChain(sc *snapCtx) {
	if sc.unlockSR != nil {
		sc.unlockSR()
		sc.unlockSR = nil
	}
	if sc.unlockDP != nil {
		sc.unlockDP()
		sc.unlockDP = nil
	}
}

// relock takes again the locks unlockChain let go, in holdChain's order.
func (e *Engine) relock(ctx context.Context, op string, sc *snapCtx) error {
	unlockDP, err := e.lock(ctx, op, DatapathLock(sc.a.UUID, sc.key))
	if err != nil {
		return err
	}
	sc.unlockDP = unlockDP
	unlockSR, err := e.lock(ctx, op, srLock(sc.a.UUID))
	if err != nil {
		return err
	}
	sc.unlockSR = unlockSR
	return nil
}

// dropMerged finishes a merge whose chain commit is made: K's stack
// where it is active loses the merged layer, and the COW goes.
func (e *Engine) dropMerged(ctx context.Context, op string, sc *snapCtx, c Chain, snap string) error {
	at, err := e.activeAt(ctx, sc)
	if err != nil {
		return err
	}
	switch {
	case at.local:
		if _, _, err := e.stack.assemble(ctx, sc.w, sc.key); err != nil {
			return err
		}
	case at.host != "":
		l, err := e.lvm.LV(ctx, sc.w.scope, sc.w.vg, lvName(sc.key))
		if err != nil {
			return err
		}
		if err := e.convergeOn(ctx, op, sc, at.host, c, []string{snap}, uint64(l.Size/512)); err != nil {
			return err
		}
	}
	return e.removeMergedCOW(ctx, sc, snap, false)
}

// finishMergeOnce runs a merge whose intent is committed where K is
// active now.
func (e *Engine) finishMergeOnce(ctx context.Context, op string, sc *snapCtx, c Chain) error {
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
	if err := e.waitMergedUnlocked(ctx, op, sc, merging, live); err != nil {
		return err
	}
	if live {
		// The datapath lock was let go: K may have been deactivated
		// here meanwhile (a migration's source), and then its stack is
		// no longer the master's to switch.
		if in, err := e.stack.inUse(ctx, sc.a.UUID, sc.key); err != nil || !in {
			return errors.Join(err, movedAway(op, sc.key))
		}
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
// other calls on the SR go on. With inUse (K's VM runs here) the
// datapath lock is let go too: a live migration of the VM away from this
// host needs its deactivate here, which stops the merge (StopMerge) and
// ends the wait with Busy. An idle volume's temporary stack keeps it: a
// VM starting here must not find that stack, which goes after the merge.
func (e *Engine) waitMergedUnlocked(ctx context.Context, op string, sc *snapCtx, name string, inUse bool) error {
	if inUse {
		e.unlockChain(sc)
	} else {
		sc.unlockSR()
		sc.unlockSR = nil
	}
	werr := e.stack.waitMerged(ctx, name)
	if werr != nil && inUse {
		if in, err := e.stack.inUse(ctx, sc.a.UUID, sc.key); err == nil && !in {
			werr = errors.Join(werr, movedAway(op, sc.key))
		}
	}
	var err error
	if inUse {
		err = e.relock(ctx, op, sc)
	} else {
		var unlock func()
		if unlock, err = e.lock(ctx, op, srLock(sc.a.UUID)); err == nil {
			sc.unlockSR = unlock
		}
	}
	if err != nil {
		return errors.Join(werr, err)
	}
	return werr
}

// movedAway is the Busy error of a step that found K gone from, or
// parked on, the host it was using: finishMerge waits and goes on where
// K is active now.
func movedAway(op, key string) error {
	return host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s left this host while its snapshot merged (a live migration)", key),
		"retry: the merge goes on from the tags where the volume is active now", nil)
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

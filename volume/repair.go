package volume

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// RepairChain finishes or undoes whatever chain step of volume key a
// killed process left, from the tags (and, on the host where K is
// active, its devices): the next snapshot or delete does the same before
// it starts. It is the master's call.
func (e *Engine) RepairChain(ctx context.Context, sr, key string) error {
	// Clone steps (clone.go) too: a clone LV whose create died goes, and
	// so does a hidden snapshot no clone needs any more.
	sc, _, _, err := e.holdRepaired(ctx, "repair snapshot chain", sr, key)
	if err != nil {
		return err
	}
	sc.unlock()
	return nil
}

// repairLocked brings K's chain to a state with no intent, and its
// devices here (if it is active here) to what the chain says:
//
//   - COW LVs of K that neither the chain nor the intent names are the
//     leftovers of a snapshot killed before its intent: removed.
//   - "snap S": forward (S joins the chain, K's stack writes into its
//     COW) if the COW carries an exception store header, i.e. a snapshot
//     target was built on it and K may have written there; back (the COW
//     goes) if not, since nothing ever wrote it.
//   - "merge S": forward, always: a merge is repeated from where the
//     kernel is, and a merged COW merges at once.
//   - no intent: K's devices here are rebuilt if a killed step left them
//     suspended or half-switched.
func (e *Engine) repairLocked(ctx context.Context, op string, sc *snapCtx) (lvm.LV, Chain, error) {
	l, c, err := e.stack.chainOf(ctx, sc.w, sc.key)
	if errors.Is(err, host.ErrNotFound) {
		return l, c, notFound(op, sc.a, sc.key)
	}
	if err != nil {
		return l, c, err
	}
	if err := e.dropOrphanCOWs(ctx, sc, c); err != nil {
		return l, c, err
	}
	at, err := e.activeAt(ctx, sc)
	if err != nil {
		return l, c, err
	}
	live, sectors := at.local, uint64(l.Size/512)
	if c.Intent == nil {
		switch {
		case live:
			_, _, err = e.stack.assemble(ctx, sc.w, sc.key)
		case at.host != "":
			err = e.convergeOn(ctx, op, sc, at.host, c, nil, sectors)
		}
		return l, c, err
	}
	in := *c.Intent
	e.log.Info("repairing an unfinished snapshot step", zap.String("sr", sc.a.UUID), zap.String("key", sc.key), zap.Stringer("intent", in))
	switch in.Op {
	case IntentSnap:
		used, err := e.cowUsed(ctx, sc, in.Snap)
		if err != nil {
			return l, c, err
		}
		if used {
			if live {
				if _, _, err := e.stack.assemble(ctx, sc.w, sc.key); err != nil {
					return l, c, err
				}
			} else if at.host != "" {
				if err := e.convergeOn(ctx, op, sc, at.host, c, nil, sectors); err != nil {
					return l, c, err
				}
			}
			c, err = e.commitChain(ctx, sc, c, append(c.Snaps, in.Snap), nil)
			return l, c, err
		}
		if live {
			back := Chain{Key: c.Key, Snaps: c.Snaps}
			devs, err := layout(sc.w, back, uint64(l.Size/512))
			if err != nil {
				return l, c, err
			}
			if err := e.stack.converge(ctx, devs, extrasOf(names(sc.a.UUID, c), devs)); err != nil {
				return l, c, err
			}
		} else if at.host != "" {
			back := Chain{Key: c.Key, Snaps: c.Snaps}
			if err := e.convergeOn(ctx, op, sc, at.host, back, []string{in.Snap}, sectors); err != nil {
				return l, c, err
			}
		}
		if err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, cowName(in.Snap)); err != nil && !errors.Is(err, host.ErrNotFound) {
			return l, c, err
		}
		c, err = e.commitChain(ctx, sc, c, c.Snaps, nil)
		return l, c, err
	default:
		if err := e.finishMerge(ctx, op, sc, c); err != nil {
			return l, c, err
		}
		sc.merged = in.Snap
		l, c, err = e.stack.chainOf(ctx, sc.w, sc.key)
		return l, c, err
	}
}

// cowUsed reads whether snapshot snap's COW carries an exception store
// header. A missing COW was never used.
func (e *Engine) cowUsed(ctx context.Context, sc *snapCtx, snap string) (bool, error) {
	l, err := e.lvm.LV(ctx, sc.w.scope, sc.w.vg, cowName(snap))
	if errors.Is(err, host.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !l.Active() {
		if err := e.lvm.Activate(ctx, sc.w.scope, sc.w.vg, l.Name); err != nil {
			return false, err
		}
		defer func() {
			if err := e.lvm.Deactivate(ctx, sc.w.scope, sc.w.vg, l.Name); err != nil {
				e.log.Warn("could not deactivate a COW after reading its header", zap.String("lv", l.Name), zap.Error(err))
			}
		}()
	}
	used, err := e.magic(ctx, lvm.DevicePath(sc.w.vg, l.Name))
	if err != nil {
		return false, host.NewError(host.KindInternal, "snapshot repair", "cannot read the header of COW "+l.Name,
			"check the SR's paths, then retry", err)
	}
	return used, nil
}

// dropOrphanCOWs removes the COW LVs of K that its chain does not name:
// a snapshot killed between its lvcreate and its intent.
func (e *Engine) dropOrphanCOWs(ctx context.Context, sc *snapCtx, c Chain) error {
	lvs, err := e.lvm.LVs(ctx, sc.w.scope, sc.w.vg)
	if err != nil {
		return err
	}
	for _, l := range lvs {
		snap, ok := snapOfCOW(l.Name)
		if !ok || c.Holds(snap) {
			continue
		}
		f, _, _ := lvm.DecodeEachField(l.Tags)
		if f[volFieldOverlayOf] != sc.key || f[volFieldKey] != snap {
			continue
		}
		e.log.Info("removing the COW of a snapshot that never started", zap.String("key", sc.key), zap.String("lv", l.Name))
		if err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, l.Name); err != nil && !errors.Is(err, host.ErrNotFound) {
			return err
		}
	}
	return nil
}

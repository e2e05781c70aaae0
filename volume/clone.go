package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Snapshots as volumes, and linked clones (docs/design.md "Clones"):
//
//   - A snapshot S of K is a volume of its own to xapi: its key is S, its
//     metadata (name, description, the keys xapi's VDI.snapshot sets) is
//     the tags of its COW LV s-<S>, its data is its image (the base for
//     the oldest, the base under the oldest's COW for the newer one), and
//     it is read-only.
//   - A clone C of S is a writable volume whose LV v-<C> is a COW: C's
//     device is a dm snapshot over S's image writing into v-<C>. Its tags
//     name S (field P) and its size (field Z: the LV, a COW, is larger).
//   - S cannot be merged away while a clone uses its image, nor while a
//     clone uses the newer snapshot's image (which maps S's COW). Deleting
//     S then hides it (field H on its COW): not listed, not found by stat,
//     and merged as soon as the last such clone goes.
//   - clone(K) = snapshot(K), hidden from birth, + clone of it: it goes
//     when its clone does. This is what xapi's reset-on-boot does at every
//     VM start (xapi-storage-script main.ml, vdi_epoch_begin_impl: clone
//     and set clone-on-boot; vdi_epoch_end_impl: destroy the clone).
//
// Clones are not snapshotted or cloned themselves in this version: their
// LV is a COW, not a base a chain can grow over.
const (
	// volFieldHidden, on a snapshot's COW, says the snapshot goes as soon
	// as no clone needs it: hiddenDeleted after Volume.destroy,
	// hiddenForClone for the snapshot a clone of K took.
	volFieldHidden = "H"
	hiddenDeleted  = "deleted"
	hiddenForClone = "clone"
	// volFieldParent, on a clone's LV, is the key of the snapshot whose
	// image the clone starts from.
	volFieldParent = "P"
	// volFieldCloneSize, on a clone's LV, is its size in bytes.
	volFieldCloneSize = "Z"
)

// The clone steps a FaultHook sees, in order.
const (
	StepCloneLVCreate   = "clone:lvcreate"
	StepCloneZero       = "clone:zero"
	StepCloneDeactivate = "clone:deactivate"
	StepCloneCommit     = "clone:commit"
	// StepCloneDestroyed: a clone's LV is removed; its parent is not
	// reaped yet.
	StepCloneDestroyed = "clone:destroyed"
	// StepSnapshotHide: a deleted snapshot a clone still needs is hidden.
	StepSnapshotHide = "snapshot:hide"
)

// CloneSteps lists the clone steps in order.
func CloneSteps() []string {
	return []string{StepCloneLVCreate, StepCloneZero, StepCloneDeactivate, StepCloneCommit, StepCloneDestroyed, StepSnapshotHide}
}

// cloneOf reads a clone's parent and size from its LV's tags; ok is false
// for a volume that is no clone.
func cloneOf(tags []string) (parent string, size int64, ok bool, err error) {
	f, _, _ := lvm.DecodeEachField(tags)
	p, isClone := f[volFieldParent]
	if !isClone {
		return "", 0, false, nil
	}
	size, serr := strconv.ParseInt(f[volFieldCloneSize], 10, 64)
	if !IsUUID(p) || serr != nil || size <= 0 {
		return p, 0, true, fmt.Errorf("clone tags P=%q Z=%q do not name a snapshot and a size", p, f[volFieldCloneSize])
	}
	return p, size, true, nil
}

// cowMeta is what a snapshot's COW LV says of its snapshot.
type cowMeta struct {
	snap, of string
	hidden   bool
}

func cowMetaOf(l lvm.LV) (cowMeta, bool) {
	snap, ok := snapOfCOW(l.Name)
	if !ok {
		return cowMeta{}, false
	}
	f, _, _ := lvm.DecodeEachField(l.Tags)
	if f[volFieldKey] != snap || !IsUUID(f[volFieldOverlayOf]) {
		return cowMeta{}, false
	}
	_, hidden := f[volFieldHidden]
	return cowMeta{snap: snap, of: f[volFieldOverlayOf], hidden: hidden}, true
}

// snapshotVolume is snapshot cow's record as xapi sees it, given its
// volume's base LV; ok is false for a snapshot xapi must not see: hidden,
// or whose step has not finished.
func (e *Engine) snapshotVolume(a Attached, cow, base lvm.LV) (Volume, bool) {
	cm, ok := cowMetaOf(cow)
	if !ok || cm.hidden {
		return Volume{}, false
	}
	key, _ := keyOfLV(base.Name)
	c, err := parseChain(key, base.Tags)
	if key != cm.of || err != nil || !slices.Contains(c.Snaps, cm.snap) {
		return Volume{}, false
	}
	m, err := decodeVolumeTags(cow.Tags)
	if err != nil {
		e.log.Warn("snapshot metadata partly unreadable", zap.String("sr", a.UUID), zap.String("lv", cow.Name), zap.Error(err))
	}
	// A snapshot is K as it was: K's size (K cannot be resized while it
	// has snapshots), read-only. Its COW holds what K wrote after it.
	return Volume{Key: cm.snap, UUID: cm.snap, Name: m.Name, Description: m.Description,
		VirtualSize: base.Size, PhysicalUtilisation: cow.Size,
		URI: []string{volumeURI(a.UUID, cm.snap)}, Keys: m.Keys}, true
}

// lookupSnapshot reads snapshot key as a volume: its COW and K's base LV,
// with read (see lookup).
func (e *Engine) lookupSnapshot(ctx context.Context, op string, a Attached, key string, read lvReader) (lvm.LV, Volume, volumeMeta, error) {
	cow, err := read(ctx, a.VG, cowName(key))
	if errors.Is(err, host.ErrNotFound) {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	if err != nil {
		return lvm.LV{}, Volume{}, volumeMeta{}, err
	}
	cm, ok := cowMetaOf(cow)
	if !ok {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	base, err := read(ctx, a.VG, lvName(cm.of))
	if errors.Is(err, host.ErrNotFound) {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	if err != nil {
		return lvm.LV{}, Volume{}, volumeMeta{}, err
	}
	v, ok := e.snapshotVolume(a, cow, base)
	if !ok {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	m, _ := decodeVolumeTags(cow.Tags)
	return cow, v, m, nil
}

// snapshotOwner returns the volume whose snapshot key is, or "" when key
// names no snapshot's COW.
func (e *Engine) snapshotOwner(ctx context.Context, a Attached, key string) (string, error) {
	l, err := e.lvm.LV(ctx, e.scope(a.Device), a.VG, cowName(key))
	if errors.Is(err, host.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	cm, ok := cowMetaOf(l)
	if !ok {
		return "", nil
	}
	return cm.of, nil
}

// VolumeClone makes a writable linked clone of a volume: of snapshot key,
// a new volume over its image; of a volume K, a snapshot of K that xapi
// never sees, and a clone of it. Volume.clone has no name: the clone
// takes the source's name and description (xapi keeps its own VDI record
// for the clone; main.ml, vdi_clone_impl only maps the answer). It runs
// on the master.
//
// LVM commits: (for K, the snapshot's, see Snapshot); the clone's lvcreate,
// carrying its parent, its size and the create mark; then the mark's
// removal once the COW's header is zeroed. A crash leaves an LV with the
// mark: hidden from SR.ls, and removed by the next chain call on K (or
// the collector); a snapshot taken for it is hidden and goes with it.
func (e *Engine) VolumeClone(ctx context.Context, sr, key string) (Volume, error) {
	const op = "Volume.clone"
	if err := e.requireMaster(op); err != nil {
		return Volume{}, err
	}
	a, err := e.attached(ctx, sr)
	if err != nil {
		return Volume{}, err
	}
	if !IsUUID(key) {
		return Volume{}, notFound(op, a, key)
	}
	owner, err := e.snapshotOwner(ctx, a, key)
	if err != nil {
		return Volume{}, err
	}
	k, snap := key, ""
	if owner != "" {
		k, snap = owner, key
	}
	sc, l, c, err := e.holdRepaired(ctx, op, sr, k)
	if err != nil {
		return Volume{}, err
	}
	defer sc.unlock()
	if snap == "" {
		m, _ := decodeVolumeTags(l.Tags)
		name, description := m.Name, m.Description
		s, err := e.snapshotLocked(ctx, op, sc, l, c, name, description, true)
		if err != nil {
			return Volume{}, err
		}
		snap = s.Key
		v, err := e.cloneLocked(ctx, op, sc, l.Size, snap, name, description)
		if err != nil {
			// The hidden snapshot has no clone: it goes now (or at the
			// next chain call on K).
			rctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
			defer cancel()
			if l, c, rerr := e.stack.chainOf(rctx, sc.w, sc.key); rerr == nil {
				_, _, rerr = e.reapLocked(rctx, op, sc, l, c)
				if rerr != nil {
					e.log.Warn("the snapshot of a failed clone stays hidden until the next call on its volume", zap.String("snapshot", snap), zap.Error(rerr))
				}
			}
		}
		return v, err
	}
	_, v, _, err := e.lookupSnapshot(ctx, op, a, snap, e.liveLV(a))
	if err != nil {
		return Volume{}, err
	}
	return e.cloneLocked(ctx, op, sc, l.Size, snap, v.Name, v.Description)
}

// cloneLocked creates the clone of snapshot snap of K (size bytes) under
// K's chain hold.
func (e *Engine) cloneLocked(ctx context.Context, op string, sc *snapCtx, size int64, snap, name, description string) (Volume, error) {
	key, err := host.NewUUID()
	if err != nil {
		return Volume{}, host.NewError(host.KindInternal, op, "no randomness for a clone uuid", "", err)
	}
	// Held until the end, as for a create: the collector leaves the LV
	// alone while it is.
	unlockInit, err := e.lock(ctx, op, initLock(key))
	if err != nil {
		return Volume{}, err
	}
	defer unlockInit()
	lv := lvName(key)
	mark := lvm.EncodeField(volFieldInit, initMark{Time: e.now(), Host: e.hostID}.String())
	tags := lvm.EncodeFields(map[string]string{volFieldKey: key, volFieldName: name, volFieldDescription: description,
		volFieldParent: snap, volFieldCloneSize: strconv.FormatInt(size, 10)})
	extents := cowExtents(size, sc.a.ExtentSize)
	if err := e.lvm.LVCreate(ctx, sc.w.scope, sc.w.vg, lv, extents, append(tags, mark...)); err != nil {
		return Volume{}, err
	}
	e.step(StepCloneLVCreate)
	if err := e.zero(ctx, op, lvm.DevicePath(sc.w.vg, lv), 0, cowHeaderBytes); err != nil {
		e.dropClone(ctx, sc, lv)
		return Volume{}, err
	}
	e.step(StepCloneZero)
	if err := e.lvm.Deactivate(ctx, sc.w.scope, sc.w.vg, lv); err != nil {
		return Volume{}, err
	}
	e.step(StepCloneDeactivate)
	if err := e.lvm.LVChangeTags(ctx, sc.w.scope, sc.w.vg, lv, mark, nil); err != nil {
		return Volume{}, err
	}
	e.step(StepCloneCommit)
	e.log.Info("clone created", zap.String("sr", sc.a.UUID), zap.String("key", key), zap.String("snapshot", snap), zap.String("of", sc.key))
	return Volume{Key: key, UUID: key, Name: name, Description: description, ReadWrite: true,
		VirtualSize: size, PhysicalUtilisation: extents * sc.a.ExtentSize,
		URI: []string{volumeURI(sc.a.UUID, key)}, Keys: map[string]string{}}, nil
}

func (e *Engine) dropClone(ctx context.Context, sc *snapCtx, lv string) {
	ctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
	defer cancel()
	if err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, lv); err != nil {
		e.log.Warn("could not remove the LV of a failed clone; the next call on its source does", zap.String("lv", lv), zap.Error(err))
	}
}

// family is what the SR's LVs say of K's snapshots: which are hidden and
// how many clones each has.
type family struct {
	hidden map[string]bool
	clones map[string]int
}

// familyOf reads K's snapshots' family in one report, and removes the
// LVs of clones of K's snapshots whose create died (the caller holds K's
// chain, under which every clone of K's snapshots is made).
func (e *Engine) familyOf(ctx context.Context, sc *snapCtx, c Chain) (family, error) {
	fam := family{hidden: map[string]bool{}, clones: map[string]int{}}
	lvs, err := e.lvm.LVs(ctx, sc.w.scope, sc.w.vg)
	if err != nil {
		return fam, err
	}
	for _, l := range lvs {
		if cm, ok := cowMetaOf(l); ok && cm.of == sc.key {
			fam.hidden[cm.snap] = cm.hidden
			continue
		}
		parent, _, isClone, _ := cloneOf(l.Tags)
		if !isClone || !c.Holds(parent) {
			continue
		}
		if m, _ := decodeVolumeTags(l.Tags); m.Initializing {
			if unlock, ok, _ := e.collectable(ctx, l); ok {
				e.log.Info("removing the LV of a clone whose create died", zap.String("lv", l.Name))
				err := e.lvm.LVRemove(ctx, sc.w.scope, sc.w.vg, l.Name)
				unlock()
				if err == nil || errors.Is(err, host.ErrNotFound) {
					continue
				}
				return fam, err
			}
		}
		fam.clones[parent]++
	}
	return fam, nil
}

// blocked says why the oldest snapshot cannot be merged now: a clone
// uses its image, or the newer snapshot's image (which maps its COW).
func (f family) blocked(c Chain) string {
	if len(c.Snaps) == 0 {
		return ""
	}
	if n := f.clones[c.Snaps[0]]; n > 0 {
		return fmt.Sprintf("%d linked clone(s) of snapshot %s use its image", n, c.Snaps[0])
	}
	if len(c.Snaps) > 1 {
		if n := f.clones[c.Snaps[1]]; n > 0 {
			return fmt.Sprintf("%d linked clone(s) of snapshot %s use its image, which maps the COW of %s", n, c.Snaps[1], c.Snaps[0])
		}
	}
	return ""
}

// refuseClones fails a merge of snap (K's oldest snapshot) that would pull
// an image from under a clone.
func (e *Engine) refuseClones(ctx context.Context, op string, sc *snapCtx, c Chain) error {
	fam, err := e.familyOf(ctx, sc, c)
	if err != nil {
		return err
	}
	if why := fam.blocked(c); why != "" {
		return host.NewError(host.KindBusy, op, why, "destroy the clones first (Volume.destroy of the snapshot hides it until they are gone)", nil)
	}
	return nil
}

// reapLocked merges K's oldest snapshot for as long as it is hidden and
// no clone needs it: the deferred end of a delete, or of the snapshot a
// clone of K took.
func (e *Engine) reapLocked(ctx context.Context, op string, sc *snapCtx, l lvm.LV, c Chain) (lvm.LV, Chain, error) {
	for len(c.Snaps) > 0 && c.Intent == nil {
		fam, err := e.familyOf(ctx, sc, c)
		if err != nil {
			return l, c, err
		}
		s0 := c.Snaps[0]
		if !fam.hidden[s0] || fam.blocked(c) != "" {
			return l, c, nil
		}
		e.log.Info("merging a deleted snapshot no clone needs any more", zap.String("sr", sc.a.UUID), zap.String("key", sc.key), zap.String("snapshot", s0))
		if c, err = e.commitChain(ctx, sc, c, c.Snaps, &Intent{Op: IntentMerge, Snap: s0}); err != nil {
			return l, c, err
		}
		e.step(StepMergeIntent)
		if err := e.finishMerge(ctx, op, sc, c); err != nil {
			return l, c, err
		}
		if l, c, err = e.stack.chainOf(ctx, sc.w, sc.key); err != nil {
			return l, c, err
		}
	}
	return l, c, nil
}

// DestroySnapshot is Volume.destroy of snapshot snap. The oldest snapshot
// is merged into K now (DeleteSnapshot) unless a clone needs it; then it,
// or a newer one whose older ones are all hidden, is hidden, and goes
// with its last clone. Deleting the newer of two visible snapshots is
// refused, as DeleteSnapshot does: merging it would need a merge into
// the middle of the stack. A snapshot that is gone or hidden is success:
// xapi repeats a destroy whose answer it lost.
func (e *Engine) DestroySnapshot(ctx context.Context, sr, snap string) error {
	const op = "Volume.destroy"
	sc, _, c, err := e.holdSnapshotOwner(ctx, op, sr, snap)
	if err != nil || sc == nil {
		return err
	}
	defer sc.unlock()
	if !c.Holds(snap) {
		return nil
	}
	fam, err := e.familyOf(ctx, sc, c)
	if err != nil {
		return err
	}
	if fam.hidden[snap] {
		return nil
	}
	i := slices.Index(c.Snaps, snap)
	switch {
	case i == 0 && fam.blocked(c) == "":
		if c, err = e.commitChain(ctx, sc, c, c.Snaps, &Intent{Op: IntentMerge, Snap: snap}); err != nil {
			return err
		}
		e.step(StepMergeIntent)
		if err := e.finishMerge(ctx, op, sc, c); err != nil {
			return err
		}
		// The newer snapshot may be waiting for this one to go.
		l, c, err := e.stack.chainOf(ctx, sc.w, sc.key)
		if err != nil {
			return err
		}
		_, _, err = e.reapLocked(ctx, op, sc, l, c)
		return err
	case i == 0 || fam.hidden[c.Snaps[0]] || fam.clones[snap] > 0:
		if err := e.lvm.LVChangeTags(ctx, sc.w.scope, sc.w.vg, cowName(snap), nil, lvm.EncodeField(volFieldHidden, hiddenDeleted)); err != nil {
			return err
		}
		e.step(StepSnapshotHide)
		e.log.Info("snapshot deleted; it stays hidden while clones need it", zap.String("sr", sc.a.UUID), zap.String("key", sc.key), zap.String("snapshot", snap))
		return nil
	}
	return host.NewError(host.KindUnsupported, op, fmt.Sprintf("snapshot %s is not the oldest snapshot of volume %s", snap, sc.key),
		"delete the older snapshot first", nil)
}

// reapParent finishes what a clone's destroy started: its parent snapshot
// goes if it is hidden and was the last clone's. A failure leaves the
// parent hidden for the next chain call on its volume; the destroy itself
// is done.
func (e *Engine) reapParent(ctx context.Context, sr, snap string) {
	sc, _, _, err := e.holdSnapshotOwner(ctx, "Volume.destroy", sr, snap)
	if sc != nil {
		sc.unlock()
	}
	if err != nil {
		e.log.Warn("a clone's parent snapshot was not merged yet; the next call on its volume does it", zap.String("snapshot", snap), zap.Error(err))
	}
}

// holdRepaired holds K's chain (holdChain) and brings it to a state with
// no intent and no hidden snapshot left to merge; the caller unlocks.
func (e *Engine) holdRepaired(ctx context.Context, op, sr, key string) (*snapCtx, lvm.LV, Chain, error) {
	sc, err := e.holdChain(ctx, op, sr, key)
	if err != nil {
		return nil, lvm.LV{}, Chain{}, err
	}
	l, c, err := e.repairLocked(ctx, op, sc)
	if err == nil {
		l, c, err = e.reapLocked(ctx, op, sc, l, c)
	}
	if err != nil {
		sc.unlock()
		return nil, l, c, err
	}
	return sc, l, c, nil
}

// holdSnapshotOwner is holdRepaired on the volume whose snapshot snap is;
// a nil hold and error say snap is gone.
func (e *Engine) holdSnapshotOwner(ctx context.Context, op, sr, snap string) (*snapCtx, lvm.LV, Chain, error) {
	a, err := e.attached(ctx, sr)
	if err != nil {
		return nil, lvm.LV{}, Chain{}, err
	}
	key, err := e.overlayOf(ctx, op, a, snap)
	if errors.Is(err, host.ErrNotFound) {
		return nil, lvm.LV{}, Chain{}, nil
	}
	if err != nil {
		return nil, lvm.LV{}, Chain{}, err
	}
	return e.holdRepaired(ctx, op, sr, key)
}

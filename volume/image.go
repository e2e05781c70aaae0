package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// The devices of snapshots and clones on a host (clone.go has the model).
// A snapshot's image is read-only and the same on every host: the base LV
// itself for K's oldest snapshot, and for the newer one the read-only
// device snapshot(base, oldest COW) named after it — the very device K's
// own stack uses as its middle layer where K is active, so a host never
// has two devices over one COW (the kernel allows one). A clone is a dm
// snapshot over its parent's image, writing into the clone's own LV.

// image is how to build snapshot snap's image on a host.
type image struct {
	// of is the volume whose snapshot it is.
	of string
	// devs are the devices to build, bottom-up: none for the oldest
	// snapshot, whose image is the base LV.
	devs []dmDev
	// path is the image's device.
	path string
	// lvs are the LVs it maps.
	lvs     []string
	sectors uint64
}

// imageOf reads how to build snapshot snap's image from its COW's tags and
// its volume's chain.
func (st *Stack) imageOf(ctx context.Context, w where, snap string) (image, error) {
	const op = "snapshot image"
	cow, err := st.LVM.LV(ctx, w.scope, w.vg, cowName(snap))
	if err != nil {
		return image{}, err
	}
	cm, ok := cowMetaOf(cow)
	if !ok {
		return image{}, host.NewError(host.KindInternal, op, fmt.Sprintf("LV %s does not say whose snapshot it is", cow.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", w.vg, cow.Name), nil)
	}
	base, c, err := st.chainOf(ctx, w, cm.of)
	if err != nil {
		return image{}, err
	}
	snaps, merging := c.Live()
	i := slices.Index(snaps, snap)
	switch {
	case i < 0:
		return image{}, host.NewError(host.KindNotFound, op, fmt.Sprintf("snapshot %s is not in the chain of volume %s", snap, cm.of),
			"rescan the SR (xe sr-scan)", nil)
	case merging != "":
		// The middle device is a snapshot-merge target on K's host while
		// the oldest COW merges: it must not be rebuilt read-only here.
		return image{}, host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s is merging its snapshot %s", cm.of, merging),
			"retry once the merge is done (seconds to minutes: what the VM wrote while the snapshot lived)", nil)
	case i >= MaxDepth:
		return image{}, fmt.Errorf("snapshot %s is at depth %d of volume %s; sanvol builds at most %d", snap, i, cm.of, MaxDepth)
	}
	basePath := lvm.DevicePath(w.vg, lvName(cm.of))
	img := image{of: cm.of, path: basePath, lvs: []string{lvName(cm.of)}, sectors: uint64(base.Size / 512)}
	if i == 1 {
		// Exactly K's middle layer when not merging (layout).
		m := dmDev{name: DevName(w.sr, snap), table: blockdev.Snapshot(basePath, lvm.DevicePath(w.vg, cowName(snaps[0])), img.sectors), readOnly: true}
		img.devs, img.path = []dmDev{m}, "/dev/mapper/"+m.name
		img.lvs = append(img.lvs, cowName(snaps[0]))
	}
	return img, nil
}

// buildImage activates the image's LVs and builds its devices.
func (st *Stack) buildImage(ctx context.Context, w where, img image) error {
	for _, lv := range img.lvs {
		l, err := st.LVM.LV(ctx, w.scope, w.vg, lv)
		if err != nil {
			return err
		}
		if !l.Active() {
			if err := st.LVM.Activate(ctx, w.scope, w.vg, lv); err != nil {
				return err
			}
		}
	}
	for _, d := range img.devs {
		if err := st.ensure(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// releaseImage takes down what buildImage made, except what something else
// on this host still uses: K's own stack, a clone's device, an LV open.
func (st *Stack) releaseImage(ctx context.Context, w where, img image, snap string) error {
	var errs []error
	if len(img.devs) > 0 {
		used, err := st.imageUsed(ctx, w, img, snap)
		if err != nil {
			return err
		}
		if !used {
			if err := st.removeExtras(ctx, []string{img.devs[0].name}); err != nil {
				return err
			}
		}
	}
	for _, lv := range slices.Backward(img.lvs) {
		l, err := st.LVM.LV(ctx, w.scope, w.vg, lv)
		if errors.Is(err, host.ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !l.Active() || l.Open() {
			continue
		}
		if err := st.LVM.Deactivate(ctx, w.scope, w.vg, lv); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// imageUsed reports whether the device of snapshot snap's image is still
// mapped here by K's stack or by a clone of snap.
func (st *Stack) imageUsed(ctx context.Context, w where, img image, snap string) (bool, error) {
	if live, err := st.Live(ctx, w.sr, img.of); err != nil || live {
		return live, err
	}
	live, err := st.liveClones(ctx, w)
	return live[snap], err
}

// liveClones lists the snapshots that have a clone whose device is here.
func (st *Stack) liveClones(ctx context.Context, w where) (map[string]bool, error) {
	out := map[string]bool{}
	lvs, err := st.LVM.LVs(ctx, w.scope, w.vg)
	if err != nil {
		return nil, err
	}
	for _, l := range lvs {
		parent, _, isClone, _ := cloneOf(l.Tags)
		key, isVol := keyOfLV(l.Name)
		if !isClone || !isVol || out[parent] {
			continue
		}
		live, err := st.Live(ctx, w.sr, key)
		if err != nil {
			return nil, err
		}
		out[parent] = live
	}
	return out, nil
}

// notUnderClones returns the devices among K's middle layers that no
// clone here builds on.
func (st *Stack) notUnderClones(ctx context.Context, w where, middle []string) ([]string, error) {
	if len(middle) == 0 {
		return nil, nil
	}
	live, err := st.liveClones(ctx, w)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range middle {
		used := false
		for s := range live {
			used = used || (live[s] && DevName(w.sr, s) == n)
		}
		if !used {
			out = append(out, n)
		}
	}
	return out, nil
}

// roDevName is the read-only device Datapath.attach hands out for the
// oldest snapshot, whose image is K's base LV: the LV itself is writable
// (K's stack maps it). No COW is involved, so the name is the snapshot's
// own, apart from the middle layer's (names), which K's stack manages.
func roDevName(sr, snap string) string { return DevName(sr, snap) + "-ro" }

// assembleSnapshot makes snapshot snap's image readable here and returns
// its device: what Datapath.attach hands out for a snapshot (an export,
// a VM's read-only disk), read-only.
func (st *Stack) assembleSnapshot(ctx context.Context, w where, snap string) (string, error) {
	img, err := st.imageOf(ctx, w, snap)
	if err != nil {
		return "", err
	}
	if err := st.buildImage(ctx, w, img); err != nil {
		return "", err
	}
	if len(img.devs) > 0 {
		return img.path, nil
	}
	ro := dmDev{name: roDevName(w.sr, snap), table: blockdev.Linear(img.path, img.sectors), readOnly: true}
	if err := st.ensure(ctx, ro); err != nil {
		return "", err
	}
	return "/dev/mapper/" + ro.name, nil
}

// assembleClone builds clone key's device over its parent's image; l is
// the clone's LV (active: the datapath activates it).
func (st *Stack) assembleClone(ctx context.Context, w where, key string, l lvm.LV, parent string) (string, error) {
	img, err := st.imageOf(ctx, w, parent)
	if err != nil {
		return "", err
	}
	// The clone's own overlay (its LV is the COW) only: a snapshot
	// image under it that maps a COW loads that table too, uncounted.
	st.warnOverlayMemory(ctx, w.sr, key, 1, int64(img.sectors)*512, l.Size)
	if err := st.buildImage(ctx, w, img); err != nil {
		return "", err
	}
	top := dmDev{name: DevName(w.sr, key), table: blockdev.Snapshot(img.path, lvm.DevicePath(w.vg, l.Name), img.sectors)}
	if err := st.converge(ctx, append(slices.Clone(img.devs), top), nil); err != nil {
		return "", err
	}
	return DevPath(w.sr, key), nil
}

// source says what key's device is built from here: a volume's own LV
// (l, with its chain, or a clone's parent), or a snapshot's image
// (snapshot true, l empty).
func (st *Stack) source(ctx context.Context, w where, key string) (l lvm.LV, parent string, snapshot bool, err error) {
	l, err = st.LVM.LV(ctx, w.scope, w.vg, lvName(key))
	if errors.Is(err, host.ErrNotFound) {
		cow, cerr := st.LVM.LV(ctx, w.scope, w.vg, cowName(key))
		if cerr != nil {
			return l, "", false, err // the volume's own not-found
		}
		if cm, ok := cowMetaOf(cow); ok && cm.snap == key {
			return lvm.LV{}, "", true, nil
		}
		return l, "", false, err
	}
	if err != nil {
		return l, "", false, err
	}
	parent, _, _, perr := cloneOf(l.Tags)
	if perr != nil {
		return l, "", false, host.NewError(host.KindInternal, "clone", fmt.Sprintf("LV %s carries clone tags sanvol cannot read", l.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", w.vg, l.Name), perr)
	}
	return l, parent, false, nil
}

// LVOf names the LV the datapath activates for key before Assemble: the
// volume's own, or for a snapshot its volume's base, which the snapshot
// does not own: Disassemble deactivates it only when nothing here uses it.
func (st *Stack) LVOf(ctx context.Context, s lvm.Scope, sr, vg, key string) (string, error) {
	w := where{sr: sr, vg: vg, scope: s}
	_, _, snapshot, err := st.source(ctx, w, key)
	if err != nil || !snapshot {
		return lvName(key), nil // the datapath reports a missing LV itself
	}
	img, err := st.imageOf(ctx, w, key)
	if err != nil {
		return "", err
	}
	return img.lvs[0], nil
}

// disassembleImage takes down a snapshot's image (snapshot) or a clone's
// device and its parent's image, leaving what K or another clone here
// still uses.
func (st *Stack) disassembleImage(ctx context.Context, w where, key, parent string, snapshot bool) error {
	snap, top := key, roDevName(w.sr, key)
	if !snapshot {
		snap, top = parent, DevName(w.sr, key)
	}
	if err := st.removeExtras(ctx, []string{top}); err != nil {
		return err
	}
	img, err := st.imageOf(ctx, w, snap)
	if err != nil {
		return err
	}
	return st.releaseImage(ctx, w, img, snap)
}

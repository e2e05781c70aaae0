package volume

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"go.uber.org/zap"

	"sanvol/host"
	"sanvol/lvm"
)

// volumeOf turns an LV into a volume record. ok is false for LVs that are
// not sanvol volumes.
func (e *Engine) volumeOf(a Attached, l lvm.LV) (Volume, volumeMeta, bool) {
	key, ok := keyOfLV(l.Name)
	if !ok {
		return Volume{}, volumeMeta{}, false
	}
	m, err := decodeVolumeTags(l.Tags)
	if err != nil {
		// Still a volume: leaving it out of SR.ls would make xapi forget
		// the VDI. Show it, and say why its name is missing.
		e.log.Warn("volume metadata unreadable", zap.String("sr", a.UUID), zap.String("lv", l.Name), zap.Error(err))
		m = volumeMeta{Name: l.Name, Description: "sanvol cannot decode this volume's tags: " + err.Error(), Keys: map[string]string{}}
	}
	var incomplete string
	if m.Grow {
		incomplete = fmt.Sprintf("a resize did not finish: the volume is zeroed up to byte %d of %d; repeat the resize (xe vdi-resize) before using it", m.GrowFrom, l.Size)
	}
	return Volume{
		Incomplete: incomplete,
		Key:        key, UUID: key, Name: m.Name, Description: m.Description,
		ReadWrite: true, Sharable: m.Sharable,
		VirtualSize: l.Size, PhysicalUtilisation: l.Size,
		URI:  []string{volumeURI(a.UUID, key)},
		Keys: m.Keys,
	}, m, true
}

func notFound(op string, a Attached, key string) error {
	return host.Errorf(host.KindNotFound, op, fmt.Sprintf("volume %s not found in SR %s", key, a.UUID),
		"rescan the SR (xe sr-scan) to refresh xapi's list of VDIs", nil)
}

// lookup reads one volume in one LVM report. A volume whose create has not
// finished does not exist yet.
func (e *Engine) lookup(ctx context.Context, op string, a Attached, key string) (lvm.LV, Volume, volumeMeta, error) {
	if !IsUUID(key) {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	l, err := e.lvm.LV(ctx, e.scope(a.Device), a.VG, lvName(key))
	if errors.Is(err, host.ErrNotFound) {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	if err != nil {
		return lvm.LV{}, Volume{}, volumeMeta{}, err
	}
	v, m, _ := e.volumeOf(a, l)
	if m.Initializing {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	return l, v, m, nil
}

// VolumeStat reads one volume. It is the hottest call (before every
// datapath operation, on the host using the disk), so it is one LVM
// report and works read-only on every host.
func (e *Engine) VolumeStat(ctx context.Context, sr, key string) (Volume, error) {
	a, err := e.attached(sr)
	if err != nil {
		return Volume{}, err
	}
	_, v, _, err := e.lookup(ctx, "Volume.stat", a, key)
	return v, err
}

// VolumeCreate allocates a volume of at least size bytes (rounded up to
// the extent size; the real size is returned), zeroed.
//
// Crash safety: the one lvcreate carries every tag, including the
// "initializing" mark, so the LV exists completely or not at all. It is
// invisible until the zeroing is done and the mark is removed (one more
// lvchange). An LV left marked by a killed create is removed by the
// master's next SR.ls or SR.destroy.
func (e *Engine) VolumeCreate(ctx context.Context, sr, name, description string, size int64, sharable bool) (Volume, error) {
	const op = "Volume.create"
	if err := e.requireMaster(op); err != nil {
		return Volume{}, err
	}
	a, err := e.attached(sr)
	if err != nil {
		return Volume{}, err
	}
	if size < 0 {
		return Volume{}, host.Errorf(host.KindInvalid, op, fmt.Sprintf("size %d is negative", size), "", nil)
	}
	if a.ExtentSize <= 0 {
		return Volume{}, host.Errorf(host.KindInternal, op, "attach record has no extent size", "unplug and plug the PBD", nil)
	}
	key, err := host.NewUUID()
	if err != nil {
		return Volume{}, host.Errorf(host.KindInternal, op, "no randomness for a volume uuid", "", err)
	}
	lv := lvName(key)
	extents := roundUp(size, a.ExtentSize)
	real := extents * a.ExtentSize
	s := e.scope(a.Device)

	// Held until the end: while it is, nobody takes the LV for the
	// leftover of a dead create.
	unlockInit, err := e.lock(ctx, op, initLock(key))
	if err != nil {
		return Volume{}, err
	}
	defer unlockInit()

	fields := map[string]string{volFieldName: name, volFieldDescription: description, volFieldInit: "1"}
	if sharable {
		fields[volFieldSharable] = "true"
	}
	unlock, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return Volume{}, err
	}
	err = e.lvm.LVCreate(ctx, s, a.VG, lv, extents, lvm.EncodeFields(fields))
	unlock()
	if err != nil {
		return Volume{}, err
	}
	e.step(StepVolumeCreateLVCreate)

	// Zeroing runs outside the SR lock: it takes as long as the volume
	// is big, and other calls on the SR need not wait for it.
	if err := e.zero(ctx, op, lvm.DevicePath(a.VG, lv), 0, real); err != nil {
		e.abandon(ctx, a, s, lv)
		return Volume{}, err
	}
	e.step(StepVolumeCreateZero)

	unlock, err = e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	// Volumes rest inactive on the master; the datapath activates them
	// where a VM runs.
	if err := e.lvm.Deactivate(ctx, s, a.VG, lv); err != nil {
		return Volume{}, err
	}
	e.step(StepVolumeCreateDeactivate)
	if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, lvm.EncodeField(volFieldInit, "1"), nil); err != nil {
		return Volume{}, err
	}
	e.step(StepVolumeCreateCommit)
	e.log.Info("volume created", zap.String("sr", a.UUID), zap.String("key", key), zap.Int64("size", real))
	return Volume{
		Key: key, UUID: key, Name: name, Description: description, ReadWrite: true, Sharable: sharable,
		VirtualSize: real, PhysicalUtilisation: real, URI: []string{volumeURI(a.UUID, key)}, Keys: map[string]string{},
	}, nil
}

// abandon removes the LV of a create that failed (not crashed); if even
// that fails, the initializing mark keeps it hidden until SR.ls collects it.
func (e *Engine) abandon(ctx context.Context, a Attached, s lvm.Scope, lv string) {
	unlock, err := e.lock(ctx, "Volume.create", srLock(a.UUID))
	if err != nil {
		return
	}
	defer unlock()
	if err := e.lvm.LVRemove(ctx, s, a.VG, lv); err != nil {
		e.log.Warn("could not remove the LV of a failed create; SR.ls will", zap.String("lv", lv), zap.Error(err))
	}
}

// VolumeDestroy removes a volume. A volume that is not there is success:
// both daemon generations destroy a clone-on-boot volume twice.
func (e *Engine) VolumeDestroy(ctx context.Context, sr, key string) error {
	const op = "Volume.destroy"
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return err
	}
	defer unlock()
	if !IsUUID(key) {
		return nil // no volume can have this key
	}
	s := e.scope(a.Device)
	err = e.lvm.LVRemove(ctx, s, a.VG, lvName(key))
	if errors.Is(err, host.ErrNotFound) {
		return e.provenGone(ctx, op, a, s, err)
	}
	if errors.Is(err, host.ErrBusy) {
		return host.Errorf(host.KindBusy, op, fmt.Sprintf("volume %s is in use on the pool master", key),
			"shut down the VM or unplug the VBD using it, then retry", err)
	}
	if err != nil {
		return err
	}
	e.step(StepVolumeDestroyLVRemove)
	e.log.Info("volume destroyed", zap.String("sr", a.UUID), zap.String("key", key))
	return nil
}

// VolumeResize grows a volume to at least newSize bytes; shrinking is
// refused. The added extents are zeroed before the resize returns.
//
// Crash safety: before lvextend, one lvchange records the size up to
// which the LV is zeroed (the "G" mark). A repeated resize after a crash
// zeroes from there and removes the mark.
func (e *Engine) VolumeResize(ctx context.Context, sr, key string, newSize int64) error {
	const op = "Volume.resize"
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return err
	}
	defer unlock()
	l, _, m, err := e.lookup(ctx, op, a, key)
	if err != nil {
		return err
	}
	s := e.scope(a.Device)
	lv := lvName(key)
	target := roundUp(newSize, a.ExtentSize) * a.ExtentSize
	if target < l.Size {
		return host.Errorf(host.KindInvalid, op,
			fmt.Sprintf("volume %s is %d bytes; shrinking it to %d would destroy data and is not supported", key, l.Size, newSize),
			"give a size at least as large as the current one", nil)
	}
	if target == l.Size && !m.Grow {
		return nil
	}
	clean := l.Size
	var mark []string
	if m.Grow {
		clean = min(m.GrowFrom, l.Size)
		mark = lvm.FieldTags(l.Tags, volFieldGrow)
	} else {
		mark = lvm.EncodeField(volFieldGrow, strconv.FormatInt(clean, 10))
		if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, nil, mark); err != nil {
			return err
		}
		e.step(StepVolumeResizeMark)
	}
	if target > l.Size {
		if err := e.lvm.LVExtend(ctx, s, a.VG, lv, target/a.ExtentSize); err != nil {
			return err
		}
		e.step(StepVolumeResizeLVExtend)
	}
	// An LV that a crashed resize left active (active, not open, marked)
	// is deactivated at the end like one this call activates.
	wasActive := l.Active() && (l.Open() || !m.Grow)
	if !l.Active() {
		if err := e.lvm.Activate(ctx, s, a.VG, lv); err != nil {
			return err
		}
	}
	if err := e.zero(ctx, op, lvm.DevicePath(a.VG, lv), clean, target-clean); err != nil {
		if !wasActive {
			_ = e.lvm.Deactivate(ctx, s, a.VG, lv)
		}
		return err
	}
	e.step(StepVolumeResizeZero)
	if !wasActive {
		if err := e.lvm.Deactivate(ctx, s, a.VG, lv); err != nil {
			return err
		}
		e.step(StepVolumeResizeDeactivate)
	}
	if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, mark, nil); err != nil {
		return err
	}
	e.step(StepVolumeResizeCommit)
	e.log.Info("volume resized", zap.String("sr", a.UUID), zap.String("key", key), zap.Int64("size", target))
	return nil
}

// VolumeSet stores k=v in the volume's metadata.
func (e *Engine) VolumeSet(ctx context.Context, sr, key, k, v string) error {
	record := keyValue(k, v)
	return e.setVolumeField(ctx, "Volume.set", sr, key, keyField(k), &record)
}

// VolumeUnset removes k; an absent k is success.
func (e *Engine) VolumeUnset(ctx context.Context, sr, key, k string) error {
	return e.setVolumeField(ctx, "Volume.unset", sr, key, keyField(k), nil)
}

// VolumeSetName renames a volume.
func (e *Engine) VolumeSetName(ctx context.Context, sr, key, name string) error {
	return e.setVolumeField(ctx, "Volume.set_name", sr, key, volFieldName, &name)
}

// VolumeSetDescription changes a volume's description.
func (e *Engine) VolumeSetDescription(ctx context.Context, sr, key, description string) error {
	return e.setVolumeField(ctx, "Volume.set_description", sr, key, volFieldDescription, &description)
}

// setVolumeField replaces (value != nil) or removes one field with one
// lvchange, under the SR lock so the read-modify-write is not raced.
func (e *Engine) setVolumeField(ctx context.Context, op, sr, key, field string, value *string) error {
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return err
	}
	defer unlock()
	l, _, _, err := e.lookup(ctx, op, a, key)
	if err != nil {
		return err
	}
	var want []string
	if value != nil {
		want = lvm.EncodeField(field, *value)
	}
	del, add := diffTags(lvm.FieldTags(l.Tags, field), want)
	if len(del)+len(add) == 0 {
		return nil
	}
	if err := e.lvm.LVChangeTags(ctx, e.scope(a.Device), a.VG, lvName(key), del, add); err != nil {
		return err
	}
	e.step(StepVolumeSetTags)
	return nil
}

// VolumeSnapshot is not implemented: LVM snapshots of shared linear LVs
// need copy-on-write state that every host would have to share.
func (e *Engine) VolumeSnapshot(ctx context.Context, sr, key string) (Volume, error) {
	return Volume{}, host.Errorf(host.KindUnimpl, "Volume.snapshot", "sanvol does not snapshot volumes", "copy the disk instead (xe vdi-copy)", nil)
}

// VolumeClone is not implemented, for the same reason.
func (e *Engine) VolumeClone(ctx context.Context, sr, key string) (Volume, error) {
	return Volume{}, host.Errorf(host.KindUnimpl, "Volume.clone", "sanvol does not clone volumes", "copy the disk instead (xe vdi-copy)", nil)
}

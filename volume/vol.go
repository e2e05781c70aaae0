package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
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
		// the VDI. Show it with what does decode, and say what does not.
		e.log.Warn("volume metadata partly unreadable", zap.String("sr", a.UUID), zap.String("lv", l.Name), zap.Error(err))
		if m.Name == "" {
			m.Name = l.Name
		}
		m.Description = "sanvol cannot decode part of this volume's tags: " + err.Error()
	}
	var incomplete string
	switch {
	case m.Grow && m.GrowErr != nil:
		incomplete = "the volume carries an unreadable resize mark (" + m.GrowErr.Error() + "); inspect it with lvs -o+tags"
	case m.Grow:
		incomplete = fmt.Sprintf("a resize has not finished: the volume is zeroed up to byte %d of %d; repeat the resize (xe vdi-resize) before using it if it is not running", m.GrowFrom, l.Size)
	}
	size := l.Size
	if _, cs, isClone, cerr := cloneOf(l.Tags); isClone {
		// A clone's LV is its COW, larger than the clone.
		if cerr != nil {
			incomplete = "the volume is a linked clone with unreadable tags (" + cerr.Error() + "); inspect it with lvs -o+tags"
		} else {
			size = cs
		}
	}
	return Volume{
		Incomplete: incomplete,
		Key:        key, UUID: key, Name: m.Name, Description: m.Description,
		ReadWrite: true, Sharable: m.Sharable,
		VirtualSize: size, PhysicalUtilisation: l.Size,
		URI:  []string{volumeURI(a.UUID, key)},
		Keys: m.Keys,
	}, m, true
}

func notFound(op string, a Attached, key string) error {
	return host.NewError(host.KindNotFound, op, fmt.Sprintf("volume %s not found in SR %s", key, a.UUID),
		"rescan the SR (xe sr-scan) to refresh xapi's list of VDIs", nil)
}

// lvReader reads one LV of the attached SR: liveLV (with this host's
// activation state) or metaLV (metadata only, from the report cache when
// the metadata is unchanged).
type lvReader func(ctx context.Context, vg, lv string) (lvm.LV, error)

// liveLV reads LVs with their activation state on this host.
func (e *Engine) liveLV(a Attached) lvReader {
	s := e.scope(a.Device)
	return func(ctx context.Context, vg, lv string) (lvm.LV, error) { return e.lvm.LV(ctx, s, vg, lv) }
}

// metaLV reads LVs without activation state, through the report cache.
func (e *Engine) metaLV(ctx context.Context, a Attached) lvReader {
	s := e.readScope(ctx, a)
	return func(ctx context.Context, vg, lv string) (lvm.LV, error) { return e.lvm.LVMeta(ctx, s, vg, lv) }
}

// readScope is the scope of a metadata-only read. The report cache reads
// the PV's headers in this process, which the kernel cannot interrupt:
// with every path down, an NVMe namespace queues I/O until ctrl-loss-tmo
// (30 minutes by default), and the process could not exit before. So the
// cache is used only when the transport sees a live path (from sysfs, and
// `dmsetup status` for iscsi-ng); otherwise lvm runs as a child, which the
// plugin leaves behind at its deadline.
func (e *Engine) readScope(ctx context.Context, a Attached) lvm.Scope {
	s := e.scope(a.Device)
	if h, err := e.t.Health(ctx, a.Configuration); err != nil || h.Down() {
		s.Uncached = true
	}
	return s
}

// lookup reads one volume in one LVM report (a snapshot in two more: its
// COW carries its metadata, K's base its size and state). A volume whose
// create has not finished does not exist yet. The LV returned carries the
// volume's metadata: a snapshot's is its COW. read is e.liveLV for
// callers that look at the LV's activation state, e.metaLV otherwise.
func (e *Engine) lookup(ctx context.Context, op string, a Attached, key string, read lvReader) (lvm.LV, Volume, volumeMeta, error) {
	if !IsUUID(key) {
		return lvm.LV{}, Volume{}, volumeMeta{}, notFound(op, a, key)
	}
	l, err := read(ctx, a.VG, lvName(key))
	if errors.Is(err, host.ErrNotFound) {
		return e.lookupSnapshot(ctx, op, a, key, read)
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
// report, none while the VG metadata is unchanged (lvm.Client.LVMeta: a
// volume's record is metadata only), and works read-only on every host.
func (e *Engine) VolumeStat(ctx context.Context, sr, key string) (Volume, error) {
	a, err := e.attached(ctx, sr)
	if err != nil {
		return Volume{}, err
	}
	_, v, _, err := e.lookup(ctx, "Volume.stat", a, key, e.metaLV(ctx, a))
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
	a, err := e.attached(ctx, sr)
	if err != nil {
		return Volume{}, err
	}
	if err := checkNameDescription(op, name, description); err != nil {
		return Volume{}, err
	}
	extents, err := extentsFor(op, size, a.ExtentSize)
	if err != nil {
		return Volume{}, err
	}
	key, err := host.NewUUID()
	if err != nil {
		return Volume{}, host.NewError(host.KindInternal, op, "no randomness for a volume uuid", "", err)
	}
	lv := lvName(key)
	real := extents * a.ExtentSize
	s := e.scope(a.Device)

	// Held until the end: while it is, nobody takes the LV for the
	// leftover of a dead create.
	unlockInit, err := e.lock(ctx, op, initLock(key))
	if err != nil {
		return Volume{}, err
	}
	defer unlockInit()

	// The mark says when and where the create started, and the key tag
	// ties it to this LV: the collector needs both (collectable).
	mark := lvm.EncodeField(volFieldInit, initMark{Time: e.now(), Host: e.hostID}.String())
	fields := map[string]string{volFieldName: name, volFieldDescription: description, volFieldKey: key}
	if sharable {
		fields[volFieldSharable] = "true"
	}
	unlock, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return Volume{}, err
	}
	err = e.lvm.LVCreate(ctx, s, a.VG, lv, extents, append(lvm.EncodeFields(fields), mark...))
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
	if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, mark, nil); err != nil {
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
// that fails, the initializing mark keeps it hidden until the master's
// SR.attach collects it.
func (e *Engine) abandon(ctx context.Context, a Attached, s lvm.Scope, lv string) {
	ctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
	defer cancel()
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
	if err := e.requireMaster(op); err != nil {
		return err
	}
	if !IsUUID(key) {
		_, err := e.attached(ctx, sr)
		return err // nil: no volume can have this key
	}
	a, err := e.attached(ctx, sr)
	if err != nil {
		return err
	}
	if owner, err := e.snapshotOwner(ctx, a, key); err != nil || owner != "" {
		if err != nil {
			return err
		}
		return e.DestroySnapshot(ctx, sr, key)
	}
	parent, err := e.destroyVolume(ctx, op, sr, key)
	if err != nil || parent == "" {
		return err
	}
	e.reapParent(ctx, sr, parent)
	return nil
}

// destroyVolume removes a volume's LV; parent is the snapshot it was a
// clone of, if any, which may go now.
func (e *Engine) destroyVolume(ctx context.Context, op, sr, key string) (parent string, err error) {
	// A resize zeroes outside the SR lock but holds the volume lock:
	// the LV must not go (nor be replaced) under its writes.
	unlockVol, held, err := e.tryLock(ctx, volLock(key))
	if err != nil {
		return "", host.LockError(op, "", err)
	}
	if held {
		return "", host.NewError(host.KindBusy, op, fmt.Sprintf("a resize of volume %s is zeroing its new space on this host", key),
			"wait for the resize to finish (see the sanvol log), then retry", nil)
	}
	defer unlockVol()
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return "", err
	}
	defer unlock()
	s := e.scope(a.Device)
	// A volume with snapshots is the base of their images: it goes only
	// after them (and the COWs with it), never under them.
	if err := e.refuseChain(ctx, op, a, key, "destroyed"); err != nil && host.KindOf(err) != host.KindUnsupported {
		return "", err
	}
	if l, err := e.lvm.LV(ctx, s, a.VG, lvName(key)); err == nil {
		parent, _, _, _ = cloneOf(l.Tags)
	}
	err = e.lvm.LVRemove(ctx, s, a.VG, lvName(key))
	if errors.Is(err, host.ErrNotFound) {
		return "", e.provenGone(ctx, op, a, s, err)
	}
	if errors.Is(err, host.ErrBusy) {
		return "", host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s is in use on the pool master", key),
			"shut down the VM or unplug the VBD using it, then retry", err)
	}
	if err != nil {
		return "", err
	}
	e.step(StepVolumeDestroyLVRemove)
	e.log.Info("volume destroyed", zap.String("sr", a.UUID), zap.String("key", key))
	if parent != "" {
		e.step(StepCloneDestroyed)
	}
	return parent, nil
}

// VolumeResize grows a volume to at least newSize bytes; shrinking is
// refused. The added extents are zeroed before the resize returns.
//
// Crash safety: under the SR lock, one lvchange records the range to zero
// (the "G" mark, growMark) and lvextend grows the LV. The zeroing runs
// outside the SR lock, so a large grow does not hold up every other call
// on the SR; the volume lock keeps a second resize and a destroy of this
// volume away meanwhile. Under the SR lock again, the mark is removed. A
// repeated resize after a crash zeroes the recorded range once the mark
// has been checked against the LV (checkGrow). The datapath refuses the
// volume while the mark is there (Usable).
func (e *Engine) VolumeResize(ctx context.Context, sr, key string, newSize int64) error {
	const op = "Volume.resize"
	if err := e.requireMaster(op); err != nil {
		return err
	}
	a, err := e.attached(ctx, sr)
	if err != nil {
		return err
	}
	if !IsUUID(key) {
		return notFound(op, a, key)
	}
	unlockVol, err := e.lock(ctx, op, volLock(key))
	if err != nil {
		return err
	}
	defer unlockVol()
	if err := e.refuseChain(ctx, op, a, key, "resized"); err != nil {
		return err
	}
	g, l, wasActive, done, err := e.growLocked(ctx, op, a, key, newSize)
	if err != nil || done {
		return err
	}
	s := e.scope(a.Device)
	lv := lvName(key)
	if err := e.zero(ctx, op, lvm.DevicePath(a.VG, lv), g.From, g.To-g.From); err != nil {
		if !wasActive {
			if unlock, lerr := e.lock(ctx, op, srLock(a.UUID)); lerr == nil {
				_ = e.lvm.Deactivate(ctx, s, a.VG, lv)
				unlock()
			}
		}
		return err
	}
	e.step(StepVolumeResizeZero)
	unlock, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return err
	}
	defer unlock()
	if !wasActive {
		if err := e.lvm.Deactivate(ctx, s, a.VG, lv); err != nil {
			return err
		}
		e.step(StepVolumeResizeDeactivate)
	} else if err := e.growStack(ctx, s, a, key); err != nil {
		return err
	}
	// Volume.set may have changed other tags meanwhile; only the mark
	// goes, exactly as written.
	if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, lvm.FieldTags(l.Tags, volFieldGrow), nil); err != nil {
		return err
	}
	e.step(StepVolumeResizeCommit)
	e.log.Info("volume resized", zap.String("sr", a.UUID), zap.String("key", key), zap.Int64("size", g.To))
	return nil
}

// growStack grows volume key's device on this host to its grown LV. A
// running VM uses sanvol's device above the LV (Datapath.attach), whose
// table keeps the size it was loaded with: without a reload the LV grows
// and the VM's disk does not. It runs after the zeroing, so the VM never
// sees new space before it reads as zeroes; the reload is one suspend
// and resume of the device, which keeps its major:minor. A volume with no
// device here (attached elsewhere, or only activated) has nothing to grow.
func (e *Engine) growStack(ctx context.Context, s lvm.Scope, a Attached, key string) error {
	// A parked device (attached, not activated) gets its size at its
	// activate, which converges it.
	live, err := e.stack.inUse(ctx, a.UUID, key)
	if err != nil || !live {
		return err
	}
	_, err = e.stack.Assemble(ctx, s, a.UUID, a.VG, key)
	return err
}

// growLocked is the first half of a resize, under the SR lock: it writes
// the mark, grows the LV and activates it for the zeroing. done is true
// when there is nothing to zero. l is the LV with the mark now on it.
func (e *Engine) growLocked(ctx context.Context, op string, a Attached, key string, newSize int64) (g growMark, l lvm.LV, wasActive, done bool, err error) {
	unlock, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return g, l, false, false, err
	}
	defer unlock()
	l, v, m, err := e.lookup(ctx, op, a, key, e.liveLV(a))
	if err != nil {
		return g, l, false, false, err
	}
	if !v.ReadWrite {
		return g, l, false, false, host.NewError(host.KindUnsupported, op, fmt.Sprintf("volume %s is a snapshot: it is read-only and keeps its size", key),
			"resize the volume it is a snapshot of once its snapshots are deleted", nil)
	}
	s := e.scope(a.Device)
	lv := lvName(key)
	extents, err := extentsFor(op, newSize, a.ExtentSize)
	if err != nil {
		return g, l, false, false, err
	}
	target := extents * a.ExtentSize
	if target < l.Size {
		return g, l, false, false, host.NewError(host.KindInvalid, op,
			fmt.Sprintf("volume %s is %d bytes; shrinking it to %d would destroy data and is not supported", key, l.Size, newSize),
			"give a size at least as large as the current one", nil)
	}
	if target == l.Size && !m.Grow {
		return g, l, false, true, nil
	}
	old := lvm.FieldTags(l.Tags, volFieldGrow)
	if m.Grow {
		if g, err = checkGrow(op, l, m, a.ExtentSize); err != nil {
			return g, l, false, false, err
		}
	} else {
		g = growMark{From: l.Size, LV: l.UUID}
	}
	// A repeat may ask for more than the crashed call: one mark covers
	// both, from the old zeroed size to the larger target.
	g.To = max(g.To, target)
	if mark := lvm.EncodeField(volFieldGrow, g.String()); !m.Grow || g.To != m.GrowTo {
		if err := e.lvm.LVChangeTags(ctx, s, a.VG, lv, old, mark); err != nil {
			return g, l, false, false, err
		}
		l.Tags = append(slices.DeleteFunc(l.Tags, func(t string) bool { return slices.Contains(old, t) }), mark...)
		e.step(StepVolumeResizeMark)
	}
	if g.To > l.Size {
		if err := e.lvm.LVExtend(ctx, s, a.VG, lv, g.To/a.ExtentSize); err != nil {
			return g, l, false, false, err
		}
		e.step(StepVolumeResizeLVExtend)
	}
	// An LV that a crashed resize left active (active, not open, marked)
	// is deactivated at the end like one this call activates.
	wasActive = l.Active() && (l.Open() || !m.Grow)
	if !l.Active() {
		if err := e.lvm.Activate(ctx, s, a.VG, lv); err != nil {
			return g, l, false, false, err
		}
	}
	return g, l, wasActive, false, nil
}

// checkGrow validates a resize mark found on an LV before anything is
// zeroed on its word: tags are data anyone who can write the LUN may have
// written. A mark sanvol wrote names this LV's LVM uuid, starts at a
// non-empty extent-aligned size below its end, and the LV is exactly one
// of its two sizes: the old one (the crash came before lvextend) or the
// new one (after). Anything else would zero data a guest wrote, so the
// resize refuses and leaves the mark for an admin.
func checkGrow(op string, l lvm.LV, m volumeMeta, extent int64) (growMark, error) {
	g := growMark{From: m.GrowFrom, To: m.GrowTo, LV: m.GrowLV}
	why := ""
	switch {
	case m.GrowErr != nil:
		why = m.GrowErr.Error()
	case g.LV != l.UUID:
		why = fmt.Sprintf("it was written for LV uuid %s, this LV is %s", g.LV, l.UUID)
	case g.From <= 0 || g.From%extent != 0 || g.To%extent != 0 || g.To <= g.From:
		why = fmt.Sprintf("its range %d..%d is not a growth by whole %d-byte extents", g.From, g.To, extent)
	case l.Size != g.From && l.Size != g.To:
		why = fmt.Sprintf("the LV is %d bytes, neither the size before (%d) nor after (%d) the recorded resize", l.Size, g.From, g.To)
	}
	if why == "" {
		return g, nil
	}
	return growMark{}, host.NewError(host.KindInternal, op,
		fmt.Sprintf("LV %s carries a resize mark sanvol cannot trust (%s); nothing was zeroed", l.Name, why),
		fmt.Sprintf("check the LV (lvs -o+tags,uuid %s/%s); if no resize of it is pending, remove the sv.%s.* tags with lvchange --deltag and resize again", l.VG, l.Name, volFieldGrow), nil)
}

// VolumeSet stores k=v in the volume's metadata.
func (e *Engine) VolumeSet(ctx context.Context, sr, key, k, v string) error {
	if err := checkText("Volume.set", "key", k, MaxKeyBytes); err != nil {
		return err
	}
	if err := checkText("Volume.set", "value of key "+truncate(k), v, MaxValueBytes); err != nil {
		return err
	}
	record := keyValue(k, v)
	return e.setVolumeField(ctx, "Volume.set", sr, key, keyField(k), &record)
}

// VolumeUnset removes k; an absent k is success.
func (e *Engine) VolumeUnset(ctx context.Context, sr, key, k string) error {
	return e.setVolumeField(ctx, "Volume.unset", sr, key, keyField(k), nil)
}

// VolumeSetName renames a volume.
func (e *Engine) VolumeSetName(ctx context.Context, sr, key, name string) error {
	if err := checkText("Volume.set_name", "name", name, MaxNameBytes); err != nil {
		return err
	}
	return e.setVolumeField(ctx, "Volume.set_name", sr, key, volFieldName, &name)
}

// VolumeSetDescription changes a volume's description.
func (e *Engine) VolumeSetDescription(ctx context.Context, sr, key, description string) error {
	if err := checkText("Volume.set_description", "description", description, MaxDescriptionBytes); err != nil {
		return err
	}
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
	l, _, _, err := e.lookup(ctx, op, a, key, e.liveLV(a))
	if err != nil {
		return err
	}
	if err := checkVolumeTotal(op, l.Tags, field, value); err != nil {
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
	if err := e.lvm.LVChangeTags(ctx, e.scope(a.Device), a.VG, l.Name, del, add); err != nil {
		return err
	}
	e.step(StepVolumeSetTags)
	return nil
}

// refuseChain refuses op on a volume that has snapshots or a snapshot step
// under way: its base LV is their image, and its COWs are sized to it.
// A volume that is not there is left to op to report.
func (e *Engine) refuseChain(ctx context.Context, op string, a Attached, key, what string) error {
	l, err := e.lvm.LV(ctx, e.scope(a.Device), a.VG, lvName(key))
	if err != nil {
		return nil
	}
	if c, err := parseChain(key, l.Tags); err != nil || len(c.Snaps) > 0 || c.Intent != nil {
		return host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s has snapshots or linked clones (or a snapshot step under way) and cannot be %s", key, what),
			"delete its snapshots and the clones made from it first", err)
	}
	if _, _, isClone, _ := cloneOf(l.Tags); isClone {
		return host.NewError(host.KindUnsupported, op, fmt.Sprintf("volume %s is a linked clone and cannot be %s", key, what),
			"copy it to a new volume (xe vdi-copy) to get a volume that can", nil)
	}
	return nil
}

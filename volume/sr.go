package volume

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Sizing of a new SR's PV.
const (
	// ExtentMiB is the LVM extent size: volumes are multiples of it.
	ExtentMiB = 4
	// MetadataAreaMiB is the PV metadata area. LVM writes the new
	// metadata next to the old copy in this ring buffer, so it must hold
	// twice the VG's text metadata. The lab measured 523 bytes of VG
	// metadata per volume (lvm2 2.03.16; a short name, no description,
	// vdi-type set: TestSRScaleBench). 256 MiB holds two copies for
	// 20,000 volumes at up to 6.5 KB each, i.e. with names,
	// descriptions and keys of about 2 KB of escaped text per volume,
	// and for 250,000 volumes of the measured kind. It costs 256 MiB of
	// the LUN.
	MetadataAreaMiB = 256
)

// configSRUUID is the configuration key SR.create adds: SR.attach is not
// given the SR uuid otherwise.
const configSRUUID = "sr_uuid"

// configForce lets SR.create erase a device that holds data.
const configForce = "force"

// srInfo is the VG of an SR as found on its device.
type srInfo struct {
	vg   lvm.VG
	meta srMeta
}

// findSR looks for the VG of SR uuid among the VGs on the scope's device.
// It returns nil, nil if there is none. The VG is recognised by its uuid
// tag, never by its name.
func (e *Engine) findSR(ctx context.Context, s lvm.Scope, uuid string) (*srInfo, error) {
	vgs, err := e.lvm.VGs(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, vg := range vgs {
		if m, ok := decodeSRTags(vg.Tags); ok && strings.EqualFold(m.UUID, uuid) {
			return &srInfo{vg: vg, meta: m}, nil
		}
	}
	return nil, nil
}

// SRCreate makes a new SR on the LUN or namespace the configuration names
// and returns the configuration every host's SR.attach will get: the
// input, the transport's stable identity of the device, and sr_uuid.
// A device that holds any data is refused unless force=true. Repeating the
// call for the same SR on the same device succeeds.
func (e *Engine) SRCreate(ctx context.Context, uuid string, cfg map[string]string, name, description string) (map[string]string, error) {
	const op = "SR.create"
	if err := e.requireMaster(op); err != nil {
		return nil, err
	}
	if !IsUUID(uuid) {
		return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("SR uuid %q is not a UUID", uuid), "", nil)
	}
	if err := checkNameDescription(op, name, description); err != nil {
		return nil, err
	}
	uuid = strings.ToLower(uuid)
	ids, err := e.t.Prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	out := maps.Clone(cfg)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, ids)
	force := out[configForce] == "true"
	// force is a one-time order for this call; it must not stay in the
	// PBDs' device-config.
	delete(out, configForce)
	out[configSRUUID] = uuid

	unlock, err := e.lock(ctx, op, srLock(uuid))
	if err != nil {
		return nil, err
	}
	defer unlock()

	held, err := e.refuseHeld(op, uuid, out)
	if err != nil {
		return nil, err
	}
	if held != nil {
		// SR.create repeated for an SR attached here: its device is in
		// use, so only check that it holds the SR.
		return out, e.createdOn(ctx, op, *held)
	}
	if a, err := LoadAttached(e.root, uuid); err == nil {
		return nil, host.NewError(host.KindExists, op,
			fmt.Sprintf("SR %s is already attached on this host, on %s; the configuration names another device", uuid, a.Device),
			"SR.create is not repeated with another LUN/namespace; create the new SR with a new uuid", nil)
	}
	dev, err := e.t.Attach(ctx, out)
	if err != nil {
		return nil, err
	}
	e.step(StepSRCreateAttach)
	err = e.createOn(ctx, uuid, dev.Path, name, description, force)
	// The SR is not attached until PBD.plug: release what Attach made.
	e.release(ctx, uuid, out)
	if err != nil {
		return nil, err
	}
	e.log.Info("SR created", zap.String("sr", uuid), zap.String("device", dev.Path))
	return out, nil
}

// createdOn checks that the device of the attached SR a holds it.
func (e *Engine) createdOn(ctx context.Context, op string, a Attached) error {
	info, err := e.findSR(ctx, e.scope(a.Device), a.UUID)
	if err != nil {
		return err
	}
	if info == nil {
		return host.NewError(host.KindNotFound, op, fmt.Sprintf("SR %s is attached on this host but its VG is not on %s", a.UUID, a.Device),
			"unplug and plug the SR's PBD on this host (xe pbd-unplug/pbd-plug), then retry", nil)
	}
	return nil
}

func (e *Engine) createOn(ctx context.Context, uuid, dev, name, description string, force bool) error {
	const op = "SR.create"
	s := e.scope(dev)
	sigs, err := blockdev.Signatures(ctx, e.run, op, dev)
	if err != nil {
		return err
	}
	needPV := true
	if len(sigs) == 1 && sigs[0] == "TYPE=LVM2_member" {
		pvs, err := e.lvm.PVs(ctx, s)
		if err != nil {
			return err
		}
		for _, pv := range pvs {
			if m, ok := decodeSRTags(pv.VGTags); ok && pv.VG != "" && strings.EqualFold(m.UUID, uuid) {
				e.log.Info("the device already holds this SR", zap.String("sr", uuid), zap.String("vg", pv.VG))
				return nil
			}
			// An orphan PV with our metadata area is what a create
			// that died between pvcreate and vgcreate leaves; a PV
			// without VG holds no volume, so it is no data to lose.
			if pv.VG == "" && pv.MDASize >= MetadataAreaMiB*mib {
				needPV = false
				sigs = nil
			}
		}
	}
	if len(sigs) > 0 {
		if !force {
			return host.NewError(host.KindExists, op,
				fmt.Sprintf("device %s already holds data (%s); SR.create never overwrites it", dev, strings.Join(sigs, ", ")),
				"check that the configuration names the right LUN/namespace; to erase it, repeat with device-config:force=true", nil)
		}
		e.log.Warn("erasing existing signatures (force=true)", zap.String("device", dev), zap.Strings("signatures", sigs))
		if err := blockdev.Wipe(ctx, e.run, op, dev); err != nil {
			return err
		}
		e.step(StepSRCreateWipe)
	}
	if needPV {
		if err := e.lvm.PVCreate(ctx, s, dev, MetadataAreaMiB); err != nil {
			return err
		}
		e.step(StepSRCreatePVCreate)
	}
	tags := lvm.EncodeFields(map[string]string{
		srFieldUUID: uuid, srFieldName: name, srFieldDescription: description,
		srFieldType: e.t.Type(), srFieldVersion: e.version,
	})
	if err := e.lvm.VGCreate(ctx, s, vgName(uuid), dev, ExtentMiB, tags); err != nil {
		return err
	}
	e.step(StepSRCreateVGCreate)
	return nil
}

// SRAttach connects this host to the SR and returns its handle. It is
// idempotent: xapi repeats it after toolstack restarts and reboots.
func (e *Engine) SRAttach(ctx context.Context, cfg map[string]string) (string, error) {
	const op = "SR.attach"
	uuid := strings.ToLower(cfg[configSRUUID])
	if !IsUUID(uuid) {
		return "", host.NewError(host.KindInvalid, op, "device-config has no valid sr_uuid",
			"SR.create adds sr_uuid; was this SR created by sanvol? Re-create the PBD with the device-config of the other hosts", nil)
	}
	unlock, err := e.lock(ctx, op, srLock(uuid))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := e.refuseHeld(op, uuid, cfg); err != nil {
		return "", err
	}
	dev, err := e.t.Attach(ctx, cfg)
	if err != nil {
		return "", err
	}
	s := e.scope(dev.Path)
	info, err := e.findSR(ctx, s, uuid)
	if err == nil && info == nil {
		err = host.NewError(host.KindNotFound, op,
			fmt.Sprintf("no sanvol SR %s on %s", uuid, dev.Path),
			"check that the device-config names the LUN/namespace the SR was created on; if the SR was being destroyed, the destroy completed: xe sr-forget", nil)
	}
	if err != nil {
		// xapi records no attach after a failed plug and will not call
		// SR.detach: release the connection now.
		e.release(ctx, uuid, cfg)
		return "", err
	}
	a := Attached{Type: e.t.Type(), UUID: uuid, Configuration: cfg, Device: dev.Path,
		VG: info.vg.Name, VGUUID: info.vg.UUID, ExtentSize: info.vg.ExtentSize,
		NoWatch: e.stopWatch(uuid, dev.Path)}
	if err := saveAttached(e.root, a); err != nil {
		return "", host.NewError(host.KindInternal, op, "cannot write the attach record", "check that /run is writable", err)
	}
	// The master's attach is the explicit step that removes what dead
	// creates left; it never fails the attach.
	if e.role.Master {
		if _, err := e.collect(ctx, a, s); err != nil {
			e.log.Warn("could not remove unfinished volumes; retried at the next attach", zap.String("sr", uuid), zap.Error(err))
		}
	}
	e.log.Info("SR attached", zap.String("sr", uuid), zap.String("device", dev.Path), zap.String("vg", a.VG))
	return a.Handle(), nil
}

// SRDetach releases the SR on this host. It succeeds when repeated and
// refuses while a volume of the SR is active here.
func (e *Engine) SRDetach(ctx context.Context, sr string) error {
	const op = "SR.detach"
	// The device is not used: a detach works with the storage gone.
	a, err := e.attachRecord(sr)
	if host.KindOf(err) == host.KindNotAttached {
		return nil
	}
	if err != nil {
		return err
	}
	unlock, err := e.lock(ctx, op, srLock(a.UUID))
	if err != nil {
		return err
	}
	defer unlock()
	return e.detach(ctx, op, a, StepSRDetachTransport)
}

func (e *Engine) detach(ctx context.Context, op string, a Attached, step string) error {
	active, err := e.activeLVs(a.VGUUID)
	if err != nil {
		return host.NewError(host.KindInternal, op, "cannot list active volumes in /sys/block", "", err)
	}
	if len(active) > 0 {
		return host.NewError(host.KindBusy, op,
			fmt.Sprintf("%d volume(s) of SR %s are active on this host: %s", len(active), a.UUID, strings.Join(active, ", ")),
			"shut down or migrate the VMs using them and unplug their VBDs first", nil)
	}
	others, holder, err := e.attachedBesides(a.UUID, a.Configuration, false)
	if err != nil {
		return err
	}
	if holder != "" {
		e.log.Warn("the device is also named by another attached SR; leaving it connected", zap.String("sr", a.UUID), zap.String("holder", holder))
	} else if err := e.t.Detach(ctx, a.Configuration, others); err != nil {
		return err
	} else {
		e.resumeWatch(a)
	}
	e.step(step)
	if err := removeAttached(e.root, a.UUID); err != nil {
		return host.NewError(host.KindInternal, op, "cannot remove the attach record", "", err)
	}
	e.log.Info("SR detached", zap.String("sr", a.UUID))
	return nil
}

// SRDestroy removes the SR from its device (VG and PV label) and undoes
// the attach. An SR that still holds volumes is refused.
func (e *Engine) SRDestroy(ctx context.Context, sr string) error {
	const op = "SR.destroy"
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return err
	}
	defer unlock()
	s := e.scope(a.Device)
	lvs, err := e.lvm.LVs(ctx, s, a.VG)
	vgGone := errors.Is(err, host.ErrNotFound)
	if err != nil && !vgGone {
		return err
	}
	if vgGone {
		if err := e.provenGone(ctx, op, a, s, err); err != nil {
			return err
		}
	}
	if !vgGone {
		var keys []string
		for _, l := range lvs {
			if m, _ := decodeVolumeTags(l.Tags); m.Initializing {
				continue // collect judges these
			}
			keys = append(keys, l.Name)
		}
		if len(keys) > 0 {
			return host.NewError(host.KindBusy, op,
				fmt.Sprintf("SR %s still holds %d volume(s) (%s)", a.UUID, len(keys), strings.Join(first(keys, 5), ", ")),
				"destroy its VDIs first (xe vdi-destroy), or xe sr-forget to keep the data", nil)
		}
		kept, err := e.collect(ctx, a, s)
		if err != nil {
			return err
		}
		if len(kept) > 0 {
			names := make([]string, len(kept))
			for i, l := range kept {
				names[i] = l.Name
			}
			return host.NewError(host.KindBusy, op,
				fmt.Sprintf("SR %s holds %d LV(s) marked as unfinished creates that sanvol cannot prove dead or its own (%s)", a.UUID, len(kept), strings.Join(first(names, 5), ", ")),
				"see sanvol status for why each is kept; retry once their creates are over, or remove them by hand (lvremove) if they hold nothing", nil)
		}
		e.step(StepSRDestroyGC)
		if err := e.lvm.VGRemove(ctx, s, a.VG); err != nil && !errors.Is(err, host.ErrNotFound) {
			return err
		} else if err != nil {
			if err := e.provenGone(ctx, op, a, s, err); err != nil {
				return err
			}
		}
		e.step(StepSRDestroyVGRemove)
	}
	if err := e.lvm.PVRemove(ctx, s, a.Device); err != nil && !errors.Is(err, host.ErrNotFound) {
		return err
	} else if err != nil {
		if err := e.provenGone(ctx, op, a, s, err); err != nil {
			return err
		}
	}
	e.step(StepSRDestroyPVRemove)
	if err := e.detach(ctx, op, a, StepSRDestroyDetach); err != nil {
		return err
	}
	e.log.Info("SR destroyed", zap.String("sr", a.UUID))
	return nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "…")
	}
	return s
}

// SRSetName renames the SR.
func (e *Engine) SRSetName(ctx context.Context, sr, name string) error {
	if err := checkText("SR.set_name", "name", name, MaxNameBytes); err != nil {
		return err
	}
	return e.setSRField(ctx, "SR.set_name", sr, srFieldName, name)
}

// SRSetDescription changes the SR's description.
func (e *Engine) SRSetDescription(ctx context.Context, sr, description string) error {
	if err := checkText("SR.set_description", "description", description, MaxDescriptionBytes); err != nil {
		return err
	}
	return e.setSRField(ctx, "SR.set_description", sr, srFieldDescription, description)
}

func (e *Engine) setSRField(ctx context.Context, op, sr, field, value string) error {
	a, unlock, err := e.begin(ctx, op, sr)
	if err != nil {
		return err
	}
	defer unlock()
	s := e.scope(a.Device)
	vgs, err := e.lvm.VGs(ctx, s, a.VG)
	if err != nil {
		return err
	}
	if len(vgs) != 1 {
		return host.NewError(host.KindNotFound, op, "VG "+a.VG+" not found", "unplug and plug the PBD", nil)
	}
	del, add := diffTags(lvm.FieldTags(vgs[0].Tags, field), lvm.EncodeField(field, value))
	if len(del)+len(add) == 0 {
		return nil
	}
	if err := e.lvm.VGChangeTags(ctx, s, a.VG, del, add); err != nil {
		return err
	}
	e.step(StepSRSetTags)
	return nil
}

// diffTags returns what to delete from old and add to reach new; tags in
// both are left alone, so one lvchange/vgchange does the whole change.
func diffTags(old, new []string) (del, add []string) {
	in := map[string]bool{}
	for _, t := range new {
		in[t] = true
	}
	had := map[string]bool{}
	for _, t := range old {
		had[t] = true
		if !in[t] {
			del = append(del, t)
		}
	}
	for _, t := range new {
		if !had[t] {
			add = append(add, t)
		}
	}
	return del, add
}

package xapisim

// The VDI operations of xe, replayed as xapi calls the volume plugin.

import (
	"context"
	"fmt"
	"time"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// VDICreate replays `xe vdi-create` (spec §8.6): Volume.create, then the
// daemon's Volume.set of vdi-type. The volume returned carries that key,
// as the VDI record xapi builds does.
func (sr *SR) VDICreate(ctx context.Context, name, description string, size int64, sharable bool) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-create sr-uuid=%s name-label=%s virtual-size=%d type=user sharable=%t", sr.UUID, quote(name), size, sharable))
	defer o.end()
	var v schema.Volume
	if err := sr.mustBePlugged("vdi-create"); err != nil {
		return v, err
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Volume.create", schema.VolumeCreateArgs{
		Dbg: o.dbg, SR: sr.Handle, Name: name, Description: description, Size: size, Sharable: sharable,
	}, &v); err != nil {
		return v, err
	}
	if err := o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: v.Key, K: "vdi-type", V: "user"}, nil); err != nil {
		return v, err
	}
	if v.Keys == nil {
		v.Keys = map[string]string{}
	}
	v.Keys["vdi-type"] = "user"
	rec := sr.vdi(v.Key)
	sr.sim.mu.Lock()
	rec.sharable = sharable
	sr.sim.mu.Unlock()
	o.say("  = %s", v.Key)
	return v, nil
}

// volumeStat is the Volume.stat that precedes every datapath call.
func (sr *SR) volumeStat(ctx context.Context, o *op, key string) (schema.Volume, error) {
	var v schema.Volume
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.stat", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &v)
	return v, err
}

// cloneOnBoot is the key in which the daemon keeps the temporary clone
// of a reset-on-boot volume (main.ml, _clone_on_boot_key).
const cloneOnBoot = "clone-on-boot"

// statAndChoose is the Volume.stat before every attach, activate,
// deactivate and detach, followed by a Volume.stat of the clone-on-boot
// temporary when the volume has one (main.ml, vdi_attach_common,
// vdi_activate_common, vdi_deactivate_impl, vdi_detach_impl,
// dp_destroy2), and the daemon's choice of datapath plugin from the URIs.
func (sr *SR) statAndChoose(ctx context.Context, o *op, key string) (*Datapath, string, error) {
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return nil, "", err
	}
	if t, ok := v.Keys[cloneOnBoot]; ok {
		if v, err = sr.volumeStat(ctx, o, t); err != nil {
			return nil, "", err
		}
	}
	return sr.choose(ctx, o, v.URI, true)
}

func (sr *SR) choose(ctx context.Context, o *op, uris []string, persistent bool) (*Datapath, string, error) {
	dp, uri, err := sr.sim.chooseDatapath(ctx, uris, persistent)
	if err != nil {
		o.say("    %-22s %7s  FAILED: %s", "(choose datapath)", "", describeErr(err))
	}
	return dp, uri, err
}

// VDIResize replays `xe vdi-resize` (spec §8.7), the `resize` operation:
// refused with VDI_IN_USE while the VDI is attached, and without
// VDI_RESIZE; then Volume.resize and the Volume.stat whose virtual_size
// xapi records (main.ml, vdi_resize_impl).
func (sr *SR) VDIResize(ctx context.Context, key string, newSize int64) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-resize uuid=%s disk-size=%d", key, newSize))
	defer o.end()
	return sr.resize(ctx, o, key, newSize, "resize")
}

// VDIResizeOnline replays `xe vdi-resize online=true`, the resize_online
// operation: allowed on an attached VDI, but only when the SM has
// VDI_RESIZE_ONLINE (xapi_vdi.ml, resize_online is resize).
func (sr *SR) VDIResizeOnline(ctx context.Context, key string, newSize int64) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-resize uuid=%s disk-size=%d online=true", key, newSize))
	defer o.end()
	return sr.resize(ctx, o, key, newSize, "resize_online")
}

func (sr *SR) resize(ctx context.Context, o *op, key string, newSize int64, op string) (schema.Volume, error) {
	if err := sr.mustBePlugged("vdi-resize"); err != nil {
		return schema.Volume{}, err
	}
	if err := sr.checkVDIOp(o, key, op); err != nil {
		return schema.Volume{}, err
	}
	if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.resize", schema.VolumeResizeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key, NewSize: newSize}, nil); err != nil {
		return schema.Volume{}, err
	}
	return sr.volumeStat(ctx, o, key)
}

// VDISnapshot replays `xe vdi-snapshot`: refused without VDI_SNAPSHOT
// and for a sharable VDI; then the daemon's Volume.snapshot and the five
// Volume.set of the snapshot's keys (main.ml, vdi_snapshot_impl).
func (sr *SR) VDISnapshot(ctx context.Context, key string) (schema.Volume, error) {
	o := sr.sim.begin("xe vdi-snapshot uuid=" + key)
	defer o.end()
	var snap schema.Volume
	if err := sr.mustBePlugged("vdi-snapshot"); err != nil {
		return snap, err
	}
	if err := sr.checkVDIOp(o, key, "snapshot"); err != nil {
		return snap, err
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Volume.snapshot", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &snap); err != nil {
		return snap, err
	}
	for _, kv := range [][2]string{
		{"snapshot_time", time.Now().UTC().Format(time.RFC3339)}, {"is_a_snapshot", "true"},
		{"snapshot_of", key}, {"content_id", ""}, {"vdi-type", "user"},
	} {
		if err := o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: snap.Key, K: kv[0], V: kv[1]}, nil); err != nil {
			return snap, err
		}
	}
	return snap, nil
}

// VDIClone replays `xe vdi-clone`: refused without VDI_CLONE; then the
// daemon's Volume.clone (main.ml, vdi_clone_impl).
func (sr *SR) VDIClone(ctx context.Context, key string) (schema.Volume, error) {
	o := sr.sim.begin("xe vdi-clone uuid=" + key)
	defer o.end()
	var clone schema.Volume
	if err := sr.mustBePlugged("vdi-clone"); err != nil {
		return clone, err
	}
	if err := sr.checkVDIOp(o, key, "clone"); err != nil {
		return clone, err
	}
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.clone", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &clone)
	return clone, err
}

// VDIDestroy replays `xe vdi-destroy` (spec §8.8): refused while
// attached and without VDI_DELETE; Volume.stat, then Volume.destroy —
// twice when the volume has a clone-on-boot key, as the daemon does
// (main.ml, vdi_destroy_impl destroys the volume itself twice, not its
// temporary).
func (sr *SR) VDIDestroy(ctx context.Context, key string) error {
	o := sr.sim.begin("xe vdi-destroy uuid=" + key)
	defer o.end()
	if err := sr.mustBePlugged("vdi-destroy"); err != nil {
		return err
	}
	if err := sr.checkVDIOp(o, key, "destroy"); err != nil {
		return err
	}
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return err
	}
	args := schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}
	if _, ok := v.Keys[cloneOnBoot]; ok {
		if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.destroy", args, nil); err != nil {
			return err
		}
	}
	return o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.destroy", args, nil)
}

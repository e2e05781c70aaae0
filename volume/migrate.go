package volume

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Live migration of a volume with an overlay (docs/design.md "Live
// migration of a volume with an overlay"). xenopsd attaches the VM's disks
// on the destination while the VM still runs on the source (xen-api
// ocaml/xenopsd/lib/xenops_server.ml, VM_receive_memory: early_attach,
// VBD_attach before "Synchronisation point 1"); the source deactivates
// them once the domain is suspended and its disks flushed
// (xenops_server_xen.ml, VM.save: Storage.deactivate); the destination
// activates them only after that (xenops_server.ml VM_receive_memory:
// VM_restore_devices after "Synchronisation point 3", plug_vbds:
// VBD_activate alone for can_attach_early VBDs); the source then gets
// its VBD_unplug (deactivate again, detach) when its leftover domain is
// shut down (VM_migrate: VM_shutdown of vmm_tmp_src_id).
//
// A dm snapshot target reads its COW's exception store when its table is
// loaded, so an attach that built K's stack would miss every exception
// the source adds afterwards: stale reads, and the next free chunk of
// the COW handed out twice. So:
//   - attach of a volume whose device needs a snapshot target creates K's
//     device with a placeholder table (the error target, K's size): the
//     path and major:minor handed out are the final ones, and nothing can
//     read or write through it;
//   - activate converges (the placeholder becomes the stack, read from
//     the tags then, after the source stopped writing);
//   - deactivate stops a merge on its host (StopMerge), so that only the
//     destination's activate resumes it;
//   - every other step (the master's, or the host plugin's) leaves a
//     device that is here but not in use here ("parked") alone.

// placeholder is K's table on a host where it is attached but not
// activated and its stack maps a COW.
func placeholder(sectors uint64) blockdev.Table {
	return blockdev.Table{{Length: sectors, Type: "error"}}
}

// isPlaceholder reports whether t is a placeholder table.
func isPlaceholder(t blockdev.Table) bool { return len(t) == 1 && t[0].Type == "error" }

// Parked reports whether volume key has its device on this host without
// being in use here: a placeholder, or a datapath that holds it for no
// active domain (Inactive). Nothing but Datapath.activate may build its
// stack then: the volume runs, or is about to run, on another host.
func (st *Stack) Parked(ctx context.Context, sr, key string) (bool, error) {
	info, err := st.DM.Info(ctx, DevName(sr, key))
	if err != nil || !info.Exists {
		return false, err
	}
	t, err := st.DM.Table(ctx, DevName(sr, key))
	if err != nil {
		return false, err
	}
	if isPlaceholder(t) {
		return true, nil
	}
	if st.Inactive == nil {
		return false, nil
	}
	return st.Inactive(sr, key)
}

// inUse reports whether K's device is here and in use here.
func (st *Stack) inUse(ctx context.Context, sr, key string) (bool, error) {
	live, err := st.Live(ctx, sr, key)
	if err != nil || !live {
		return false, err
	}
	parked, err := st.Parked(ctx, sr, key)
	return !parked, err
}

// overlaySectors returns the size of key's device when it maps a COW (a
// volume with a snapshot, or a snapshot step under way; a linked clone),
// and 0 when it is a plain linear device. base is key's own LV.
func (st *Stack) overlaySectors(ctx context.Context, w where, key string, base lvm.LV) (uint64, error) {
	parent, _, isClone, err := cloneOf(base.Tags)
	switch {
	case err != nil:
		return 0, host.NewError(host.KindInternal, "clone", fmt.Sprintf("LV %s carries clone tags sanvol cannot read", base.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", w.vg, base.Name), err)
	case isClone:
		img, err := st.imageOf(ctx, w, parent)
		return img.sectors, err
	}
	c, err := chainFrom(w, key, base)
	if err != nil {
		return 0, err
	}
	if snaps, _ := c.Live(); len(snaps) > 0 {
		return uint64(base.Size / 512), nil
	}
	return 0, nil
}

// AttachLV is Datapath.attach's device for key on a host where no domain
// has it active: AssembleLV for a plain volume (a linear device: nothing
// to go stale) and a snapshot's read-only image; for a volume whose
// device maps a COW, K's device with a placeholder table if it is not
// here yet, and the device as it is if it is (its activate converges it).
// No COW LV is activated.
func (st *Stack) AttachLV(ctx context.Context, s lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	w := where{sr: sr, vg: vg, scope: s}
	if base.Name != lvName(key) {
		return st.AssembleLV(ctx, s, sr, vg, key, base)
	}
	sectors, err := st.overlaySectors(ctx, w, key, base)
	if err != nil {
		return "", err
	}
	if sectors == 0 {
		return st.AssembleLV(ctx, s, sr, vg, key, base)
	}
	info, err := st.DM.Info(ctx, DevName(sr, key))
	if err != nil {
		return "", err
	}
	if !info.Exists {
		if err := st.ensure(ctx, dmDev{name: DevName(sr, key), table: placeholder(sectors)}); err != nil {
			return "", err
		}
		st.log().Info("attached with a placeholder table until the activate", zap.String("device", DevName(sr, key)))
	}
	return DevPath(sr, key), nil
}

// StopMerge is Datapath.deactivate's step on a host where no domain has
// key active any more: a merging layer of K's stack here is reloaded as
// the plain snapshot target over the same origin and COW. Suspending a
// snapshot-merge target stops its merge (the kernel's
// snapshot_merge_presuspend), the exceptions not merged yet are handed
// over to the new table, and the merged ones are already gone from the
// COW's store on disk: the host that activates K next (a migration's
// destination) rebuilds the merge from the tags and finishes it, and
// two kernels never merge one COW. A layer that finished (linear) is
// left as it is. Repeating it changes nothing.
func (st *Stack) StopMerge(ctx context.Context, s lvm.Scope, sr, vg, key string) error {
	w := where{sr: sr, vg: vg, scope: s}
	live, err := st.Live(ctx, sr, key)
	if err != nil || !live {
		return err
	}
	// A snapshot's image (read-only, an export's) and a clone's device
	// never merge.
	l, parent, snapshot, err := st.source(ctx, w, key)
	if err != nil {
		return err
	}
	if snapshot || parent != "" {
		return nil
	}
	c, err := chainFrom(w, key, l)
	if err != nil {
		return err
	}
	snaps, _ := c.Live()
	if len(snaps) == 0 {
		return nil
	}
	devs, err := layout(w, Chain{Key: key, Snaps: snaps}, uint64(l.Size/512))
	if err != nil {
		return err
	}
	for _, d := range devs {
		info, err := st.DM.Info(ctx, d.name)
		if err != nil {
			return err
		}
		if !info.Exists {
			continue
		}
		t, err := st.DM.Table(ctx, d.name)
		if err != nil {
			return err
		}
		if len(t) != 1 || t[0].Type != "snapshot-merge" {
			if info.Suspended && !info.Inactive {
				// A step killed here left it suspended.
				if err := st.DM.Resume(ctx, d.name); err != nil {
					return err
				}
			}
			continue
		}
		if err := st.DM.Switch(ctx, d.name, d.table); err != nil {
			return err
		}
		st.log().Info("merge stopped on this host: the volume is deactivated here", zap.String("device", d.name))
	}
	return nil
}

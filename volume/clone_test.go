package volume_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

// ls returns SR.ls by key.
func (s *snapEnv) ls() map[string]volume.Volume {
	s.t.Helper()
	vols, err := s.e.SRLs(context.Background(), s.sr)
	if err != nil {
		s.t.Fatal(err)
	}
	out := map[string]volume.Volume{}
	for _, v := range vols {
		out[v.Key] = v
	}
	return out
}

func (s *snapEnv) keys() []string {
	s.t.Helper()
	var out []string
	for k := range s.ls() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sorted(keys ...string) []string { return slices.Sorted(slices.Values(keys)) }

// hidden reports whether snapshot snap's COW carries the hidden mark.
func (s *snapEnv) hidden(snap string) bool {
	f, _, _ := lvm.DecodeEachField(s.sim.LVs()["s-"+snap].Tags)
	_, ok := f["H"]
	return ok
}

// clones lists the LVs of clones (any LV with a parent tag), finished or not.
func (s *snapEnv) cloneLVs() []string {
	var out []string
	for n, l := range s.sim.LVs() {
		f, _, _ := lvm.DecodeEachField(l.Tags)
		if _, ok := f["P"]; ok {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// attachKey attaches any volume (a snapshot, a clone) as the datapath
// does: its LV (LVOf) active and read, then AssembleLV.
func (s *snapEnv) attachKey(key string) string {
	s.t.Helper()
	ctx := context.Background()
	lv, err := s.stack.LVOf(ctx, s.scope(), srUUID, s.vg, key)
	if err != nil {
		s.t.Fatal(err)
	}
	lc := lvm.New(s.sim, nil)
	if err := lc.Activate(ctx, s.scope(), s.vg, lv); err != nil {
		s.t.Fatal(err)
	}
	info, err := lc.LV(ctx, s.scope(), s.vg, lv)
	if err != nil {
		s.t.Fatal(err)
	}
	dev, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, key, info)
	if err != nil {
		s.t.Fatal(err)
	}
	return dev
}

// detachKey is the datapath's detach: Disassemble, then the volume's own
// LV (if it has one) deactivated.
func (s *snapEnv) detachKey(key string) {
	s.t.Helper()
	ctx := context.Background()
	if err := s.stack.Disassemble(ctx, s.scope(), srUUID, s.vg, key); err != nil {
		s.t.Fatal(err)
	}
	if _, ok := s.sim.LVs()[volume.LVName(key)]; ok {
		// The datapath leaves an LV in use active (a clone's image here
		// maps K's base), and the detach succeeds.
		if err := lvm.New(s.sim, nil).Deactivate(ctx, s.scope(), s.vg, volume.LVName(key)); err != nil && host.KindOf(err) != host.KindBusy {
			s.t.Fatal(err)
		}
	}
}

func (s *snapEnv) clone(key string) volume.Volume {
	s.t.Helper()
	c, err := s.e.VolumeClone(context.Background(), s.sr, key)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// Snapshots are volumes to xapi: listed read-only with K's size, their
// metadata on their COW, destroyed by a merge, and a repeated destroy
// succeeds. xapi's VDI.snapshot sets these keys on the snapshot
// (xapi-storage-script main.ml, vdi_snapshot_impl).
func TestSnapshotsAreVolumes(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	s1 := s.snapshot("s1")
	for _, kv := range [][2]string{{"snapshot_time", "20261207T06:00:00Z"}, {"is_a_snapshot", "true"}, {"snapshot_of", s.key}, {"content_id", ""}, {"vdi-type", "user"}} {
		if err := s.e.VolumeSet(ctx, s.sr, s1, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.e.VolumeSetName(ctx, s.sr, s1, "backup"); err != nil {
		t.Fatal(err)
	}
	if err := s.e.VolumeSetDescription(ctx, s.sr, s1, "nightly"); err != nil {
		t.Fatal(err)
	}
	if err := s.e.VolumeUnset(ctx, s.sr, s1, "content_id"); err != nil {
		t.Fatal(err)
	}
	vols := s.ls()
	v, ok := vols[s1]
	if !ok || len(vols) != 2 {
		t.Fatalf("SR.ls %v: want K and its snapshot", vols)
	}
	if v.ReadWrite || v.VirtualSize != gib || v.Name != "backup" || v.Description != "nightly" ||
		v.Keys["is_a_snapshot"] != "true" || v.Keys["snapshot_of"] != s.key || len(v.Keys) != 4 || v.URI[0] != "sanvol://"+srUUID+"/"+s1 {
		t.Fatalf("snapshot as listed: %+v", v)
	}
	st, err := s.e.VolumeStat(ctx, s.sr, s1)
	if err != nil || st.Name != v.Name || st.Keys["snapshot_of"] != s.key || st.ReadWrite {
		t.Fatalf("Volume.stat of the snapshot: %+v %v", st, err)
	}
	if k := vols[s.key]; !k.ReadWrite || len(k.Keys) != 0 || k.Name != "k" {
		t.Fatalf("K must keep its own metadata: %+v", k)
	}
	if err := s.e.VolumeResize(ctx, s.sr, s1, 2*gib); host.KindOf(err) != host.KindUnsupported {
		t.Fatalf("resize of a snapshot: %v", err)
	}
	// The snapshot's image, read-only, while K runs: the base under a
	// read-only device.
	dev := s.attachKey(s1)
	tables, _ := s.sim.DM()
	name := strings.TrimPrefix(dev, "/dev/mapper/")
	if info, err := s.stack.DM.Info(ctx, name); err != nil || !info.ReadOnly ||
		!strings.HasSuffix(tables[name], "linear "+lvm.DevicePath(s.vg, volume.LVName(s.key))+" 0") {
		t.Fatalf("the oldest snapshot's image is %s (%q, %+v, %v), want a read-only device over the base", dev, tables[name], info, err)
	}
	s.detachKey(s1)
	if tables, _ := s.sim.DM(); tables[name] != "" {
		t.Fatal("the snapshot's device survived its detach")
	}
	if !s.sim.LVs()[volume.LVName(s.key)].Active {
		t.Fatal("detaching the snapshot deactivated the base K runs on")
	}

	s2 := s.snapshot("s2")
	if dev := s.attachKey(s2); dev != volume.DevPath(srUUID, s2) {
		t.Fatalf("the newer snapshot's image is %s, want the middle device", dev)
	}
	s.detachKey(s2)
	s.wantStack([]string{s1, s2}, "newer snapshot attached and detached beside K")
	if err := s.e.VolumeDestroy(ctx, s.sr, s2); host.KindOf(err) != host.KindUnsupported {
		t.Fatalf("destroy of the newer of two snapshots: %v, want Unsupported", err)
	}
	for range 2 {
		if err := s.e.VolumeDestroy(ctx, s.sr, s1); err != nil {
			t.Fatal(err)
		}
	}
	s.wantStack([]string{s2}, "oldest snapshot destroyed (merged)")
	if _, err := s.e.VolumeStat(ctx, s.sr, s1); host.KindOf(err) != host.KindNotFound {
		t.Fatalf("stat of a destroyed snapshot: %v", err)
	}
	if err := s.e.VolumeSet(ctx, s.sr, s1, "a", "b"); host.KindOf(err) != host.KindNotFound {
		t.Fatalf("set on a destroyed snapshot: %v", err)
	}
	if err := s.e.VolumeDestroy(ctx, s.sr, s2); err != nil {
		t.Fatal(err)
	}
	s.wantStack(nil, "both destroyed")
	if got := s.keys(); !slices.Equal(got, []string{s.key}) {
		t.Fatalf("SR.ls %v", got)
	}
}

// A clone of a snapshot is a writable volume over the snapshot's image;
// the snapshot destroyed meanwhile hides and goes with the clone.
func TestCloneOfSnapshot(t *testing.T) {
	ctx := context.Background()
	for _, depth := range []int{1, 2} {
		t.Run(fmt.Sprintf("depth=%d", depth), func(t *testing.T) {
			s := newSnapEnv(t, true)
			var snaps []string
			for i := range depth {
				snaps = append(snaps, s.snapshot(fmt.Sprint("s", i)))
			}
			parent := snaps[depth-1]
			c := s.clone(parent)
			if !c.ReadWrite || c.VirtualSize != gib || c.Name != fmt.Sprint("s", depth-1) {
				t.Fatalf("clone: %+v", c)
			}
			if got, want := s.keys(), sorted(append([]string{s.key, c.Key}, snaps...)...); !slices.Equal(got, want) {
				t.Fatalf("SR.ls %v, want %v", got, want)
			}
			if v := s.ls()[c.Key]; !v.ReadWrite || v.VirtualSize != gib || v.Incomplete != "" {
				t.Fatalf("clone as listed: %+v", v)
			}
			dev := s.attachKey(c.Key)
			tables, _ := s.sim.DM()
			origin := lvm.DevicePath(s.vg, volume.LVName(s.key))
			if depth == 2 {
				origin = "/dev/mapper/" + volume.DevName(srUUID, parent)
			}
			if want := "snapshot " + origin + " " + lvm.DevicePath(s.vg, volume.LVName(c.Key)) + " P 16"; !strings.HasSuffix(tables[volume.DevName(srUUID, c.Key)], want) || dev != volume.DevPath(srUUID, c.Key) {
				t.Fatalf("clone device %s table %q, want ...%q", dev, tables[volume.DevName(srUUID, c.Key)], want)
			}
			// The oldest snapshot cannot merge under the clone: destroy
			// hides it; a direct merge is refused.
			if err := s.e.DeleteSnapshot(ctx, s.sr, snaps[0]); host.KindOf(err) != host.KindBusy {
				t.Fatalf("merge under a clone: %v, want Busy", err)
			}
			if _, err := s.e.Snapshot(ctx, s.sr, c.Key, "x", ""); host.KindOf(err) != host.KindUnsupported {
				t.Fatalf("snapshot of a clone: %v, want Unsupported", err)
			}
			if _, err := s.e.VolumeClone(ctx, s.sr, c.Key); host.KindOf(err) != host.KindUnsupported {
				t.Fatalf("clone of a clone: %v, want Unsupported", err)
			}
			if err := s.e.VolumeResize(ctx, s.sr, c.Key, 2*gib); host.KindOf(err) != host.KindUnsupported {
				t.Fatalf("resize of a clone: %v, want Unsupported", err)
			}
			for _, snap := range snaps {
				for range 2 {
					if err := s.e.VolumeDestroy(ctx, s.sr, snap); err != nil {
						t.Fatalf("destroy of %s under a clone: %v", snap, err)
					}
				}
				if !s.hidden(snap) {
					t.Fatalf("snapshot %s destroyed under a clone is not hidden", snap)
				}
			}
			if got, want := s.keys(), sorted(s.key, c.Key); !slices.Equal(got, want) {
				t.Fatalf("SR.ls after the snapshots' destroy: %v, want %v", got, want)
			}
			if _, err := s.e.VolumeStat(ctx, s.sr, snaps[0]); host.KindOf(err) != host.KindNotFound {
				t.Fatalf("stat of a hidden snapshot: %v", err)
			}
			// The clone detached: K's stack stays whole.
			s.detachKey(c.Key)
			s.wantStack(snaps, "snapshots hidden, kept for the clone, which is detached")
			if err := s.e.VolumeDestroy(ctx, s.sr, c.Key); err != nil {
				t.Fatal(err)
			}
			s.wantStack(nil, "last clone destroyed: the hidden snapshots merged")
			if got := s.cloneLVs(); len(got) != 0 {
				t.Fatalf("clone LVs left: %v", got)
			}
			if err := s.e.VolumeDestroy(ctx, s.sr, c.Key); err != nil {
				t.Fatalf("repeated destroy of a clone: %v", err)
			}
		})
	}
}

// clone(K) = a snapshot xapi never sees + a clone of it: what xapi's
// reset-on-boot does at each VM start (main.ml, vdi_epoch_begin_impl),
// undone by destroying the clone at shutdown (vdi_epoch_end_impl).
func TestCloneOfVolume(t *testing.T) {
	ctx := context.Background()
	for _, live := range []bool{false, true} {
		t.Run(fmt.Sprintf("live=%t", live), func(t *testing.T) {
			s := newSnapEnv(t, live)
			c := s.clone(s.key)
			snaps, _ := s.chain()
			if len(snaps) != 1 || !s.hidden(snaps[0]) {
				t.Fatalf("clone of K: chain %v, want one hidden snapshot", snaps)
			}
			if got, want := s.keys(), sorted(s.key, c.Key); !slices.Equal(got, want) {
				t.Fatalf("SR.ls %v, want K and the clone only", got)
			}
			if c.Name != "k" || !c.ReadWrite || c.VirtualSize != gib {
				t.Fatalf("clone %+v", c)
			}
			s.attachKey(c.Key)
			s.detachKey(c.Key)
			if !live {
				for n, l := range s.sim.LVs() {
					if l.Active {
						t.Fatalf("LV %s left active after the clone's detach", n)
					}
				}
			}
			if err := s.e.VolumeDestroy(ctx, s.sr, c.Key); err != nil {
				t.Fatal(err)
			}
			s.wantStack(nil, "clone destroyed: its snapshot merged")
			if got := s.keys(); !slices.Equal(got, []string{s.key}) {
				t.Fatalf("SR.ls %v", got)
			}
		})
	}
}

// TestCloneCrashAtEveryStep kills a clone of a snapshot and of K, a
// clone's destroy and a hidden destroy at each step; RepairChain (or the
// next call on K) leaves no half-made clone, and no hidden snapshot that
// nothing needs.
func TestCloneCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	steps := append(volume.CloneSteps(), volume.StepSnapshotCOW, volume.StepSnapshotZero, volume.StepSnapshotIntent, volume.StepSnapshotSwitch, volume.StepSnapshotCommit)
	for _, live := range []bool{true, false} {
		for _, ofK := range []bool{false, true} {
			for _, step := range steps {
				snapStep := strings.HasPrefix(step, "snapshot:") && step != volume.StepSnapshotHide
				if (snapStep && !ofK) || (step == volume.StepSnapshotHide && ofK) {
					continue // a clone of a snapshot takes no snapshot; one of K leaves none visible to destroy
				}
				t.Run(fmt.Sprintf("live=%t/ofK=%t/%s", live, ofK, step), func(t *testing.T) {
					s := newSnapEnv(t, live)
					var snap string
					if !ofK {
						snap = s.snapshot("s")
					}
					src := snap
					if ofK {
						src = s.key
					}
					s.crashThenRepair(t, step, func() error {
						switch step {
						case volume.StepCloneDestroyed:
							return s.e.VolumeDestroy(ctx, s.sr, s.clone(src).Key)
						case volume.StepSnapshotHide:
							s.clone(src)
							return s.e.VolumeDestroy(ctx, s.sr, snap)
						}
						_, err := s.e.VolumeClone(ctx, s.sr, src)
						return err
					})
					clones := s.cloneLVs()
					kept := step == volume.StepCloneCommit || step == volume.StepSnapshotHide
					if kept != (len(clones) == 1) {
						t.Fatalf("clone LVs after the repair: %v", clones)
					}
					snaps, _ := s.chain()
					var want []string
					switch {
					case !ofK:
						want = []string{snap}
					case kept:
						// A finished clone of K keeps its hidden snapshot.
						if len(snaps) != 1 || !s.hidden(snaps[0]) {
							t.Fatalf("a finished clone of K: chain %v, want one hidden snapshot", snaps)
						}
						want = snaps
					}
					s.wantStack(want, "repaired")
					listed := s.keys()
					if kept {
						if !slices.Contains(listed, strings.TrimPrefix(clones[0], "v-")) {
							t.Fatalf("the finished clone is not listed: %v", listed)
						}
					} else if ofK && !slices.Equal(listed, []string{s.key}) {
						t.Fatalf("SR.ls after a repaired clone of K: %v", listed)
					}
					if step == volume.StepSnapshotHide {
						if !s.hidden(snap) || slices.Contains(listed, snap) {
							t.Fatal("the destroyed snapshot must stay hidden under its clone")
						}
						if err := s.e.VolumeDestroy(ctx, s.sr, snap); err != nil {
							t.Fatal(err)
						}
					}
					// Whatever was kept goes cleanly.
					for _, lv := range clones {
						if err := s.e.VolumeDestroy(ctx, s.sr, strings.TrimPrefix(lv, "v-")); err != nil {
							t.Fatal(err)
						}
					}
					if !ofK && step != volume.StepSnapshotHide {
						if err := s.e.VolumeDestroy(ctx, s.sr, snap); err != nil {
							t.Fatal(err)
						}
					}
					s.wantStack(nil, "all destroyed")
				})
			}
		}
	}
}

// TestResetOnBootAsTheDaemonDoes replays what xapi-storage-script does for
// a VDI with on-boot=reset (main.ml): at VM start vdi_epoch_begin_impl
// (persistent=false, the datapath has no NONPERSISTENT) destroys a stale
// temporary named by K's clone-on-boot key, clones K and sets the key;
// attach and activate stat K and use the temporary's URI
// (vdi_attach_common, vdi_activate_common); at shutdown vdi_epoch_end_impl
// destroys the temporary and unsets the key. The second start finds a
// stale key (the host died with the VM running) and recovers.
func TestResetOnBootAsTheDaemonDoes(t *testing.T) {
	ctx := context.Background()
	const cob = "clone-on-boot"
	s := newSnapEnv(t, false)
	epochBegin := func() string {
		k, err := s.e.VolumeStat(ctx, s.sr, s.key)
		if err != nil {
			t.Fatal(err)
		}
		if old, ok := k.Keys[cob]; ok {
			if err := s.e.VolumeDestroy(ctx, s.sr, old); err != nil {
				t.Fatal(err)
			}
		}
		tmp, err := s.e.VolumeClone(ctx, s.sr, s.key)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.e.VolumeSet(ctx, s.sr, s.key, cob, tmp.Key); err != nil {
			t.Fatal(err)
		}
		return tmp.Key
	}
	attach := func() string {
		k, err := s.e.VolumeStat(ctx, s.sr, s.key)
		if err != nil {
			t.Fatal(err)
		}
		tmp, err := s.e.VolumeStat(ctx, s.sr, k.Keys[cob])
		if err != nil {
			t.Fatal(err)
		}
		if tmp.URI[0] != "sanvol://"+srUUID+"/"+tmp.Key {
			t.Fatalf("temporary's URI %v", tmp.URI)
		}
		return s.attachKey(tmp.Key)
	}
	epochEnd := func(tmp string) {
		if err := s.e.VolumeDestroy(ctx, s.sr, tmp); err != nil {
			t.Fatal(err)
		}
		if err := s.e.VolumeUnset(ctx, s.sr, s.key, cob); err != nil {
			t.Fatal(err)
		}
	}

	t1 := epochBegin()
	if dev := attach(); dev != volume.DevPath(srUUID, t1) {
		t.Fatalf("the VM got %s, want the temporary's device", dev)
	}
	// SR.ls shows the temporary; xapi leaves it out of its scan because
	// K's clone-on-boot key names it (main.ml, sr_scan_impl).
	if got, want := s.keys(), sorted(s.key, t1); !slices.Equal(got, want) {
		t.Fatalf("SR.ls %v, want %v", got, want)
	}
	// The host dies with the VM running: no epoch_end. Its devices are
	// gone with it.
	s.detachKey(t1)
	t2 := epochBegin()
	if t2 == t1 || len(s.cloneLVs()) != 1 {
		t.Fatalf("second start: temporary %s, clone LVs %v", t2, s.cloneLVs())
	}
	if snaps, _ := s.chain(); len(snaps) != 1 {
		t.Fatalf("the stale temporary's snapshot was not merged: chain %v", snaps)
	}
	attach()
	s.detachKey(t2)
	epochEnd(t2)
	s.wantStack(nil, "after the VM's shutdown")
	if k := s.ls()[s.key]; len(s.ls()) != 1 || len(k.Keys) != 0 {
		t.Fatalf("SR.ls after shutdown: %v", s.ls())
	}
	// epoch_end repeated (xapi retries): the temporary's destroy succeeds.
	epochEnd(t2)
}

// K and a clone of its newer snapshot run on one host and share the
// middle device (the snapshot's image): K's detach leaves it, and the
// LVs it maps, to the clone; the clone's detach takes everything down.
func TestCloneSharesTheMiddleLayer(t *testing.T) {
	s := newSnapEnv(t, true)
	s.snapshot("s1")
	s2 := s.snapshot("s2")
	c := s.clone(s2)
	s.attachKey(c.Key)
	s.detachKey(s.key)
	tables, suspended := s.sim.DM()
	if len(tables) != 2 || tables[volume.DevName(srUUID, s2)] == "" || tables[volume.DevName(srUUID, c.Key)] == "" || len(suspended) != 0 {
		t.Fatalf("after K's detach: devices %v, suspended %v; want the clone and its image", tables, suspended)
	}
	s.detachKey(c.Key)
	if tables, _ := s.sim.DM(); len(tables) != 0 {
		t.Fatalf("after both detached: devices %v", tables)
	}
	for n, l := range s.sim.LVs() {
		if l.Active {
			t.Fatalf("LV %s left active", n)
		}
	}
}

// A clone of K whose own lvcreate fails leaves no hidden snapshot behind.
func TestFailedCloneOfVolumeDropsItsSnapshot(t *testing.T) {
	s := newSnapEnv(t, true)
	clonesLV := func(c host.Cmd) bool {
		for _, a := range c.Args {
			if strings.Contains(a, "sv.P.") {
				return true
			}
		}
		return false
	}
	s.sim.Once(lvmtest.And(lvmtest.LVM("lvcreate"), clonesLV), lvmtest.Reply{Code: 5, Stderr: "Volume group has insufficient free space"})
	if _, err := s.e.VolumeClone(context.Background(), s.sr, s.key); err == nil {
		t.Fatal("the clone's lvcreate failed, the clone did not")
	}
	s.wantStack(nil, "after a failed clone of K")
	if got := s.keys(); !slices.Equal(got, []string{s.key}) {
		t.Fatalf("SR.ls %v", got)
	}
}

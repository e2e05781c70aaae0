package volume_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

// baseLV is K's base LV as the datapath reads it before its attach.
func (s *snapEnv) baseLV(key string) lvm.LV {
	s.t.Helper()
	l, err := lvm.New(s.sim, nil).LV(context.Background(), s.scope(), s.vg, volume.LVName(key))
	if err != nil {
		s.t.Fatal(err)
	}
	return l
}

// table is the live table of a device on sim, "" if it is absent.
func table(sim *lvmtest.Sim, name string) string {
	tables, _ := sim.DM()
	return tables[name]
}

// Datapath.attach of a volume with an overlay, on a host where it is not
// yet: K's device exists at its final path with the placeholder (error
// target, K's size), no COW is activated; the activate converges it into
// the stack in place (same major:minor). A plain volume is linear at
// attach. Repeated, each leaves the device as it is.
func TestAttachLoadsAPlaceholderUntilActivate(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	plain, err := s.e.VolumeCreate(ctx, s.sr, "plain", "", gib, false)
	if err != nil {
		t.Fatal(err)
	}
	s1 := s.snapshot("s1") // idle: tags only
	lc := lvm.New(s.sim, nil)
	for _, k := range []string{s.key, plain.Key} {
		if err := lc.Activate(ctx, s.scope(), s.vg, volume.LVName(k)); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		dev, err := s.stack.AttachLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key))
		if err != nil || dev != volume.DevPath(srUUID, s.key) {
			t.Fatalf("attach: %s %v", dev, err)
		}
		if got, want := table(s.sim, volume.DevName(srUUID, s.key)), fmt.Sprintf("0 %d error", gib/512); strings.TrimSpace(got) != want {
			t.Fatalf("K at attach: %q, want %q", got, want)
		}
		if _, err := s.stack.AttachLV(ctx, s.scope(), srUUID, s.vg, plain.Key, s.baseLV(plain.Key)); err != nil {
			t.Fatal(err)
		}
		if got := table(s.sim, volume.DevName(srUUID, plain.Key)); !strings.Contains(got, " linear ") {
			t.Fatalf("a plain volume at attach: %q", got)
		}
	}
	if s.sim.LVs()["s-"+s1].Active {
		t.Fatal("the attach activated the COW")
	}
	for _, k := range []string{s.key, plain.Key} {
		if parked, err := s.stack.Parked(ctx, srUUID, k); err != nil || parked != (k == s.key) {
			t.Fatalf("volume %s parked %t %v", k, parked, err)
		}
	}
	before, _ := s.sim.DevNum(volume.DevPath(srUUID, s.key))
	for range 2 {
		if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key)); err != nil {
			t.Fatal(err)
		}
	}
	if err := blockdev.NewDM(s.sim, 0).Remove(ctx, volume.DevName(srUUID, plain.Key)); err != nil {
		t.Fatal(err)
	}
	s.dev = before
	s.wantStack([]string{s1}, "activated")
	if parked, _ := s.stack.Parked(ctx, srUUID, s.key); parked {
		t.Fatal("K is parked after its activate")
	}
}

// A linked clone's device is a snapshot target over its own LV: its
// attach is the placeholder too, of the clone's size.
func TestCloneAttachIsAPlaceholder(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	s1 := s.snapshot("s1")
	c, err := s.e.VolumeClone(ctx, s.sr, s1)
	if err != nil {
		t.Fatal(err)
	}
	if err := lvm.New(s.sim, nil).Activate(ctx, s.scope(), s.vg, volume.LVName(c.Key)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.stack.AttachLV(ctx, s.scope(), srUUID, s.vg, c.Key, s.baseLV(c.Key)); err != nil {
		t.Fatal(err)
	}
	if got, want := table(s.sim, volume.DevName(srUUID, c.Key)), fmt.Sprintf("0 %d error", gib/512); strings.TrimSpace(got) != want {
		t.Fatalf("the clone at attach: %q, want %q", got, want)
	}
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, c.Key, s.baseLV(c.Key)); err != nil {
		t.Fatal(err)
	}
	if got := table(s.sim, volume.DevName(srUUID, c.Key)); !strings.Contains(got, " snapshot ") {
		t.Fatalf("the clone after its activate: %q", got)
	}
}

// mergeIntent commits the merge intent of K's oldest snapshot by hand,
// as DeleteSnapshot's first step does.
func (s *snapEnv) mergeIntent(snap string) {
	s.t.Helper()
	if err := lvm.New(s.sim, nil).LVChangeTags(context.Background(), s.scope(), s.vg, volume.LVName(s.key), nil,
		lvm.EncodeField("X", "merge "+snap)); err != nil {
		s.t.Fatal(err)
	}
}

// Datapath.deactivate's StopMerge turns the merging layer (K with one
// snapshot, the middle layer with two) back into a plain snapshot over
// the same COW, and leaves a finished (linear) layer and a stack with no
// merge alone; repeated, it changes nothing. A StopMerge killed with the
// layer suspended is finished by the next one.
func TestStopMergeStopsTheMergeHere(t *testing.T) {
	ctx := context.Background()
	for _, depth := range []int{1, 2} {
		t.Run(fmt.Sprint(depth), func(t *testing.T) {
			s := newSnapEnv(t, true)
			snaps := []string{s.snapshot("s1")}
			if depth == 2 {
				snaps = append(snaps, s.snapshot("s2"))
			}
			if err := s.stack.StopMerge(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
				t.Fatal(err)
			}
			s.wantStack(snaps, "no merge to stop")
			s.mergeIntent(snaps[0])
			if _, err := s.stack.Assemble(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
				t.Fatal(err)
			}
			layer := volume.DevName(srUUID, s.key)
			if depth == 2 {
				layer = volume.DevName(srUUID, snaps[1])
			}
			if got := table(s.sim, layer); !strings.Contains(got, " snapshot-merge ") {
				t.Fatalf("merging layer %q", got)
			}
			// Killed between its suspend and its reload.
			dm := blockdev.NewDM(s.sim, 0)
			if err := dm.Suspend(ctx, layer); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := s.stack.StopMerge(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
					t.Fatal(err)
				}
				if got := table(s.sim, layer); !strings.Contains(got, " snapshot ") {
					t.Fatalf("layer after StopMerge %q", got)
				}
				if _, suspended := s.sim.DM(); len(suspended) > 0 || len(s.sim.DMInvalid()) > 0 {
					t.Fatalf("suspended %v invalid %v", suspended, s.sim.DMInvalid())
				}
			}
			// A finished merge (the layer maps the base) stays finished.
			base := blockdev.Linear(lvm.DevicePath(s.vg, volume.LVName(s.key)), uint64(gib/512))
			if err := dm.Switch(ctx, layer, base); err != nil {
				t.Fatal(err)
			}
			if err := s.stack.StopMerge(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
				t.Fatal(err)
			}
			if got := table(s.sim, layer); !strings.Contains(got, " linear ") {
				t.Fatalf("a merged layer after StopMerge %q", got)
			}
		})
	}
}

// The host plugin leaves a parked device alone: K attached with its
// placeholder, or K deactivated here (Inactive). converge and
// wait_merged answer absent and touch nothing.
func TestHostPluginLeavesAParkedDeviceAlone(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	s1 := s.snapshot("s1")
	inactive := true
	s.stack.Inactive = func(sr, key string) (bool, error) { return inactive, nil }
	rc := volume.RemoteChain{SR: srUUID, Key: s.key, Snaps: []string{s1}, Intent: "merge " + s1, Sectors: uint64(gib / 512)}
	before := table(s.sim, volume.DevName(srUUID, s.key))
	if live, err := s.stack.ConvergeHere(ctx, s.scope(), s.vg, rc); err != nil || live {
		t.Fatalf("converge on a deactivated K: live %t %v", live, err)
	}
	if st, err := s.stack.MergeHere(ctx, s.scope(), s.vg, rc, 0); err != nil || st != volume.MergeAbsent {
		t.Fatalf("wait_merged on a deactivated K: %s %v", st, err)
	}
	if got := table(s.sim, volume.DevName(srUUID, s.key)); got != before {
		t.Fatalf("K changed from %q to %q", before, got)
	}
	inactive = false
	if live, err := s.stack.ConvergeHere(ctx, s.scope(), s.vg, rc); err != nil || !live {
		t.Fatalf("converge on an active K: live %t %v", live, err)
	}
	if got := table(s.sim, volume.DevName(srUUID, s.key)); !strings.Contains(got, "snapshot-merge") {
		t.Fatalf("K active here after converge: %q", got)
	}
}

// TestRemoteMigrationMidMerge: the master (A) deletes S while K's VM runs
// on B, and the VM migrates B→A in xenopsd's order during the merge:
// A's attach (placeholder), B's deactivate (StopMerge: B no longer
// merges) before the master's wait_merged reaches B, which answers
// absent; while A is parked xapi still names B, whose converge answers
// absent too; then A's activate (the merge resumes there, from the tags)
// and B's detach. The delete waits it out and finishes on A: chain
// empty, no COW, K linear on A, nothing on B, and never two hosts
// merging.
func TestRemoteMigrationMidMerge(t *testing.T) {
	ctx := context.Background()
	r := newRemoteEnv(t)
	s1 := r.snapshot("s1")
	lc := lvm.New(r.sim, nil)
	kName := volume.DevName(srUUID, r.key)
	parkedB := false
	r.stack.Inactive = func(sr, key string) (bool, error) { return parkedB, nil }
	r.remote.calls, r.remote.counts = nil, nil
	r.remote.hook = func(fn string, n int) {
		switch {
		case fn == "wait_merged" && n == 1:
			// A's attach, then B's deactivate.
			if _, err := r.stackA.AttachLV(ctx, r.scope(), srUUID, r.vg, r.key, r.baseLV(r.key)); err != nil {
				t.Fatal(err)
			}
			if got := table(r.simA, kName); !strings.Contains(got, " error") {
				t.Fatalf("K on A at attach: %q", got)
			}
			if !strings.Contains(table(r.sim, kName), "snapshot-merge") {
				t.Fatalf("B is not merging: %q", table(r.sim, kName))
			}
			parkedB = true
			if err := r.stack.StopMerge(ctx, r.remote.scope(), srUUID, r.vg, r.key); err != nil {
				t.Fatal(err)
			}
			if got := table(r.sim, kName); !strings.Contains(got, " snapshot ") {
				t.Fatalf("K on B after its deactivate: %q", got)
			}
		case fn == "converge" && r.remote.counts["wait_merged"] == 1:
			// A's activate, B's detach; xapi now has the VM on A.
			if _, err := r.stackA.AssembleLV(ctx, r.scope(), srUUID, r.vg, r.key, r.baseLV(r.key)); err != nil {
				t.Fatal(err)
			}
			if got, b := table(r.simA, kName), table(r.sim, kName); !strings.Contains(got, "snapshot-merge") || strings.Contains(b, "merge") {
				t.Fatalf("after A's activate: A %q, B %q", got, b)
			}
			if err := r.stack.Disassemble(ctx, r.remote.scope(), srUUID, r.vg, r.key); err != nil {
				t.Fatal(err)
			}
			r.remote.active = ""
		}
	}
	if err := r.e.DeleteSnapshot(ctx, r.sr, s1); err != nil {
		t.Fatal(err)
	}
	r.wantCalls("delete across the migration",
		fmt.Sprintf("converge [%s] \"\" drop []", id(s1)),
		fmt.Sprintf("converge [%s] \"merge %s\" drop []", id(s1), s1),
		fmt.Sprintf("wait_merged [%s] \"merge %s\" drop []", id(s1), s1),
		fmt.Sprintf("converge [%s] \"merge %s\" drop []", id(s1), s1))
	snaps, intent := r.chain()
	if len(snaps) != 0 || intent != "" || len(r.cows()) != 0 {
		t.Fatalf("after the delete: chain %v intent %q COWs %v", snaps, intent, r.cows())
	}
	want := "linear " + lvm.DevicePath(r.vg, volume.LVName(r.key)) + " 0"
	if got := table(r.simA, kName); !strings.HasSuffix(got, want) {
		t.Fatalf("K on A: %q", got)
	}
	if tables, _ := r.sim.DM(); len(tables) != 0 {
		t.Fatalf("devices left on B: %v", tables)
	}
	if l, _ := lc.LV(ctx, r.scope(), r.vg, volume.LVName(r.key)); !l.Active() {
		t.Fatal("K's base is not active on A")
	}
}

// The master's own steps leave a parked device alone: with K attached
// on the master with its placeholder and no other host running it, a
// snapshot is refused as Busy (retry once the VM runs), the device is
// untouched, and the snapshot's intent is rolled back by the next call.
func TestMasterLeavesItsParkedDeviceAlone(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	s1 := s.snapshot("s1")
	if err := lvm.New(s.sim, nil).Activate(ctx, s.scope(), s.vg, volume.LVName(s.key)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.stack.AttachLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key)); err != nil {
		t.Fatal(err)
	}
	before := table(s.sim, volume.DevName(srUUID, s.key))
	if _, err := s.e.Snapshot(ctx, s.sr, s.key, "s2", ""); host.KindOf(err) != host.KindBusy {
		t.Fatalf("snapshot of a volume parked on the master: %v, want Busy", err)
	}
	if err := s.e.DeleteSnapshot(ctx, s.sr, s1); host.KindOf(err) != host.KindBusy {
		t.Fatalf("delete with the volume parked on the master: %v, want Busy", err)
	}
	if got := table(s.sim, volume.DevName(srUUID, s.key)); got != before {
		t.Fatalf("K changed from %q to %q", before, got)
	}
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key)); err != nil {
		t.Fatal(err)
	}
	s.dev, _ = s.sim.DevNum(volume.DevPath(srUUID, s.key))
	if err := s.e.DeleteSnapshot(ctx, s.sr, s1); err != nil {
		t.Fatal(err)
	}
	s.wantStack(nil, "merged once the VM runs")
}

// wait_merged waits without the datapath lock (Stack.Unlocked), so a
// live migration's deactivate here runs meanwhile: it stops the merge,
// and wait_merged answers absent without switching anything.
func TestWaitMergedLetsADeactivateIn(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	s1 := s.snapshot("s1")
	inactive := false
	s.stack.Inactive = func(sr, key string) (bool, error) { return inactive, nil }
	rc := volume.RemoteChain{SR: srUUID, Key: s.key, Snaps: []string{s1}, Intent: "merge " + s1, Sectors: uint64(gib / 512)}
	if live, err := s.stack.ConvergeHere(ctx, s.scope(), s.vg, rc); err != nil || !live {
		t.Fatalf("converge: %t %v", live, err)
	}
	s.stack.Unlocked = func(ctx context.Context, f func(context.Context) error) error {
		inactive = true // Datapath.deactivate, between two polls
		if err := s.stack.StopMerge(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
			return err
		}
		return f(ctx)
	}
	st, err := s.stack.MergeHere(ctx, s.scope(), s.vg, rc, time.Second)
	if err != nil || st != volume.MergeAbsent {
		t.Fatalf("wait_merged across a deactivate: %s %v", st, err)
	}
	if got := table(s.sim, volume.DevName(srUUID, s.key)); !strings.Contains(got, " snapshot ") {
		t.Fatalf("K after the deactivate and wait_merged: %q", got)
	}
}

// An activate killed in the middle of replacing the placeholder (K
// suspended, the stack's table loaded but not resumed) is finished by
// the next activate; an attach killed after making the placeholder is
// finished by the next attach, which leaves it as it is.
func TestActivateKilledMidSwitchIsRepaired(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	s1 := s.snapshot("s1")
	lc := lvm.New(s.sim, nil)
	if err := lc.Activate(ctx, s.scope(), s.vg, volume.LVName(s.key)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.stack.AttachLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key)); err != nil {
			t.Fatal(err)
		}
	}
	if err := lc.Activate(ctx, s.scope(), s.vg, "s-"+s1); err != nil {
		t.Fatal(err)
	}
	dm := blockdev.NewDM(s.sim, 0)
	k := volume.DevName(srUUID, s.key)
	if err := dm.Suspend(ctx, k); err != nil {
		t.Fatal(err)
	}
	real := blockdev.Snapshot(lvm.DevicePath(s.vg, volume.LVName(s.key)), lvm.DevicePath(s.vg, "s-"+s1), uint64(gib/512))
	if err := dm.Load(ctx, k, real); err != nil {
		t.Fatal(err)
	}
	s.dev, _ = s.sim.DevNum(volume.DevPath(srUUID, s.key))
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, s.baseLV(s.key)); err != nil {
		t.Fatal(err)
	}
	s.wantStack([]string{s1}, "activate after a killed one")
}

// An export's deactivate of a snapshot's image (the volume has no LV of
// its own, only its COW) has nothing to stop and must not fail: the
// pool lab's XO pattern exports the newest snapshot from the master.
func TestStopMergeLeavesASnapshotImageAlone(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	s.snapshot("s1")
	s2 := s.snapshot("s2")
	if _, err := s.stack.Assemble(ctx, s.scope(), srUUID, s.vg, s2); err != nil {
		t.Fatal(err)
	}
	before, _ := s.sim.DM()
	for range 2 {
		if err := s.stack.StopMerge(ctx, s.scope(), srUUID, s.vg, s2); err != nil {
			t.Fatalf("StopMerge of snapshot %s's image: %v", s2, err)
		}
	}
	if after, _ := s.sim.DM(); !maps.Equal(before, after) {
		t.Fatalf("tables changed:\n%v\n%v", before, after)
	}
}

package volume_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

// snapEnv is a volume attached on the (simulated) master the way the
// datapath attaches it: its LV active and its device-mapper device built.
type snapEnv struct {
	*env
	sr, key string
	vg      string
	stack   *volume.Stack
	dev     string // K's major:minor when attached
}

func newSnapEnv(t *testing.T, attach bool) *snapEnv {
	t.Helper()
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	vol, err := v.e.VolumeCreate(context.Background(), sr, "k", "", gib, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil {
		t.Fatal(err)
	}
	s := &snapEnv{env: v, sr: sr, key: vol.Key, vg: a.VG,
		stack: &volume.Stack{DM: blockdev.NewDM(v.sim, 0), LVM: lvm.New(v.sim, nil), DevNum: v.sim.DevNum}}
	if attach {
		s.attach()
	}
	return s
}

func (s *snapEnv) scope() lvm.Scope { return lvm.Scope{Devices: []string{testDev}} }

func (s *snapEnv) attach() {
	s.t.Helper()
	ctx := context.Background()
	if err := lvm.New(s.sim, nil).Activate(ctx, s.scope(), s.vg, volume.LVName(s.key)); err != nil {
		s.t.Fatal(err)
	}
	dev, err := s.stack.Assemble(ctx, s.scope(), srUUID, s.vg, s.key)
	if err != nil {
		s.t.Fatal(err)
	}
	if dev != volume.DevPath(srUUID, s.key) {
		s.t.Fatalf("attach gave %s", dev)
	}
	n, _ := s.sim.DevNum(dev)
	if s.dev == "" {
		s.dev = n
	} else if n != s.dev {
		s.t.Fatalf("K's device number changed from %s to %s", s.dev, n)
	}
}

// chain is the chain tag of K's base LV ("" without snapshots) and its
// intent.
func (s *snapEnv) chain() (snaps []string, intent string) {
	l := s.sim.LVs()[volume.LVName(s.key)]
	f, _, _ := lvm.DecodeEachField(l.Tags)
	return strings.Fields(f["C"]), f["X"]
}

func (s *snapEnv) cows() []string {
	var out []string
	for n := range s.sim.LVs() {
		if k, ok := strings.CutPrefix(n, "s-"); ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// wantStack checks what must hold between calls: no intent, one COW per
// snapshot, no device suspended or invalid, and on an attached volume
// K's table is the chain's, K's device number unchanged.
func (s *snapEnv) wantStack(snaps []string, when string) {
	s.t.Helper()
	got, intent := s.chain()
	if !slices.Equal(got, snaps) || intent != "" {
		s.t.Fatalf("%s: chain %v intent %q, want %v and none", when, got, intent, snaps)
	}
	if c := s.cows(); !slices.Equal(c, slices.Sorted(slices.Values(snaps))) {
		s.t.Fatalf("%s: COW LVs %v, want %v", when, c, snaps)
	}
	tables, suspended := s.sim.DM()
	if len(suspended) > 0 || len(s.sim.DMInvalid()) > 0 {
		s.t.Fatalf("%s: suspended %v, invalid %v", when, suspended, s.sim.DMInvalid())
	}
	if s.dev == "" {
		if len(tables) != 0 {
			s.t.Fatalf("%s: an idle volume has devices %v", when, tables)
		}
		return
	}
	base := lvm.DevicePath(s.vg, volume.LVName(s.key))
	cow := func(i int) string { return lvm.DevicePath(s.vg, "s-"+snaps[i]) }
	k := tables[volume.DevName(srUUID, s.key)]
	var want string
	switch len(snaps) {
	case 0:
		want = "linear " + base + " 0"
	case 1:
		want = "snapshot " + base + " " + cow(0) + " P 16"
	default:
		want = "snapshot /dev/mapper/" + volume.DevName(srUUID, snaps[1]) + " " + cow(1) + " P 16"
	}
	if !strings.HasSuffix(k, want) {
		s.t.Fatalf("%s: K's table %q, want ... %q (all: %v)", when, k, want, tables)
	}
	if len(tables) != max(1, len(snaps)) {
		s.t.Fatalf("%s: devices %v, want %d", when, tables, max(1, len(snaps)))
	}
	if n, _ := s.sim.DevNum(volume.DevPath(srUUID, s.key)); n != s.dev {
		s.t.Fatalf("%s: K's device number changed from %s to %s", when, s.dev, n)
	}
}

// snapshot takes a snapshot of K and returns its key.
func (s *snapEnv) snapshot(name string) string {
	s.t.Helper()
	v, err := s.e.Snapshot(context.Background(), s.sr, s.key, name, "")
	if err != nil {
		s.t.Fatal(err)
	}
	return v.Key
}

func TestSnapshotStackLive(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	s.wantStack(nil, "attached")
	s1 := s.snapshot("s1")
	s.wantStack([]string{s1}, "first snapshot")
	s2 := s.snapshot("s2")
	s.wantStack([]string{s1, s2}, "second snapshot")
	tables, _ := s.sim.DM()
	if m := tables[volume.DevName(srUUID, s2)]; !strings.Contains(m, "snapshot /dev/"+s.vg+"/v-"+s.key+" /dev/"+s.vg+"/s-"+s1) {
		t.Fatalf("S2's image %q is not the base under S1's COW", m)
	}
	if _, err := s.e.Snapshot(ctx, s.sr, s.key, "s3", ""); host.KindOf(err) != host.KindBusy {
		t.Fatalf("a third snapshot: %v, want Busy", err)
	}
	if err := s.e.DeleteSnapshot(ctx, s.sr, s2); host.KindOf(err) != host.KindUnsupported {
		t.Fatalf("deleting the newer snapshot: %v, want Unsupported", err)
	}
	if err := s.e.VolumeDestroy(ctx, s.sr, s.key); host.KindOf(err) != host.KindBusy {
		t.Fatalf("destroying a volume with snapshots: %v, want Busy", err)
	}
	if err := s.e.VolumeResize(ctx, s.sr, s.key, 2*gib); host.KindOf(err) != host.KindBusy {
		t.Fatalf("resizing a volume with snapshots: %v, want Busy", err)
	}
	if err := s.e.DeleteSnapshot(ctx, s.sr, s1); err != nil {
		t.Fatal(err)
	}
	s.wantStack([]string{s2}, "older snapshot merged")
	if err := s.e.DeleteSnapshot(ctx, s.sr, s2); err != nil {
		t.Fatal(err)
	}
	s.wantStack(nil, "last snapshot merged")
	if n := s.sim.Ops["dmsetup reload"]; n == 0 {
		t.Fatal("no table was switched")
	}
}

func TestSnapshotStackIdle(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	s1 := s.snapshot("s1")
	s2 := s.snapshot("s2")
	s.wantStack([]string{s1, s2}, "two snapshots of an idle volume")
	for n, l := range s.sim.LVs() {
		if l.Active {
			t.Fatalf("LV %s left active on the master", n)
		}
	}
	// The next attach builds the stack from the tags.
	s.attach()
	s.wantStack([]string{s1, s2}, "attached after two snapshots")
	if err := s.stack.Disassemble(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
		t.Fatal(err)
	}
	if err := lvm.New(s.sim, nil).Deactivate(ctx, s.scope(), s.vg, volume.LVName(s.key)); err != nil {
		t.Fatal(err)
	}
	s.dev = ""
	if err := s.e.DeleteSnapshot(ctx, s.sr, s1); err != nil {
		t.Fatal(err)
	}
	s.wantStack([]string{s2}, "older snapshot of an idle volume merged")
	if err := s.e.DeleteSnapshot(ctx, s.sr, s2); err != nil {
		t.Fatal(err)
	}
	s.wantStack(nil, "idle volume without snapshots")
}

// TestSnapshotCrashAtEveryStep kills a snapshot and a delete at each step,
// on a live and an idle volume, at depth 0 and 1, and checks that the
// next call's repair leaves the chain and the devices consistent, rolled
// back before the switch and forward after it.
func TestSnapshotCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	for _, live := range []bool{true, false} {
		for _, depth := range []int{0, 1} {
			for _, step := range volume.SnapshotSteps() {
				name := fmt.Sprintf("live=%t/depth=%d/%s", live, depth, step)
				t.Run(name, func(t *testing.T) {
					s := newSnapEnv(t, live)
					var snaps []string
					for range depth + 1 {
						v, err := s.e.Snapshot(ctx, s.sr, s.key, "s", "")
						if err != nil {
							t.Fatal(err)
						}
						snaps = append(snaps, v.Key)
					}
					// depth+1 snapshots now; the crash is in the next
					// snapshot (if there is room) or in deleting the oldest.
					merge := strings.HasPrefix(step, "merge:")
					if !merge && depth+1 == volume.MaxDepth {
						t.Skip("no room for another snapshot")
					}
					s.crashThenRepair(t, step, func() error {
						if merge {
							return s.e.DeleteSnapshot(ctx, s.sr, snaps[0])
						}
						_, err := s.e.Snapshot(ctx, s.sr, s.key, "crash", "")
						return err
					})
					got, _ := s.chain()
					want := snaps
					switch {
					case merge:
						want = snaps[1:]
					case step == volume.StepSnapshotCommit || (live && step == volume.StepSnapshotSwitch):
						want = got // forward: the new snapshot is kept
						if len(got) != len(snaps)+1 || !slices.Equal(got[:len(snaps)], snaps) {
							t.Fatalf("after a crash past the switch the chain is %v, want %v plus one", got, snaps)
						}
					}
					// Otherwise back: no snapshot target was built on the
					// COW (an idle volume's COW is first used at its next
					// attach), so nothing was written there.
					s.wantStack(want, "repaired")
				})
			}
		}
	}
}

// A process killed between a suspend and its resume leaves K suspended
// (here: the resume fails, so the sim keeps K suspended with the new
// table loaded); the next call resumes it with the stack its tags give.
func TestSnapshotRepairResumesASuspendedStack(t *testing.T) {
	ctx := context.Background()
	for _, depth := range []int{0, 1} {
		t.Run(fmt.Sprintf("depth=%d", depth), func(t *testing.T) {
			s := newSnapEnv(t, true)
			for range depth {
				s.snapshot("s")
			}
			k := volume.DevName(srUUID, s.key)
			s.sim.Once(lvmtest.And(lvmtest.Tool("dmsetup"), lvmtest.HasArg("resume"), lvmtest.HasArg(k)),
				lvmtest.Reply{Code: 1, Stderr: "killed"})
			if _, err := s.e.Snapshot(ctx, s.sr, s.key, "s", ""); !errors.Is(err, blockdev.ErrLeftSuspended) {
				t.Fatalf("snapshot with a failed resume: %v", err)
			}
			if _, suspended := s.sim.DM(); !slices.Contains(suspended, k) {
				t.Fatalf("K is not suspended (%v): the case is not made", suspended)
			}
			if err := s.e.RepairChain(ctx, s.sr, s.key); err != nil {
				t.Fatal(err)
			}
			got, _ := s.chain()
			if len(got) != depth+1 {
				t.Fatalf("chain %v: the snapshot whose table was loaded must roll forward", got)
			}
			s.wantStack(got, "repaired")
		})
	}
}

// sanvol status judges chain LVs: a COW with its tags is healthy, a base
// with an intent says a step is pending.
func TestSnapshotProblems(t *testing.T) {
	s := newSnapEnv(t, true)
	snap := s.snapshot("s")
	lvs := s.sim.LVs()
	row := func(name string) lvm.LV { return lvm.LV{Name: name, Tags: lvs[name].Tags} }
	if p := volume.Problem(row("s-" + snap)); p != "" {
		t.Fatalf("COW: %q", p)
	}
	if p := volume.Problem(row(volume.LVName(s.key))); p != "" {
		t.Fatalf("base with a chain: %q", p)
	}
	if p := volume.Problem(lvm.LV{Name: "s-" + snap}); !strings.Contains(p, "do not say whose") {
		t.Fatalf("COW without tags: %q", p)
	}
	base := row(volume.LVName(s.key))
	base.Tags = append(base.Tags, lvm.EncodeField("X", "merge "+snap)...)
	if p := volume.Problem(base); !strings.Contains(p, "merge "+snap) {
		t.Fatalf("base with an intent: %q", p)
	}
}

// A resize of a volume whose VM runs on this host reaches the VM: the
// device above the LV (what blkback holds) is reloaded to the grown size
// and keeps its major:minor (the iSCSI lifecycle lab scenario's resize
// of a running VM's disk).
func TestResizeGrowsTheRunningDevice(t *testing.T) {
	s := newSnapEnv(t, true)
	name := volume.DevName(srUUID, s.key)
	sectors := func() string {
		tables, _ := s.sim.DM()
		f := strings.Fields(tables[name])
		if len(f) < 2 {
			t.Fatalf("no table for %s: %q", name, tables[name])
		}
		return f[1]
	}
	if got, want := sectors(), fmt.Sprint(gib/512); got != want {
		t.Fatalf("before the resize the device has %s sectors, want %s", got, want)
	}
	if err := s.e.VolumeResize(context.Background(), s.sr, s.key, 2*gib); err != nil {
		t.Fatal(err)
	}
	if got, want := sectors(), fmt.Sprint(2*gib/512); got != want {
		t.Errorf("after the resize the device has %s sectors, want %s", got, want)
	}
	if _, suspended := s.sim.DM(); len(suspended) != 0 {
		t.Errorf("left suspended: %v", suspended)
	}
	s.attach() // checks K's major:minor is unchanged
}

// crashThenRepair runs f with a crash at step, requires the crash to
// happen there, and repairs the volume's chain from its tags, as the next
// call on any host would.
func (s *snapEnv) crashThenRepair(t *testing.T, step string, f func() error) {
	t.Helper()
	s.crash = step
	at, err := s.run(f)
	s.crash = ""
	if at != step {
		t.Fatalf("crash at %s expected, got %q (%v)", step, at, err)
	}
	if err := s.e.RepairChain(context.Background(), s.sr, s.key); err != nil {
		t.Fatal(err)
	}
}

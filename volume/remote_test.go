package volume_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

const hostB = "9d0e5c4b-1a2f-4e3d-8c7b-6a5f4e3d2c1b"

// fakeRemote is host B of the pool as the master's engine reaches it: its
// host plugin runs ConvergeHere and MergeHere on B's device-mapper (the
// snapEnv's sim, which wantStack checks), with the pool's one LVM. Each
// call is made twice, as a master that retries would: the steps must be
// idempotent. down makes B stop answering from the named call on (its
// n-th call of that function), like a host that died.
type fakeRemote struct {
	t      *testing.T
	stack  *volume.Stack
	vg     string
	active string // ActiveHost's answer
	calls  []string
	down   string // "converge#2": the second Converge call fails, and every call after
	dead   bool
	counts map[string]int
	// hook runs at each call, before it reaches B (a migration under way).
	hook func(fn string, n int)
}

var errHostDown = host.NewError(host.KindUnreachable, "XenAPI host.call_plugin", "HOST_OFFLINE", "", nil)

func (f *fakeRemote) reach(fn string, rc volume.RemoteChain) error {
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[fn]++
	f.calls = append(f.calls, fmt.Sprintf("%s %v %q drop %v", fn, short(rc.Snaps), rc.Intent, short(rc.Drop)))
	if f.hook != nil {
		f.hook(fn, f.counts[fn])
	}
	if f.down == fmt.Sprintf("%s#%d", fn, f.counts[fn]) {
		f.dead = true
	}
	if f.dead {
		return errHostDown
	}
	return nil
}

func short(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k[:4]
	}
	return out
}

func (f *fakeRemote) scope() lvm.Scope { return lvm.Scope{Devices: []string{testDev}, ReadOnly: true} }

func (f *fakeRemote) ActiveHost(ctx context.Context, sr, key string) (string, error) {
	return f.active, nil
}

func (f *fakeRemote) Converge(ctx context.Context, h string, rc volume.RemoteChain) (bool, error) {
	if h != hostB {
		f.t.Fatalf("converge on %s, want host B", h)
	}
	if err := f.reach("converge", rc); err != nil {
		return false, err
	}
	var live bool
	for range 2 {
		var err error
		if live, err = f.stack.ConvergeHere(ctx, f.scope(), f.vg, rc); err != nil {
			return live, err
		}
	}
	return live, nil
}

func (f *fakeRemote) WaitMerged(ctx context.Context, h string, rc volume.RemoteChain) error {
	if err := f.reach("wait_merged", rc); err != nil {
		return err
	}
	return host.Poll(ctx, time.Millisecond, func(ctx context.Context) (bool, error) {
		st, err := f.stack.MergeHere(ctx, f.scope(), f.vg, rc, 5*time.Millisecond)
		if err != nil {
			return false, err
		}
		if st == volume.MergeAbsent {
			// plugin.Remote's answer.
			return false, host.NewError(host.KindBusy, "merge on host B", "the volume left that host while it merged", "", nil)
		}
		if st == volume.MergeDone {
			// Repeated after the switch: done at once, nothing touched.
			again, err := f.stack.MergeHere(ctx, f.scope(), f.vg, rc, time.Millisecond)
			if err != nil || again != volume.MergeDone {
				return false, fmt.Errorf("repeated wait_merged: %s %v", again, err)
			}
		}
		return st == volume.MergeDone, nil
	})
}

// remoteEnv is a snapEnv whose volume runs on host B: the master's
// engine has a device-mapper of its own (simA), empty until a VM runs
// there, and reaches B through a fakeRemote.
type remoteEnv struct {
	*snapEnv
	simA   *lvmtest.Sim
	stackA *volume.Stack
	remote *fakeRemote
}

func newRemoteEnv(t *testing.T) *remoteEnv {
	s := newSnapEnv(t, true) // attached on B
	// B's dom0, which the host plugin's memory check reads: plenty.
	s.stack.Root = host.NewRoot(t.TempDir())
	setMeminfo(t, s.stack.Root, 8192, 4096)
	simA := lvmtest.NewSim(testDev, 100*gib)
	r := &remoteEnv{snapEnv: s, simA: simA,
		stackA: &volume.Stack{DM: blockdev.NewDM(simA, 0), LVM: lvm.New(s.sim, nil), DevNum: simA.DevNum}}
	r.remote = &fakeRemote{t: t, stack: s.stack, vg: s.vg, active: hostB}
	magic := func(ctx context.Context, dev string) (bool, error) {
		a, _ := s.sim.SnapMagic(ctx, dev)
		b, _ := simA.SnapMagic(ctx, dev)
		return a || b, nil
	}
	e, err := volume.New(volume.Options{
		LVM: lvm.New(s.sim, nil), Transport: s.tr, Runner: s.sim, Zeroer: s.sim, DM: blockdev.NewDM(simA, 0), DevNum: simA.DevNum,
		SnapMagic: magic, MergePoll: time.Millisecond, Locker: host.FileLocker{Root: s.root}, Root: s.root,
		Role: host.Role{Master: true}, Version: "test-1.0", HostID: testHost, Remote: r.remote, MoveWait: 2 * time.Second,
		Fault: func(step string) {
			s.mu.Lock()
			c := s.crash
			s.mu.Unlock()
			if c == step {
				panic(crashed{step})
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.e = e
	return r
}

func (r *remoteEnv) wantCalls(when string, want ...string) {
	r.t.Helper()
	if !slices.Equal(r.remote.calls, want) {
		r.t.Fatalf("%s: calls to host B\n%s\nwant\n%s", when, strings.Join(r.remote.calls, "\n"), strings.Join(want, "\n"))
	}
	r.remote.calls = nil
}

func (r *remoteEnv) masterDevices(when string) {
	r.t.Helper()
	if tables, _ := r.simA.DM(); len(tables) != 0 {
		r.t.Fatalf("%s: the master built devices %v for a volume running on B", when, tables)
	}
}

// restartOnA is what follows B's death: xapi marks the VM halted (its VBD
// no longer attached), B's devices are gone with B, and the VM starts on
// the master, whose attach builds K's stack from the tags.
func (r *remoteEnv) restartOnA() {
	r.t.Helper()
	ctx := context.Background()
	r.remote.active = ""
	r.sim.ForgetDM()
	if err := lvm.New(r.sim, nil).Activate(ctx, r.scope(), r.vg, volume.LVName(r.key)); err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.stackA.Assemble(ctx, r.scope(), srUUID, r.vg, r.key); err != nil {
		r.t.Fatal(err)
	}
}

func id(k string) string { return k[:4] }

// TestRemoteSnapshotAndMerge takes two snapshots of a volume running on
// host B and deletes both: every device step runs on B, in order, the
// master builds nothing, and B's stack and the tags end as on one host.
func TestRemoteSnapshotAndMerge(t *testing.T) {
	ctx := context.Background()
	r := newRemoteEnv(t)
	s1 := r.snapshot("s1")
	r.wantStack([]string{s1}, "first snapshot on B")
	r.wantCalls("first snapshot",
		"converge [] \"\" drop []", // repair: B's stack is what the chain says
		fmt.Sprintf("converge [] \"snap %s\" drop []", s1))
	s2 := r.snapshot("s2")
	r.wantStack([]string{s1, s2}, "second snapshot on B")
	r.wantCalls("second snapshot",
		fmt.Sprintf("converge [%s] \"\" drop []", id(s1)),
		fmt.Sprintf("converge [%s] \"snap %s\" drop []", id(s1), s2))
	r.masterDevices("two snapshots")
	if err := r.e.DeleteSnapshot(ctx, r.sr, s1); err != nil {
		t.Fatal(err)
	}
	r.wantStack([]string{s2}, "older snapshot merged on B")
	r.wantCalls("delete of the older snapshot",
		fmt.Sprintf("converge [%s %s] \"\" drop []", id(s1), id(s2)),
		fmt.Sprintf("converge [%s %s] \"merge %s\" drop []", id(s1), id(s2), s1),
		fmt.Sprintf("wait_merged [%s %s] \"merge %s\" drop []", id(s1), id(s2), s1),
		fmt.Sprintf("converge [%s] \"\" drop [%s]", id(s2), id(s1)))
	if err := r.e.DeleteSnapshot(ctx, r.sr, s2); err != nil {
		t.Fatal(err)
	}
	r.wantStack(nil, "last snapshot merged on B")
	r.masterDevices("merged")
	for n, l := range r.sim.LVs() {
		if strings.HasPrefix(n, "s-") || (n != volume.LVName(r.key) && l.Active) {
			t.Fatalf("LV %s left behind (active %t)", n, l.Active)
		}
	}
}

// TestRemoteSnapshotHostDies: B stops answering when the master asks it
// to switch. The snapshot fails and its intent stays; the VM restarts on
// the master, whose attach builds the stack from the tags (the snapshot
// counted in), and the next call rolls forward from the COW's header.
func TestRemoteSnapshotHostDies(t *testing.T) {
	ctx := context.Background()
	r := newRemoteEnv(t)
	r.remote.down = "converge#2"
	_, err := r.e.Snapshot(ctx, r.sr, r.key, "s1", "")
	if host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("snapshot with B down: %v, want Unreachable", err)
	}
	snaps, intent := r.chain()
	if len(snaps) != 0 || !strings.HasPrefix(intent, "snap ") {
		t.Fatalf("chain %v intent %q after B died, want the snap intent", snaps, intent)
	}
	s1 := strings.TrimPrefix(intent, "snap ")
	r.restartOnA()
	if err := r.e.RepairChain(ctx, r.sr, r.key); err != nil {
		t.Fatal(err)
	}
	got, intent := r.chain()
	if !slices.Equal(got, []string{s1}) || intent != "" {
		t.Fatalf("after repair: chain %v intent %q, want [%s]", got, intent, s1)
	}
	tables, _ := r.simA.DM()
	if k := tables[volume.DevName(srUUID, r.key)]; !strings.Contains(k, "snapshot ") {
		t.Fatalf("K on A: %q", k)
	}
}

// TestRemoteMergeHostDies: B dies while the kernel merges there. The
// delete fails with the merge intent in the tags; the VM restarts on the
// master, whose attach builds the merging stack; the retried delete
// finishes the merge there and succeeds, and nothing is left behind.
func TestRemoteMergeHostDies(t *testing.T) {
	ctx := context.Background()
	for _, at := range []string{"wait_merged#1", "converge#3"} {
		t.Run(at, func(t *testing.T) {
			r := newRemoteEnv(t)
			s1 := r.snapshot("s1")
			r.remote.calls, r.remote.counts = nil, nil
			r.remote.down = at
			if err := r.e.DeleteSnapshot(ctx, r.sr, s1); host.KindOf(err) != host.KindUnreachable {
				t.Fatalf("delete with B dying: %v, want Unreachable", err)
			}
			snaps, intent := r.chain()
			switch at {
			case "wait_merged#1":
				if !slices.Equal(snaps, []string{s1}) || intent != "merge "+s1 {
					t.Fatalf("chain %v intent %q, want the merge intent", snaps, intent)
				}
			default: // B died after the merge was committed
				if len(snaps) != 0 || intent != "" {
					t.Fatalf("chain %v intent %q, want the merge committed", snaps, intent)
				}
			}
			r.restartOnA()
			if err := r.e.DeleteSnapshot(ctx, r.sr, s1); err != nil && host.KindOf(err) != host.KindNotFound {
				t.Fatalf("retried delete: %v", err)
			}
			if err := r.e.RepairChain(ctx, r.sr, r.key); err != nil {
				t.Fatal(err)
			}
			snaps, intent = r.chain()
			if len(snaps) != 0 || intent != "" || len(r.cows()) != 0 {
				t.Fatalf("after the retry: chain %v intent %q COWs %v", snaps, intent, r.cows())
			}
			tables, suspended := r.simA.DM()
			want := "linear " + lvm.DevicePath(r.vg, volume.LVName(r.key)) + " 0"
			if k := tables[volume.DevName(srUUID, r.key)]; !strings.HasSuffix(k, want) || len(tables) != 1 || len(suspended) != 0 {
				t.Fatalf("K on A after the merge: %v, suspended %v", tables, suspended)
			}
		})
	}
}

// TestRemoteVolumeLeftB: XenAPI still names B but K's device is gone
// from it (the VM stopped or moved meanwhile). The snapshot is refused
// as Busy, B builds nothing, and the next call rolls the intent back.
func TestRemoteVolumeLeftB(t *testing.T) {
	ctx := context.Background()
	r := newRemoteEnv(t)
	r.sim.ForgetDM()
	if _, err := r.e.Snapshot(ctx, r.sr, r.key, "s1", ""); host.KindOf(err) != host.KindBusy {
		t.Fatalf("snapshot of a volume that left B: %v, want Busy", err)
	}
	if tables, _ := r.sim.DM(); len(tables) != 0 {
		t.Fatalf("B built %v for a volume it does not run", tables)
	}
	r.remote.active = ""
	if err := r.e.RepairChain(ctx, r.sr, r.key); err != nil {
		t.Fatal(err)
	}
	r.dev = ""
	r.wantStack(nil, "rolled back")
}

func TestParseRemoteChain(t *testing.T) {
	k, s := "0b2f6c1e-7d3a-4e55-9a0b-3c4d5e6f7a8c", "0b2f6c1e-7d3a-4e55-9a0b-3c4d5e6f7a8d"
	rc := volume.RemoteChain{SR: srUUID, Key: k, Snaps: []string{s}, Intent: "merge " + s, Sectors: 2048}
	got, err := volume.ParseRemoteChain(rc.Args())
	if err != nil || got.Key != k || !slices.Equal(got.Snaps, rc.Snaps) || got.Intent != rc.Intent || got.Sectors != 2048 || len(got.Drop) != 0 || got.CheckMemory {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	rc.CheckMemory = true
	if got, err := volume.ParseRemoteChain(rc.Args()); err != nil || !got.CheckMemory {
		t.Fatalf("round trip with the memory check: %+v %v", got, err)
	}
	rc.CheckMemory = false
	for name, mut := range map[string]func(map[string]string){
		"bad key":     func(a map[string]string) { a["key"] = "../x" },
		"bad snap":    func(a map[string]string) { a["snaps"] = "x" },
		"bad intent":  func(a map[string]string) { a["intent"] = "drop " + s },
		"no size":     func(a map[string]string) { delete(a, "sectors") },
		"too deep":    func(a map[string]string) { a["snaps"] = strings.Repeat(s+" ", 3) },
		"bad dropped": func(a map[string]string) { a["drop"] = "-rf" },
	} {
		a := rc.Args()
		mut(a)
		if _, err := volume.ParseRemoteChain(a); host.KindOf(err) != host.KindInvalid {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// wantOnA checks the chain has no intent, one COW per snapshot, and K's
// stack on the master (after the VM restarted there) is the chain's.
func (r *remoteEnv) wantOnA(snaps []string, when string) {
	r.t.Helper()
	got, intent := r.chain()
	if !slices.Equal(got, snaps) || intent != "" {
		r.t.Fatalf("%s: chain %v intent %q, want %v", when, got, intent, snaps)
	}
	if c := r.cows(); !slices.Equal(c, slices.Sorted(slices.Values(snaps))) {
		r.t.Fatalf("%s: COW LVs %v, want %v", when, c, snaps)
	}
	tables, suspended := r.simA.DM()
	k := tables[volume.DevName(srUUID, r.key)]
	want := "linear "
	switch len(snaps) {
	case 1:
		want = "snapshot " + lvm.DevicePath(r.vg, volume.LVName(r.key)) + " " + lvm.DevicePath(r.vg, "s-"+snaps[0])
	case 2:
		want = "snapshot " + volume.DevPath(srUUID, snaps[1]) + " " + lvm.DevicePath(r.vg, "s-"+snaps[1])
	}
	if !strings.Contains(k, want) || len(suspended) > 0 || len(r.simA.DMInvalid()) > 0 {
		r.t.Fatalf("%s: K on A %q (want %q), suspended %v, invalid %v", when, k, want, suspended, r.simA.DMInvalid())
	}
}

// TestRemoteHostDiesAtEveryCall: B stops answering at each of its calls
// in a snapshot and in a delete; the call fails, the VM restarts on the
// master, and one repair there leaves a consistent chain and stack.
func TestRemoteHostDiesAtEveryCall(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		op, down string
		after    func(s1, s2 string) []string // the chain after the repair on A
	}{
		// Before anything changed.
		{"snapshot", "converge#1", func(s1, s2 string) []string { return []string{s1} }},
		// The intent is committed: A's attach builds the snapshot in
		// (its target writes the COW's header), so the repair keeps it.
		{"snapshot", "converge#2", func(s1, s2 string) []string { return []string{s1, s2} }},
		{"delete", "converge#1", func(s1, s2 string) []string { return []string{s1} }},
		{"delete", "converge#2", func(s1, s2 string) []string { return nil }},
		{"delete", "wait_merged#1", func(s1, s2 string) []string { return nil }},
		{"delete", "converge#3", func(s1, s2 string) []string { return nil }},
	} {
		t.Run(c.op+"/"+c.down, func(t *testing.T) {
			r := newRemoteEnv(t)
			s1 := r.snapshot("s1")
			r.remote.calls, r.remote.counts, r.remote.down = nil, nil, c.down
			var err error
			if c.op == "snapshot" {
				_, err = r.e.Snapshot(ctx, r.sr, r.key, "s2", "")
			} else {
				err = r.e.DeleteSnapshot(ctx, r.sr, s1)
			}
			if host.KindOf(err) != host.KindUnreachable {
				t.Fatalf("%s with B dying at %s: %v, want Unreachable", c.op, c.down, err)
			}
			_, intent := r.chain()
			r.restartOnA()
			if err := r.e.RepairChain(ctx, r.sr, r.key); err != nil {
				t.Fatal(err)
			}
			s2, _ := strings.CutPrefix(intent, "snap ")
			r.wantOnA(c.after(s1, s2), "repaired on A")
		})
	}
}

// TestRemoteCrashAtEveryStep kills the master at each snapshot and merge
// step of a volume running on B; the next call's repair, through B's
// plugin, rolls back before the switch and forward after it.
func TestRemoteCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	for _, step := range volume.SnapshotSteps() {
		t.Run(step, func(t *testing.T) {
			r := newRemoteEnv(t)
			s1 := r.snapshot("s1")
			merge := strings.HasPrefix(step, "merge:")
			r.crashThenRepair(t, step, func() error {
				if merge {
					return r.e.DeleteSnapshot(ctx, r.sr, s1)
				}
				_, err := r.e.Snapshot(ctx, r.sr, r.key, "crash", "")
				return err
			})
			got, _ := r.chain()
			want := []string{s1}
			switch {
			case merge:
				want = nil
			case step == volume.StepSnapshotSwitch || step == volume.StepSnapshotCommit:
				if len(got) != 2 || got[0] != s1 {
					t.Fatalf("after a crash past B's switch the chain is %v, want %s plus one", got, s1)
				}
				want = got
			}
			r.wantStack(want, "repaired through B")
			r.masterDevices("repaired")
		})
	}
}

package datapath

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/lvm"
)

// fakeStack records the stack calls in the fakeLVM's call list, so the
// order against activation shows.
type fakeStack struct {
	f       *fakeLVM
	failOff error
}

func (s *fakeStack) AssembleLV(ctx context.Context, sc lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if !s.f.active["v-"+key] {
		return "", errors.New("assemble over an inactive LV")
	}
	s.f.record(sc, "assemble "+key)
	return "/dev/mapper/sanvol-" + sr + "-" + key, nil
}

func (s *fakeStack) AttachLV(ctx context.Context, sc lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if !s.f.active["v-"+key] {
		return "", errors.New("attach over an inactive LV")
	}
	s.f.record(sc, "attach "+key)
	return "/dev/mapper/sanvol-" + sr + "-" + key, nil
}

func (s *fakeStack) StopMerge(ctx context.Context, sc lvm.Scope, sr, vg, key string) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.record(sc, "stop merge "+key)
	return nil
}

func (s *fakeStack) Disassemble(ctx context.Context, sc lvm.Scope, sr, vg, key string) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.record(sc, "disassemble "+key)
	return s.failOff
}

// The device handed to blkback is the volume's own device-mapper device,
// built over the active LV, and taken down before the LV is deactivated;
// when it cannot be taken down (still open), the LV stays active.
func TestAttachHandsOutTheStackDevice(t *testing.T) {
	f := newFakeLVM("v-k1")
	st := &fakeStack{f: f}
	dp := newDP(t, f, true, true)
	dp.d.Stack = st
	uri := URI(srUUID, "k1")
	b, err := dp.Attach(ctx, uri, "5")
	if err != nil {
		t.Fatal(err)
	}
	if want := "/dev/mapper/sanvol-" + srUUID + "-k1"; b.Device != want {
		t.Fatalf("attach gave %s, want %s", b.Device, want)
	}
	st.failOff = errors.New("device busy")
	if err := dp.Detach(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	if !f.active["v-k1"] {
		t.Fatal("the LV was deactivated under a device that could not be removed")
	}
	if _, err := dp.Attach(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	st.failOff = nil
	if err := dp.Detach(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	want := []string{"activate v-k1", "attach k1", "disassemble k1", "attach k1", "disassemble k1", "deactivate v-k1"}
	var got []string
	for _, c := range f.calls {
		if c != "refresh v-k1" {
			got = append(got, c)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	if f.active["v-k1"] {
		t.Fatal("the LV is still active after the last detach")
	}
}

// resolvingStack serves snapshot "s1" of volume k1: it has no LV of its
// own, and its image maps k1's LV (volume.Stack.LVOf).
type resolvingStack struct{ fakeStack }

func (s *resolvingStack) LVOf(ctx context.Context, sc lvm.Scope, sr, vg, key string) (string, error) {
	if key == "s1" {
		return "v-k1", nil
	}
	return "v-" + key, nil
}

func (s *resolvingStack) AssembleLV(ctx context.Context, sc lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	if key == "s1" {
		if base.Name != "v-k1" {
			return "", errors.New("the snapshot's image must be built from its volume's LV, got " + base.Name)
		}
		key = "k1"
	}
	return s.fakeStack.AssembleLV(ctx, sc, sr, vg, key, base)
}

func (s *resolvingStack) AttachLV(ctx context.Context, sc lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	if key == "s1" {
		if base.Name != "v-k1" {
			return "", errors.New("the snapshot's image must be built from its volume's LV, got " + base.Name)
		}
		key = "k1"
	}
	return s.fakeStack.AttachLV(ctx, sc, sr, vg, key, base)
}

// A snapshot's attach activates the LV the Stack names (its volume's
// base), not a v-<snapshot> that does not exist; its detach leaves that
// LV to the Stack's Disassemble.
func TestAttachOfASnapshotActivatesTheResolvedLV(t *testing.T) {
	f := newFakeLVM("v-k1")
	st := &resolvingStack{fakeStack{f: f}}
	dp := newDP(t, f, true, true)
	dp.d.Stack = st
	uri := URI(srUUID, "s1")
	if _, err := dp.Attach(ctx, uri, "0"); err != nil {
		t.Fatal(err)
	}
	if !f.active["v-k1"] {
		t.Fatal("the snapshot's image LV was not activated")
	}
	if err := dp.Detach(ctx, uri, "0"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"activate v-k1", "attach k1", "disassemble s1"}; !slices.Equal(f.calls, want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
}

// stackCalls is the fake's stack calls in order, without the LVM ones.
func stackCalls(f *fakeLVM) []string {
	var out []string
	for _, c := range f.calls {
		if !strings.HasPrefix(c, "activate ") && !strings.HasPrefix(c, "refresh ") && !strings.HasPrefix(c, "deactivate ") {
			out = append(out, c)
		}
	}
	f.calls, f.readOnly = nil, nil
	return out
}

// A live migration in xenopsd's order (xenops_server.ml VM_receive_memory
// and VM_migrate): the destination's attach leaves the stack to its
// activate (AttachLV: a placeholder for a volume with an overlay), the
// source's deactivate stops a merge there (StopMerge), also when it is
// repeated, and the destination's activate builds the stack. An attach
// for a second domain where one is active builds it at once; a
// deactivate that leaves another domain active stops nothing. Inactive
// tells the master's steps which of the two hosts the volume is parked on.
func TestMigrationBuildsTheStackAtActivate(t *testing.T) {
	a, b := newFakeLVM("v-k"), newFakeLVM("v-k")
	src, dst := newDP(t, a, true, false), newDP(t, b, true, true)
	src.d.Stack, dst.d.Stack = &fakeStack{f: a}, &fakeStack{f: b}
	uri := URI(srUUID, "k")
	inactive := func(dp *Datapath) bool {
		t.Helper()
		in, err := Inactive(dp.d.Root)(srUUID, "k")
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	if inactive(src) {
		t.Fatal("a volume the datapath does not hold is inactive")
	}
	_, err := src.Attach(ctx, uri, "5")
	must(err)
	if !inactive(src) {
		t.Fatal("attached, not activated: not inactive")
	}
	must(src.Activate(ctx, uri, "5"))
	if inactive(src) {
		t.Fatal("activated: inactive")
	}
	_, err = src.Attach(ctx, uri, "0") // a dom0 user while the VM runs
	must(err)
	must(src.Activate(ctx, uri, "0"))
	must(src.Deactivate(ctx, uri, "0"))
	must(src.Detach(ctx, uri, "0"))
	if got, want := stackCalls(a), []string{"attach k", "assemble k", "assemble k", "assemble k"}; !slices.Equal(got, want) {
		t.Fatalf("source before the migration: %v, want %v", got, want)
	}

	_, err = dst.Attach(ctx, uri, "8")
	must(err)
	must(src.Deactivate(ctx, uri, "5"))
	if !inactive(src) || !inactive(dst) {
		t.Fatalf("during the migration: source inactive %t, destination inactive %t", inactive(src), inactive(dst))
	}
	must(dst.Activate(ctx, uri, "8"))
	must(src.Deactivate(ctx, uri, "5"))
	must(src.Detach(ctx, uri, "5"))
	if got, want := stackCalls(a), []string{"stop merge k", "stop merge k", "disassemble k"}; !slices.Equal(got, want) {
		t.Fatalf("source: %v, want %v", got, want)
	}
	if got, want := stackCalls(b), []string{"attach k", "assemble k"}; !slices.Equal(got, want) {
		t.Fatalf("destination: %v, want %v", got, want)
	}
	if inactive(dst) || inactive(src) {
		t.Fatalf("after the migration: source inactive %t, destination inactive %t", inactive(src), inactive(dst))
	}
}

// A deactivate whose StopMerge fails fails (xenopsd then aborts the
// migration) with the reference already recorded inactive, so the
// master leaves the device alone; the repeated deactivate stops the
// merge.
func TestDeactivateRetriesAFailedStopMerge(t *testing.T) {
	f := newFakeLVM("v-k")
	st := &failingStop{fakeStack: fakeStack{f: f}, fail: 1}
	dp := newDP(t, f, true, false)
	dp.d.Stack = st
	uri := URI(srUUID, "k")
	if _, err := dp.Attach(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	if err := dp.Activate(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	if err := dp.Deactivate(ctx, uri, "5"); err == nil {
		t.Fatal("a deactivate whose merge could not be stopped succeeded")
	}
	if in, _ := Inactive(dp.d.Root)(srUUID, "k"); !in {
		t.Fatal("the failed deactivate left the reference active")
	}
	if err := dp.Deactivate(ctx, uri, "5"); err != nil {
		t.Fatal(err)
	}
	if got, want := stackCalls(f), []string{"attach k", "assemble k", "stop merge k", "stop merge k"}; !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
}

type failingStop struct {
	fakeStack
	fail int
}

func (s *failingStop) StopMerge(ctx context.Context, sc lvm.Scope, sr, vg, key string) error {
	err := s.fakeStack.StopMerge(ctx, sc, sr, vg, key)
	if s.fail > 0 {
		s.fail--
		return errors.New("dmsetup reload: injected failure")
	}
	return err
}

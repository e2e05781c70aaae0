package datapath

import (
	"context"
	"errors"
	"slices"
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

package volume_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

const kib = int64(1) << 10

func TestOverlayTableBytes(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, cow int64
		want      int64
	}{
		// 32 bytes per 8 KiB chunk: 4 MiB per GiB; a hash bucket of 8
		// bytes per 8 KiB of COW and an eighth of that for writes in
		// flight.
		{"1 GiB", gib, gib, 4*mib + (gib/(8*kib)+gib/(64*kib))*8},
		// The hash table stops at 2 MiB (COWs of 2 GiB and more).
		{"2 TiB", 2048 * gib, 2056 * gib, 8*gib + 2*mib + 256*kib},
		// At least 64 buckets in each table.
		{"64 KiB", 64 * kib, 4 * mib / 8, 8*32 + (64+64)*8},
		// A partial last chunk is a chunk.
		{"8 KiB + 1", 8*kib + 1, 64 * mib, 2*32 + (8192+1024)*8},
	} {
		if got := volume.OverlayTableBytes(c.size, c.cow); got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.name, got, c.want)
		}
	}
}

func TestParseMeminfo(t *testing.T) {
	// /proc/meminfo of the build VM (Linux 6.18.44).
	b, err := os.ReadFile("testdata/proc-meminfo-linux-6.18.44.txt")
	if err != nil {
		t.Fatal(err)
	}
	m, err := volume.ParseMeminfo(b)
	if err != nil || m.Total != 24683748*kib || m.Available != 19129932*kib {
		t.Fatalf("%+v %v", m, err)
	}
	if _, err := volume.ParseMeminfo([]byte("MemTotal:       24683748 kB\nMemFree:        17877832 kB\n")); err == nil {
		t.Fatal("a meminfo without MemAvailable parsed")
	}
	if _, err := volume.ParseMeminfo([]byte("MemTotal: 1 MB\nMemAvailable: 1 kB\n")); err == nil {
		t.Fatal("a size in MB parsed")
	}
}

func TestCheckOverlayMemory(t *testing.T) {
	const op = "snapshot of volume k"
	// 100 GiB: a worst case of 402.25 MiB. A dom0 of 4 GiB keeps 512 MiB.
	size := 100 * gib
	cow := size + size/256 + 64*kib
	if err := volume.CheckOverlayMemory(op, "k", size, cow, volume.Meminfo{Total: 4 * gib, Available: 1 * gib}); err != nil {
		t.Fatalf("1 GiB available: %v", err)
	}
	err := volume.CheckOverlayMemory(op, "k", size, cow, volume.Meminfo{Total: 4 * gib, Available: 800 * mib})
	if !errors.Is(err, host.ErrNoSpace) {
		t.Fatalf("800 MiB available: %v, want NoSpace", err)
	}
	for _, want := range []string{"volume k is a VDI of 102400 MiB", "up to 403 MiB of dom0 RAM", "dom0 has 800 MiB available",
		"leaves 512 MiB to dom0", "xen-cmdline --set-xen dom0_mem=4352M,max:4352M", "reboot", "smaller VDI", "delete snapshots"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	// The suggested dom0 fits: 4352 MiB with 800+256 available keeps
	// 544 MiB, leaving 512 MiB ≥ 403.
	if err := volume.CheckOverlayMemory(op, "k", size, cow, volume.Meminfo{Total: 4352 * mib, Available: 1056 * mib}); err != nil {
		t.Fatalf("with the suggested dom0: %v", err)
	}
	// A small dom0 keeps 128 MiB.
	if err := volume.CheckOverlayMemory(op, "k", gib, gib, volume.Meminfo{Total: 512 * mib, Available: 130 * mib}); err == nil {
		t.Fatal("130 MiB available: a 1 GiB VDI's 5 MiB let through past a 128 MiB reserve")
	}
}

// setMeminfo gives the host under root a dom0 of total MiB with avail
// MiB available.
func setMeminfo(t *testing.T, root host.Root, total, avail int64) {
	t.Helper()
	if err := root.MkdirAll("/proc", 0o755); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf("MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n", total*1024, avail*1024, avail*1024)
	if err := root.WriteFile("/proc/meminfo", []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
}

// wantRefusal checks the refusal of a 1 GiB VDI's overlay on a dom0 with
// 130 MiB available says the figures and the fix.
func wantRefusal(t *testing.T, err error) {
	t.Helper()
	for _, want := range []string{"VDI of 1024 MiB", "up to 6 MiB of dom0 RAM", "dom0 has 130 MiB available", "dom0_mem="} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
}

// TestSnapshotRefusedForDom0Memory: a volume running on the master whose
// new overlay would not fit dom0's memory is not snapshotted, and nothing
// is made; with enough memory the same call succeeds.
func TestSnapshotRefusedForDom0Memory(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, true)
	// A 1 GiB VDI: worst case 5.2 MiB; a 512 MiB dom0 keeps 128 MiB.
	setMeminfo(t, s.root, 512, 130)
	creates := s.sim.Ops["lvm lvcreate"]
	_, err := s.e.Snapshot(ctx, s.sr, s.key, "s1", "")
	if !errors.Is(err, host.ErrNoSpace) {
		t.Fatalf("snapshot with 130 MiB available: %v, want NoSpace", err)
	}
	wantRefusal(t, err)
	if n := s.sim.Ops["lvm lvcreate"]; n != creates {
		t.Fatalf("a refused snapshot ran lvcreate %d times", n-creates)
	}
	s.wantStack(nil, "refused")
	setMeminfo(t, s.root, 512, 200)
	s1 := s.snapshot("s1")
	s.wantStack([]string{s1}, "snapshot with enough memory")
}

// TestSnapshotOfIdleVolumeIsNotRefused: the overlay of an idle volume
// loads at its next activate, on a host not known yet: the snapshot goes
// on, and the activate that loads it warns.
func TestSnapshotOfIdleVolumeIsNotRefused(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	setMeminfo(t, s.root, 512, 130)
	s1 := s.snapshot("s1")
	s.wantStack([]string{s1}, "idle volume snapshotted")

	core, logs := observer.New(zapcore.WarnLevel)
	s.stack.Root, s.stack.Log = s.root, zap.New(core)
	lc := lvm.New(s.sim, nil)
	if err := lc.Activate(ctx, s.scope(), s.vg, volume.LVName(s.key)); err != nil {
		t.Fatal(err)
	}
	base, err := lc.LV(ctx, s.scope(), s.vg, volume.LVName(s.key))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, base); err != nil {
		t.Fatalf("activate with little dom0 memory: %v", err)
	}
	s.dev, _ = s.sim.DevNum(volume.DevPath(srUUID, s.key))
	s.wantStack([]string{s1}, "activated")
	w := logs.FilterMessageSnippet("dom0 may run out of memory").All()
	if len(w) != 1 || w[0].ContextMap()["worst_case_mib"] != int64(6) || w[0].ContextMap()["available_mib"] != int64(130) {
		t.Fatalf("warnings %v", logs.All())
	}
	// Activated again (the stack is loaded, its tables in MemAvailable):
	// no second warning.
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, base); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessageSnippet("dom0 may run out of memory").Len(); n != 1 {
		t.Fatalf("%d warnings after a second activate", n)
	}
	setMeminfo(t, s.root, 512, 200)
	if err := s.stack.Disassemble(ctx, s.scope(), srUUID, s.vg, s.key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.stack.AssembleLV(ctx, s.scope(), srUUID, s.vg, s.key, base); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessageSnippet("dom0 may run out of memory").Len(); n != 1 {
		t.Fatalf("a warning with enough memory: %v", logs.All())
	}
}

// TestRemoteSnapshotRefusedForDom0Memory: the volume runs on host B,
// whose dom0 cannot hold the new overlay: B refuses at the switch before
// it touches anything, and the master takes back the intent and the COW
// it made. The master's own memory does not count. Once B has the
// memory, the same call succeeds.
func TestRemoteSnapshotRefusedForDom0Memory(t *testing.T) {
	ctx := context.Background()
	r := newRemoteEnv(t)
	setMeminfo(t, r.remote.stack.Root, 512, 130)
	setMeminfo(t, r.root, 512, 1) // the master's: not B's
	_, err := r.e.Snapshot(ctx, r.sr, r.key, "s1", "")
	if !errors.Is(err, host.ErrNoSpace) {
		t.Fatalf("snapshot with 130 MiB available on B: %v, want NoSpace", err)
	}
	wantRefusal(t, err)
	if len(r.remote.calls) != 2 || !strings.HasPrefix(r.remote.calls[1], "converge [] \"snap ") {
		t.Fatalf("calls to B: %v", r.remote.calls)
	}
	r.remote.calls = nil
	r.wantStack(nil, "refused on B")
	r.masterDevices("refused on B")
	for n, l := range r.sim.LVs() {
		if strings.HasPrefix(n, "s-") || (l.Active && n != volume.LVName(r.key)) {
			t.Fatalf("LV %s left (active %v)", n, l.Active)
		}
	}
	setMeminfo(t, r.remote.stack.Root, 512, 200)
	s1 := r.snapshot("s1")
	r.wantStack([]string{s1}, "snapshot on B with enough memory")
	r.wantCalls("snapshot with enough memory",
		"converge [] \"\" drop []",
		fmt.Sprintf("converge [] \"snap %s\" drop []", s1))
}

// TestActivateOfACloneWarnsForDom0Memory: a fast clone of an idle volume
// is not refused; the activate that loads the clone's overlay warns.
func TestActivateOfACloneWarnsForDom0Memory(t *testing.T) {
	ctx := context.Background()
	s := newSnapEnv(t, false)
	setMeminfo(t, s.root, 512, 130)
	c, err := s.e.VolumeClone(ctx, s.sr, s.key)
	if err != nil {
		t.Fatalf("clone of an idle volume with little dom0 memory: %v", err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	s.stack.Root, s.stack.Log = s.root, zap.New(core)
	s.attachKey(c.Key)
	w := logs.FilterMessageSnippet("dom0 may run out of memory").All()
	if len(w) != 1 || w[0].ContextMap()["key"] != c.Key || w[0].ContextMap()["overlays"] != int64(1) || w[0].ContextMap()["worst_case_mib"] != int64(6) {
		t.Fatalf("warnings %v", logs.All())
	}
}

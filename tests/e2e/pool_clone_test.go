//go:build lab

package e2e

// Reset-on-boot and linked clones in the pool lab (issue 17): a VM with
// on-boot=reset starts on B, the member. xenopsd on B calls B's storage
// daemon for the VDI's epoch (ocaml/xenopsd/lib/storage.ml epoch_begin,
// epoch_end), whose Volume.clone, Volume.set, Volume.destroy and
// Volume.unset B's plugin forwards to the master's host plugin
// (plugin/forward.go): the master writes the metadata, B only runs the
// VM's disk. xapi's own paths run: the simulator's VM start, vdi-snapshot
// and vdi-clone, through the installed method files.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/tests/xapisim"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

func TestPoolResetOnBootNVMe(t *testing.T) {
	l := newPoolLab(t)
	l.resetOnBootScenario(plugin.TypeNVMeTCP, l.nvmeTarget("poolclone"))
}

func TestPoolResetOnBootISCSI(t *testing.T) {
	l := newPoolLab(t)
	l.resetOnBootScenario(plugin.TypeISCSI, l.iscsiTarget("poolclone"))
}

// forwardedOnA records the volume methods members forward to A's host
// plugin (plugin.HostFnVolume), and runs the plugin as xapi does.
func (l *poolLab) forwardedOnA() func() []string {
	var mu sync.Mutex
	var got []string
	l.pool.Master().HostPlugin = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
		if fn, args, err := plugin.ParseHostPluginCall(call); err == nil && fn == plugin.HostFnVolume {
			mu.Lock()
			got = append(got, args["method"])
			mu.Unlock()
		}
		r, err := host.RunHostPlugin(ctx, path, call)
		return plugin.Outcome{Script: path, ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr, Elapsed: r.Elapsed}, err
	}
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
}

// lvsOnA lists the SR's LVs, read on A.
func lvsOnA(t *testing.T, srUUID string) []string {
	t.Helper()
	out := mustOutput(t, "lvs", "--noheadings", "-o", "lv_name", "VG_sanvol-"+srUUID)
	f := strings.Fields(out)
	slices.Sort(f)
	return f
}

func (l *poolLab) resetOnBootScenario(srType string, cfg map[string]string) {
	t, ctx := l.t, l.ctx
	const (
		size   = 64 << 20
		chunks = 16 // MiB the VMs write
	)
	forwarded := l.forwardedOnA()
	ps := l.create(srType, cfg)
	b := ps.On(1)
	for _, f := range []string{"VDI_CLONE", "VDI_RESET_ON_BOOT", "VDI_SNAPSHOT"} {
		if !xapisim.HasFeature(b.Features, f) {
			t.Fatalf("the SR lacks %s: %v", f, b.Features)
		}
	}
	v, err := ps.Master().VDICreate(ctx, "reset-on-boot disk", "", size, false)
	if err != nil {
		t.Fatal(err)
	}
	l.scanFor(ps, 1, v.Key)

	// K's content: pattern 1, written by a VM on A.
	onA, err := ps.Master().VMStart(ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	if err := directIO(onA.Device, chunks, 1, false); err != nil {
		t.Fatal(err)
	}
	atK := digest(t, onA.Device, size)
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	forwarded()

	// Two reset-on-boot boots on B: epoch_begin forwards the clone and
	// the key to A; the VM runs on the temporary and writes; epoch_end
	// forwards its destroy and the unset. The next boot sees K again.
	for round := range 2 {
		domain := fmt.Sprint(6 + round)
		onB, err := b.VMStartResetOnBoot(ctx, v.Key, domain)
		if err != nil {
			t.Fatalf("reset-on-boot start %d on B: %v", round+1, err)
		}
		if got, want := forwarded(), []string{"Volume.clone", "Volume.set"}; !slices.Equal(got, want) {
			t.Fatalf("start %d: B forwarded %v, want %v", round+1, got, want)
		}
		var kv schema.Volume
		if err := ps.Master().Call(ctx, "Volume.stat", schema.VolumeArgs{Dbg: "check", SR: ps.Master().Handle, Key: v.Key}, &kv); err != nil {
			t.Fatal(err)
		}
		tmp := kv.Keys["clone-on-boot"]
		if tmp == "" || onB.Device != volume.DevPath(ps.Master().UUID, tmp) {
			t.Fatalf("start %d: K's keys %v, B's device %s", round+1, kv.Keys, onB.Device)
		}
		if err := l.b.Pattern(onB.Device, 1, chunks, true); err != nil {
			t.Fatalf("start %d: the VM on B does not see K's content: %v", round+1, err)
		}
		if err := l.b.Pattern(onB.Device, uint32(10+round), chunks, false); err != nil {
			t.Fatal(err)
		}
		if err := l.b.Pattern(onB.Device, uint32(10+round), chunks, true); err != nil {
			t.Fatal(err)
		}
		if err := b.VMShutdown(ctx, onB); err != nil {
			t.Fatalf("shutdown %d on B: %v", round+1, err)
		}
		if got, want := forwarded(), []string{"Volume.destroy", "Volume.unset"}; !slices.Equal(got, want) {
			t.Fatalf("shutdown %d: B forwarded %v, want %v", round+1, got, want)
		}
		if got, want := lvsOnA(t, ps.Master().UUID), []string{volume.LVName(v.Key)}; !slices.Equal(got, want) {
			t.Fatalf("LVs after shutdown %d: %v, want %v", round+1, got, want)
		}
		t.Logf("reset-on-boot round %d on B: clone %s, written, gone at shutdown", round+1, tmp)
	}
	// A third boot on A, the master itself: nothing is forwarded.
	onA, err = ps.Master().VMStartResetOnBoot(ctx, v.Key, "8")
	if err != nil {
		t.Fatal(err)
	}
	if err := directIO(onA.Device, chunks, 1, true); err != nil {
		t.Fatalf("reset-on-boot on A after B's boots: %v", err)
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	if got := forwarded(); len(got) != 0 {
		t.Fatalf("A forwarded %v", got)
	}
	onA, err = ps.Master().VMStart(ctx, v.Key, "9")
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, onA.Device, size) != atK {
		t.Fatal("the writes of the reset-on-boot VMs reached K")
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}

	// A linked clone: snapshot S of K and clone C of S, on the master;
	// C boots on B and is written there, S and K do not change.
	s, err := ps.Master().VDISnapshot(ctx, v.Key)
	if err != nil {
		t.Fatal(err)
	}
	onA, err = ps.Master().VMStart(ctx, v.Key, "10")
	if err != nil {
		t.Fatal(err)
	}
	if err := directIO(onA.Device, chunks/2, 2, false); err != nil { // K moves on
		t.Fatal(err)
	}
	atK = digest(t, onA.Device, size)
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	c, err := ps.Master().VDIClone(ctx, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	l.scanFor(ps, 1, c.Key)
	var atS string
	sums := func(when string) {
		t.Helper()
		dom := xapisim.DomainOf("vbd/0/xvdb", "0")
		for _, x := range []struct {
			key, want string
		}{{s.Key, ""}, {v.Key, atK}} {
			a, err := ps.Master().VMStart(ctx, x.key, dom)
			if err != nil {
				t.Fatal(err)
			}
			got := digest(t, a.Device, size)
			if x.key == s.Key {
				if err := directIO(a.Device, chunks, 1, true); err != nil {
					t.Fatalf("%s: S is not K's content at the snapshot: %v", when, err)
				}
				if atS == "" {
					atS = got
				}
				x.want = atS
			}
			if got != x.want {
				t.Fatalf("%s: %s's checksum %s, want %s", when, x.key, got, x.want)
			}
			if err := ps.Master().VMShutdown(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	sums("before C's writes")
	onB, err := b.VMStart(ctx, c.Key, "11")
	if err != nil {
		t.Fatal(err)
	}
	if got := forwarded(); len(got) != 0 {
		t.Fatalf("B forwarded %v for a persistent VM", got)
	}
	if sum := digestOnB(t, l.b, onB.Device, size); sum != atS {
		t.Fatalf("C starts as %s on B, S is %s", sum, atS)
	}
	if err := l.b.Pattern(onB.Device, 3, chunks, false); err != nil {
		t.Fatal(err)
	}
	if err := l.b.Pattern(onB.Device, 3, chunks, true); err != nil {
		t.Fatal(err)
	}
	sums("with C written on B")
	if err := b.VMShutdown(ctx, onB); err != nil {
		t.Fatal(err)
	}
	sums("after C's VM stopped")

	// Cleanup as xapi would: S (hidden under its clone), C (its hidden
	// parent merges into K), K.
	for _, key := range []string{s.Key, c.Key, v.Key} {
		if err := ps.Master().VDIDestroy(ctx, key); err != nil {
			t.Fatalf("vdi-destroy %s: %v", key, err)
		}
	}
	if got := lvsOnA(t, ps.Master().UUID); len(got) != 0 {
		t.Fatalf("LVs left: %v", got)
	}
	l.destroy(ps)
}

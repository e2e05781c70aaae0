package volume_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// Every step of every metadata-changing operation: kill the call there,
// check that the SR is consistent, repeat the call, check it succeeds and
// leaves the intended state.

func stepsOf(prefix string) []string {
	var out []string
	for _, s := range volume.FaultSteps() {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

func (v *env) crashAt(step string, f func() error) {
	v.t.Helper()
	v.mu.Lock()
	v.crash = step
	v.mu.Unlock()
	at, err := v.run(f)
	v.mu.Lock()
	v.crash = ""
	v.mu.Unlock()
	if at != step {
		v.t.Fatalf("the call did not reach step %s (err %v)", step, err)
	}
}

func TestCrashVolumeCreate(t *testing.T) {
	for _, step := range stepsOf("Volume.create:") {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			sr := v.createSR()
			ctx := context.Background()
			v.crashAt(step, func() error { _, err := v.e.VolumeCreate(ctx, sr, "n", "d", 10*mib, false); return err })
			vols := v.consistent(sr)
			committed := step == volume.StepVolumeCreateCommit
			if committed != (len(vols) == 1) {
				t.Fatalf("after a crash at %s SR.ls shows %d volumes", step, len(vols))
			}
			// SR.ls is a read path: it hides the leftover of the dead
			// create and removes nothing.
			if n := len(v.sim.LVs()); n != 1 {
				t.Fatalf("SR.ls changed the LVs: %d left", n)
			}
			// The master's next attach removes the leftover.
			v.reattach()
			if n := len(v.sim.LVs()); n != len(vols) {
				t.Fatalf("%d LVs left for %d volumes", n, len(vols))
			}
			// xapi's repeat is a new Volume.create.
			vol, err := v.e.VolumeCreate(ctx, sr, "n", "d", 10*mib, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.e.VolumeStat(ctx, sr, vol.Key); err != nil {
				t.Fatal(err)
			}
			v.consistent(sr)
		})
	}
}

func TestCrashVolumeResize(t *testing.T) {
	for _, step := range stepsOf("Volume.resize:") {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			sr := v.createSR()
			ctx := context.Background()
			vol, err := v.e.VolumeCreate(ctx, sr, "n", "d", 8*mib, false)
			must(t, err)
			v.crashAt(step, func() error { return v.e.VolumeResize(ctx, sr, vol.Key, 40*mib) })
			vols := v.consistent(sr)
			if len(vols) != 1 {
				t.Fatalf("SR.ls = %v", vols)
			}
			if step != volume.StepVolumeResizeCommit && vols[0].Incomplete == "" && vols[0].VirtualSize != 8*mib {
				t.Fatalf("an unfinished resize is not marked: %+v", vols[0])
			}
			must(t, v.e.VolumeResize(ctx, sr, vol.Key, 40*mib))
			got, err := v.e.VolumeStat(ctx, sr, vol.Key)
			must(t, err)
			l := v.sim.LVs()["v-"+vol.Key]
			if got.VirtualSize != 40*mib || got.Incomplete != "" || !l.FullyZeroed(4*mib) || l.Active {
				t.Fatalf("after the repeat: %+v zeroed=%v active=%v", got, l.FullyZeroed(4*mib), l.Active)
			}
			if f, _, _ := lvm.DecodeFields(l.Tags); f["G"] != "" {
				t.Fatalf("resize mark left: %v", l.Tags)
			}
		})
	}
}

func TestCrashVolumeDestroyAndSet(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "d", 8*mib, false)
	must(t, err)
	v.crashAt(volume.StepVolumeSetTags, func() error { return v.e.VolumeSet(ctx, sr, vol.Key, "vdi-type", "user") })
	v.consistent(sr)
	must(t, v.e.VolumeSet(ctx, sr, vol.Key, "vdi-type", "user"))
	got, _ := v.e.VolumeStat(ctx, sr, vol.Key)
	if got.Keys["vdi-type"] != "user" {
		t.Fatalf("keys = %v", got.Keys)
	}
	v.crashAt(volume.StepVolumeDestroyLVRemove, func() error { return v.e.VolumeDestroy(ctx, sr, vol.Key) })
	if vols := v.consistent(sr); len(vols) != 0 {
		t.Fatalf("SR.ls = %v", vols)
	}
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))
}

func TestCrashSRCreate(t *testing.T) {
	for _, step := range stepsOf("SR.create:") {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			force := step == volume.StepSRCreateWipe
			if force {
				v.sim.SetSignatures("TYPE=xfs")
			}
			cfg := map[string]string{"target": "t"}
			if force {
				cfg["force"] = "true"
			}
			ctx := context.Background()
			v.crashAt(step, func() error { _, err := v.e.SRCreate(ctx, srUUID, cfg, "n", "d"); return err })
			// xapi repeats with the same arguments.
			out, err := v.e.SRCreate(ctx, srUUID, cfg, "n", "d")
			if err != nil {
				t.Fatal(err)
			}
			sr, err := v.e.SRAttach(ctx, out)
			if err != nil {
				t.Fatal(err)
			}
			st, err := v.e.SRStat(ctx, sr)
			if err != nil || st.Name != "n" {
				t.Fatalf("stat = %+v, %v", st, err)
			}
		})
	}
}

func TestCrashSRDestroy(t *testing.T) {
	for _, step := range stepsOf("SR.destroy:") {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			sr := v.createSR()
			ctx := context.Background()
			v.crashAt(step, func() error { return v.e.SRDestroy(ctx, sr) })
			if step == volume.StepSRDestroyDetach {
				// The attach record is the last thing to go; the
				// transport's Detach is idempotent.
				if _, err := volume.LoadAttached(v.root, srUUID); err != nil {
					t.Fatalf("attach record gone before the end: %v", err)
				}
			}
			must(t, v.e.SRDestroy(ctx, sr))
			v.destroyed()
		})
	}
}

func TestCrashSRSetAndDetach(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	v.crashAt(volume.StepSRSetTags, func() error { return v.e.SRSetName(ctx, sr, "x") })
	must(t, v.e.SRSetName(ctx, sr, "x"))
	v.crashAt(volume.StepSRDetachTransport, func() error { return v.e.SRDetach(ctx, sr) })
	must(t, v.e.SRDetach(ctx, sr))
	if _, err := volume.LoadAttached(v.root, srUUID); !errors.Is(err, host.ErrNotAttached) {
		t.Fatal("attach record left")
	}
}

// Every step name is exercised by one of the tests above.
func TestEveryStepIsCrashTested(t *testing.T) {
	tested := slices.Concat(stepsOf("Volume.create:"), stepsOf("Volume.resize:"), stepsOf("SR.create:"), stepsOf("SR.destroy:"),
		[]string{volume.StepVolumeSetTags, volume.StepVolumeDestroyLVRemove, volume.StepSRSetTags, volume.StepSRDetachTransport})
	for _, s := range volume.FaultSteps() {
		if !slices.Contains(tested, s) {
			t.Errorf("step %s has no crash test", s)
		}
	}
}

// Concurrent creates and destroys on one SR (newer xapi runs calls in
// parallel): no error, no lost or duplicated volume.
func TestConcurrentCreateDestroy(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	const n = 20
	keys := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := v.engine(host.Role{Master: true}) // one engine per "process"
			vol, err := e.VolumeCreate(ctx, sr, "n", "", 4*mib, false)
			if err != nil {
				errs <- err
				return
			}
			keys[i] = vol.Key
			if i%2 == 0 {
				errs <- e.VolumeDestroy(ctx, sr, vol.Key)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	vols := v.consistent(sr)
	if len(vols) != n/2 {
		t.Fatalf("%d volumes, want %d", len(vols), n/2)
	}
	for i, k := range keys {
		present := slices.ContainsFunc(vols, func(v volume.Volume) bool { return v.Key == k })
		if present != (i%2 == 1) {
			t.Fatalf("volume %d (%s) present=%v", i, k, present)
		}
	}
}

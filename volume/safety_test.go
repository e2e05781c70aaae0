package volume_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"sanvol/host"
	"sanvol/volume"
)

// With every path down LVM says "Volume group not found" and "No device
// found": Volume.destroy and SR.destroy must fail as Unreachable and
// leave the SR attached and its data in place, not report success.
func TestDestroyOnInvisibleDeviceIsUnreachable(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "", gib, false)
	must(t, err)

	v.sim.SetOffline(true)
	err = v.e.VolumeDestroy(ctx, sr, vol.Key)
	if host.KindOf(err) != host.KindUnreachable || !strings.Contains(err.Error(), "sr-forget") {
		t.Fatalf("Volume.destroy with the device unreadable: %v", err)
	}
	if _, ok := v.sim.LVs()["v-"+vol.Key]; !ok {
		t.Fatal("the LV is gone")
	}
	v.sim.SetOffline(false)
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))
	if _, ok := v.sim.LVs()["v-"+vol.Key]; ok {
		t.Fatal("the LV survived the destroy")
	}
	// Repeating it once the LV is gone is success: LVM read the VG.
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))

	v.sim.SetOffline(true)
	err = v.e.SRDestroy(ctx, sr)
	if host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("SR.destroy with the device unreadable: %v", err)
	}
	if !v.sim.HasVG() || !v.sim.HasPV() {
		t.Fatal("the VG or PV went")
	}
	if _, err := volume.LoadAttached(v.root, srUUID); err != nil {
		t.Fatalf("the attach record went: %v", err)
	}
	v.sim.SetOffline(false)
	must(t, v.e.SRDestroy(ctx, sr))
	v.destroyed()
}

// A destroy repeated after the VG (or the PV label) went is proven gone
// by reading the device: it succeeds.
func TestDestroyRepeatedAfterVGRemoveIsProven(t *testing.T) {
	for _, step := range []string{volume.StepSRDestroyVGRemove, volume.StepSRDestroyPVRemove} {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			sr := v.createSR()
			v.crash = step
			if at, _ := v.run(func() error { return v.e.SRDestroy(context.Background(), sr) }); at != step {
				t.Fatalf("crashed at %q", at)
			}
			v.crash = ""
			must(t, v.e.SRDestroy(context.Background(), sr))
			v.destroyed()
			if v.sim.Ops["dd"] == 0 {
				t.Fatal("the device was not read before taking \"not found\" as gone")
			}
		})
	}
}

var _ = errors.Is

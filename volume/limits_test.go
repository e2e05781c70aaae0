package volume_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

// wantInvalid checks for an InvalidArgument that names the limit.
func wantInvalid(t *testing.T, what string, err error, mention string) {
	t.Helper()
	var he *host.Error
	if !errors.As(err, &he) || he.Kind != host.KindInvalid || he.Fix == "" {
		t.Errorf("%s: want InvalidArgument with a fix, got %v", what, err)
		return
	}
	if !strings.Contains(err.Error(), mention) {
		t.Errorf("%s: %q does not mention %q", what, err, mention)
	}
}

func TestNameAndKeyLimits(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	over := func(n int) string { return strings.Repeat("x", n+1) }

	v.sim.Reset()
	_, err := v.e.VolumeCreate(ctx, sr, over(volume.MaxNameBytes), "", gib, false)
	wantInvalid(t, "create name", err, "at most 1024")
	_, err = v.e.VolumeCreate(ctx, sr, "n", over(volume.MaxDescriptionBytes), gib, false)
	wantInvalid(t, "create description", err, "at most 4096")
	if n := v.sim.Count(lvmtest.LVM("lvcreate")); n != 0 {
		t.Fatalf("%d lvcreate for refused creates", n)
	}

	vol, err := v.e.VolumeCreate(ctx, sr, strings.Repeat("n", volume.MaxNameBytes), "", gib, false)
	if err != nil {
		t.Fatalf("a name at the limit: %v", err)
	}
	v.sim.Reset()
	wantInvalid(t, "set_name", v.e.VolumeSetName(ctx, sr, vol.Key, over(volume.MaxNameBytes)), "at most 1024")
	wantInvalid(t, "set_description", v.e.VolumeSetDescription(ctx, sr, vol.Key, over(volume.MaxDescriptionBytes)), "at most 4096")
	wantInvalid(t, "set key", v.e.VolumeSet(ctx, sr, vol.Key, over(volume.MaxKeyBytes), "v"), "at most 256")
	wantInvalid(t, "set value", v.e.VolumeSet(ctx, sr, vol.Key, "k", over(volume.MaxValueBytes)), "at most 4096")
	if n := v.sim.Count(lvmtest.LVM("lvchange")); n != 0 {
		t.Fatalf("%d lvchange for refused sets", n)
	}

	// The total: keys at the value limit fill the volume up to its cap.
	val := strings.Repeat("v", volume.MaxValueBytes)
	var err2 error
	n := 0
	for ; n < 10 && err2 == nil; n++ {
		err2 = v.e.VolumeSet(ctx, sr, vol.Key, "key"+string(rune('a'+n)), val)
	}
	wantInvalid(t, "total", err2, "at most 16384 per volume")
	if n != 4 { // 1 KiB name + 3 values of 4 KiB fit, the fourth does not
		t.Errorf("the total cap hit after %d sets", n)
	}
	// Smaller values and removals still work at the cap.
	must(t, v.e.VolumeSet(ctx, sr, vol.Key, "keya", "short"))
	must(t, v.e.VolumeUnset(ctx, sr, vol.Key, "keyb"))

	wantInvalid(t, "SR.set_name", v.e.SRSetName(ctx, sr, over(volume.MaxNameBytes)), "at most 1024")
	wantInvalid(t, "SR.set_description", v.e.SRSetDescription(ctx, sr, over(volume.MaxDescriptionBytes)), "at most 4096")
	_, err = v.e.SRCreate(ctx, "1b2f6c1e-7d3a-4e55-9a0b-3c4d5e6f7a8b", map[string]string{"target": "t"}, over(volume.MaxNameBytes), "")
	wantInvalid(t, "SR.create name", err, "at most 1024")
}

// size=MaxInt64 must not wrap into a negative extent count, and a resize
// to it must not skip the zeroing.
func TestSizeOverflow(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	v.sim.Reset()
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 - 4*mib + 2} {
		_, err := v.e.VolumeCreate(ctx, sr, "n", "", size, false)
		wantInvalid(t, "create", err, "at most")
	}
	_, err := v.e.VolumeCreate(ctx, sr, "n", "", -1, false)
	wantInvalid(t, "negative", err, "negative")
	if n := v.sim.Count(lvmtest.LVM("lvcreate")); n != 0 {
		t.Fatalf("%d lvcreate for refused sizes", n)
	}
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "", gib, false)
	if err != nil {
		t.Fatal(err)
	}
	v.sim.Reset()
	wantInvalid(t, "resize", v.e.VolumeResize(ctx, sr, vol.Key, math.MaxInt64), "at most")
	if n := v.sim.Count(lvmtest.LVM("lvchange")) + v.sim.Count(lvmtest.LVM("lvextend")); n != 0 {
		t.Fatalf("%d LVM changes for a refused resize", n)
	}
}

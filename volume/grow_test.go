package volume_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// rescanTransport is the fake transport plus a Rescan that reports the
// LUN growth, as the iSCSI transport does.
type rescanTransport struct {
	*fakeTransport
	rescans int
}

func (r *rescanTransport) Rescan(ctx context.Context, cfg map[string]string) (bool, error) {
	r.rescans++
	return true, nil
}

// setDeviceSize lays out the stable path -> /dev/dm-7 link and the sysfs
// size the engine reads.
func setDeviceSize(t *testing.T, root host.Root, size int64) {
	t.Helper()
	dm := root.Path("/dev/dm-7")
	if err := os.MkdirAll(filepath.Dir(root.Path(testDev)), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(root.Path(testDev)); err != nil {
		os.WriteFile(dm, nil, 0o600)
		if err := os.Symlink(dm, root.Path(testDev)); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.MkdirAll("/sys/class/block/dm-7", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := root.WriteFile("/sys/class/block/dm-7/size", []byte(strconv.FormatInt(size/512, 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSRStatFollowsLUNGrowth(t *testing.T) {
	for _, master := range []bool{true, false} {
		v := newEnv(t, host.Role{Master: true})
		rt := &rescanTransport{fakeTransport: v.tr}
		e, err := volume.New(volume.Options{LVM: lvm.New(v.sim, nil), Transport: rt, Runner: v.sim, Zeroer: v.sim,
			Locker: host.FileLocker{Root: v.root}, Root: v.root, Role: host.Role{Master: true}, Version: "t"})
		if err != nil {
			t.Fatal(err)
		}
		v.e = e
		sr := v.createSR()
		ctx := context.Background()
		before, err := e.SRStat(ctx, sr)
		if err != nil {
			t.Fatal(err)
		}
		setDeviceSize(t, v.root, 150*gib)
		v.sim.Grow(150 * gib)
		if !master {
			e, _ = volume.New(volume.Options{LVM: lvm.New(v.sim, nil), Transport: rt, Runner: v.sim, Zeroer: v.sim,
				Locker: host.FileLocker{Root: v.root}, Root: v.root, Role: host.Role{MasterAddr: "10.0.0.1"}, Version: "t"})
		}
		after, err := e.SRStat(ctx, sr)
		if err != nil {
			t.Fatal(err)
		}
		if rt.rescans < 2 {
			t.Fatalf("master=%v: the transport was not asked to rescan (%d)", master, rt.rescans)
		}
		grew := after.TotalSpace-before.TotalSpace >= 49*gib
		if grew != master {
			t.Fatalf("master=%v: total %d -> %d", master, before.TotalSpace, after.TotalSpace)
		}
		if master && after.FreeSpace-before.FreeSpace < 49*gib {
			t.Fatalf("free space did not follow: %d -> %d", before.FreeSpace, after.FreeSpace)
		}
		// Nothing left to do: a second stat must not pvresize again.
		n := v.sim.Ops["lvm pvresize"]
		if _, err := e.SRStat(ctx, sr); err != nil {
			t.Fatal(err)
		}
		if master && n != 1 {
			t.Fatalf("pvresize ran %d times to grow once", n)
		}
		if v.sim.Ops["lvm pvresize"] != n {
			t.Fatalf("master=%v: pvresize ran again with nothing to grow", master)
		}
	}
}

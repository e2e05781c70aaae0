package lvm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

const cacheDev = "/dev/disk/by-id/nvme-uuid.5f1c2a9e"

// disk is a fake host.BlockReader: the first bytes of each device.
type disk struct {
	mu    sync.Mutex
	heads map[string][]byte
	err   error
	reads int
	// hang, when set, blocks every read until it is closed: a device
	// whose paths are all down and whose I/O is queued.
	hang chan struct{}
}

func (d *disk) set(dev string, b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.heads[dev] = b
}

func (d *disk) ReadAt(path string, off int64, n int) ([]byte, error) {
	d.mu.Lock()
	hang := d.hang
	d.mu.Unlock()
	if hang != nil {
		<-hang
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reads++
	if off%host.BlockAlign != 0 || n%host.BlockAlign != 0 {
		return nil, errors.New("unaligned O_DIRECT read")
	}
	if d.err != nil {
		return nil, d.err
	}
	h, ok := d.heads[path]
	if !ok {
		return nil, errors.New("no such device")
	}
	b := make([]byte, n)
	if off < int64(len(h)) {
		copy(b, h[off:])
	}
	return b, nil
}

// cacheEnv is a host whose plugin processes share /run: each client()
// stands for one process.
type cacheEnv struct {
	t    *testing.T
	root host.Root
	run  *lvmtest.Runner
	disk *disk
	vg   lvm.VG
	lv   lvm.LV
	// vgsFail, when set, is how the next vgs fails.
	vgsFail *lvmtest.Reply
	// lvsAll answers lvs with every LV field, asked or not.
	lvsAll bool
	// lvsFail, when set, is how every lvs fails.
	lvsFail *lvmtest.Reply
}

func newCacheEnv(t *testing.T) *cacheEnv {
	e := &cacheEnv{t: t, root: host.NewRoot(t.TempDir()), run: &lvmtest.Runner{},
		disk: &disk{heads: map[string][]byte{cacheDev: lvmtest.NewPVHead("pvuuid", 1).Bytes()}},
		vg:   lvm.VG{Name: "VG_sanvol-x", UUID: "vguuid", Size: 1 << 30, Free: 1 << 29, ExtentSize: 4 << 20, LVCount: 1, PVCount: 1},
		lv:   lvm.LV{Name: "v-1", VG: "VG_sanvol-x", UUID: "lvuuid", Size: 8 << 20, Tags: []string{"a"}, Attr: "-wi-ao----"}}
	e.run.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	e.run.OnFunc(lvmtest.LVM("vgs"), func(host.Cmd) lvmtest.Reply {
		if f := e.vgsFail; f != nil {
			e.vgsFail = nil
			return *f
		}
		return lvmtest.VGs(e.vg)
	}, 0)
	e.run.OnFunc(lvmtest.LVM("lvs"), func(c host.Cmd) lvmtest.Reply {
		if e.lvsFail != nil {
			return *e.lvsFail
		}
		if e.lvsAll {
			return lvmtest.LVs(e.lv)
		}
		return lvmtest.LVsOf(lvmtest.Values(c, "-o")[0], e.lv)
	}, 0)
	return e
}

func (e *cacheEnv) client() *lvm.Client {
	return lvm.New(e.run, nil).WithVersionCache(e.root).WithReportCache(e.root, e.disk)
}

func (e *cacheEnv) reports(sub string) int { return e.run.Count(lvmtest.LVM(sub)) }

func (e *cacheEnv) vgs(s lvm.Scope) lvm.VG {
	e.t.Helper()
	vgs, err := e.client().VGs(context.Background(), s, e.vg.Name)
	if err != nil || len(vgs) != 1 {
		e.t.Fatalf("VGs: %v %v", vgs, err)
	}
	return vgs[0]
}

var cacheScope = lvm.Scope{Devices: []string{cacheDev}, ReadOnly: true, Unlocked: true}

func TestReportCacheHitAcrossProcesses(t *testing.T) {
	e := newCacheEnv(t)
	for i := 0; i < 3; i++ {
		if got := e.vgs(cacheScope); got.Free != e.vg.Free {
			t.Fatalf("process %d: free %d, want %d", i, got.Free, e.vg.Free)
		}
	}
	if n := e.reports("vgs"); n != 1 {
		t.Fatalf("3 processes ran vgs %d times with the metadata unchanged, want 1", n)
	}
	// Another command line (another VG name, another scope) is another
	// report.
	e.vgs(lvm.Scope{Devices: []string{cacheDev}})
	if n := e.reports("vgs"); n != 2 {
		t.Fatalf("vgs ran %d times after a read-write scope's first report, want 2", n)
	}
}

func TestReportCacheMissAfterCommit(t *testing.T) {
	e := newCacheEnv(t)
	e.vgs(cacheScope)
	// Another host creates a volume: lvm2 precommits (slot 1 of the
	// header), then commits (slot 0). Each header state is a miss.
	e.vg.Free -= 8 << 20
	head := lvmtest.NewPVHead("pvuuid", 1).Precommitted(2)
	e.disk.set(cacheDev, head.Bytes())
	if got := e.vgs(cacheScope); got.Free != e.vg.Free {
		t.Fatalf("after a precommit: free %d, want %d", got.Free, e.vg.Free)
	}
	if n := e.reports("vgs"); n != 2 {
		t.Fatalf("vgs ran %d times, want 2: a precommit must invalidate", n)
	}
	e.disk.set(cacheDev, lvmtest.NewPVHead("pvuuid", 2).Bytes())
	e.vgs(cacheScope)
	e.vgs(cacheScope)
	if n := e.reports("vgs"); n != 3 {
		t.Fatalf("vgs ran %d times, want 3: the commit invalidates, then hits", n)
	}
	// Old stamps' entries are gone: one stamp directory is left.
	dirs, err := filepath.Glob(e.root.Path(lvm.ReportCacheDir + "/*/*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("stamp directories left: %v %v; want only the current one", dirs, err)
	}
}

func TestReportCacheNoStampRunsLVM(t *testing.T) {
	corrupt := lvmtest.NewPVHead("pvuuid", 1).Bytes()
	corrupt[4096+60]++ // a raw_locn byte: the header's checksum fails
	badLabel := lvmtest.NewPVHead("pvuuid", 1).Bytes()
	badLabel[512+40]++ // the PV uuid: the label's checksum fails
	for _, c := range []struct {
		name string
		head []byte
		err  error
	}{
		{"read error", nil, errors.New("I/O error")},
		{"no PV label", make([]byte, 8192), nil},
		{"torn metadata area header", corrupt, nil},
		{"bad label checksum", badLabel, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newCacheEnv(t)
			e.disk.heads[cacheDev], e.disk.err = c.head, c.err
			e.vgs(cacheScope)
			e.vgs(cacheScope)
			if n := e.reports("vgs"); n != 2 {
				t.Fatalf("vgs ran %d times without a stamp, want 2", n)
			}
		})
	}
	// A scope device that cannot be read, beside one that can.
	e := newCacheEnv(t)
	s := lvm.Scope{Devices: []string{cacheDev, "/dev/nvme0n1"}}
	for i := 0; i < 2; i++ {
		if _, err := e.client().VGs(context.Background(), s, e.vg.Name); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.reports("vgs"); n != 2 {
		t.Fatalf("vgs ran %d times with one device of the scope unreadable, want 2", n)
	}
}

func TestReportCacheHungDeviceRunsLVM(t *testing.T) {
	e := newCacheEnv(t)
	e.disk.hang = make(chan struct{})
	defer close(e.disk.hang)
	c := e.client()
	c.StampTimeout = 10 * time.Millisecond
	start := time.Now()
	if _, err := c.VGs(context.Background(), cacheScope, e.vg.Name); err != nil {
		t.Fatal(err)
	}
	if n := e.reports("vgs"); n != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("vgs ran %d times after %s with the header read hung, want 1 at once", n, time.Since(start))
	}
}

func TestReportCacheFailureNotCached(t *testing.T) {
	e := newCacheEnv(t)
	e.vgsFail = &lvmtest.Reply{Code: 5, Stderr: `  Volume group "VG_sanvol-x" not found`}
	if _, err := e.client().VGs(context.Background(), cacheScope, e.vg.Name); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("first vgs: %v, want not found", err)
	}
	e.vgs(cacheScope)
	e.vgs(cacheScope)
	if n := e.reports("vgs"); n != 2 {
		t.Fatalf("vgs ran %d times, want 2: a failure is not stored", n)
	}
}

func TestReportCacheMissingLV(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	e.lvsFail = &lvmtest.Reply{Code: 5, Stderr: `  Failed to find logical volume "VG_sanvol-x/v-2"`}
	for i := 0; i < 3; i++ {
		_, err := e.client().LVMeta(ctx, cacheScope, e.lv.VG, "v-2")
		if !errors.Is(err, host.ErrNotFound) || lvm.MissingOf(err) != lvm.MissingLV {
			t.Fatalf("LVMeta of a missing LV, call %d: %v (%v)", i, err, lvm.MissingOf(err))
		}
	}
	if n := e.reports("lvs"); n != 1 {
		t.Fatalf("lvs ran %d times for a missing LV with the metadata unchanged, want 1", n)
	}
	// Created since: a commit, so a miss.
	e.disk.set(cacheDev, lvmtest.NewPVHead("pvuuid", 2).Bytes())
	e.lvsFail = nil
	if _, err := e.client().LVMeta(ctx, cacheScope, e.lv.VG, e.lv.Name); err != nil {
		t.Fatal(err)
	}
	// Any other failure (here a missing VG, which is also what LVM says
	// of a device it cannot read) is not stored.
	e.lvsFail = &lvmtest.Reply{Code: 5, Stderr: `  Volume group "VG_sanvol-y" not found`}
	for i := 0; i < 2; i++ {
		if _, err := e.client().LVMeta(ctx, cacheScope, "VG_sanvol-y", e.lv.Name); !errors.Is(err, host.ErrNotFound) {
			t.Fatalf("LVMeta in a missing VG: %v", err)
		}
	}
	if n := e.reports("lvs"); n != 4 {
		t.Fatalf("lvs ran %d times, want 4", n)
	}
}

func TestLVMetaHasNoActivationState(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	// Even a report that carried lv_attr gives no state through LVMeta.
	e.lvsAll = true
	for i := 0; i < 3; i++ {
		l, err := e.client().LVMeta(ctx, cacheScope, e.lv.VG, e.lv.Name)
		if err != nil || l.Attr != "" || l.Active() || l.Open() || l.Size != e.lv.Size || !slices.Equal(l.Tags, e.lv.Tags) {
			t.Fatalf("LVMeta: %+v %v", l, err)
		}
		lvs, err := e.client().LVsMeta(ctx, cacheScope, e.lv.VG)
		if err != nil || len(lvs) != 1 || lvs[0].Attr != "" {
			t.Fatalf("LVsMeta: %+v %v", lvs, err)
		}
	}
	for _, c := range e.run.Calls() {
		if c.Name == "lvm" && c.Args[0] == "lvs" && strings.Contains(lvmtest.Values(c, "-o")[0], "lv_attr") {
			t.Fatalf("a metadata-only read asked for lv_attr: %v", c)
		}
	}
	if n := e.reports("lvs"); n != 2 {
		t.Fatalf("lvs ran %d times for 3 LVMeta and 3 LVsMeta, want 2", n)
	}
	// LV and LVs carry this host's activation state: never cached.
	for i := 0; i < 2; i++ {
		l, err := e.client().LV(ctx, cacheScope, e.lv.VG, e.lv.Name)
		if err != nil || !l.Open() {
			t.Fatalf("LV: %+v %v", l, err)
		}
		if _, err := e.client().LVs(ctx, cacheScope, e.lv.VG); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.reports("lvs"); n != 6 {
		t.Fatalf("lvs ran %d times, want 6: LV and LVs always run", n)
	}
}

// TestReportCacheRealPVHead reads the stamp of PVs that lvm2 made in the
// lab (pvcreate, vgcreate, lvcreate; testdata/FIXTURES.txt): Debian 12's
// 2.03.16 and XCP-ng 8.x dom0's 2.02.180 build, whose on-disk format the
// cache must read alike, and checks that the header after one more
// commit is another stamp.
func TestReportCacheRealPVHead(t *testing.T) {
	for _, v := range []string{"2.03.16", "2.02.180"} {
		t.Run(v, func(t *testing.T) {
			before, err := os.ReadFile("testdata/pv-head-" + v + ".bin")
			if err != nil {
				t.Fatal(err)
			}
			after, err := os.ReadFile("testdata/pv-head-after-commit-" + v + ".bin")
			if err != nil {
				t.Fatal(err)
			}
			e := newCacheEnv(t)
			e.disk.set(cacheDev, before)
			e.vgs(cacheScope)
			e.vgs(cacheScope)
			if n := e.reports("vgs"); n != 1 {
				t.Fatalf("vgs ran %d times on lvm2's own PV head, want 1 (the stamp must parse)", n)
			}
			e.disk.set(cacheDev, after)
			e.vgs(cacheScope)
			if n := e.reports("vgs"); n != 2 {
				t.Fatalf("vgs ran %d times after lvm2 committed, want 2", n)
			}
		})
	}
}

// A scope names the SR's device twice, by its stable path and by the
// kernel name it resolves to: the stamp reads the device once (each read
// is a dd child on a host), and still reads two devices that differ.
func TestReportCacheReadsEachDeviceOnce(t *testing.T) {
	e := newCacheEnv(t)
	if err := e.root.MkdirAll("/dev/disk/by-id", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := e.root.WriteFile("/dev/nvme0n1", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../nvme0n1", e.root.Path(cacheDev)); err != nil {
		t.Fatal(err)
	}
	e.disk.set("/dev/nvme0n1", e.disk.heads[cacheDev])
	two := lvm.Scope{Devices: []string{cacheDev, "/dev/nvme0n1"}, ReadOnly: true, Unlocked: true}
	e.vgs(two)
	e.vgs(two)
	if e.disk.reads != 2 || e.reports("vgs") != 1 {
		t.Fatalf("two calls over one device under two names: %d reads, %d vgs; want 2 and 1", e.disk.reads, e.reports("vgs"))
	}
	if err := os.Remove(e.root.Path(cacheDev)); err != nil {
		t.Fatal(err)
	}
	if err := e.root.WriteFile(cacheDev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.vgs(two)
	if e.disk.reads != 4 {
		t.Fatalf("two devices: %d reads in all, want 4", e.disk.reads)
	}
}

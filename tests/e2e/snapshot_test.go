//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// Issue 17's engine on one host, against the real kernel: a volume
// attached through the datapath (its device is sanvol's own dm device),
// snapshotted and merged live under O_DIRECT writers, and steps killed by
// SIGKILL and repaired from the tags. The snapshot is not a plugin method
// yet, so the engine runs in this process, and the killed steps in a
// helper process (TestSnapshotHelperProcess).

// snapLab is an SR on one NVMe/TCP namespace, the engine on it and a
// datapath like the plugin's.
type snapLab struct {
	*engineLab
	e   *volume.Engine
	sr  string
	vg  string
	dp  *datapath.Datapath
	dm  *blockdev.DM
	ctx context.Context
}

// snapLUNSize holds a 64 MiB volume and three COWs next to the metadata.
const snapLUNSize = (volume.MetadataAreaMiB + 640) << 20

// newISCSIEngineLab is engineLab on a LIO LUN seen through dm-multipath
// over two portals, logged in by the test itself.
func newISCSIEngineLab(t *testing.T, name string, size int64) *engineLab {
	t.Helper()
	tgt := labLIO(t, labtarget.ISCSIOptions{Name: name, Size: size})
	dev := loginISCSI(t, tgt, []string{labtarget.Addr1, labtarget.Addr2})
	l := &engineLab{t: t, dev: dev, log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), root: host.NewRoot("/")}
	l.runner = &countingRunner{Runner: host.NewExecRunner(l.log)}
	l.tr = &labTransport{dev: dev, health: transport.Health{Total: 2, Live: 2}}
	t.Cleanup(func() {
		cfg, _ := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3}, l.scope())
		if out, err := labtarget.Run(context.Background(), "vgchange", "--config", cfg, "-an"); err != nil {
			t.Logf("cleanup vgchange -an: %v %s", err, out)
		}
		for _, a := range mustList(t, l.root) {
			_ = os.Remove(filepath.Join(volume.StateDir, a.UUID+".json"))
		}
	})
	return l
}

// pluginLVM is the LVM client sanvol's own processes use (plugin/services.go,
// newLVM): reports answered from the report cache while the metadata is
// unchanged, activation read from the kernel. The snapshot scenarios run
// the engine and the datapath in the test process; with a bare client
// every lookup of theirs started an `lvm` (0.3-0.45 s of the guest's CPU
// each) where the plugin reads a metadata header; the scenarios then
// measured a costlier engine than the one sanvol ships. The checks
// (cows) keep a bare client: they read LVM itself.
func (l *engineLab) pluginLVM() *lvm.Client {
	return lvm.New(l.runner, l.log).WithVersionCache(l.root).
		WithReportCache(l.root, host.ExecBlockReader{Run: l.runner}).
		WithDMStatus(host.DMControl{Root: l.root})
}

func newSnapLab(t *testing.T, l *engineLab) *snapLab {
	t.Helper()
	lc := l.pluginLVM()
	e := l.engineWith(host.Role{Master: true}, lc)
	sr := l.createSR(e)
	a, err := volume.LoadAttached(l.root, testSRUUID)
	if err != nil {
		t.Fatal(err)
	}
	dm := blockdev.NewDM(l.runner, time.Minute)
	dp := datapath.New(datapath.Deps{LVM: lc, Root: l.root, Locker: host.FileLocker{Root: l.root}, Log: l.log,
		Lookup: func(uuid string) (datapath.SR, error) {
			a, err := volume.LoadAttached(l.root, uuid)
			return datapath.SR{UUID: a.UUID, VG: a.VG, Device: a.Device}, err
		},
		LVName: volume.LVName, Usable: volume.Usable, Role: host.Role{Master: true},
		Stack: &volume.Stack{DM: dm, LVM: lc, Root: l.root, Log: l.log}})
	// Runs before the engine lab's close, which deactivates the VG.
	t.Cleanup(func() {
		names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
		for _, n := range names {
			if name := readSys(n); strings.HasPrefix(name, "sanvol-"+testSRUUID) {
				_, _ = run("dmsetup", "resume", name)
				_, _ = run("dmsetup", "remove", "--retry", name)
			}
		}
		_ = os.RemoveAll(filepath.Join(datapath.StateDir, testSRUUID))
	})
	return &snapLab{engineLab: l, e: e, sr: sr, vg: a.VG, dp: dp, dm: dm, ctx: context.Background()}
}

// cows lists the snapshot keys that have a COW LV.
func (l *snapLab) cows(t *testing.T) []string {
	t.Helper()
	lvs, err := lvm.New(l.runner, l.log).LVs(l.ctx, l.scope(), l.vg)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, lv := range lvs {
		if k, ok := strings.CutPrefix(lv.Name, "s-"); ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// noneSuspended fails if a killed step left any of sanvol's devices
// suspended: every opener of such a device hangs.
func (l *snapLab) noneSuspended(t *testing.T, when string) {
	t.Helper()
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, n := range names {
		name := readSys(n)
		if !strings.HasPrefix(name, "sanvol-") {
			continue
		}
		if readSys(strings.TrimSuffix(n, "name")+"suspended") == "1" {
			t.Fatalf("%s: %s is suspended", when, name)
		}
	}
}

func (l *snapLab) kTable(t *testing.T, key string) blockdev.Table {
	t.Helper()
	tab, err := l.dm.Table(l.ctx, volume.DevName(testSRUUID, key))
	if err != nil || len(tab) != 1 {
		t.Fatalf("K's table: %v %v", tab, err)
	}
	return tab
}

// liveVolume creates a volume and attaches and activates it through the
// datapath as for VM dbid; it returns the volume, its URI and K's device.
func (l *snapLab) liveVolume(t *testing.T, name string, size int64, dbid string) (volume.Volume, string, string) {
	t.Helper()
	v, err := l.e.VolumeCreate(l.ctx, l.sr, name, "", size, false)
	if err != nil {
		t.Fatal(err)
	}
	uri := datapath.URI(testSRUUID, v.Key)
	b, err := l.dp.Attach(l.ctx, uri, dbid)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Activate(l.ctx, uri, dbid); err != nil {
		t.Fatal(err)
	}
	return v, uri, b.Device
}

func stopIO(t *testing.T, io *IOLoad, step string) {
	t.Helper()
	st := io.Stop()
	if len(st.Errors) != 0 {
		t.Fatalf("%s: %d write errors, first: %v", step, len(st.Errors), st.Errors[0])
	}
	if err := io.Verify(); err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	t.Logf("%s: %d writes, 0 errors, longest write %s", step, st.Writes, st.MaxLatency)
}

func TestSnapshotLive(t *testing.T) {
	nvmeLab(t)
	snapshotLive(t, newSnapLab(t, newEngineLab(t, "snaplive", snapLUNSize)))
}

func TestSnapshotLiveISCSI(t *testing.T) {
	nvmeLab(t) // the lab's portal addresses
	snapshotLive(t, newSnapLab(t, newISCSIEngineLab(t, "snaplive", snapLUNSize)))
}

// snapshotLive is the scenario on one SR: snapshots and merges under
// writes, two of them killed and repaired.
//
// The volume is 32 MiB and the writers cover its first half: every step
// still runs under writes and every merge copies a COW full of them, but
// what the lab's CPU pays for scales with these sizes: the volume's
// zeroing, each image sum (a whole-volume read through the stack, eight
// of them), and the merges, whose length the paced writers fill
// (docs/benchmarks.md, "The heaviest single-host scenarios").
func snapshotLive(t *testing.T, l *snapLab) {
	const (
		size = 32 << 20
		span = 16 << 20
	)
	ctx := l.ctx
	v, uri, k := l.liveVolume(t, "k", size, "7")
	if k != volume.DevPath(testSRUUID, v.Key) {
		t.Fatalf("attach gave %s, want sanvol's dm device", k)
	}
	rdev := devNumber(t, k)
	base := lvm.DevicePath(l.vg, volume.LVName(v.Key))
	if tab := l.kTable(t, v.Key); tab[0].Type != "linear" {
		t.Fatalf("a volume without snapshots: %v", tab)
	}

	// 1. Snapshot under writes: 0 errors, the base (S1's image) frozen.
	io1 := StartPatternIO(t, k, span)
	io1.waitWrites(t, 8, time.Minute)
	start := time.Now()
	s1, err := l.e.Snapshot(ctx, l.sr, v.Key, "s1", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot call on a live %d MiB volume: %s", size>>20, time.Since(start))
	io1.waitWrites(t, 8, time.Minute)
	frozen := imageSum(t, base, size)
	io1.waitWrites(t, 8, time.Minute)
	if imageSum(t, base, size) != frozen {
		t.Fatal("S1's image changed after the snapshot")
	}
	stopIO(t, io1, "live snapshot")
	if imageSum(t, k, size) == frozen {
		t.Fatal("K reads S1's image: the writes after the snapshot are missing")
	}

	// 2. A second snapshot, quiet so the content at snapshot time is
	// known: S2's image (the read-only middle device) equals it.
	atS2 := imageSum(t, k, size)
	s2, err := l.e.Snapshot(ctx, l.sr, v.Key, "s2", "")
	if err != nil {
		t.Fatal(err)
	}
	image2 := volume.DevPath(testSRUUID, s2.Key)
	if got := imageSum(t, image2, size); got != atS2 {
		t.Fatal("S2's image is not K's content at snapshot time")
	}
	if got := devNumber(t, k); got != rdev {
		t.Fatalf("K's device number changed from %s to %s at the second snapshot", rdev, got)
	}

	// 3. Delete the older snapshot under writes: S1's COW merges into the
	// base under S2's view; the stack collapses.
	io2 := StartPatternIO(t, k, span)
	io2.waitWrites(t, 8, time.Minute)
	start = time.Now()
	if err := l.e.DeleteSnapshot(ctx, l.sr, s1.Key); err != nil {
		t.Fatal(err)
	}
	t.Logf("delete of the older snapshot (live merge under the newer): %s", time.Since(start))
	io2.waitWrites(t, 8, time.Minute)
	if fileExists(image2) {
		t.Fatal("the middle device is still there after the collapse")
	}
	if got := imageSum(t, base, size); got != atS2 {
		t.Fatal("after the merge the base is not S2's image")
	}
	stopIO(t, io2, "merge of the older snapshot")
	if got := l.cows(t); !slices.Equal(got, []string{s2.Key}) {
		t.Fatalf("COW LVs %v, want S2's only", got)
	}

	// 4. SIGKILL after the switch of a third snapshot, before its commit,
	// with writes running; repair from the tags rolls it forward.
	io3 := StartPatternIO(t, k, span)
	io3.waitWrites(t, 8, time.Minute)
	l.killAt(t, snapHelperArgs{Op: "snapshot", Key: v.Key, Crash: volume.StepSnapshotSwitch})
	io3.waitWrites(t, 8, time.Minute)
	if err := l.e.RepairChain(ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
	l.noneSuspended(t, "after the repair of a killed snapshot")
	cows := l.cows(t)
	if len(cows) != 2 || !slices.Contains(cows, s2.Key) {
		t.Fatalf("COW LVs after rolling a killed snapshot forward: %v", cows)
	}
	s3 := cows[0]
	if s3 == s2.Key {
		s3 = cows[1]
	}

	// 5. SIGKILL in the delete of S2 once its merge started; repair
	// finishes the merge.
	l.killAt(t, snapHelperArgs{Op: "delete", Key: s2.Key, Crash: volume.StepMergeStart})
	io3.waitWrites(t, 8, time.Minute)
	if err := l.e.RepairChain(ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
	l.noneSuspended(t, "after the repair of a killed merge")
	if got := l.cows(t); !slices.Equal(got, []string{s3}) {
		t.Fatalf("COW LVs after finishing a killed merge: %v, want %s", got, s3)
	}
	if tab := l.kTable(t, v.Key); tab[0].Type != "snapshot" {
		t.Fatalf("K after the repaired merge: %v", tab)
	}
	stopIO(t, io3, "killed snapshot and merge, repaired")

	// 6. Delete the last snapshot under writes: K is linear again.
	io4 := StartPatternIO(t, k, span)
	io4.waitWrites(t, 8, time.Minute)
	if err := l.e.DeleteSnapshot(ctx, l.sr, s3); err != nil {
		t.Fatal(err)
	}
	io4.waitWrites(t, 8, time.Minute)
	stopIO(t, io4, "merge of the only snapshot")
	if tab := l.kTable(t, v.Key); tab[0].Type != "linear" {
		t.Fatalf("K after the last merge: %v", tab)
	}
	if imageSum(t, k, size) != imageSum(t, base, size) {
		t.Fatal("K is linear over the base but reads differently")
	}
	if got := l.cows(t); len(got) != 0 {
		t.Fatalf("COW LVs left: %v", got)
	}
	if got := devNumber(t, k); got != rdev {
		t.Fatalf("K's device number changed from %s to %s: blkback would lose it", rdev, got)
	}

	if err := l.dp.Deactivate(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Detach(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if fileExists(k) {
		t.Fatal("K's device is still there after detach")
	}
	if err := l.e.VolumeDestroy(ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
}

// snapHelperEnv carries a helper process's orders (snapHelperArgs, JSON).
const snapHelperEnv = "SANVOL_E2E_SNAP_HELPER"

type snapHelperArgs struct {
	Dev   string // the SR's device
	Op    string // "snapshot", "delete", "destroy" (Volume.destroy) or "clone"
	Key   string // the volume, or the snapshot to delete
	Crash string // the step at which the helper kills itself
}

// killAt runs one step in a helper process that SIGKILLs itself at
// a.Crash, as a crash of the plugin would leave it.
func (l *snapLab) killAt(t *testing.T, a snapHelperArgs) {
	t.Helper()
	a.Dev = l.dev
	b, _ := json.Marshal(a)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSnapshotHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), snapHelperEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper for %s at %s: %v\n%s", a.Op, a.Crash, err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper for %s at %s did not die by SIGKILL: %v\n%s", a.Op, a.Crash, err, out)
	}
	t.Logf("%s killed at %s", a.Op, a.Crash)
}

// TestSnapshotHelperProcess is the helper of TestSnapshotLive and
// TestSnapshotKillEveryStep: it runs one chain operation and kills itself
// at the step it is told.
func TestSnapshotHelperProcess(t *testing.T) {
	raw := os.Getenv(snapHelperEnv)
	if raw == "" {
		t.Skip("a helper process of TestSnapshotLive")
	}
	var a snapHelperArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	runner := host.NewExecRunner(log)
	root := host.NewRoot("/")
	e, err := volume.New(volume.Options{LVM: lvm.New(runner, log), Transport: &labTransport{dev: a.Dev, health: transport.Health{Total: 1, Live: 1}},
		Runner: runner, Locker: host.FileLocker{Root: root}, Root: root, Role: host.Role{Master: true}, Log: log, Version: "lab",
		HostID: host.ID(root),
		Fault: func(step string) {
			if step == a.Crash {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	sr := volume.MakeHandle("nvmetcp", testSRUUID)
	switch a.Op {
	case "snapshot":
		_, err = e.Snapshot(context.Background(), sr, a.Key, "killed", "")
	case "delete":
		err = e.DeleteSnapshot(context.Background(), sr, a.Key)
	case "destroy":
		err = e.VolumeDestroy(context.Background(), sr, a.Key)
	case "clone":
		_, err = e.VolumeClone(context.Background(), sr, a.Key)
	}
	t.Fatalf("%s finished without reaching %s: %v", a.Op, a.Crash, err)
}

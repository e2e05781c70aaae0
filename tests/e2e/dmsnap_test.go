//go:build lab

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/labtarget"
)

// TestDMSnapshotPrimitives drives blockdev.DM through the table sequences
// issue 17's snapshots are built from (research/dm-snapshot-lab.md), on
// dm devices carved from an NVMe/TCP namespace, with O_DIRECT writers
// running through every live switch: snapshot a live volume, a second
// snapshot handed over from the suspended volume (its major:minor kept),
// merging the older snapshot under the newer, collapsing the stack, and
// merging the only snapshot back live.
func TestDMSnapshotPrimitives(t *testing.T) {
	const (
		mib    = 1 << 20
		volume = 64 * mib
		cowLen = 80 * mib
		span   = 32 * mib
	)
	nt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "dmsnap", Size: 256 * mib})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close() })
	disk := connectNVMe(t, nt)

	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	dm := blockdev.NewDM(host.NewExecRunner(log), time.Minute)
	ctx := context.Background()
	region := func(name string, off, n int64) string {
		tab := blockdev.Table{{Length: uint64(n / 512), Type: "linear", Args: fmt.Sprintf("%s %d", disk, off/512)}}
		if err := dm.Create(ctx, name, tab, false); err != nil {
			t.Fatal(err)
		}
		return "/dev/mapper/" + name
	}
	names := []string{"dmsnap-k", "dmsnap-m", "dmsnap-base", "dmsnap-cow1", "dmsnap-cow2"}
	t.Cleanup(func() {
		for _, n := range names {
			_, _ = run("dmsetup", "remove", "--retry", n)
		}
	})
	base := region("dmsnap-base", 0, volume)
	cow1 := region("dmsnap-cow1", volume, cowLen)
	cow2 := region("dmsnap-cow2", volume+cowLen, cowLen)
	zero := blockdev.New(host.NewRoot("/"), log)
	for _, c := range []string{cow1, cow2} {
		// A COW whose first chunk holds old bytes could be read as an
		// existing exception store.
		if err := zero.ZeroOut(ctx, c, 0, 4096); err != nil {
			t.Fatal(err)
		}
	}
	sectors := uint64(volume / 512)
	if err := dm.Create(ctx, "dmsnap-k", blockdev.Linear(base, sectors), false); err != nil {
		t.Fatal(err)
	}
	k := "/dev/mapper/dmsnap-k"
	rdev := devNumber(t, k)
	var statuses []string
	waitMerged := func(name string) {
		t.Helper()
		waitFor(t, name+" merged", 5*time.Minute, func() (bool, string) {
			line, err := dm.Status(ctx, name)
			if err != nil {
				return false, err.Error()
			}
			statuses = append(statuses, line)
			st, err := blockdev.ParseSnapStatus(line)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != "" {
				t.Fatalf("%s: merge stopped: %s", name, line)
			}
			return st.Merged(), line
		})
	}
	stopClean := func(l *IOLoad, step string) {
		t.Helper()
		st := l.Stop()
		if len(st.Errors) != 0 {
			t.Fatalf("%s: %d write errors, first: %v", step, len(st.Errors), st.Errors[0])
		}
		if err := l.Verify(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}

	// 1. Snapshot a live volume: base freezes, K writes into cow1.
	io1 := StartPatternIO(t, k, span)
	io1.waitWrites(t, 8, time.Minute)
	start := time.Now()
	if err := dm.Switch(ctx, "dmsnap-k", blockdev.Snapshot(base, cow1, sectors)); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot switch of a live 64 MiB volume: %s", time.Since(start))
	io1.waitWrites(t, 8, time.Minute)
	frozen := imageSum(t, base, volume)
	io1.waitWrites(t, 8, time.Minute)
	if got := imageSum(t, base, volume); got != frozen {
		t.Fatal("the base changed after the snapshot")
	}
	stopClean(io1, "live snapshot")
	if imageSum(t, k, volume) == frozen {
		t.Fatal("K reads the frozen base: the writes after the snapshot are missing")
	}
	line, err := dm.Status(ctx, "dmsnap-k")
	if err != nil {
		t.Fatal(err)
	}
	statuses = append(statuses, line)

	// 2. A second snapshot, quiet so its content is known: the suspended K
	// hands cow1 to M (read-only, S2), then writes into cow2 over M.
	atSnap2 := imageSum(t, k, volume)
	m := "/dev/mapper/dmsnap-m"
	err = dm.Suspended(ctx, []string{"dmsnap-k"}, func(ctx context.Context) error {
		if err := dm.Create(ctx, "dmsnap-m", blockdev.Snapshot(base, cow1, sectors), true); err != nil {
			return err
		}
		return dm.Load(ctx, "dmsnap-k", blockdev.Snapshot(m, cow2, sectors))
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := imageSum(t, m, volume); got != atSnap2 {
		t.Fatal("the second snapshot's image is not K's content at snapshot time")
	}

	// 3. Delete the older snapshot under the newer, live: M merges cow1
	// into the base while K keeps writing into cow2.
	io2 := StartPatternIO(t, k, span)
	io2.waitWrites(t, 8, time.Minute)
	err = dm.Suspended(ctx, []string{"dmsnap-k", "dmsnap-m"}, func(ctx context.Context) error {
		return dm.Load(ctx, "dmsnap-m", blockdev.SnapshotMerge(base, cow1, sectors))
	})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitMerged("dmsnap-m")
	t.Logf("merge of the older snapshot under the newer: %s", time.Since(start))
	if err := dm.Switch(ctx, "dmsnap-m", blockdev.Linear(base, sectors)); err != nil {
		t.Fatal(err)
	}
	if got := imageSum(t, m, volume); got != atSnap2 {
		t.Fatal("the newer snapshot's image changed while the older merged")
	}
	if got := imageSum(t, base, volume); got != atSnap2 {
		t.Fatal("after the merge the base is not the newer snapshot's image")
	}

	// 4. Collapse: K = snapshot(base, cow2) again, M goes.
	if err := dm.Switch(ctx, "dmsnap-k", blockdev.Snapshot(base, cow2, sectors)); err != nil {
		t.Fatal(err)
	}
	if err := dm.Remove(ctx, "dmsnap-m"); err != nil {
		t.Fatal(err)
	}
	io2.waitWrites(t, 8, time.Minute)
	stopClean(io2, "stacked merge and collapse")

	// 5. Delete the only snapshot, live: merge cow2 into the base, then K
	// is linear over the base again.
	io3 := StartPatternIO(t, k, span)
	io3.waitWrites(t, 8, time.Minute)
	if err := dm.Switch(ctx, "dmsnap-k", blockdev.SnapshotMerge(base, cow2, sectors)); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitMerged("dmsnap-k")
	t.Logf("live merge of the only snapshot: %s", time.Since(start))
	if err := dm.Switch(ctx, "dmsnap-k", blockdev.Linear(base, sectors)); err != nil {
		t.Fatal(err)
	}
	io3.waitWrites(t, 8, time.Minute)
	stopClean(io3, "live merge")
	if imageSum(t, k, volume) != imageSum(t, base, volume) {
		t.Fatal("K is linear over the base but reads differently")
	}
	if got := devNumber(t, k); got != rdev {
		t.Fatalf("K's device number changed from %s to %s: blkback would lose it", rdev, got)
	}
	tab, err := dm.Table(ctx, "dmsnap-k")
	if err != nil || len(tab) != 1 || tab[0].Type != "linear" {
		t.Fatalf("K's table at the end: %v %v", tab, err)
	}
	t.Logf("snapshot status lines seen:\n%s", strings.Join(dedupLines(statuses), "\n"))
}

func devNumber(t *testing.T, p string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Rdev>>8&0xfff, st.Rdev&0xff|st.Rdev>>12&0xfff00)
}

// digest is the sha256 of the first n bytes of dev, read with O_DIRECT:
// for the pool scenarios, which compare it with B's sha256sum and with
// patternCut's model. A comparison inside this process uses imageSum.
func digest(t *testing.T, dev string, n int64) string {
	t.Helper()
	h := sha256.New()
	readDirect(t, dev, n, func(_ int64, buf []byte) { h.Write(buf) })
	return hex.EncodeToString(h.Sum(nil))
}

// imageSum sums the first n bytes of dev, read with O_DIRECT, for a
// comparison with another imageSum of this process (a snapshot's image
// then and now, a volume against its snapshot).
func imageSum(t *testing.T, dev string, n int64) string {
	t.Helper()
	h := newContentHash()
	readDirect(t, dev, n, func(_ int64, buf []byte) { h.Write(buf) })
	return h.Sum()
}

// contentHash is imageSum's hash: two 64-bit maphash sums under seeds
// drawn at start, so two different contents sum alike with a chance of
// about 2^-128, whatever they hold. sha256 guards in addition against
// contents chosen to collide, which the data our writers and the kernel
// put on a volume are not, and it is what the lab's guest CPU (qemu64:
// no SHA or AVX2 instructions) runs slowest: Go's generic sha256 was more
// than half of the test binary's CPU in the snapshot scenarios
// (docs/benchmarks.md, "The test side's CPU").
type contentHash struct{ a, b maphash.Hash }

var contentSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

func newContentHash() *contentHash {
	h := &contentHash{}
	h.a.SetSeed(contentSeeds[0])
	h.b.SetSeed(contentSeeds[1])
	return h
}

func (h *contentHash) Write(p []byte) {
	_, _ = h.a.Write(p)
	_, _ = h.b.Write(p)
}

func (h *contentHash) Sum() string { return fmt.Sprintf("%016x%016x", h.a.Sum64(), h.b.Sum64()) }

func dedupLines(in []string) []string {
	var out []string
	for i, s := range in {
		if i == 0 || s != in[i-1] {
			out = append(out, s)
		}
	}
	return out
}

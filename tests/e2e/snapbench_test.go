//go:build lab

package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/volume"
)

// TestSnapshotBench measures issue 17's snapshots for docs/benchmarks.md,
// as ratios within one run (the guest is emulated): the snapshot call on
// a volume and on one 4 times bigger, sequential writes through K with
// an overlay (first write of a chunk, rewrite) against none, a merge
// against a plain copy of the same data, and the kernel's memory per
// changed chunk (the dm_exception slab).
//
// Run: SANVOL_LAB_BENCH=1 tests/lab/run.sh test -run TestSnapshotBench
func TestSnapshotBench(t *testing.T) {
	nvmeLab(t)
	if os.Getenv("SANVOL_LAB_BENCH") != "1" {
		t.Skip("a benchmark: SANVOL_LAB_BENCH=1 tests/lab/run.sh test -run TestSnapshotBench")
	}
	const (
		mib   = 1 << 20
		small = 64 * mib
		big   = 4 * small
		reps  = 3
	)
	// Both volumes and a COW for each, next to the metadata.
	l := newSnapLab(t, newEngineLab(t, "snapbench", (volume.MetadataAreaMiB+768)<<20))
	ctx := l.ctx
	open := func(name string, size int64, dbid string) (key, dev string) {
		v, uri, dev := l.liveVolume(t, name, size, dbid)
		t.Cleanup(func() {
			_ = l.dp.Deactivate(ctx, uri, dbid)
			_ = l.dp.Detach(ctx, uri, dbid)
		})
		return v.Key, dev
	}
	kKey, k := open("small", small, "7")
	bKey, bDev := open("big", big, "8")
	snap := func(key string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		s, err := l.e.Snapshot(ctx, l.sr, key, "bench", "")
		if err != nil {
			t.Fatal(err)
		}
		return s.Key, time.Since(start)
	}
	del := func(s string) time.Duration {
		t.Helper()
		start := time.Now()
		if err := l.e.DeleteSnapshot(ctx, l.sr, s); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}

	// 1. The snapshot call, live, small against big, alternating which
	// goes first; each snapshot deleted at once (nothing to merge).
	var tSmall, tBig, tEmptyDel []time.Duration
	for i := range reps {
		order := []string{kKey, bKey}
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, key := range order {
			s, d := snap(key)
			if key == kKey {
				tSmall = append(tSmall, d)
			} else {
				tBig = append(tBig, d)
			}
			tEmptyDel = append(tEmptyDel, del(s))
		}
	}
	mSmall, mBig, mEmptyDel := medianOf(tSmall), medianOf(tBig), medianOf(tEmptyDel)
	t.Logf("snapshot call, live, median of %d: %d MiB %s, %d MiB %s: ratio %.2f (size ratio 4); delete with nothing to merge: median %s",
		reps, small/mib, mSmall, big/mib, mBig, ratio(mBig, mSmall), mEmptyDel)
	if ratio(mBig, mSmall) > 2 {
		t.Errorf("the snapshot call on a volume 4 times bigger took %.2f times as long: it grows with the size", ratio(mBig, mSmall))
	}

	// 2. Sequential O_DIRECT writes through K: none, then one overlay
	// (the first write of each chunk allocates an exception, the
	// rewrite finds it), then none again after the merge.
	const n = small / mib
	plain1 := ddMBps(t, k, 0, n)
	s, _ := snap(kKey)
	slab0 := readExceptionSlab(t)
	first := ddMBps(t, k, 0, n)
	slab1 := readExceptionSlab(t)
	rewrite := ddMBps(t, k, 0, n)
	status := mustOutput(t, "dmsetup", "status", volume.DevName(testSRUUID, kKey))
	tMerge := del(s)
	plain2 := ddMBps(t, k, 0, n)
	plain := (plain1 + plain2) / 2
	t.Logf("sequential writes, %d MiB: no overlay %.1f MB/s (before %.1f, after %.1f), first write with an overlay %.1f MB/s (%.2f), rewrite %.1f MB/s (%.2f); K's status with the overlay: %s",
		n, plain, plain1, plain2, first, first/plain, rewrite, rewrite/plain, status)
	if rewrite/plain < 0.3 {
		t.Errorf("rewrites through an overlay ran at %.2f of no overlay's speed", rewrite/plain)
	}
	if first/plain < 0.1 {
		t.Errorf("first writes through an overlay ran at %.2f of no overlay's speed", first/plain)
	}

	// 3. The merge of those n MiB against a plain sequential copy of n
	// MiB (K to the big volume, O_DIRECT both ways).
	start := time.Now()
	mustRun(t, "dd", "if="+k, "of="+bDev, "bs=1M", "count="+strconv.Itoa(int(n)), "iflag=direct", "oflag=direct", "status=none")
	tCopy := time.Since(start)
	tMergeOnly := max(tMerge-mEmptyDel, 0)
	t.Logf("delete of a snapshot with %d MiB changed %s (%.2f × a plain copy of %d MiB, %s); less a delete with nothing to merge: %.2f ×",
		n, tMerge, ratio(tMerge, tCopy), n, tCopy, ratio(tMergeOnly, tCopy))
	if ratio(tMergeOnly, tCopy) > 10 {
		t.Errorf("merging %d MiB took %.1f times a plain copy of it", n, ratio(tMergeOnly, tCopy))
	}

	// 4. Kernel memory per changed chunk: 4 KiB writes into every other
	// 8 KiB chunk of K's first half, so no two exceptions are
	// consecutive (the kernel folds runs of consecutive chunks into one
	// entry).
	s, _ = snap(kKey)
	slab2 := readExceptionSlab(t)
	chunks := stridedWrites(t, k, small/2, 2*snapChunkBytes)
	slab3 := readExceptionSlab(t)
	status = mustOutput(t, "dmsetup", "status", volume.DevName(testSRUUID, kKey))
	tScattered := del(s)
	t.Logf("%d scattered 4 KiB writes (one per changed chunk): K's status %s; delete (merge) %s", chunks, status, tScattered)
	seqChunks := int64(small / snapChunkBytes)
	if slab0.objects < 0 {
		t.Logf("dm_exception slab not readable (%s): no measurement of kernel memory", slab0.source)
		return
	}
	perChunkSeq := float64(slab1.objects-slab0.objects) / float64(seqChunks)
	perChunkScat := float64(slab3.objects-slab2.objects) / float64(chunks)
	const chunksPerGiB = (1 << 30) / snapChunkBytes
	t.Logf("dm_exception slab (%s, %d bytes per object): sequential first writes %d objects for %d chunks (%.4f per chunk, %.0f KiB per GiB changed); scattered %d objects for %d chunks (%.3f per chunk, %.0f KiB per GiB changed)",
		slab0.source, slab0.size, slab1.objects-slab0.objects, seqChunks, perChunkSeq, perChunkSeq*chunksPerGiB*float64(slab0.size)/1024,
		slab3.objects-slab2.objects, chunks, perChunkScat, perChunkScat*chunksPerGiB*float64(slab0.size)/1024)
	if perChunkScat > 1.5 {
		t.Errorf("%.2f dm_exception objects per scattered changed chunk; the kernel keeps one", perChunkScat)
	}
}

// snapChunkBytes is the overlays' exception chunk (blockdev.SnapChunk
// sectors).
const snapChunkBytes = 8 << 10

func medianOf(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// stridedWrites writes 4 KiB with O_DIRECT at every stride bytes of the
// first size bytes of dev and returns how many it wrote.
func stridedWrites(t *testing.T, dev string, size, stride int64) int64 {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Munmap(buf) }()
	var n int64
	for off := int64(0); off < size; off += stride {
		buf[0] = byte(n)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatalf("write %s at %d: %v", dev, off, err)
		}
		n++
	}
	return n
}

// exceptionSlab is the kernel's dm_exception cache: one object per
// completed exception (or run of consecutive ones) of every snapshot
// target (drivers/md/dm-snap.c).
type exceptionSlab struct {
	objects int64 // in use; -1 if unreadable
	size    int64 // bytes per object, with the slab's own overhead
	source  string
}

func readExceptionSlab(t *testing.T) exceptionSlab {
	t.Helper()
	// SLUB: /sys/kernel/slab/<cache>, a link to a shared cache when the
	// kernel merged caches of one size (the count is then the shared
	// cache's).
	const dir = "/sys/kernel/slab/dm_exception"
	if objs := strings.Fields(readSys(dir + "/objects")); len(objs) > 0 {
		o, err1 := strconv.ParseInt(objs[0], 10, 64)
		sz, err2 := strconv.ParseInt(readSys(dir+"/slab_size"), 10, 64)
		if err1 == nil && err2 == nil {
			src := dir
			if target, err := os.Readlink(dir); err == nil {
				src += " -> " + target
			}
			return exceptionSlab{objects: o, size: sz, source: src}
		}
	}
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return exceptionSlab{objects: -1, source: fmt.Sprintf("no %s; /proc/slabinfo: %v", dir, err)}
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[0] == "dm_exception" {
			o, err1 := strconv.ParseInt(f[1], 10, 64)
			sz, err2 := strconv.ParseInt(f[3], 10, 64)
			if err1 == nil && err2 == nil {
				return exceptionSlab{objects: o, size: sz, source: "/proc/slabinfo"}
			}
		}
	}
	return exceptionSlab{objects: -1, source: "no dm_exception in " + dir + " or /proc/slabinfo"}
}

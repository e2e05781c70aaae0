//go:build lab

package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// TestSnapshotBench measures issue 17's snapshots for docs/benchmarks.md,
// as ratios within one run (the guest is emulated):
//
//  1. the live snapshot call on volumes of 64 MiB, 1 GiB and 4 GiB;
//  2. sequential (1 MiB) and random 4 KiB O_DIRECT writes through K with
//     one overlay, on the first write of each chunk and on the rewrite,
//     against a volume with no overlay, in alternating rounds;
//  3. K written whole once through the overlay: the COW, sized by sanvol
//     to the volume, must not fill (dmsetup status never Invalid);
//  4. the kernel's merge of that overlay, from the reload to
//     snapshot-merge to the kernel reporting every exception merged,
//     against dd copying as much data between two volumes of the SR;
//  5. the kernel memory per changed chunk: the dm_exception slab and
//     /proc/meminfo's SUnreclaim, for sequential and for scattered
//     changed chunks;
//  6. the same for every chunk of K changed in an order the kernel
//     cannot fold: the worst case per GiB of volume.
//
// TestSnapshotBenchISCSI is the same on an iSCSI LUN through
// dm-multipath (two portals).
//
// Run: SANVOL_LAB_BENCH=1 tests/lab/run.sh test -run '^TestSnapshotBench(ISCSI)?$'
func TestSnapshotBench(t *testing.T) {
	nvmeLab(t)
	benchOnly(t)
	snapshotBench(t, func(size int64) *engineLab { return newEngineLab(t, "snapbench", size) })
}

func TestSnapshotBenchISCSI(t *testing.T) {
	nvmeLab(t) // the lab's portal addresses
	benchOnly(t)
	snapshotBench(t, func(size int64) *engineLab { return newISCSIEngineLab(t, "snapbench", size) })
}

func benchOnly(t *testing.T) {
	if os.Getenv("SANVOL_LAB_BENCH") != "1" {
		t.Skip("a benchmark: SANVOL_LAB_BENCH=1 tests/lab/run.sh test -run '^TestSnapshotBench(ISCSI)?$'")
	}
}

func snapshotBench(t *testing.T, newLab func(size int64) *engineLab) {
	const (
		mib   = int64(1) << 20
		gib   = mib << 10
		kSize = 256 * mib
		seq   = kSize / 2 // the sequential writes' span, at K's start
		reps  = 5
	)
	sizes := []int64{64 * mib, gib, 4 * gib}
	// The target's backing file is sparse on the guest's tmpfs, so it
	// holds only what is written: the 1 and 4 GiB volumes are grown
	// outside sanvol (below) and never written, and only one COW exists
	// at a time.
	lun := volume.MetadataAreaMiB*mib + 64*mib + gib + 4*gib + 2*kSize + (4*gib + 64*mib)
	l := newSnapLab(t, newLab(lun))
	ctx := l.ctx
	a, err := volume.LoadAttached(l.root, testSRUUID)
	if err != nil {
		t.Fatal(err)
	}
	lc := lvm.New(l.runner, l.log)
	// open creates a volume and attaches and activates it as VM dbid
	// would. Volume.create zeroes the whole volume and the lab's zeroes
	// are real pages in the guest's RAM (tmpfs has no ZERO_RANGE), so a
	// sparse volume is created at 64 MiB and its LV then grown with
	// lvextend: the added extents were never written and read as zeroes.
	// Neither the snapshot call nor its delete reads the volume's data.
	open := func(name string, size int64, dbid string, sparse bool) (key, dev string) {
		t.Helper()
		create := size
		if sparse {
			create = min(size, 64*mib)
		}
		v, err := l.e.VolumeCreate(ctx, l.sr, name, "", create, false)
		if err != nil {
			t.Fatal(err)
		}
		if size > create {
			if err := lc.LVExtend(ctx, l.scope(), l.vg, volume.LVName(v.Key), size/a.ExtentSize); err != nil {
				t.Fatal(err)
			}
		}
		uri := datapath.URI(testSRUUID, v.Key)
		b, err := l.dp.Attach(ctx, uri, dbid)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = l.dp.Deactivate(ctx, uri, dbid)
			_ = l.dp.Detach(ctx, uri, dbid)
		})
		if err := l.dp.Activate(ctx, uri, dbid); err != nil {
			t.Fatal(err)
		}
		return v.Key, b.Device
	}
	keys := make([]string, len(sizes))
	devs := make([]string, len(sizes))
	for i, size := range sizes {
		keys[i], devs[i] = open(fmt.Sprintf("size%d", i), size, strconv.Itoa(10+i), true)
	}
	kKey, k := open("k", kSize, "7", false)
	kName := volume.DevName(testSRUUID, kKey)

	// The snapshots and merges run through an engine whose step hook
	// notes when each step ends and, at a merge's start (the table just
	// reloaded as snapshot-merge), watches the kernel's status until
	// every exception is merged: the engine itself polls only every
	// 500 ms and then switches tables.
	type stepAt struct {
		step string
		at   time.Time
	}
	var (
		steps       []stepAt
		watch       string // the merging device
		kernelMerge time.Duration
		hookErr     error
	)
	me, err := volume.New(volume.Options{LVM: lc, Transport: l.tr, Runner: l.runner, Locker: host.FileLocker{Root: l.root},
		Root: l.root, Role: host.Role{Master: true}, Log: l.log, Version: "lab",
		Fault: func(step string) {
			steps = append(steps, stepAt{step, time.Now()})
			if step != volume.StepMergeStart {
				return
			}
			start := time.Now()
			for time.Since(start) < 15*time.Minute {
				line, err := l.dm.Status(ctx, watch)
				if err != nil {
					hookErr = err
					return
				}
				st, err := blockdev.ParseSnapStatus(line)
				if err != nil || st.State != "" {
					hookErr = fmt.Errorf("merge status %q: %v", line, err)
					return
				}
				if st.Merged() {
					kernelMerge = time.Since(start)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			hookErr = fmt.Errorf("no merge within 15 minutes")
		}})
	if err != nil {
		t.Fatal(err)
	}
	// snap returns the call's time and each step's, from the previous
	// step's end (the first from the call's start).
	snap := func(key string) (string, time.Duration, map[string]time.Duration) {
		t.Helper()
		steps = nil
		start := time.Now()
		s, err := me.Snapshot(ctx, l.sr, key, "bench", "")
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		per := map[string]time.Duration{}
		prev := start
		for _, st := range steps {
			per[st.step] = st.at.Sub(prev)
			prev = st.at
		}
		return s.Key, d, per
	}
	del := func(key, s string) time.Duration {
		t.Helper()
		watch, kernelMerge, hookErr = volume.DevName(testSRUUID, key), 0, nil
		start := time.Now()
		if err := me.DeleteSnapshot(ctx, l.sr, s); err != nil {
			t.Fatal(err)
		}
		if hookErr != nil {
			t.Fatal(hookErr)
		}
		return time.Since(start)
	}
	kStatus := func(when string) blockdev.SnapStatus {
		t.Helper()
		line, err := l.dm.Status(ctx, kName)
		if err != nil {
			t.Fatal(err)
		}
		st, err := blockdev.ParseSnapStatus(line)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != "" {
			t.Fatalf("%s: K's overlay stopped: %q", when, line)
		}
		return st
	}

	// 1. The snapshot call, live, on each size, rotating which goes
	// first; each snapshot deleted at once (nothing to merge).
	calls := make([][]time.Duration, len(sizes))
	stepTimes := make([]map[string][]time.Duration, len(sizes))
	var emptyDel []time.Duration
	for r := range reps {
		for j := range sizes {
			i := (j + r) % len(sizes)
			s, d, per := snap(keys[i])
			calls[i] = append(calls[i], d)
			for step, sd := range per {
				if stepTimes[i] == nil {
					stepTimes[i] = map[string][]time.Duration{}
				}
				stepTimes[i][step] = append(stepTimes[i][step], sd)
			}
			emptyDel = append(emptyDel, del(keys[i], s))
		}
	}
	for i, size := range sizes {
		var parts []string
		for _, step := range []string{volume.StepSnapshotCOW, volume.StepSnapshotZero, volume.StepSnapshotIntent, volume.StepSnapshotSwitch, volume.StepSnapshotCommit} {
			parts = append(parts, fmt.Sprintf("%s %s", step, medianOf(stepTimes[i][step]).Round(time.Millisecond)))
		}
		t.Logf("snapshot call, live, %d MiB: median %s (%.2f of the 64 MiB volume's), all %v; median per step: %s",
			size/mib, medianOf(calls[i]).Round(time.Millisecond), ratio(medianOf(calls[i]), medianOf(calls[0])), roundAll(calls[i]), strings.Join(parts, ", "))
	}
	t.Logf("delete with nothing to merge: median %s", medianOf(emptyDel).Round(time.Millisecond))
	if r := ratio(medianOf(calls[len(sizes)-1]), medianOf(calls[0])); r > 2 {
		t.Errorf("the snapshot call on a volume 64 times bigger took %.2f times as long: it grows with the size", r)
	}

	// 2. Throughput: K with one overlay against P, a volume of K's size
	// with none, in alternating rounds, so that the emulation's swings
	// hit both alike. Sequential: 1 MiB writes over the first half, 4
	// rounds of 32 MiB; random: 4 KiB at the start of 4,096 distinct
	// chunks of the second half in random order, 4 rounds of 1,024.
	// First every chunk's first write since the snapshot, then the
	// rewrite, each paired with P's writes of the same blocks.
	_, p := open("p", kSize, "8", false)
	const rounds = 4
	seqRound := seq / rounds
	rng := rand.New(rand.NewPCG(17, 17))
	var randOffs []int64
	for _, c := range rng.Perm(int(kSize / 2 / snapChunkBytes))[:4096] {
		randOffs = append(randOffs, kSize/2+int64(c)*snapChunkBytes)
	}
	randRound := len(randOffs) / rounds
	seqW := func(dev string, r int) time.Duration {
		start := time.Now()
		mustRun(t, "dd", "if=/dev/zero", "of="+dev, "bs=1M", "count="+strconv.FormatInt(seqRound/mib, 10),
			"seek="+strconv.FormatInt(int64(r)*seqRound/mib, 10), "oflag=direct", "status=none")
		return time.Since(start)
	}
	randW := func(dev string, r int) time.Duration {
		return writes4K(t, dev, randOffs[r*randRound:(r+1)*randRound], 1)
	}
	mbps := func(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }
	// copyMBps copies as much as K holds from P to the 1 GiB volume
	// (O_DIRECT both ways): two volumes of the SR, as the merge reads
	// the COW and writes the base. The first, unmeasured, allocates the
	// target's pages in the guest's tmpfs.
	copyMBps := func() float64 {
		start := time.Now()
		mustRun(t, "dd", "if="+p, "of="+devs[1], "bs=1M", "count="+strconv.FormatInt(kSize/mib, 10), "iflag=direct", "oflag=direct", "status=none")
		return mbps(kSize, time.Since(start))
	}
	copyMBps()

	s, _, _ := snap(kKey)
	var tPlainSeq1, tFirstSeq, tPlainSeq2, tReSeq, tPlainRand1, tFirstRand, tPlainRand2, tReRand time.Duration
	slab0, mem0 := readExceptionSlab(t), meminfoKiB(t)
	for r := range rounds {
		tPlainSeq1 += seqW(p, r)
		tFirstSeq += seqW(k, r)
	}
	slab1, mem1 := readExceptionSlab(t), meminfoKiB(t)
	for r := range rounds {
		tPlainSeq2 += seqW(p, r)
		tReSeq += seqW(k, r)
	}
	for r := range rounds {
		tPlainRand1 += randW(p, r)
		tFirstRand += randW(k, r)
	}
	for r := range rounds {
		tPlainRand2 += randW(p, r)
		tReRand += randW(k, r)
	}
	randBytes := int64(len(randOffs)) * 4096
	t.Logf("sequential 1 MiB writes, %d MiB in %d rounds alternating with a volume with no overlay: first write of each chunk %.1f MB/s against %.1f (%.2f), rewrite %.1f against %.1f (%.2f)",
		seq/mib, rounds, mbps(seq, tFirstSeq), mbps(seq, tPlainSeq1), ratio(tPlainSeq1, tFirstSeq), mbps(seq, tReSeq), mbps(seq, tPlainSeq2), ratio(tPlainSeq2, tReSeq))
	t.Logf("random 4 KiB writes into %d distinct chunks in %d rounds alike: first write of each chunk %.2f MB/s against %.2f (%.2f), rewrite %.2f against %.2f (%.2f)",
		len(randOffs), rounds, mbps(randBytes, tFirstRand), mbps(randBytes, tPlainRand1), ratio(tPlainRand1, tFirstRand), mbps(randBytes, tReRand), mbps(randBytes, tPlainRand2), ratio(tPlainRand2, tReRand))
	if ratio(tPlainSeq1, tFirstSeq) < 0.1 || ratio(tPlainSeq2, tReSeq) < 0.3 {
		t.Errorf("sequential writes through an overlay ran at %.2f (first) and %.2f (rewrite) of no overlay's speed", ratio(tPlainSeq1, tFirstSeq), ratio(tPlainSeq2, tReSeq))
	}

	// 3. The rest of K, then all of it again: every chunk of the volume
	// has an exception, and the COW must still have room.
	ddMBps(t, k, 0, int(kSize/mib))
	full := kStatus("K written whole through the overlay")
	ddMBps(t, k, 0, int(kSize/mib))
	full2 := kStatus("K written whole twice")
	t.Logf("K (%d MiB) written whole through one overlay: COW %d/%d sectors used (%.1f %%), %d of them metadata; written again: %d/%d; never Invalid",
		kSize/mib, full.Allocated, full.Total, 100*float64(full.Allocated)/float64(full.Total), full.Metadata, full2.Allocated, full2.Total)
	if full2.Allocated != full.Allocated {
		t.Errorf("rewriting K allocated %d more COW sectors", full2.Allocated-full.Allocated)
	}

	// 4. The merge of all of K against dd copying as much, just before
	// and just after.
	copy1 := copyMBps()
	tDel := del(kKey, s)
	seqMerge := kernelMerge
	copy2 := copyMBps()
	copyRate, mergeRate := (copy1+copy2)/2, mbps(kSize, seqMerge)
	t.Logf("merge of %d MiB (every chunk of K), reload to the kernel's merged status: %s, %.1f MB/s; dd copy of %d MiB between two volumes of the SR: %.1f MB/s (before %.1f, after %.1f); merge/copy speed %.2f; the whole delete call %s",
		kSize/mib, seqMerge, mergeRate, kSize/mib, copyRate, copy1, copy2, mergeRate/copyRate, tDel)
	if mergeRate/copyRate < 0.1 {
		t.Errorf("the merge ran at %.2f of a plain copy's speed", mergeRate/copyRate)
	}

	// 5. Kernel memory: 4 KiB writes into every other chunk of K, so no
	// two exceptions are consecutive (the kernel folds a run of chunks
	// consecutive on both the origin and the COW into one entry), four
	// writers at a time.
	s, _, _ = snap(kKey)
	slab2, mem2 := readExceptionSlab(t), meminfoKiB(t)
	var strided []int64
	for off := int64(0); off < kSize; off += 2 * snapChunkBytes {
		strided = append(strided, off)
	}
	writes4K(t, k, strided, 4)
	slab3, mem3 := readExceptionSlab(t), meminfoKiB(t)
	scat := kStatus("scattered writes")
	del(kKey, s)
	scatMerge := kernelMerge
	slab4, mem4 := readExceptionSlab(t), meminfoKiB(t)
	t.Logf("%d scattered changed chunks: COW %d/%d sectors, %d metadata; their merge %s (%.2f of the sequential merge's speed per chunk)",
		len(strided), scat.Allocated, scat.Total, scat.Metadata, scatMerge,
		(float64(len(strided))/scatMerge.Seconds())/(float64(kSize/snapChunkBytes)/seqMerge.Seconds()))
	seqChunks := seq / snapChunkBytes
	const chunksPerGiB = (1 << 30) / snapChunkBytes
	t.Logf("SUnreclaim: sequential %d chunks %+d KiB; scattered %d chunks %+d KiB (%.1f bytes per chunk, %.2f MiB per GiB changed), %+d KiB after their merge; Slab %+d KiB",
		seqChunks, mem1["SUnreclaim"]-mem0["SUnreclaim"], len(strided), mem3["SUnreclaim"]-mem2["SUnreclaim"],
		float64(mem3["SUnreclaim"]-mem2["SUnreclaim"])*1024/float64(len(strided)),
		float64(mem3["SUnreclaim"]-mem2["SUnreclaim"])*chunksPerGiB/float64(len(strided))/1024,
		mem4["SUnreclaim"]-mem3["SUnreclaim"], mem3["Slab"]-mem2["Slab"])
	if slab0.objects < 0 {
		t.Logf("dm_exception slab not readable (%s): no count of objects", slab0.source)
		return
	}
	perSeq := float64(slab1.objects-slab0.objects) / float64(seqChunks)
	perScat := float64(slab3.objects-slab2.objects) / float64(len(strided))
	t.Logf("dm_exception slab (%s, %d bytes per object): sequential %d objects for %d chunks (%.4f per chunk, %.0f KiB per GiB changed); scattered %d objects for %d chunks (%.3f per chunk, %.0f KiB per GiB changed); %+d objects after the merge",
		slab0.source, slab0.size, slab1.objects-slab0.objects, seqChunks, perSeq, perSeq*chunksPerGiB*float64(slab0.size)/1024,
		slab3.objects-slab2.objects, len(strided), perScat, perScat*chunksPerGiB*float64(slab0.size)/1024, slab4.objects-slab3.objects)
	if perScat > 1.5 {
		t.Errorf("%.2f dm_exception objects per scattered changed chunk; the kernel keeps one", perScat)
	}

	// 6. The worst case per GiB of volume: every chunk of K changed,
	// from the last to the first by one writer. Each new exception's COW
	// chunk follows the previous one's while its origin chunk precedes
	// it, so the kernel folds none (dm_insert_exception joins a chunk to
	// a neighbour only when both numbers are consecutive).
	s, _, _ = snap(kKey)
	slab5, mem5 := readExceptionSlab(t), meminfoKiB(t)
	var down []int64
	for off := kSize - snapChunkBytes; off >= 0; off -= snapChunkBytes {
		down = append(down, off)
	}
	writes4K(t, k, down, 1)
	slab6, mem6 := readExceptionSlab(t), meminfoKiB(t)
	all := kStatus("every chunk written backwards")
	del(kKey, s)
	downMerge := kernelMerge
	slab7 := readExceptionSlab(t)
	perDown := float64(slab6.objects-slab5.objects) / float64(len(down))
	t.Logf("every chunk of K changed backwards (%d chunks): COW %d/%d sectors, %d metadata; dm_exception %+d objects (%.3f per chunk, %.0f KiB per GiB of volume), %+d after the merge; SUnreclaim %+d KiB (%.1f bytes per chunk); merge %s",
		len(down), all.Allocated, all.Total, all.Metadata, slab6.objects-slab5.objects, perDown, perDown*chunksPerGiB*float64(slab5.size)/1024,
		slab7.objects-slab6.objects, mem6["SUnreclaim"]-mem5["SUnreclaim"], float64(mem6["SUnreclaim"]-mem5["SUnreclaim"])*1024/float64(len(down)), downMerge)
	if perDown > 1.5 {
		t.Errorf("%.2f dm_exception objects per changed chunk; the kernel keeps one", perDown)
	}
}

// snapChunkBytes is the overlays' exception chunk (blockdev.SnapChunk
// sectors).
const snapChunkBytes = blockdev.SnapChunk * 512

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(10 * time.Millisecond)
	}
	return out
}

func medianOf(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// writes4K writes 4 KiB with O_DIRECT at each offset of dev, spread over
// workers writers (offset i to writer i mod workers), and returns the
// time it took.
func writes4K(t *testing.T, dev string, offs []int64, workers int) time.Duration {
	t.Helper()
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = writeAt4K(dev, offs, w, workers)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return elapsed
}

func writeAt4K(dev string, offs []int64, first, step int) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: an anonymous mapping is.
	buf, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer func() { _ = syscall.Munmap(buf) }()
	for i := first; i < len(offs); i += step {
		buf[0] = byte(i)
		if _, err := f.WriteAt(buf, offs[i]); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, offs[i], err)
		}
	}
	return nil
}

// meminfoKiB reads /proc/meminfo's fields, in KiB.
func meminfoKiB(t *testing.T) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				m[strings.TrimSuffix(f[0], ":")] = v
			}
		}
	}
	return m
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

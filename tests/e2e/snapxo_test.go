//go:build lab

package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// Xen Orchestra's backup pattern (issue 17, "Must show"), on one host:
// every round takes a snapshot of the running disk, reads the snapshot's
// image whole (the export) and deletes the previous round's snapshot
// (a live merge under the newer one), while the disk's writer never
// stops. The writer is seqWriter, whose content after any number of
// writes is known, so each image is checked against the disk's content
// at the instant the snapshot froze it.

// seqWriter writes 1 MiB O_DIRECT chunks round and round a whole volume,
// one at a time, paced like IOLoad. Write i (from 0) puts pass i/chunks+1
// into chunk i%chunks, so the volume's content after n completed writes
// is modelled by n alone.
type seqWriter struct {
	dev    string
	f      *os.File
	buf    []byte
	chunks int
	// from is the number of the writer's first write (startSeqWriterAt).
	from int64
	stop atomic.Bool
	done chan struct{}
	// started counts writes issued, completed the ones returned: at most
	// one write is in flight.
	started, completed atomic.Int64

	mu     sync.Mutex
	errs   []error
	maxLat time.Duration
}

func startSeqWriter(t *testing.T, dev string, size int64) *seqWriter {
	t.Helper()
	return startSeqWriterAt(t, dev, size, 0)
}

// startSeqWriterAt starts a writer that goes on from write from, as if
// the volume held a halted writer's content after from writes: a
// scenario halts the writer to read the volume at a known point and
// resumes it with one model.
func startSeqWriterAt(t *testing.T, dev string, size, from int64) *seqWriter {
	t.Helper()
	f, buf := openDirect(t, dev)
	w := &seqWriter{dev: dev, f: f, buf: buf, chunks: int(size / ioChunk), done: make(chan struct{}), from: from}
	w.started.Store(from)
	w.completed.Store(from)
	go w.run()
	t.Cleanup(func() { w.halt() })
	return w
}

func (w *seqWriter) run() {
	defer close(w.done)
	for i := int(w.from); !w.stop.Load(); i++ {
		c := i % w.chunks
		fillChunk(w.buf, uint32(i/w.chunks+1), c)
		w.started.Store(int64(i + 1))
		start := time.Now()
		_, err := w.f.WriteAt(w.buf, int64(c)*ioChunk)
		lat := time.Since(start)
		w.completed.Store(int64(i + 1))
		w.mu.Lock()
		w.maxLat = max(w.maxLat, lat)
		if err != nil {
			w.errs = append(w.errs, fmt.Errorf("write %d (chunk %d) after %s: %w", i, c, lat, err))
		}
		w.mu.Unlock()
		if lat < ioInterval {
			time.Sleep(ioInterval - lat)
		}
	}
}

// halt stops the writer and returns how many writes completed.
func (w *seqWriter) halt() int64 {
	if w.stop.CompareAndSwap(false, true) {
		<-w.done
		_ = syscall.Munmap(w.buf)
		w.f.Close()
	}
	return w.completed.Load()
}

func (w *seqWriter) wait(t *testing.T, n int64) {
	t.Helper()
	base := w.completed.Load()
	waitFor(t, fmt.Sprintf("%d more writes to %s", n, w.dev), time.Minute, func() (bool, string) {
		got := w.completed.Load() - base
		return got >= n, fmt.Sprintf("%d writes", got)
	})
}

// passAt is the pass chunk c holds after the first n writes (0: never
// written).
func (w *seqWriter) passAt(c int, n int64) uint32 {
	if n <= int64(c) {
		return 0
	}
	return uint32((n-1-int64(c))/int64(w.chunks) + 1)
}

// match reads dev whole and finds the number of writes n, lo <= n <= hi,
// after which the writer's volume held exactly dev's content, and
// returns dev's imageSum and n. Every chunk is compared whole with the
// pattern of the pass it names, so at n dev's content is the model's
// byte for byte (a sum of the model to compare would add nothing).
func (w *seqWriter) match(t *testing.T, dev string, lo, hi int64) (string, int64) {
	t.Helper()
	h := newContentHash()
	got := make([]uint32, w.chunks)
	want := make([]byte, ioChunk)
	readDirect(t, dev, int64(w.chunks)*ioChunk, func(off int64, buf []byte) {
		h.Write(buf)
		c := int(off / ioChunk)
		word := binary.LittleEndian.Uint64(buf)
		p := uint32(word >> 40)
		fillChunk(want, p, c)
		if !bytes.Equal(buf, want) {
			t.Fatalf("%s: chunk %d holds no pass of the writer's pattern (first word %#x)", dev, c, word)
		}
		got[c] = p
	})
	for n := lo; n <= hi; n++ {
		same := true
		for c := range got {
			same = same && w.passAt(c, n) == got[c]
		}
		if !same {
			continue
		}
		if c := slices.Index(got, 0); c >= 0 {
			t.Fatalf("%s: chunk %d is not written after %d writes", dev, c, n)
		}
		return h.Sum(), n
	}
	t.Fatalf("%s holds passes %v: not the volume's content after any of writes %d..%d", dev, got, lo, hi)
	return "", 0
}

// sanvolDevs lists the dm devices of the lab SR on this host.
func sanvolDevs() []string {
	var out []string
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, n := range names {
		if name := readSys(n); strings.HasPrefix(name, "sanvol-"+testSRUUID) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// xoLUNSize holds a 32 MiB volume and two COWs next to the metadata.
const xoLUNSize = (volume.MetadataAreaMiB + 192) << 20

func TestSnapshotXOBackup(t *testing.T) {
	nvmeLab(t)
	const (
		size   = 32 << 20
		rounds = 10
	)
	l := newSnapLab(t, newEngineLab(t, "snapxo", xoLUNSize))
	ctx := l.ctx
	v, uri, k := l.liveVolume(t, "k", size, "7")
	rdev := devNumber(t, k)
	base := lvm.DevicePath(l.vg, volume.LVName(v.Key))

	w := startSeqWriter(t, k, size)
	// One full pass first: from then on the model covers every chunk.
	w.wait(t, int64(w.chunks)+4)

	var prev string
	var snapTimes, delTimes []time.Duration
	for r := 1; r <= rounds; r++ {
		lo := w.completed.Load()
		start := time.Now()
		s, err := l.e.Snapshot(ctx, l.sr, v.Key, fmt.Sprintf("xo-%d", r), "")
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		snapTimes = append(snapTimes, time.Since(start))
		hi := w.started.Load()
		// The export: the newest snapshot's image is the read-only
		// middle device while the previous snapshot lives, the base LV
		// once it is alone.
		image := base
		if prev != "" {
			image = volume.DevPath(testSRUUID, s.Key)
		}
		sum, n := w.match(t, image, lo, hi)
		w.wait(t, 4)
		if prev != "" {
			start = time.Now()
			if err := l.e.DeleteSnapshot(ctx, l.sr, prev); err != nil {
				t.Fatalf("round %d: delete of the previous snapshot: %v", r, err)
			}
			delTimes = append(delTimes, time.Since(start))
			if fileExists(image) {
				t.Fatalf("round %d: the middle device is still there after the merge", r)
			}
			// The image now is the base, into which the previous
			// snapshot's changes were merged.
			if got := imageSum(t, base, size); got != sum {
				t.Fatalf("round %d: after the merge the base is not the snapshot's image", r)
			}
		}
		w.wait(t, 4)
		if got := l.cows(t); !slices.Equal(got, []string{s.Key}) {
			t.Fatalf("round %d: COW LVs %v, want the newest snapshot's %s only", r, got, s.Key)
		}
		if got := sanvolDevs(); !slices.Equal(got, []string{volume.DevName(testSRUUID, v.Key)}) {
			t.Fatalf("round %d: sanvol devices %v, want K's only", r, got)
		}
		l.noneSuspended(t, fmt.Sprintf("round %d", r))
		if got := devNumber(t, k); got != rdev {
			t.Fatalf("round %d: K's device number changed from %s to %s", r, rdev, got)
		}
		t.Logf("round %d: snapshot %s, image = K after write %d (of %d..%d), sum %.12s", r, s.Key, n, lo, hi, sum)
		prev = s.Key
	}

	start := time.Now()
	if err := l.e.DeleteSnapshot(ctx, l.sr, prev); err != nil {
		t.Fatal(err)
	}
	t.Logf("delete of the last snapshot (merge into the base): %s", time.Since(start))
	w.wait(t, 4)
	n := w.halt()
	w.mu.Lock()
	errs, maxLat := w.errs, w.maxLat
	w.mu.Unlock()
	if len(errs) != 0 {
		t.Fatalf("%d write errors, first: %v", len(errs), errs[0])
	}
	if _, got := w.match(t, k, n, n); got != n {
		t.Fatalf("K holds the content after write %d, want %d", got, n)
	}
	if imageSum(t, base, size) != imageSum(t, k, size) {
		t.Fatal("K is linear over the base but reads differently")
	}
	if tab := l.kTable(t, v.Key); tab[0].Type != "linear" {
		t.Fatalf("K after the last merge: %v", tab)
	}
	if got := l.cows(t); len(got) != 0 {
		t.Fatalf("COW LVs left: %v", got)
	}
	if got := sanvolDevs(); !slices.Equal(got, []string{volume.DevName(testSRUUID, v.Key)}) {
		t.Fatalf("sanvol devices at the end %v, want K's only", got)
	}
	l.noneSuspended(t, "at the end")
	if got := devNumber(t, k); got != rdev {
		t.Fatalf("K's device number changed from %s to %s: blkback would lose it", rdev, got)
	}
	slices.Sort(snapTimes)
	slices.Sort(delTimes)
	t.Logf("%d rounds: %d writes, 0 errors, longest write %s; snapshot call median %s (max %s), delete of the previous median %s (max %s)",
		rounds, n, maxLat, snapTimes[len(snapTimes)/2], snapTimes[len(snapTimes)-1], delTimes[len(delTimes)/2], delTimes[len(delTimes)-1])

	if err := l.dp.Deactivate(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Detach(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if err := l.e.VolumeDestroy(ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
}

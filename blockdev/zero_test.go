package blockdev_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
)

type call struct{ off, length uint64 }

// fakeDev makes /dev/vg/lv under a temporary root: a regular file stands
// in for the device, which only the injected ioctl touches.
func fakeDev(t *testing.T) host.Root {
	t.Helper()
	root := host.NewRoot(t.TempDir())
	if err := root.MkdirAll("/dev/vg", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root.Path("/dev/vg/lv"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestZeroOutChunksTheRange(t *testing.T) {
	root := fakeDev(t)
	var calls []call
	z := blockdev.New(root, nil).WithIoctl(func(fd uintptr, off, length uint64) error {
		calls = append(calls, call{off, length})
		return nil
	})
	z.Chunk = 1 << 20
	// 2.5 chunks from an offset: two whole chunks and a half one.
	if err := z.ZeroOut(context.Background(), "/dev/vg/lv", 4<<20, 5<<19); err != nil {
		t.Fatal(err)
	}
	want := []call{{4 << 20, 1 << 20}, {5 << 20, 1 << 20}, {6 << 20, 1 << 19}}
	if len(calls) != len(want) {
		t.Fatalf("calls = %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("calls = %v, want %v", calls, want)
		}
	}
}

func TestZeroOutStopsAtTheDeadline(t *testing.T) {
	root := fakeDev(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	z := blockdev.New(root, nil).WithIoctl(func(fd uintptr, off, length uint64) error {
		n++
		if n == 2 {
			cancel() // the deadline passes while the second chunk runs
		}
		return nil
	})
	z.Chunk = 1 << 20
	err := z.ZeroOut(ctx, "/dev/vg/lv", 0, 10<<20)
	if host.KindOf(err) != host.KindTimeout || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want a timeout wrapping the context's error", err)
	}
	if n != 2 {
		t.Fatalf("%d chunks issued after the deadline passed during chunk 2", n)
	}
	if want := "after 2097152 of 10485760 bytes"; !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want it to say %q", err, want)
	}
}

func TestZeroOutRefusesUnalignedRanges(t *testing.T) {
	z := blockdev.New(fakeDev(t), nil).WithIoctl(func(uintptr, uint64, uint64) error {
		t.Fatal("ioctl issued for an unaligned range")
		return nil
	})
	for _, r := range [][2]int64{{1, 512}, {0, 100}, {-512, 512}, {512, -512}} {
		t.Run(fmt.Sprint(r), func(t *testing.T) {
			if err := z.ZeroOut(context.Background(), "/dev/vg/lv", r[0], r[1]); !errors.Is(err, host.ErrInvalid) {
				t.Errorf("ZeroOut(%d, %d) = %v, want InvalidArgument", r[0], r[1], err)
			}
		})
	}
	if err := z.ZeroOut(context.Background(), "/dev/vg/lv", 512, 0); err != nil {
		t.Errorf("empty range: %v", err)
	}
}

func TestZeroOutIOErrorNamesTheChunk(t *testing.T) {
	z := blockdev.New(fakeDev(t), nil).WithIoctl(func(fd uintptr, off, length uint64) error {
		if off >= 1<<20 {
			return os.NewSyscallError("ioctl", errors.New("input/output error"))
		}
		return nil
	})
	z.Chunk = 1 << 20
	err := z.ZeroOut(context.Background(), "/dev/vg/lv", 0, 3<<20)
	if err == nil || host.KindOf(err) != host.KindInternal || !strings.Contains(err.Error(), "offset 1048576 length 1048576") || !strings.Contains(err.Error(), "dmesg") {
		t.Fatalf("err = %v", err)
	}
}

func TestZeroOutMissingDevice(t *testing.T) {
	z := blockdev.New(host.NewRoot(t.TempDir()), nil)
	if err := z.ZeroOut(context.Background(), "/dev/vg/gone", 0, 4096); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("err = %v, want NotFound", err)
	}
}

// The real system call on a regular file: the kernel answers ENOTTY,
// which says "not a block device" rather than an I/O error.
func TestZeroOutRealIoctlOnAFile(t *testing.T) {
	root := fakeDev(t)
	if err := os.WriteFile(filepath.Join(root.Dir, "dev/vg/lv"), make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	err := blockdev.New(root, nil).ZeroOut(context.Background(), "/dev/vg/lv", 0, 8192)
	if !errors.Is(err, host.ErrUnsupported) || !strings.Contains(err.Error(), "inappropriate ioctl") {
		t.Fatalf("err = %v, want Unsupported (ENOTTY)", err)
	}
}

func TestZeroOutLogsProgress(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	clock := time.Unix(0, 0)
	z := blockdev.New(fakeDev(t), zap.New(core)).WithIoctl(func(uintptr, uint64, uint64) error {
		clock = clock.Add(4 * time.Second) // each chunk takes 4 s
		return nil
	}).WithClock(func() time.Time { return clock })
	z.Chunk = 1 << 20
	z.ProgressEvery = 10 * time.Second
	if err := z.ZeroOut(context.Background(), "/dev/vg/lv", 0, 8<<20); err != nil {
		t.Fatal(err)
	}
	// 8 chunks of 4 s: progress at 12 s and 24 s (not after the last one).
	var done []int64
	for _, e := range logs.FilterMessage("zeroing").All() {
		done = append(done, e.ContextMap()["done"].(int64))
	}
	if len(done) != 2 || done[0] != 3<<20 || done[1] != 6<<20 {
		t.Fatalf("progress lines at %v bytes, want [3 MiB 6 MiB]", done)
	}
}

//go:build lab

package e2e

// TestBlockdevZeroOut proves blockdev's BLKZEROOUT on the real initiators'
// devices (an NVMe/TCP namespace and an iSCSI multipath map): a written
// range reads back as zeroes afterwards. It also times it against
// `dd if=/dev/zero oflag=direct` and `blkdiscard --zeroout` on the same
// range and logs whether each device offers WRITE ZEROES / WRITE SAME
// (queue/write_zeroes_max_bytes), for docs/benchmarks.md.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/labtarget"
)

// writeZeroesMax reads queue/write_zeroes_max_bytes of a block device and
// of the devices under it (a dm map's paths).
func writeZeroesMax(dev string) string {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return err.Error()
	}
	name := filepath.Base(real)
	parts := []string{name + "=" + readSys("/sys/block/"+name+"/queue/write_zeroes_max_bytes")}
	slaves, _ := filepath.Glob("/sys/block/" + name + "/slaves/*")
	for _, s := range slaves {
		n := filepath.Base(s)
		parts = append(parts, n+"="+readSys("/sys/block/"+n+"/queue/write_zeroes_max_bytes"))
	}
	return strings.Join(parts, " ")
}

func zeroAndCompare(t *testing.T, what, dev string, size int64) {
	t.Helper()
	mib := int(size >> 20)
	t.Logf("%s %s: write_zeroes_max_bytes %s", what, dev, writeZeroesMax(dev))
	writePattern(t, dev, mib, 7)

	z := blockdev.New(host.NewRoot("/"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := z.ZeroOut(ctx, dev, 0, size); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	ioctl := time.Since(start)
	mustBeZero(t, dev, size)

	start = time.Now()
	mustRun(t, "dd", "if=/dev/zero", "of="+dev, "bs=1M", "count="+strconv.Itoa(mib), "oflag=direct", "conv=fsync,notrunc", "status=none")
	dd := time.Since(start)

	start = time.Now()
	mustRun(t, "blkdiscard", "--zeroout", "--offset", "0", "--length", strconv.FormatInt(size, 10), dev)
	bd := time.Since(start)

	rate := func(d time.Duration) string { return fmt.Sprintf("%.0f MiB/s", float64(mib)/d.Seconds()) }
	t.Logf("%s, %d MiB: BLKZEROOUT (blockdev) %v (%s); dd oflag=direct %v (%s); blkdiscard --zeroout %v (%s); dd/blockdev %.2f, blkdiscard/blockdev %.2f",
		what, mib, ioctl.Round(time.Millisecond), rate(ioctl), dd.Round(time.Millisecond), rate(dd), bd.Round(time.Millisecond), rate(bd),
		dd.Seconds()/ioctl.Seconds(), bd.Seconds()/ioctl.Seconds())
}

// mustBeZero reads the range back with O_DIRECT (not the page cache).
func mustBeZero(t *testing.T, dev string, size int64) {
	t.Helper()
	var zero []byte
	readDirect(t, dev, size, func(off int64, buf []byte) {
		if zero == nil {
			zero = make([]byte, len(buf))
		}
		if !bytes.Equal(buf, zero) {
			t.Fatalf("%s is not zero at %d after BLKZEROOUT", dev, off)
		}
	})
}

// readDirect reads the first n bytes of dev with O_DIRECT, 1 MiB at a
// time into an aligned buffer, so a table switch or a zeroing is never
// hidden by the page cache.
func readDirect(t *testing.T, dev string, n int64, chunk func(off int64, buf []byte)) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := syscall.Mmap(-1, 0, 1<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Munmap(buf) }()
	for off := int64(0); off < n; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatalf("read %s at %d: %v", dev, off, err)
		}
		chunk(off, buf)
	}
}

func TestBlockdevZeroOut(t *testing.T) {
	// Two of blockdev's BLKZEROOUT calls, the second partial
	// (docs/benchmarks.md's table was measured on 256 MiB).
	const size = blockdev.DefaultChunk + 8<<20
	nt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "zero", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close() })
	zeroAndCompare(t, "NVMe/TCP namespace", connectNVMe(t, nt), size)

	it, err := labtarget.NewISCSI(t.Context(), labtarget.ISCSIOptions{Name: "zero", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = it.Close() })
	zeroAndCompare(t, "iSCSI multipath map", loginISCSI(t, it, []string{labtarget.Addr1, labtarget.Addr2}), size)
}

package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
)

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127) in linux/fs.h (Linux >= 3.7):
// zero a byte range of a block device. x/sys/unix does not define it.
const blkZeroOut = 0x127f

// sectorSize is the unit BLKZEROOUT takes: offset and length must be
// multiples of 512 (the kernel checks them against 512 before it looks at
// the device's logical block size).
const sectorSize = 512

// DefaultChunk is how much one BLKZEROOUT call zeroes. The call cannot be
// interrupted, so the chunk bounds how long a deadline can be overrun: at
// the 20 MiB/s of a device that only takes written zero pages, 128 MiB
// is about 6 s.
const DefaultChunk = 128 << 20

// IoctlFunc issues BLKZEROOUT on fd for [off, off+length). Tests inject a
// fake; regular files answer the real ioctl with ENOTTY.
type IoctlFunc func(fd uintptr, off, length uint64) error

// zeroOutIoctl is the real system call.
func zeroOutIoctl(fd uintptr, off, length uint64) error {
	rng := [2]uint64{off, length}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, blkZeroOut, uintptr(unsafe.Pointer(&rng)))
	if errno != 0 {
		return errno
	}
	return nil
}

// Zeroer writes zeroes over ranges of block devices with BLKZEROOUT. The
// kernel turns it into WRITE ZEROES (NVMe) or WRITE SAME (SCSI) when the
// device offers them (/sys/block/<dev>/queue/write_zeroes_max_bytes > 0),
// which the array carries out without data moving over the network, and
// writes zero pages itself otherwise: the range reads back as zeroes in
// either case. It needs neither `blkdiscard --zeroout` (util-linux >= 2.28;
// XCP-ng 8.x dom0 has 2.23) nor dd.
type Zeroer struct {
	root  host.Root
	log   *zap.Logger
	ioctl IoctlFunc
	now   func() time.Time
	// Chunk is the size of one BLKZEROOUT call (a multiple of 512).
	Chunk int64
	// ProgressEvery is how often a long zeroing logs its progress.
	ProgressEvery time.Duration
}

// New returns a Zeroer that opens devices through root.
func New(root host.Root, log *zap.Logger) *Zeroer {
	if log == nil {
		log = zap.NewNop()
	}
	return &Zeroer{root: root, log: log, ioctl: zeroOutIoctl, now: time.Now, Chunk: DefaultChunk, ProgressEvery: 10 * time.Second}
}

// WithIoctl replaces the system call (tests).
func (z *Zeroer) WithIoctl(f IoctlFunc) *Zeroer { z.ioctl = f; return z }

// WithClock replaces the clock (tests of the progress log).
func (z *Zeroer) WithClock(now func() time.Time) *Zeroer { z.now = now; return z }

// ZeroOut writes zeroes over [off, off+length) of the block device dev (a
// host path such as /dev/VG/LV), one chunk per system call, checking ctx
// between chunks. On failure nothing says which chunks were zeroed: the
// caller repeats the whole range (zeroing is idempotent).
func (z *Zeroer) ZeroOut(ctx context.Context, dev string, off, length int64) error {
	const op = "zero"
	if off < 0 || length < 0 || off%sectorSize != 0 || length%sectorSize != 0 {
		return host.NewError(host.KindInvalid, op, fmt.Sprintf("cannot zero %s at offset %d length %d: both must be multiples of 512", dev, off, length), "", nil)
	}
	if length == 0 {
		return nil
	}
	chunk := z.Chunk
	if chunk <= 0 || chunk%sectorSize != 0 {
		chunk = DefaultChunk
	}
	if err := ctx.Err(); err != nil {
		return deadlineError(op, dev, 0, length, err)
	}
	f, err := os.OpenFile(z.root.Path(dev), os.O_WRONLY, 0)
	if err != nil {
		kind := host.KindInternal
		if errors.Is(err, os.ErrNotExist) {
			kind = host.KindNotFound
		}
		return host.NewError(kind, op, "cannot open "+dev+" to zero it", "check that the volume is active on this host (lvs, dmsetup ls)", err)
	}
	defer f.Close()

	start := z.now()
	lastLog := start
	var done int64
	for done < length {
		if err := ctx.Err(); err != nil {
			return deadlineError(op, dev, done, length, err)
		}
		n := min(chunk, length-done)
		if err := z.ioctl(f.Fd(), uint64(off+done), uint64(n)); err != nil {
			return ioctlError(op, dev, off+done, n, err)
		}
		done += n
		if t := z.now(); done < length && t.Sub(lastLog) >= z.ProgressEvery {
			lastLog = t
			z.log.Info("zeroing", zap.String("device", dev), zap.Int64("done", done), zap.Int64("length", length),
				zap.Duration("elapsed", t.Sub(start)))
		}
	}
	// BLKZEROOUT returns once the writes are complete on the device (it
	// waits for the bios), so no flush is needed for the zeroes to be
	// what the next reader sees.
	return nil
}

func deadlineError(op, dev string, done, length int64, err error) error {
	return host.NewError(host.KindTimeout, op, fmt.Sprintf("zeroing %s stopped at its deadline after %d of %d bytes", dev, done, length),
		"check the SR's paths and the array's load (a device without WRITE ZEROES is zeroed at the speed of its writes), then retry", err)
}

func ioctlError(op, dev string, off, n int64, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) && (errno == unix.ENOTTY || errno == unix.EOPNOTSUPP || errno == unix.EINVAL) {
		return host.NewError(host.KindUnsupported, op, fmt.Sprintf("BLKZEROOUT of %s at offset %d length %d is refused (%v)", dev, off, n, err),
			"check that "+dev+" is a block device and that the kernel is 3.7 or newer", err)
	}
	return host.NewError(host.KindInternal, op, fmt.Sprintf("zeroing %s failed at offset %d length %d", dev, off, n),
		"check the SR's paths and the kernel log (dmesg) for I/O errors, then retry", err)
}

package host

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// BlockAlign is the alignment of DirectReader's offsets and lengths: a
// multiple of every logical block size (512 and 4096 bytes), so O_DIRECT
// accepts it on any device.
const BlockAlign = 4096

// BlockReader reads bytes of a block device as they are on the storage,
// not as this host's page cache remembers them. A shared LUN is written by
// other hosts of the pool: only a read that goes to the device sees their
// writes.
type BlockReader interface {
	// ReadAt reads n bytes at byte offset off of the device at path (a
	// host path). off and n are multiples of BlockAlign.
	ReadAt(path string, off int64, n int) ([]byte, error)
}

// checkAligned refuses a read O_DIRECT would refuse.
func checkAligned(path string, off int64, n int) error {
	if off < 0 || n <= 0 || off%BlockAlign != 0 || n%BlockAlign != 0 {
		return fmt.Errorf("read %s: %d bytes at %d are not %d-byte aligned", path, n, off, BlockAlign)
	}
	return nil
}

// DirectReader is the host's BlockReader: O_DIRECT reads through Root.
type DirectReader struct{ Root Root }

// ReadAt implements BlockReader.
func (d DirectReader) ReadAt(path string, off int64, n int) ([]byte, error) {
	if err := checkAligned(path, off, n); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(d.Root.Path(path), os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer too: an anonymous mapping is
	// page-aligned.
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	defer func() { _ = unix.Munmap(buf) }()
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d of %s: %w", n, off, path, err)
	}
	return append([]byte(nil), buf...), nil
}

// ExecBlockReader is the BlockReader the plugin uses: each read is a `dd
// iflag=direct` child through the exec choke point, under Timeout. A read
// of a device whose paths are all down can sleep uninterruptibly for as
// long as the transport queues I/O (an NVMe ctrl-loss-tmo, a multipath
// no_path_retry); in a child it is left behind at the deadline, as a stuck
// lvm is, while in the plugin's own process it kept the process, and the
// xapi call waiting for it, from ending (the pool lab's
// TestPoolMemberPathLoss: a member's SR.stat never returned).
type ExecBlockReader struct {
	Run     Runner
	Timeout time.Duration
}

// ReadAt implements BlockReader.
func (e ExecBlockReader) ReadAt(path string, off int64, n int) ([]byte, error) {
	if err := checkAligned(path, off, n); err != nil {
		return nil, err
	}
	timeout := e.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	res, err := e.Run.Run(context.Background(), Cmd{Name: "dd", Timeout: timeout, Args: []string{
		"if=" + path, "iflag=direct", fmt.Sprintf("bs=%d", BlockAlign),
		fmt.Sprintf("skip=%d", off/BlockAlign), fmt.Sprintf("count=%d", n/BlockAlign), "status=none"}})
	if err != nil {
		return nil, fmt.Errorf("read %d bytes at %d of %s: %w", n, off, path, err)
	}
	if len(res.Stdout) != n {
		return nil, fmt.Errorf("read %d bytes at %d of %s: got %d", n, off, path, len(res.Stdout))
	}
	return res.Stdout, nil
}

package host

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestDirectReader(t *testing.T) {
	root := NewRoot(t.TempDir())
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*BlockAlign/16)
	if err := root.MkdirAll("/dev", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := root.WriteFile("/dev/sdx", data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := DirectReader{Root: root}
	for _, c := range []struct {
		off int64
		n   int
	}{{1, BlockAlign}, {0, 512}, {-BlockAlign, BlockAlign}, {0, 0}} {
		if _, err := r.ReadAt("/dev/sdx", c.off, c.n); err == nil {
			t.Errorf("ReadAt(%d, %d) of an unaligned range succeeded", c.off, c.n)
		}
	}
	b, err := r.ReadAt("/dev/sdx", BlockAlign, 2*BlockAlign)
	if errors.Is(err, unix.EINVAL) {
		// tmpfs before Linux 6.6 has no O_DIRECT; the lab reads devices.
		t.Skipf("no O_DIRECT on the test directory's file system: %v", err)
	}
	if err != nil || !bytes.Equal(b, data[BlockAlign:]) {
		t.Fatalf("ReadAt: %d bytes, %v", len(b), err)
	}
	if _, err := r.ReadAt("/dev/none", 0, BlockAlign); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadAt of a missing device: %v", err)
	}
}

// ddRunner answers one dd with count blocks of the byte b.
type ddRunner struct {
	got  []Cmd
	size int
	err  error
}

func (r *ddRunner) Run(_ context.Context, c Cmd) (Result, error) {
	r.got = append(r.got, c)
	return Result{Stdout: bytes.Repeat([]byte{7}, r.size)}, r.err
}

// The plugin's reads go through a dd child with a deadline, never a
// read(2) in its own process (which could hold the process past its
// call while paths are down).
func TestExecBlockReader(t *testing.T) {
	r := &ddRunner{size: 8192}
	b, err := ExecBlockReader{Run: r}.ReadAt("/dev/nvme0n1", 4096, 8192)
	if err != nil || len(b) != 8192 {
		t.Fatalf("ReadAt: %d bytes, %v", len(b), err)
	}
	want := []string{"if=/dev/nvme0n1", "iflag=direct", "bs=4096", "skip=1", "count=2", "status=none"}
	if len(r.got) != 1 || r.got[0].Name != "dd" || strings.Join(r.got[0].Args, " ") != strings.Join(want, " ") || r.got[0].Timeout != 5*time.Second {
		t.Fatalf("ran %+v, want dd %v under 5 s", r.got, want)
	}
	r.size = 4096
	if _, err := (ExecBlockReader{Run: r}).ReadAt("/dev/nvme0n1", 0, 8192); err == nil {
		t.Fatal("a short read was accepted")
	}
	r.err = errors.New("timed out")
	if _, err := (ExecBlockReader{Run: r}).ReadAt("/dev/nvme0n1", 0, 4096); err == nil {
		t.Fatal("a failed dd was accepted")
	}
	if _, err := (ExecBlockReader{Run: r}).ReadAt("/dev/nvme0n1", 100, 4096); err == nil {
		t.Fatal("an unaligned read was run")
	}
}

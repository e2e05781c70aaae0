package host

import (
	"bytes"
	"errors"
	"os"
	"testing"

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

package iscsi

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sanvol/sanvol/host"
)

// struct sg_io_hdr is 88 bytes on 64-bit Linux (64 on 32-bit): a layout
// that differs would make the kernel read our buffers' addresses wrong.
func TestSGIOHeaderLayout(t *testing.T) {
	want := uintptr(88)
	if unsafe.Sizeof(uintptr(0)) == 4 {
		want = 64
	}
	if got := unsafe.Sizeof(sgIOHdr{}); got != want {
		t.Errorf("sizeof(sgIOHdr) = %d, want %d", got, want)
	}
	if got := unsafe.Offsetof(sgIOHdr{}.info); unsafe.Sizeof(uintptr(0)) == 8 && got != 80 {
		t.Errorf("offsetof(info) = %d, want 80", got)
	}
}

func TestSenseKey(t *testing.T) {
	cases := []struct {
		name  string
		sense []byte
		want  byte
	}{
		{"fixed unit attention", []byte{0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 0x09}, senseUnitAttention},
		{"fixed deferred not ready", []byte{0x71, 0, 0x02}, 0x2},
		{"descriptor unit attention", []byte{0x72, 0x06, 0x2a, 0x09}, senseUnitAttention},
		{"descriptor illegal request", []byte{0xf3, 0x05, 0x24, 0x00}, 0x5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := make([]byte, senseLen)
			copy(s, c.sense)
			if got := senseKey(s); got != c.want {
				t.Errorf("senseKey = %#x, want %#x", got, c.want)
			}
		})
	}
}

// A file that is not a SCSI disk answers SG_IO with an error, never with
// a size: Rescan then falls back to the full rescan.
func TestCapacityOfANonSCSIFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dev", "sdz"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	read := scsiCapacity(host.NewRoot(dir), time.Second)
	if n, err := read("/dev/sdz"); err == nil || !errors.Is(err, syscall.ENOTTY) {
		t.Errorf("regular file: %d, %v; want ENOTTY", n, err)
	}
	if _, err := read("/dev/absent"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent device: %v", err)
	}
}

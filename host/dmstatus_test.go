package host

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

// The ioctl number and the layout are the header's: _IOWR(type, nr,
// size) is dir 3 (read and write) << 30 | size << 16 | type << 8 | nr,
// and the offsets are those of the C struct on 64-bit Linux.
func TestDMIoctlLayout(t *testing.T) {
	if got := uint32(3<<30 | dmIoctlSize<<16 | 0xfd<<8 | 7); got != dmDevStatus {
		t.Fatalf("DM_DEV_STATUS: %#x, want %#x", got, dmDevStatus)
	}
	var r dmIoctl
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"size", unsafe.Sizeof(r), dmIoctlSize},
		{"data_size", unsafe.Offsetof(r.DataSize), 12},
		{"open_count", unsafe.Offsetof(r.OpenCount), 24},
		{"flags", unsafe.Offsetof(r.Flags), 28},
		{"dev", unsafe.Offsetof(r.Dev), 40},
		{"name", unsafe.Offsetof(r.Name), 48},
		{"uuid", unsafe.Offsetof(r.UUID), 176},
		{"data", unsafe.Offsetof(r.Data), 305},
	} {
		if f.got != f.want {
			t.Errorf("%s at %d, want %d", f.name, f.got, f.want)
		}
	}
	r, err := dmStatusRequest("VG_x-v--1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != [3]uint32{4, 0, 0} || r.DataSize != dmIoctlSize || string(r.Name[:10]) != "VG_x-v--1\x00" || r.UUID[0] != 0 || r.Dev != 0 {
		t.Fatalf("request: %+v", r)
	}
	for _, bad := range []string{"", string(make([]byte, dmNameLen))} {
		if _, err := dmStatusRequest(bad); err == nil {
			t.Fatalf("name of %d bytes accepted", len(bad))
		}
	}
}

func TestParseDMStatus(t *testing.T) {
	uuid := "LVM-0123456789abcdef0123456789abcdefFEDCBA9876543210FEDCBA9876543210"
	for _, tc := range []struct {
		flags uint32
		open  int32
		want  DMInfo
	}{
		{dmActivePresentFlag, 0, DMInfo{Exists: true, LiveTable: true}},
		{dmActivePresentFlag | dmSuspendFlag, 2, DMInfo{Exists: true, LiveTable: true, Suspended: true, OpenCount: 2}},
		{dmInactivePresentFlag, 0, DMInfo{Exists: true, InactiveTable: true}},
		// DM_READONLY_FLAG and others are not part of the answer.
		{1 | dmActivePresentFlag, 1, DMInfo{Exists: true, LiveTable: true, OpenCount: 1}},
	} {
		r, _ := dmStatusRequest("n")
		r.Flags, r.OpenCount = tc.flags, tc.open
		copy(r.UUID[:], uuid)
		tc.want.UUID = uuid
		if got := parseDMStatus(r); got != tc.want {
			t.Errorf("flags %#x open %d: %+v, want %+v", tc.flags, tc.open, got, tc.want)
		}
	}
}

// Without device-mapper the reader fails, so that its callers ask lvm.
func TestDMControlUnavailable(t *testing.T) {
	dir := t.TempDir()
	root := NewRoot(dir)
	if _, err := (DMControl{Root: root}).DMStatus("a"); err == nil {
		t.Fatal("no control node: no error")
	}
	if err := os.MkdirAll(filepath.Join(dir, "dev/mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dev/mapper/control"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file answers the ioctl with ENOTTY.
	if _, err := (DMControl{Root: root}).DMStatus("a"); err == nil {
		t.Fatal("a regular file as the control node: no error")
	}
}

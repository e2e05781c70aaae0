package volume_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

// SR.attach names the SR's namespace for udev's nowatch rule and records
// the name; SR.detach removes it.
func TestSRAttachStopsUdevWatch(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	const wwid = "uuid.0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b"
	for _, d := range []string{filepath.Dir(testDev), "/sys/class/block/nvme0n1"} {
		if err := os.MkdirAll(v.root.Path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(v.root.Path("/dev/nvme0n1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../nvme0n1", v.root.Path(testDev)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.root.Path("/sys/class/block/nvme0n1/wwid"), []byte(wwid+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(volume.NoWatchDir, wwid)

	sr := v.createSR()
	if !v.root.Exists(marker) {
		t.Fatalf("SR.attach left no %s", marker)
	}
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil || a.NoWatch != wwid {
		t.Fatalf("attach record NoWatch %q, %v; want %q", a.NoWatch, err, wwid)
	}
	if err := v.e.SRDetach(context.Background(), sr); err != nil {
		t.Fatal(err)
	}
	if v.root.Exists(marker) {
		t.Errorf("SR.detach left %s", marker)
	}
}

// A device udev's rule cannot name keeps its watch, and the attach works.
func TestSRAttachWithoutUdevName(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil || a.NoWatch != "" {
		t.Fatalf("attach record NoWatch %q, %v; want none", a.NoWatch, err)
	}
	if entries, _ := os.ReadDir(v.root.Path(volume.NoWatchDir)); len(entries) != 0 {
		t.Errorf("%s holds %v", volume.NoWatchDir, entries)
	}
}

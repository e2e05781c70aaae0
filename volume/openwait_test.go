package volume

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// infoRunner answers `dmsetup info` for one device, 253:7.
type infoRunner struct{}

func (infoRunner) Run(_ context.Context, c host.Cmd) (host.Result, error) {
	return host.Result{Stdout: []byte("L--w:253:7\n")}, nil
}

// openLV is an LV open for its first reads, closed after.
type openLV struct {
	StackLVM
	reads, openFor int
	deactivated    []string
}

func (o *openLV) Deactivate(_ context.Context, _ lvm.Scope, _, lv string) error {
	o.deactivated = append(o.deactivated, lv)
	return nil
}

func (o *openLV) LV(context.Context, lvm.Scope, string, string) (lvm.LV, error) {
	o.reads++
	attr := "-wi-a-----"
	if o.reads <= o.openFor {
		attr = "-wi-ao----"
	}
	return lvm.LV{Name: "s-x", Attr: attr}, nil
}

// A COW a process (udev's probe) holds open is waited for; one a device
// holds (a clone's middle layer) is not.
func TestWaitForAProcessNotForADevice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	holders := filepath.Join(dir, "sys/dev/block/253:7/holders")
	if err := os.MkdirAll(holders, 0o755); err != nil {
		t.Fatal(err)
	}
	o := &openLV{openFor: 3}
	st := &Stack{DM: blockdev.NewDM(infoRunner{}, 0), LVM: o, Root: host.NewRoot(dir)}
	if st.heldByDevice(ctx, "VG", "s-x") {
		t.Fatal("no holder, yet held by a device")
	}
	l, err := st.waitClosed(ctx, lvm.Scope{}, "VG", "s-x")
	if err != nil || l.Open() || o.reads != 4 {
		t.Fatalf("waitClosed: %+v %v after %d reads", l, err, o.reads)
	}
	if err := os.WriteFile(filepath.Join(holders, "dm-9"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !st.heldByDevice(ctx, "VG", "s-x") {
		t.Fatal("a holder, yet not held by a device")
	}
}

// A COW that the chain no longer names (its merge finished on the host the
// VM migrated to) is released like a chained one: udev's short open is
// waited out, then the LV is deactivated, not left active (the pool lab's
// TestPoolMigrateMergingISCSI saw one left behind).
func TestStaleCOWWaitsForUdevThenDeactivates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sys/dev/block/253:7/holders"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := &openLV{openFor: 2}
	st := &Stack{DM: blockdev.NewDM(infoRunner{}, 0), LVM: o, Root: host.NewRoot(dir)}
	if err := st.releaseStaleCOW(ctx, lvm.Scope{}, "VG", lvm.DMName("VG", "s-x")); err != nil {
		t.Fatal(err)
	}
	if len(o.deactivated) != 1 || o.deactivated[0] != "s-x" || o.reads != 3 {
		t.Fatalf("deactivated %v after %d reads, want [s-x] after 3", o.deactivated, o.reads)
	}
}

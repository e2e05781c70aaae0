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

package datapath

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

const srUUID = "6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01"

// fakeLVM tracks which LVs are active, as the kernel would.
type fakeLVM struct {
	mu        sync.Mutex
	exists    map[string]bool
	active    map[string]bool
	calls     []string
	readOnly  []bool
	failDeact error
	// stale LVs are active with a table older than the metadata.
	stale map[string]bool
	size  int64 // of every LV
	// dm: LV answers with the kernel's state (lvm.Client.WithDMStatus)
	// instead of lv_attr; suspended LVs are active and suspended.
	dm        bool
	suspended map[string]bool
}

func newFakeLVM(lvs ...string) *fakeLVM {
	f := &fakeLVM{exists: map[string]bool{}, active: map[string]bool{}}
	for _, lv := range lvs {
		f.exists[lv] = true
	}
	return f
}

func (f *fakeLVM) record(s lvm.Scope, c string) {
	f.calls = append(f.calls, c)
	f.readOnly = append(f.readOnly, s.ReadOnly)
}

func (f *fakeLVM) LV(ctx context.Context, s lvm.Scope, vg, lv string) (lvm.LV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists[lv] {
		return lvm.LV{}, host.NewError(host.KindNotFound, "lvs", "no "+lv, "", nil)
	}
	if f.dm {
		// The kernel knows no 'X': a stale LV is a live table.
		info := host.DMInfo{Exists: f.active[lv], LiveTable: f.active[lv], Suspended: f.suspended[lv]}
		return lvm.LV{Name: lv, Size: f.size, DM: &info}, nil
	}
	attr := "-wi-------"
	if f.suspended[lv] {
		attr = "-wi-s-----"
	} else if f.active[lv] {
		attr = "-wi-a-----"
	}
	if f.stale[lv] {
		attr = "-wi-XX--Xk" // what lvs printed in the lab for such an LV
	}
	return lvm.LV{Name: lv, Attr: attr, Size: f.size}, nil
}

func (f *fakeLVM) Activate(ctx context.Context, s lvm.Scope, vg, lv string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(s, "activate "+lv)
	f.active[lv] = true
	return nil
}

func (f *fakeLVM) Deactivate(ctx context.Context, s lvm.Scope, vg, lv string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(s, "deactivate "+lv)
	if f.failDeact != nil {
		return f.failDeact
	}
	if !f.exists[lv] {
		return host.NewError(host.KindNotFound, "lvchange", "no "+lv, "", nil)
	}
	f.active[lv] = false
	return nil
}

func (f *fakeLVM) Refresh(ctx context.Context, s lvm.Scope, vg, lv string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(s, "refresh "+lv)
	return nil
}

func newDP(t *testing.T, f *fakeLVM, attached bool, master bool) *Datapath {
	t.Helper()
	root := host.NewRoot(t.TempDir())
	return New(Deps{
		LVM:    f,
		Root:   root,
		Locker: host.FileLocker{Root: root},
		Lookup: func(uuid string) (SR, error) {
			if !attached || uuid != srUUID {
				return SR{}, host.NewError(host.KindNotAttached, "", "not attached", "", nil)
			}
			return SR{UUID: uuid, VG: "VG_sanvol-" + uuid, Device: "/dev/disk/by-id/nvme-uuid.x"}, nil
		},
		LVName: func(key string) string { return "v-" + key },
		Role:   host.Role{Master: master},
	})
}

var ctx = context.Background()

func TestParseURI(t *testing.T) {
	got, err := ParseURI("t", "sanvol://6E0A7C7E-9E8F-4A61-9A37-1D4D3C0E9A01/abc-1")
	if err != nil || got != (Target{SR: srUUID, Key: "abc-1"}) {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []string{"", "sanvol://", "tapdisk://" + srUUID + "/k", "sanvol://not-a-uuid/k", "sanvol://" + srUUID + "/", "sanvol://" + srUUID + "/a/b", "sanvol://" + srUUID + "/-k", "sanvol://" + srUUID + "/k%20x"} {
		t.Run(bad, func(t *testing.T) {
			if _, err := ParseURI("t", bad); !errors.Is(err, host.ErrInvalid) {
				t.Errorf("%q: %v", bad, err)
			}
		})
	}
	if URI(srUUID, "k") != "sanvol://"+srUUID+"/k" {
		t.Fatal(URI(srUUID, "k"))
	}
}

func TestVMStartStop(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	b, err := p.Attach(ctx, uri, "7")
	if err != nil {
		t.Fatal(err)
	}
	if b.Device != "/dev/VG_sanvol-"+srUUID+"/v-k" {
		t.Fatalf("device %s", b.Device)
	}
	if err := p.Activate(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	// Newer xapi deactivates twice, then detaches.
	for i := 0; i < 2; i++ {
		if err := p.Deactivate(ctx, uri, "7"); err != nil {
			t.Fatal(err)
		}
	}
	if !f.active["v-k"] {
		t.Fatal("deactivate must not take the device away before detach")
	}
	if err := p.Detach(ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if f.active["v-k"] {
		t.Fatal("LV still active after the last detach")
	}
	if err := p.Detach(ctx, uri, "7"); err != nil {
		t.Fatal("repeated detach failed:", err)
	}
	refs, _ := p.Refs(uri)
	if len(refs) != 0 {
		t.Fatalf("refs left: %v", refs)
	}
}

func TestTwoDomainsKeepTheLVActive(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	for _, d := range []string{"7", "u0_vbd_0_xvdb"} {
		if _, err := p.Attach(ctx, uri, d); err != nil {
			t.Fatal(err)
		}
		if err := p.Activate(ctx, uri, d); err != nil {
			t.Fatal(err)
		}
	}
	p.Deactivate(ctx, uri, "7")
	p.Detach(ctx, uri, "7")
	if !f.active["v-k"] {
		t.Fatal("LV deactivated while dom0 still holds it")
	}
	p.Deactivate(ctx, uri, "u0_vbd_0_xvdb")
	p.Detach(ctx, uri, "u0_vbd_0_xvdb")
	if f.active["v-k"] {
		t.Fatal("LV active after the second detach")
	}
}

func TestAlreadyActiveIsRefreshedForResize(t *testing.T) {
	f := newFakeLVM("v-k")
	f.active["v-k"] = true
	p := newDP(t, f, true, false)
	if _, err := p.Attach(ctx, URI(srUUID, "k"), "3"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"refresh v-k"}, f.calls); diff != "" {
		t.Fatal(diff)
	}
	if !f.readOnly[0] {
		t.Fatal("LVM ran with metadata writes allowed on a pool member")
	}
}

// A host where the LV was active when the master grew it: lvs reports
// the state as unknown ('X'), and the device must still be refreshed.
func TestStaleActiveLVIsRefreshed(t *testing.T) {
	f := newFakeLVM("v-k")
	f.active["v-k"] = true
	f.stale = map[string]bool{"v-k": true}
	p := newDP(t, f, true, false)
	if err := p.Activate(ctx, URI(srUUID, "k"), "3"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"refresh v-k"}, f.calls); diff != "" {
		t.Fatal(diff)
	}
}

// The activate after this host's own attach finds the LV active with a
// device of the metadata's size: no refresh (an lvm process on every VM
// start). A device of another size (grown on the master) is refreshed.
func TestCurrentActiveLVIsNotRefreshed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sectors   string
		suspended bool
		want      []string
	}{
		{"same size", "16384", false, nil},
		{"grown on the master", "8192", false, []string{"refresh v-k"}},
		{"suspended", "16384", true, []string{"refresh v-k"}},
	} {
		for _, dm := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s dm=%v", tc.name, dm), func(t *testing.T) {
				f := newFakeLVM("v-k")
				f.active["v-k"] = true
				f.suspended = map[string]bool{"v-k": tc.suspended}
				f.size = 8 << 20
				f.dm = dm
				p := newDP(t, f, true, false)
				root := p.d.Root
				vg := "VG_sanvol-" + srUUID
				for _, d := range []string{"/dev/" + vg, "/sys/block/dm-3"} {
					if err := root.MkdirAll(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				if err := root.Symlink("../dm-3", "/dev/"+vg+"/v-k"); err != nil {
					t.Fatal(err)
				}
				if err := root.WriteFile("/dev/dm-3", nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := root.WriteFile("/sys/block/dm-3/size", []byte(tc.sectors+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := p.Activate(ctx, URI(srUUID, "k"), "3"); err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tc.want, f.calls); diff != "" {
					t.Fatal(diff)
				}
			})
		}
	}
}

func TestDetachNeverFails(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	for _, u := range []string{"garbage", URI(srUUID, "unknown"), uri} {
		if err := p.Detach(ctx, u, "9"); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	p.Attach(ctx, uri, "9")
	f.failDeact = errors.New("device busy")
	if err := p.Detach(ctx, uri, "9"); err != nil {
		t.Fatal(err)
	}
	notAttached := newDP(t, newFakeLVM(), false, true)
	if err := notAttached.Detach(ctx, uri, "9"); err != nil {
		t.Fatal(err)
	}
}

func TestDetachWithEmptyDomainAfterGuestDied(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	p.Attach(ctx, uri, "12")
	p.Activate(ctx, uri, "12")
	p.Deactivate(ctx, uri, "")
	if err := p.Detach(ctx, uri, ""); err != nil {
		t.Fatal(err)
	}
	if f.active["v-k"] {
		t.Fatal("the guest's reference was not dropped")
	}
}

func TestAttachNeedsThePBDPlugged(t *testing.T) {
	p := newDP(t, newFakeLVM("v-k"), false, true)
	_, err := p.Attach(ctx, URI(srUUID, "k"), "1")
	if !errors.Is(err, host.ErrNotAttached) {
		t.Fatalf("err = %v", err)
	}
	if want := "xe pbd-plug"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error does not tell the fix: %v", err)
	}
}

func TestAttachMissingVolume(t *testing.T) {
	p := newDP(t, newFakeLVM(), true, true)
	_, err := p.Attach(ctx, URI(srUUID, "gone"), "1")
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), "xe sr-scan") {
		t.Fatalf("err = %v", err)
	}
}

func TestMigrationSequence(t *testing.T) {
	// Two hosts share the LUN: each has its own /run and its own view of
	// activation. Destination attaches while the source is active.
	a, b := newFakeLVM("v-k"), newFakeLVM("v-k")
	srcDP, dstDP := newDP(t, a, true, true), newDP(t, b, true, false)
	uri := URI(srUUID, "k")
	steps := []func() error{
		func() error { _, err := srcDP.Attach(ctx, uri, "5"); return err },
		func() error { return srcDP.Activate(ctx, uri, "5") },
		func() error { _, err := dstDP.Attach(ctx, uri, "8"); return err },
		func() error { return srcDP.Deactivate(ctx, uri, "5") },
		func() error { return dstDP.Activate(ctx, uri, "8") },
		func() error { return srcDP.Detach(ctx, uri, "5") },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if a.active["v-k"] || !b.active["v-k"] {
		t.Fatalf("source active %v, destination active %v", a.active["v-k"], b.active["v-k"])
	}
}

// TestConcurrentReferenceCounting runs 50 goroutines, each a domain doing
// a full attach/activate/deactivate/deactivate/detach, in parallel on one
// volume (newer xapi runs calls in parallel processes; the flock is per
// open file, so goroutines exclude each other as processes would).
func TestConcurrentReferenceCounting(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	start := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(d string) {
			defer wg.Done()
			<-start
			if _, err := p.Attach(ctx, uri, d); err != nil {
				errs <- err
				return
			}
			for _, step := range []func(context.Context, string, string) error{p.Activate, p.Deactivate, p.Deactivate, p.Detach} {
				if err := step(ctx, uri, d); err != nil {
					errs <- err
					return
				}
			}
		}(fmt.Sprint(i + 1))
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	refs, err := p.Refs(uri)
	if err != nil || len(refs) != 0 {
		t.Fatalf("refs %v, %v", refs, err)
	}
	if f.active["v-k"] {
		t.Fatal("LV active after every domain detached")
	}
}

// TestConcurrentHoldersKeepDevice: while one domain holds the volume,
// 49 others come and go; the LV must never be deactivated.
func TestConcurrentHoldersKeepDevice(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	uri := URI(srUUID, "k")
	if _, err := p.Attach(ctx, uri, "holder"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 49; i++ {
		wg.Add(1)
		go func(d string) {
			defer wg.Done()
			p.Attach(ctx, uri, d)
			p.Detach(ctx, uri, d)
		}(fmt.Sprint(i + 100))
	}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c == "deactivate v-k" {
			t.Fatal("deactivated while held")
		}
	}
}

func TestAttachRefusesUnfinishedVolume(t *testing.T) {
	f := newFakeLVM("v-k")
	p := newDP(t, f, true, true)
	p.d.Usable = func(lvm.LV) error {
		return host.NewError(host.KindBusy, "Datapath.attach", "a resize did not finish", "repeat the resize", nil)
	}
	if _, err := p.Attach(ctx, URI(srUUID, "k"), "7"); !errors.Is(err, host.ErrBusy) {
		t.Fatalf("err = %v", err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("LVM was asked to %v", f.calls)
	}
	if refs, _ := p.Refs(URI(srUUID, "k")); len(refs) != 0 {
		t.Fatalf("a refused attach left a reference: %v", refs)
	}
}

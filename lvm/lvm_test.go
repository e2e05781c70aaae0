package lvm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

var scope = lvm.Scope{Devices: []string{"/dev/disk/by-id/nvme-uuid.1234-ab", "/dev/nvme0n1"}}

func TestConfig203(t *testing.T) {
	cfg, err := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3, Patch: 16}, scope)
	if err != nil {
		t.Fatal(err)
	}
	filter := `["a|^/dev/disk/by-id/nvme-uuid[.]1234-ab$|","a|^/dev/nvme0n1$|","r|.*|"]`
	for _, want := range []string{
		"filter=" + filter, "global_filter=" + filter, "obtain_device_list_from_udev=0",
		`hints="none"`, "use_devicesfile=0", "metadata_read_only=0", "archive=0",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %s:\n%s", want, cfg)
		}
	}
	for _, bad := range []string{"use_lvmetad", "write_cache_state", "locking_type"} {
		if strings.Contains(cfg, bad) {
			t.Errorf("2.03 config has %s: %s", bad, cfg)
		}
	}
}

func TestConfig202(t *testing.T) {
	ro := scope
	ro.ReadOnly = true
	cfg, err := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 2, Patch: 180}, ro)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"metadata_read_only=1", "use_lvmetad=0", "write_cache_state=0", "obtain_device_list_from_udev=0"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %s: %s", want, cfg)
		}
	}
	// Settings 2.02.180 does not know.
	for _, bad := range []string{"hints", "use_devicesfile"} {
		if strings.Contains(cfg, bad) {
			t.Errorf("2.02 config has %s: %s", bad, cfg)
		}
	}
}

func TestConfigRefusesUnsafePaths(t *testing.T) {
	for _, p := range []string{"", "sda", "/dev/a|b", `/dev/a"b`, "/dev/a b", "/tmp/x"} {
		t.Run(p, func(t *testing.T) {
			if _, err := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3}, lvm.Scope{Devices: []string{p}}); err == nil {
				t.Errorf("path %q accepted", p)
			}
		})
	}
	if _, err := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3}, lvm.Scope{}); err == nil {
		t.Error("empty scope accepted")
	}
}

func TestParseVersion(t *testing.T) {
	for out, want := range map[string]lvm.Version{
		"  LVM version:     2.03.16(2) (2022-05-18)\n  Library version: 1.02.185 (2022-05-18)\n": {2, 3, 16},
		"  LVM version:     2.02.180(2)-RHEL7 (2018-07-20)\n":                                    {2, 2, 180},
	} {
		t.Run(want.String(), func(t *testing.T) {
			v, err := lvm.ParseVersion(out)
			if err != nil || v != want {
				t.Errorf("ParseVersion(%q) = %v, %v; want %v", out, v, err, want)
			}
		})
	}
	if _, err := lvm.ParseVersion("garbage"); err == nil {
		t.Error("garbage parsed")
	}
	if !(lvm.Version{2, 3, 0}).AtLeast(2, 2, 180) || (lvm.Version{2, 2, 180}).AtLeast(2, 3, 0) {
		t.Error("AtLeast")
	}
}

func newClient(r *lvmtest.Runner) *lvm.Client {
	c := lvm.New(r, nil)
	c.RetryDelay = time.Millisecond
	return c
}

func TestEveryCallCarriesTheChokePointOptions(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("lvs"), lvmtest.LVs())
	r.On(lvmtest.LVM("vgs"), lvmtest.VGs())
	r.On(lvmtest.LVM("lvchange"), lvmtest.Reply{})
	c := newClient(r)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := c.LVs(ctx, scope, "vg"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.VGs(ctx, scope); err != nil {
		t.Fatal(err)
	}
	if err := c.LVChangeTags(ctx, scope, "vg", "lv", []string{"a"}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if n := r.Count(lvmtest.LVM("version")); n != 1 {
		t.Fatalf("lvm version ran %d times, want once per client", n)
	}
	for _, c := range r.Calls() {
		if c.Timeout <= 0 {
			t.Errorf("%s: no deadline", c)
		}
		if c.Args[0] == "version" {
			continue
		}
		if c.Args[1] != "-qq" || c.Args[2] != "--config" || !strings.Contains(c.Args[3], "filter=") {
			t.Errorf("%s: missing -qq/--config", c)
		}
		if slices.Contains(c.Args, "--devices") {
			t.Errorf("%s: --devices does not exist in 2.02", c)
		}
		if c.Args[0] == "lvs" || c.Args[0] == "vgs" {
			a := strings.Join(lvmtest.Args(c), " ")
			if !strings.Contains(a, "--reportformat json --units b --nosuffix") {
				t.Errorf("%s: not a JSON report in bytes", c)
			}
		}
	}
	ch := r.Calls()[len(r.Calls())-1]
	if got := strings.Join(lvmtest.Args(ch), " "); got != "--deltag a --addtag b vg/lv" {
		t.Fatalf("lvchange args = %q", got)
	}
}

func TestReadsRetryChecksumErrors(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.02.180"))
	r.OnFunc(lvmtest.LVM("lvs"), func(host.Cmd) lvmtest.Reply {
		return lvmtest.Reply{Code: 5, Stderr: "  Incorrect checksum in metadata area header on /dev/sdb at 4096"}
	}, 2)
	r.On(lvmtest.LVM("lvs"), lvmtest.LVs(lvm.LV{Name: "v", VG: "vg", Size: 4 << 20, Attr: "-wi-------"}))
	lvs, err := newClient(r).LVs(context.Background(), scope, "vg")
	if err != nil || len(lvs) != 1 {
		t.Fatalf("LVs = %v, %v", lvs, err)
	}
	if n := r.Count(lvmtest.LVM("lvs")); n != 3 {
		t.Fatalf("lvs ran %d times, want 3", n)
	}
}

// A call that ends while a report waits to be retried reports what lvm
// said, not the wait: the checksum error is the cause an admin can act on.
func TestReadRetryEndsWithTheCallsContext(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("lvs"), lvmtest.Reply{Code: 5, Stderr: "  Incorrect checksum in metadata area header on /dev/sdb at 4096"})
	c := newClient(r)
	c.RetryDelay = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.LVs(ctx, scope, "vg")
	var te *host.TimeoutError
	if err == nil || errors.As(err, &te) || !strings.Contains(err.Error(), "Incorrect checksum") {
		t.Fatalf("LVs = %v, want lvm's checksum error", err)
	}
	if n := r.Count(lvmtest.LVM("lvs")); n != 1 {
		t.Fatalf("lvs ran %d times, want 1", n)
	}
}

func TestWritesAreNotRetried(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("lvchange"), lvmtest.Reply{Code: 5, Stderr: "Incorrect checksum in metadata area header"})
	err := newClient(r).LVChangeTags(context.Background(), scope, "vg", "lv", nil, []string{"t"})
	if err == nil || r.Count(lvmtest.LVM("lvchange")) != 1 {
		t.Fatalf("err=%v, runs=%d", err, r.Count(lvmtest.LVM("lvchange")))
	}
}

func TestTypedErrors(t *testing.T) {
	cases := []struct {
		stderr string
		kind   host.Kind
	}{
		{`  Volume group "VG_x" not found`, host.KindNotFound},
		{`  Failed to find logical volume "vg/v-1"`, host.KindNotFound},
		{`  No PV found on device /dev/sdb.`, host.KindNotFound},
		{`  No device found for /dev/disk/by-id/nvme-uuid.2e685d3b-33b8-4aa9-ad62-e82b4f791aa2.`, host.KindNotFound},
		{`  Logical volume "v-1" already exists in volume group "vg"`, host.KindExists},
		{`  Volume group "vg" has insufficient free space (10 extents): 20 required.`, host.KindNoSpace},
		{`  VG vg metadata on /dev/sdb (1052672 bytes) exceeds maximum metadata size (1044480 bytes)`, host.KindNoSpace},
		{`  Logical volume vg/v-1 in use.`, host.KindBusy},
		{`  Can't get lock for vg.`, host.KindBusy},
		{`  Operation prohibited while global/metadata_read_only is set.`, host.KindNotMaster},
		{`  Something odd.`, host.KindInternal},
	}
	for _, tc := range cases {
		t.Run(tc.stderr, func(t *testing.T) {
			r := &lvmtest.Runner{}
			r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
			r.On(lvmtest.LVM("lvremove"), lvmtest.Reply{Code: 5, Stderr: tc.stderr})
			err := newClient(r).LVRemove(context.Background(), scope, "vg", "v-1")
			if host.KindOf(err) != tc.kind {
				t.Errorf("%q: kind %s, want %s (%v)", tc.stderr, host.KindOf(err), tc.kind, err)
			}
		})
	}
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("vgs"), lvmtest.Reply{Err: host.ErrTimeout})
	if _, err := newClient(r).VGs(context.Background(), scope); host.KindOf(err) != host.KindTimeout {
		t.Errorf("timeout: kind %s", host.KindOf(err))
	}
	r = &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Reply{Err: host.ErrNotInstalled})
	if _, err := newClient(r).VGs(context.Background(), scope); !errors.Is(err, host.ErrUnsupported) {
		t.Errorf("not installed: %v", err)
	}
}

func TestLVMissingFromEmptyReport(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.02.180"))
	r.On(lvmtest.LVM("lvs"), lvmtest.LVs())
	if _, err := newClient(r).LV(context.Background(), scope, "vg", "v-1"); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
}

func TestCreateCommands(t *testing.T) {
	r := &lvmtest.Runner{Default: func(host.Cmd) lvmtest.Reply { return lvmtest.Reply{} }}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	c := newClient(r)
	ctx := context.Background()
	if err := c.PVCreate(ctx, scope, "/dev/nvme0n1", 256); err != nil {
		t.Fatal(err)
	}
	if err := c.VGCreate(ctx, scope, "VG_x", "/dev/nvme0n1", 4, []string{"sv.U.0:x"}); err != nil {
		t.Fatal(err)
	}
	if err := c.LVCreate(ctx, scope, "VG_x", "v-1", 3, []string{"sv.N.0:a", "sv.I.0:1"}); err != nil {
		t.Fatal(err)
	}
	calls := r.Calls()[1:]
	want := []string{
		"--metadatasize 256m /dev/nvme0n1",
		"--physicalextentsize 4m --addtag sv.U.0:x VG_x /dev/nvme0n1",
		"-y --name v-1 --extents 3 --setactivationskip y --ignoreactivationskip --activate y --wipesignatures n --zero n --addtag sv.N.0:a --addtag sv.I.0:1 VG_x",
	}
	for i, w := range want {
		if got := strings.Join(lvmtest.Args(calls[i]), " "); got != w {
			t.Errorf("call %d: %q, want %q", i, got, w)
		}
	}
}

func TestReadOnlyScope(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("lvs"), lvmtest.LVs())
	r.On(lvmtest.LVM("lvchange"), lvmtest.Reply{})
	c := newClient(r)
	ctx := context.Background()
	ro := lvm.Scope{Devices: scope.Devices, ReadOnly: true, Unlocked: true}
	// lvm2 2.03 ignores metadata_read_only, so the client itself refuses.
	if err := c.LVChangeTags(ctx, ro, "vg", "lv", nil, []string{"t"}); !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("metadata change in a read-only scope: %v", err)
	}
	if err := c.LVCreate(ctx, ro, "vg", "lv", 1, nil); !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("lvcreate in a read-only scope: %v", err)
	}
	if n := r.Count(lvmtest.LVM("lvchange")) + r.Count(lvmtest.LVM("lvcreate")); n != 0 {
		t.Fatalf("%d refused commands ran", n)
	}
	if _, err := c.LVs(ctx, ro, "vg"); err != nil {
		t.Fatal(err)
	}
	// Activation is allowed on every host and needs LVM's locks.
	if err := c.Activate(ctx, ro, "vg", "lv"); err != nil {
		t.Fatal(err)
	}
	calls := r.Calls()
	if lvs := calls[len(calls)-2]; lvs.Args[4] != "--readonly" {
		t.Fatalf("unlocked report without --readonly: %v", lvs)
	}
	if act := calls[len(calls)-1]; slices.Contains(act.Args, "--readonly") {
		t.Fatalf("activation with --readonly: %v", act)
	}
}

// A master change in the middle of a call: the guard (the pool role read
// again) refuses the next metadata change before lvm runs; reports and
// activation still run.
func TestWriteGuardRefusesBeforeLVMRuns(t *testing.T) {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	r.On(lvmtest.LVM("lvs"), lvmtest.LVs())
	r.On(lvmtest.LVM("lvchange"), lvmtest.Reply{})
	master := true
	c := newClient(r).WithWriteGuard(func() error {
		if master {
			return nil
		}
		return host.NewError(host.KindNotMaster, "lvm", "no longer the pool master", "", nil)
	})
	ctx := context.Background()
	if err := c.LVChangeTags(ctx, scope, "vg", "lv", nil, []string{"t"}); err != nil {
		t.Fatal(err)
	}
	master = false
	if err := c.LVChangeTags(ctx, scope, "vg", "lv", nil, []string{"u"}); !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("metadata change after the role changed: %v", err)
	}
	if n := r.Count(lvmtest.LVM("lvchange")); n != 1 {
		t.Fatalf("%d lvchange ran, want only the one before the change", n)
	}
	if _, err := c.LVs(ctx, scope, "vg"); err != nil {
		t.Fatal(err)
	}
	if err := c.Activate(ctx, scope, "vg", "lv"); err != nil {
		t.Fatal(err)
	}
}

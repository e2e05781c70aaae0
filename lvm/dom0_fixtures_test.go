package lvm_test

// Tests on what XCP-ng 8.x dom0's lvm2 (2.02.180 with XCP-ng's patches)
// printed in the lab (tests/lab/run.sh capture --dom0 xcpng8,
// TestCaptureLVMErrors; testdata/FIXTURES.txt): its JSON reports go
// through the same parsers as 2.03's, and its failures, replayed through
// the client, come out as the kinds sanvol acts on. Error fixtures hold
// the exit status, stderr and stdout of one command.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tidwall/gjson"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

const dom0LVM = "2.02.180"

// captured reads an error fixture ("exit N\n--- stderr\n...--- stdout\n...")
// as the fake runner's reply.
func captured(t *testing.T, name string) lvmtest.Reply {
	t.Helper()
	s := string(fixture(t, name))
	head, rest, ok := strings.Cut(s, "\n--- stderr\n")
	if !ok || !strings.HasPrefix(head, "exit ") {
		t.Fatalf("%s: not an error fixture", name)
	}
	code, err := strconv.Atoi(strings.TrimPrefix(head, "exit "))
	if err != nil {
		t.Fatal(err)
	}
	stderr, stdout, ok := strings.Cut(rest, "--- stdout\n")
	if !ok {
		t.Fatalf("%s: no stdout section", name)
	}
	return lvmtest.Reply{Code: code, Stderr: stderr, Stdout: stdout}
}

// dom0Runner answers `lvm version` with the captured 2.02.180 output.
func dom0Runner(t *testing.T) *lvmtest.Runner {
	r := &lvmtest.Runner{}
	r.On(lvmtest.LVM("version"), lvmtest.Reply{Stdout: string(fixture(t, "lvm-version-"+dom0LVM+".txt"))})
	return r
}

func TestDom0Version(t *testing.T) {
	v, err := lvm.ParseVersion(string(fixture(t, "lvm-version-"+dom0LVM+".txt")))
	if err != nil || v != (lvm.Version{Major: 2, Minor: 2, Patch: 180}) {
		t.Fatalf("ParseVersion = %v, %v", v, err)
	}
	// The config of this version: none of 2.03's settings, which 2.02.180
	// would warn about on every command.
	cfg, err := lvm.BuildConfig(v, scope)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cfg, "hints") || strings.Contains(cfg, "use_devicesfile") || !strings.Contains(cfg, "use_lvmetad=0") {
		t.Fatalf("2.02.180 config: %s", cfg)
	}
}

// Each captured failure, replayed as the answer to the client method
// that runs that command, and the kind the client makes of it.
func TestDom0ErrorKinds(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		fixture string
		sub     string
		call    func(c *lvm.Client) error
		kind    host.Kind
	}{
		{"err-lv-missing", "lvs", func(c *lvm.Client) error { _, err := c.LV(ctx, scope, "caplvm", "nosuch"); return err }, host.KindNotFound},
		{"err-lvchange-lv-missing", "lvchange", func(c *lvm.Client) error { return c.Activate(ctx, scope, "caplvm", "nosuch") }, host.KindNotFound},
		{"err-vg-missing", "vgs", func(c *lvm.Client) error { _, err := c.VGs(ctx, scope, "VG_nosuch"); return err }, host.KindNotFound},
		{"err-pv-device-missing", "pvs", func(c *lvm.Client) error { _, err := c.PVs(ctx, scope); return err }, host.KindNotFound},
		{"err-vg-device-filtered", "vgs", func(c *lvm.Client) error { _, err := c.VGs(ctx, scope, "caplvm"); return err }, host.KindNotFound},
		{"err-lock-contention", "lvcreate", func(c *lvm.Client) error { return c.LVCreate(ctx, scope, "caplvm", "vol-d", 2, nil) }, host.KindBusy},
		// The locking layer's refusal fails with exit 5 and also says
		// "Can't get lock": the read-only cause wins over "busy".
		{"err-read-only-vgchange-addtag", "vgchange", func(c *lvm.Client) error {
			return c.VGChangeTags(ctx, scope, "caplvm", nil, []string{"ro_probe"})
		}, host.KindNotMaster},
		// Exit status 0, and still refused: the refusal is read from stderr.
		{"err-read-only-lvcreate", "lvcreate", func(c *lvm.Client) error { return c.LVCreate(ctx, scope, "caplvm", "vol-c", 2, nil) }, host.KindNotMaster},
	}
	for _, tc := range cases {
		t.Run(tc.fixture, func(t *testing.T) {
			r := dom0Runner(t)
			r.On(lvmtest.LVM(tc.sub), captured(t, tc.fixture+"-"+dom0LVM+".txt"))
			err := tc.call(newClient(r))
			if host.KindOf(err) != tc.kind {
				t.Fatalf("kind %s, want %s (%v)", host.KindOf(err), tc.kind, err)
			}
		})
	}
}

// lvcreate's refusal under metadata_read_only=1 exits 0: the client must
// not report the LV as created, and says why in the admin's terms.
func TestDom0ReadOnlyRefusalWithExitZero(t *testing.T) {
	rep := captured(t, "err-read-only-lvcreate-"+dom0LVM+".txt")
	if rep.Code != 0 {
		t.Fatalf("fixture exit %d: this test is about the exit-0 refusal", rep.Code)
	}
	r := dom0Runner(t)
	r.On(lvmtest.LVM("lvcreate"), rep)
	err := newClient(r).LVCreate(context.Background(), scope, "caplvm", "vol-c", 2, nil)
	if !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("err = %v, want NotPoolMaster", err)
	}
	for _, want := range []string{"metadata_read_only", "exited 0", "pool master"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if r.Count(lvmtest.LVM("lvcreate")) != 1 {
		t.Fatal("a refused metadata change was repeated")
	}
}

// XenServer's allow_lv_change_with_metadata_ro patch lets every lvchange
// through under metadata_read_only=1, tag changes included: the capture
// shows exit 0 and the tag written. The client's own refusal in a
// read-only scope is what keeps a pool member from writing metadata.
func TestDom0LVChangeIgnoresReadOnly(t *testing.T) {
	rep := captured(t, "read-only-lvchange-addtag-"+dom0LVM+".txt")
	after := strings.TrimSpace(string(fixture(t, "read-only-lvchange-addtag-after-"+dom0LVM+".txt")))
	if rep.Code != 0 || !strings.Contains(after, "ro_probe") {
		t.Fatalf("the capture no longer shows lvchange writing under metadata_read_only=1 (exit %d, tags %q)", rep.Code, after)
	}
	r := dom0Runner(t)
	r.On(lvmtest.LVM("lvchange"), rep)
	ro := scope
	ro.ReadOnly = true
	err := newClient(r).LVChangeTags(context.Background(), ro, "caplvm", "vol-a", nil, []string{"ro_probe"})
	if !errors.Is(err, host.ErrNotMaster) || r.Count(lvmtest.LVM("lvchange")) != 0 {
		t.Fatalf("err = %v, lvchange ran %d times; want NotPoolMaster without running it", err, r.Count(lvmtest.LVM("lvchange")))
	}
}

// A metadata checksum error is retried by reports (the master may be
// rewriting the metadata); when it persists, 2.02.180 goes on to say
// "Volume group ... not found", and that is the kind the caller gets.
func TestDom0ChecksumErrorRetried(t *testing.T) {
	for _, f := range []string{"err-checksum-vgs", "err-checksum-lvs"} {
		t.Run(f, func(t *testing.T) {
			rep := captured(t, f+"-"+dom0LVM+".txt")
			r := dom0Runner(t)
			r.OnFunc(lvmtest.LVM(""), func(host.Cmd) lvmtest.Reply { return rep }, 2)
			r.On(lvmtest.LVM("vgs"), lvmtest.VGs())
			r.On(lvmtest.LVM("lvs"), lvmtest.LVs())
			c := newClient(r)
			var err error
			if f == "err-checksum-vgs" {
				_, err = c.VGs(context.Background(), scope, "caplvm")
			} else {
				_, err = c.LVs(context.Background(), scope, "caplvm")
			}
			if err != nil {
				t.Fatalf("a report after two checksum errors: %v", err)
			}
			// Persistent: every try fails.
			r = dom0Runner(t)
			r.On(lvmtest.LVM("vgs"), rep)
			c = newClient(r)
			c.ReadRetries = 3
			_, err = c.VGs(context.Background(), scope, "caplvm")
			if n := r.Count(lvmtest.LVM("vgs")); n != 4 {
				t.Fatalf("vgs ran %d times, want 1 + 3 retries", n)
			}
			if host.KindOf(err) != host.KindNotFound || !strings.Contains(err.Error(), "Incorrect checksum") {
				t.Fatalf("err = %v (kind %s)", err, host.KindOf(err))
			}
		})
	}
}

// The 2.02.180 reports: the same JSON shape as 2.03's, every number a
// string of bytes, and what sanvol reads of them.
func TestDom0Reports(t *testing.T) {
	raw := fixture(t, "vgs-"+dom0LVM+".json")
	vgs, err := lvm.ParseVGs(raw)
	if err != nil || len(vgs) != 1 {
		t.Fatalf("ParseVGs = %v, %v", vgs, err)
	}
	want := lvm.VG{Name: "caplvm", UUID: gjson.GetBytes(raw, "report.0.vg.0.vg_uuid").String(), Size: 264241152, Free: 213909504,
		ExtentSize: 4 << 20, Tags: []string{"sanvol_v1", "sr_uuid=5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d"},
		MDASize: 1044480, MDAFree: gjson.GetBytes(raw, "report.0.vg.0.vg_mda_free").Int(), LVCount: 2, PVCount: 1}
	if d := cmp.Diff(want, vgs[0]); d != "" || want.UUID == "" {
		t.Fatalf("VG (-want +got):\n%s", d)
	}

	raw = fixture(t, "lvs-"+dom0LVM+".json")
	lvs, err := lvm.ParseLVs(raw)
	if err != nil || len(lvs) != 2 {
		t.Fatalf("ParseLVs = %v, %v", lvs, err)
	}
	rows := gjson.GetBytes(raw, "report.0.lv").Array()
	for i, l := range lvs {
		if l.Active() != (rows[i].Get("lv_active").String() == "active") {
			t.Errorf("%s: Active()=%v, lv_active=%q", l.Name, l.Active(), rows[i].Get("lv_active"))
		}
		if lvm.DevicePath(l.VG, l.Name) != rows[i].Get("lv_path").String() || l.UUID != rows[i].Get("lv_uuid").String() {
			t.Errorf("%s: path %s uuid %s, LVM says %s %s", l.Name, lvm.DevicePath(l.VG, l.Name), l.UUID, rows[i].Get("lv_path"), rows[i].Get("lv_uuid"))
		}
	}
	if a, b := lvs[0], lvs[1]; a.Name != "vol-a" || a.Size != 32<<20 || !a.Active() || len(a.Tags) != 2 ||
		b.Name != "vol-b" || b.Size != 16<<20 || b.Active() || len(b.Tags) != 1 {
		t.Fatalf("LVs = %+v", lvs)
	}

	raw = fixture(t, "pvs-"+dom0LVM+".json")
	pvs, err := lvm.ParsePVs(raw)
	if err != nil || len(pvs) != 1 {
		t.Fatalf("ParsePVs = %v, %v", pvs, err)
	}
	if p := pvs[0]; p.Name != "/dev/nvme0n1" || p.VG != "caplvm" || p.Size != 264241152 || p.MDASize != 1044480 ||
		p.UUID != gjson.GetBytes(raw, "report.0.pv.0.pv_uuid").String() {
		t.Fatalf("PV = %+v", p)
	}
}

// 2.02.180's pvs under metadata_read_only=1 fails (exit 5: it takes a
// write lock to "recover" standalone PVs) while printing the report. The
// client reports the failure, not the half-answer: sanvol lists PVs only
// on the master (SR.create), whose scope says metadata_read_only=0.
func TestDom0PVsUnderReadOnly(t *testing.T) {
	r := dom0Runner(t)
	r.On(lvmtest.LVM("pvs"), captured(t, "read-only-pvs-"+dom0LVM+".txt"))
	ro := scope
	ro.ReadOnly = true
	pvs, err := newClient(r).PVs(context.Background(), ro)
	if !errors.Is(err, host.ErrNotMaster) || pvs != nil {
		t.Fatalf("PVs = %v, %v; want NotPoolMaster", pvs, err)
	}
}

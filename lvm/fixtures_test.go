package lvm_test

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tidwall/gjson"

	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

// Reports captured from lvm2 2.03.16 in the lab guest (testdata/FIXTURES.txt).

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseCapturedVGs(t *testing.T) {
	vgs, err := lvm.ParseVGs(fixture(t, "vgs-2.03.16.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := lvm.VG{Name: "capnvme", UUID: "AOoyTd-jd5c-RE36-WNCC-Gcu8-rT6v-efLko2", Size: 264241152, Free: 213909504, ExtentSize: 4194304,
		Tags: []string{"sanvol_v1", "sr_uuid=5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d"}, MDASize: 1044480, MDAFree: 519680, LVCount: 2, PVCount: 1}
	if len(vgs) != 2 {
		t.Fatalf("%d VGs", len(vgs))
	}
	if d := cmp.Diff(want, vgs[1]); d != "" {
		t.Fatalf("VG (-want +got):\n%s", d)
	}
}

func TestParseCapturedLVs(t *testing.T) {
	raw := fixture(t, "lvs-2.03.16.json")
	lvs, err := lvm.ParseLVs(raw)
	if err != nil {
		t.Fatal(err)
	}
	rows := gjson.GetBytes(raw, "report.0.lv").Array()
	if len(lvs) != len(rows) || len(lvs) == 0 {
		t.Fatalf("%d LVs for %d rows", len(lvs), len(rows))
	}
	for i, l := range lvs {
		// lv_attr's activation flag must agree with LVM's own lv_active.
		if l.Active() != (rows[i].Get("lv_active").String() == "active") {
			t.Errorf("%s/%s: Active()=%v, lv_active=%q", l.VG, l.Name, l.Active(), rows[i].Get("lv_active"))
		}
		if lvm.DevicePath(l.VG, l.Name) != rows[i].Get("lv_path").String() {
			t.Errorf("DevicePath = %s, LVM says %s", lvm.DevicePath(l.VG, l.Name), rows[i].Get("lv_path"))
		}
	}
	if lvs[0].Size != 33554432 || lvs[0].UUID != "fb2o8w-WPYz-hTYC-OhFe-U9ow-PsoL-0u6JGk" || len(lvs[0].Tags) != 2 {
		t.Fatalf("first LV = %+v", lvs[0])
	}
}

func TestParseCapturedPVs(t *testing.T) {
	pvs, err := lvm.ParsePVs(fixture(t, "pvs-2.03.16.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pvs) != 2 || pvs[1].Name != "/dev/nvme0n1" || pvs[1].VG != "capnvme" || pvs[1].Size != 264241152 || pvs[1].MDASize == 0 {
		t.Fatalf("PVs = %+v", pvs)
	}
}

// The fake runner's reports must look like lvm2's: same skeleton lines,
// same row layout, and they parse back to the same values.
func TestFakeReportsMatchCapturedShape(t *testing.T) {
	for _, tc := range []struct {
		file   string
		render func([]byte) (string, error)
	}{
		{"vgs-2.03.16.json", func(b []byte) (string, error) {
			v, err := lvm.ParseVGs(b)
			if err != nil {
				return "", err
			}
			out := lvmtest.VGs(v...).Stdout
			back, err := lvm.ParseVGs([]byte(out))
			if d := cmp.Diff(v, back); d != "" {
				t.Errorf("VG round trip:\n%s", d)
			}
			return out, err
		}},
		{"lvs-2.03.16.json", func(b []byte) (string, error) {
			v, err := lvm.ParseLVs(b)
			if err != nil {
				return "", err
			}
			out := lvmtest.LVs(v...).Stdout
			back, err := lvm.ParseLVs([]byte(out))
			if d := cmp.Diff(v, back); d != "" {
				t.Errorf("LV round trip:\n%s", d)
			}
			return out, err
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			raw := fixture(t, tc.file)
			out, err := tc.render(raw)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := skeleton(out), skeleton(string(raw)); got != want {
				t.Errorf("%s: skeleton differs:\n got %q\nwant %q", tc.file, got, want)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "{\"") && !strings.HasPrefix(line, "                  {\"") {
					t.Errorf("%s: row indent differs: %q", tc.file, line)
				}
			}
		})
	}
}

// skeleton is a report without its rows.
func skeleton(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "{\"") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// The captured fullreport was asked without --units b: sizes like
// "252.00m" must be refused, never misread as numbers.
func TestParseRefusesHumanUnits(t *testing.T) {
	raw := fixture(t, "lvm-fullreport-2.03.16.json")
	if _, err := lvm.ParseVGs(raw); err == nil || !strings.Contains(err.Error(), "vg_size") {
		t.Fatalf("ParseVGs of a report in human units: %v", err)
	}
	if _, err := lvm.ParseLVs(raw); err == nil {
		t.Fatal("ParseLVs accepted a report in human units")
	}
}

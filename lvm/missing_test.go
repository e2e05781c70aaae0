package lvm_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

// MissingOf reads exit code and message together: the same words with
// another exit code, or an unknown message, are never "not found".
func TestMissingOf(t *testing.T) {
	cases := []struct {
		code   int
		stderr string
		want   lvm.Missing
	}{
		{5, `  Volume group "VG_x" not found` + "\n" + `  Cannot process volume group VG_x`, lvm.MissingVG},
		{5, `  Failed to find logical volume "vg/v-1"`, lvm.MissingLV},
		{5, `  No PV found on device /dev/sdb.`, lvm.MissingPV},
		{5, `  No device found for /dev/disk/by-id/nvme-uuid.2e685d3b-33b8-4aa9-ad62-e82b4f791aa2.`, lvm.MissingDevice},
		{3, `  Volume group "VG_x" not found`, lvm.MissingNothing},
		{5, `  Volume group "vg" has insufficient free space (10 extents): 20 required.`, lvm.MissingNothing},
		{5, `  Something odd.`, lvm.MissingNothing},
	}
	for _, tc := range cases {
		t.Run(tc.stderr, func(t *testing.T) {
			r := &lvmtest.Runner{}
			r.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
			r.On(lvmtest.LVM("lvremove"), lvmtest.Reply{Code: tc.code, Stderr: tc.stderr})
			err := newClient(r).LVRemove(context.Background(), scope, "vg", "v-1")
			if got := lvm.MissingOf(err); got != tc.want {
				t.Errorf("exit %d %q: %s, want %s", tc.code, tc.stderr, got, tc.want)
			}
		})
	}
	if got := lvm.MissingOf(host.NewError(host.KindNotFound, "x", "not found", "", nil)); got != lvm.MissingNothing {
		t.Errorf("an error without LVM's exit status: %s", got)
	}
}

// The messages lvm2 printed in the lab (tests/e2e/capture_test.go,
// lvmFails): each file is "exit N" and the stderr of one failed command.
func TestMissingOfCapturedMessages(t *testing.T) {
	files, err := filepath.Glob("testdata/lvm-error-*.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]lvm.Missing{
		"lvm-error-vg-missing-":     lvm.MissingVG,
		"lvm-error-lv-missing-":     lvm.MissingLV,
		"lvm-error-pv-missing-":     lvm.MissingPV,
		"lvm-error-device-missing-": lvm.MissingDevice,
	}
	seen := map[lvm.Missing]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		head, stderr, _ := strings.Cut(string(b), "\n")
		code, err := strconv.Atoi(strings.TrimPrefix(head, "exit "))
		if err != nil {
			t.Fatalf("%s: first line %q", f, head)
		}
		var exp lvm.Missing
		for prefix, m := range want {
			if strings.HasPrefix(filepath.Base(f), prefix) {
				exp = m
			}
		}
		got := lvm.MissingOf(&host.ExitError{Cmd: "lvm", Code: code, Stderr: strings.TrimSpace(stderr)})
		if got != exp {
			t.Errorf("%s (exit %d, %q): %s, want %s", f, code, stderr, got, exp)
		}
		seen[got] = true
	}
	for _, m := range want {
		if !seen[m] {
			t.Errorf("no captured message for a missing %s", m)
		}
	}
}

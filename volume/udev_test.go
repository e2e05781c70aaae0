package volume

import (
	"os"
	"path"
	"regexp"
	"testing"

	"github.com/sanvol/sanvol/lvm"
)

// The packaged udev rule that keeps blkid off the guests' LVs must match
// the names this package gives its VGs, and no one else's.
func TestUdevRuleMatchesSanvolLVs(t *testing.T) {
	b, err := os.ReadFile("../packaging/udev/12-sanvol-dm-disk.rules")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ATTR\{dm/name\}=="([^"]+)".*ENV\{DM_UDEV_DISABLE_DISK_RULES_FLAG\}="1"`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no dm/name match setting DM_UDEV_DISABLE_DISK_RULES_FLAG in the rule:\n%s", b)
	}
	glob := string(m[1])
	const sr = "0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b"
	for _, tc := range []struct {
		vg, lv string
		want   bool
	}{
		{vgName(sr), lvName("5d6e7f80-1111-4a2b-9c3d-4e5f60718293"), true},
		{vgName(sr), "meta", true},
		{"VG_XenStorage-" + sr, "VHD-0123abcd", false}, // SMAPIv1's own rule covers it
		{"VolGroup00", "LogVol00", false},
	} {
		t.Run(tc.vg+" "+tc.lv, func(t *testing.T) {
			name := lvm.DMName(tc.vg, tc.lv)
			got, err := path.Match(glob, name)
			if err != nil {
				t.Fatalf("pattern %q: %v", glob, err)
			}
			if got != tc.want {
				t.Errorf("rule pattern %q on %s: %v, want %v", glob, name, got, tc.want)
			}
		})
	}
}

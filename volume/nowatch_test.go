package volume

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// fakeBlock makes link (a /dev path) point at /dev/<name> and gives the
// device the sysfs attribute attr.
func fakeBlock(t *testing.T, root host.Root, link, name, attr, value string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(root.Path(link)), root.Path("/dev"), root.Path(filepath.Join("/sys/class/block", name, filepath.Dir(attr)))} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(root.Path("/dev/"+name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if link != "/dev/"+name {
		if err := os.Symlink(root.Path("/dev/"+name), root.Path(link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(root.Path(filepath.Join("/sys/class/block", name, attr)), []byte(value), 0o444); err != nil {
		t.Fatal(err)
	}
}

func TestNoWatchKey(t *testing.T) {
	for _, tc := range []struct {
		what, link, name, attr, value, want string
	}{
		{"NVMe namespace by uuid", "/dev/disk/by-id/nvme-uuid.5d6e7f80-1111-4a2b-9c3d-4e5f60718293", "nvme0n1", "wwid",
			"uuid.5d6e7f80-1111-4a2b-9c3d-4e5f60718293\n", "uuid.5d6e7f80-1111-4a2b-9c3d-4e5f60718293"},
		{"NVMe namespace by vendor id", "/dev/nvme1n2", "nvme1n2", "wwid",
			"nvme.0000-3131-4c696e7578-00000002  \n", "nvme.0000-3131-4c696e7578-00000002"},
		{"multipath map", "/dev/mapper/36001405abcdef0123456789", "dm-3", "dm/uuid",
			"mpath-36001405abcdef0123456789\n", "mpath-36001405abcdef0123456789"},
		{"an LV is not a PV", "/dev/mapper/vg-lv", "dm-4", "dm/uuid", "LVM-abc\n", ""},
		{"a SCSI disk keeps its watch", "/dev/sdb", "sdb", "wwid", "naa.600\n", ""},
		{"udev would rewrite the value", "/dev/nvme2n1", "nvme2n1", "wwid", "nvme.0000-x y\n", ""},
		{"nothing that leaves the directory", "/dev/nvme3n1", "nvme3n1", "wwid", "../../etc\n", ""},
		{"an empty wwid", "/dev/nvme4n1", "nvme4n1", "wwid", "\n", ""},
	} {
		t.Run(tc.what, func(t *testing.T) {
			root := host.NewRoot(t.TempDir())
			fakeBlock(t, root, tc.link, tc.name, tc.attr, tc.value)
			if got := noWatchKey(root, tc.link); got != tc.want {
				t.Errorf("noWatchKey(%s) = %q, want %q", tc.link, got, tc.want)
			}
		})
	}
	if got := noWatchKey(host.NewRoot(t.TempDir()), "/dev/disk/by-id/nvme-gone"); got != "" {
		t.Errorf("a missing device: %q", got)
	}
}

// The packaged rule must look for the names noWatchKey gives, in
// NoWatchDir, and read them from the same attributes.
func TestUdevNoWatchRuleMatchesKeys(t *testing.T) {
	b, err := os.ReadFile("../packaging/udev/90-sanvol-nowatch.rules")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^KERNEL=="([^"]+)", ATTR\{([^}]+)\}=="[^"]*", TEST=="([^"]+)", OPTIONS\+="nowatch"$`)
	got := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		if want := NoWatchDir + "/$attr{" + m[2] + "}"; m[3] != want {
			t.Errorf("rule for %s tests %q, want %q", m[1], m[3], want)
		}
		got[m[1]] = m[2]
	}
	want := map[string]string{"nvme*": "wwid", "dm-[0-9]*": "dm/uuid"}
	if len(got) != len(want) || got["nvme*"] != want["nvme*"] || got["dm-[0-9]*"] != want["dm-[0-9]*"] {
		t.Errorf("nowatch rules %v, want %v", got, want)
	}
}

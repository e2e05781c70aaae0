//go:build lab

package e2e

// TestCaptureFixtures records what the real tools and sysfs say, healthy
// and with one path down, for the parsers' unit tests. tests/lab/run.sh
// capture runs it and copies the result into nvme/, iscsi/ and lvm/
// testdata. Each file name carries the tool (or kernel) version.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/tests/labtarget"
)

type capturer struct {
	t     *testing.T
	dir   string
	index map[string][]string // package -> "file: command" lines
}

// cmd saves a command's output verbatim as <pkg>/<file>.
func (c *capturer) cmd(pkg, file string, name string, args ...string) {
	c.t.Helper()
	out := mustOutput(c.t, name, args...)
	if strings.TrimSpace(out) == "" {
		c.t.Fatalf("%s %s printed nothing", name, strings.Join(args, " "))
	}
	c.save(pkg, file, out, name+" "+quoteArgs(args))
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " %\"") {
			a = "'" + a + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

func (c *capturer) save(pkg, file, content, how string) {
	c.t.Helper()
	p := filepath.Join(c.dir, pkg, file)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.index[pkg] = append(c.index[pkg], file+": "+how)
}

// lvmFails runs an LVM command that must fail, the way sanvol runs it
// (lvm <sub> -qq --config <scope of dev>), and saves its exit status and
// stderr as lvm/<file>: "exit N" on the first line, then stderr verbatim.
// These are the messages lvm.MissingOf classifies.
func (c *capturer) lvmFails(file, dev, sub string, args ...string) {
	c.t.Helper()
	s := lvm.Scope{Devices: []string{dev}}
	if real, err := filepath.EvalSymlinks(dev); err == nil && real != dev {
		s.Devices = append(s.Devices, real)
	}
	v, err := lvm.ParseVersion(mustRun(c.t, "lvm", "version"))
	if err != nil {
		c.t.Fatal(err)
	}
	cfg, err := lvm.BuildConfig(v, s)
	if err != nil {
		c.t.Fatal(err)
	}
	argv := append([]string{sub, "-qq", "--config", cfg}, args...)
	cmd := exec.Command("lvm", argv...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		c.t.Fatalf("lvm %s %v: %v, want a failure", sub, args, err)
	}
	c.save("lvm", file, fmt.Sprintf("exit %d\n%s", ee.ExitCode(), stderr.String()), "lvm "+quoteArgs(append([]string{sub, "-qq", "--config", "<scope of " + dev + ">"}, args...)))
}

// writeIndex lists how every fixture was made, next to the fixtures.
func (c *capturer) writeIndex(kernel string) {
	for pkg, lines := range c.index {
		sort.Strings(lines)
		head := "Captured by tests/lab/run.sh capture (TestCaptureFixtures) in the lab guest\n" +
			"(Debian 12). One line per file: the command that printed it, the guest's\n" +
			"kernel and the date. \"-degraded\" files were taken with the path through\n" +
			"127.0.0.2 cut. sysfs-* trees are plain-file copies of sysfs attributes,\n" +
			"symlinks kept, to be read through a host.Root pointed at the tree.\n\n"
		for i := range lines {
			lines[i] += fmt.Sprintf("  [%s, %s]", kernel, time.Now().UTC().Format("2006-01-02"))
		}
		if err := os.WriteFile(filepath.Join(c.dir, pkg, "FIXTURES.txt"), []byte(head+strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
}

// sysfsSnapshot copies sysfs attributes as plain files under dst, keeping
// the absolute layout (dst/sys/...) and the symlinks as the kernel has
// them, so a host.Root pointed at dst reads them like the real thing.
type sysfsSnapshot struct {
	dst    string
	follow []string // only symlink targets under these prefixes are copied
	done   map[string]bool
}

// links whose targets lead away from the storage objects
var sysfsSkipLinks = map[string]bool{
	"subsystem": true, "driver": true, "module": true, "bdi": true, "firmware_node": true,
	"iommu": true, "iommu_group": true, "generic": true, "of_node": true, "ctrl": true,
}

var sysfsSkipDirs = map[string]bool{
	"power": true, "queue": true, "mq": true, "trace": true, "integrity": true,
	"statistics": true, "msi_irqs": true, "bsg": true, "scsi_generic": true, "hwmon0": true,
}

func (s *sysfsSnapshot) copyDir(src string, depth int) {
	real, err := filepath.EvalSymlinks(src)
	if err != nil || s.done[real] {
		return
	}
	s.done[real] = true
	entries, err := os.ReadDir(real)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(real, e.Name())
		to := filepath.Join(s.dst, p)
		switch {
		case e.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				continue
			}
			_ = os.MkdirAll(filepath.Dir(to), 0o755)
			_ = os.Symlink(target, to)
			if sysfsSkipLinks[e.Name()] || depth <= 0 {
				continue
			}
			if r, err := filepath.EvalSymlinks(p); err == nil && s.followed(r) {
				if st, err := os.Stat(r); err == nil && st.IsDir() {
					s.copyDir(r, depth-1)
				}
			}
		case e.IsDir():
			if depth > 0 && !sysfsSkipDirs[e.Name()] {
				s.copyDir(p, depth-1)
			}
		default:
			info, err := e.Info()
			if err != nil || info.Mode().Perm()&0o444 == 0 {
				continue // write-only triggers such as delete_controller
			}
			b, err := readLimited(p, 64<<10)
			if err != nil {
				continue
			}
			_ = os.MkdirAll(filepath.Dir(to), 0o755)
			_ = os.WriteFile(to, b, 0o644)
		}
	}
}

func (s *sysfsSnapshot) followed(p string) bool {
	for _, f := range s.follow {
		if strings.HasPrefix(p, f) {
			return true
		}
	}
	return false
}

func readLimited(p string, n int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// snapshot copies every path matching the globs (a class directory, a set
// of block devices) with its linked objects.
func (c *capturer) snapshot(pkg, tree string, follow []string, globs ...string) {
	c.t.Helper()
	s := &sysfsSnapshot{dst: filepath.Join(c.dir, pkg, tree), follow: follow, done: map[string]bool{}}
	for _, g := range globs {
		ms, _ := filepath.Glob(g)
		for _, m := range ms {
			if st, err := os.Lstat(m); err == nil && st.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(m)
				to := filepath.Join(s.dst, m)
				_ = os.MkdirAll(filepath.Dir(to), 0o755)
				_ = os.Symlink(target, to)
			}
			s.copyDir(m, 4)
		}
	}
	if _, err := os.Stat(s.dst); err != nil {
		c.t.Fatalf("sysfs snapshot %s captured nothing from %v", tree, globs)
	}
	c.index[pkg] = append(c.index[pkg], tree+": sysfs of "+strings.Join(globs, " "))
}

// versionOf extracts the first dotted version number of a tool's output.
func versionOf(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, _ := run(name, args...) // some print their version with a non-zero exit
	v := regexp.MustCompile(`\d+\.\d+(\.\d+)?`).FindString(out)
	if v == "" {
		t.Fatalf("no version in the output of %s %v: %q", name, args, out)
	}
	return v
}

func TestCaptureFixtures(t *testing.T) {
	dir := os.Getenv("SANVOL_LAB_CAPTURE")
	if dir == "" {
		t.Skip("only run by tests/lab/run.sh capture (SANVOL_LAB_CAPTURE names the output directory)")
	}
	c := &capturer{t: t, dir: dir, index: map[string][]string{}}
	kernel := strings.TrimSpace(mustRun(t, "uname", "-r"))
	nv := versionOf(t, "nvme", "version")
	iv := versionOf(t, "iscsiadm", "--version")
	mv := versionOf(t, "multipath", "-h")
	lv := versionOf(t, "lvm", "version")

	nt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "capture", Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close() })
	ndev := connectNVMe(t, nt)
	it, err := labtarget.NewISCSI(t.Context(), labtarget.ISCSIOptions{Name: "capture", Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = it.Close() })
	addrs := []string{labtarget.Addr1, labtarget.Addr2}
	mdev := loginISCSI(t, it, addrs)

	// LVM with tags on both devices, one LV active and one not.
	for _, d := range []struct{ dev, vg string }{{ndev, "capnvme"}, {mdev, "capiscsi"}} {
		mustRun(t, "pvcreate", "-ff", "-y", d.dev)
		mustRun(t, "vgcreate", "--addtag", "sanvol_v1", "--addtag", "sr_uuid=5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d", d.vg, d.dev)
		mustRun(t, "lvcreate", "-y", "-W", "y", "-n", "vol-a", "-L", "32m", "--addtag", "uuid=0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b", "--addtag", "name=disk+0", d.vg)
		mustRun(t, "lvcreate", "-y", "-W", "y", "-n", "vol-b", "-L", "16m", "--addtag", "uuid=9a8b7c6d-3333-4f1e-9d2c-1b0a9f8e7d6c", d.vg)
		mustRun(t, "lvchange", "-an", d.vg+"/vol-b")
		vg := d.vg
		dev := d.dev
		t.Cleanup(func() {
			_, _ = run("vgchange", "-an", vg)
			_, _ = run("vgremove", "-ff", "-y", vg)
			_, _ = run("pvremove", "-ff", "-y", dev)
		})
	}

	nvmeCmds := func(sfx string) {
		c.cmd("nvme", "nvme-list-subsys-"+nv+sfx+".json", "nvme", "list-subsys", "-o", "json")
		c.cmd("nvme", "nvme-list-"+nv+sfx+".json", "nvme", "list", "-o", "json")
		c.cmd("nvme", "nvme-list-v-"+nv+sfx+".json", "nvme", "list", "-v", "-o", "json")
		c.snapshot("nvme", "sysfs-"+kernel+sfx,
			[]string{"/sys/devices/virtual/nvme-subsystem", "/sys/devices/virtual/nvme-fabrics"},
			"/sys/class/nvme-subsystem", "/sys/class/nvme", "/sys/class/nvme-subsystem/*", "/sys/class/nvme/*",
			"/sys/block/nvme*", "/sys/module/nvme_core/parameters")
	}
	iscsiCmds := func(sfx string) {
		c.cmd("iscsi", "iscsiadm-session-P3-"+iv+sfx+".txt", "iscsiadm", "-m", "session", "-P", "3")
		c.cmd("iscsi", "iscsiadm-session-P1-"+iv+sfx+".txt", "iscsiadm", "-m", "session", "-P", "1")
		c.cmd("iscsi", "iscsiadm-session-"+iv+sfx+".txt", "iscsiadm", "-m", "session")
		c.cmd("iscsi", "multipath-ll-"+mv+sfx+".txt", "multipath", "-ll")
		c.cmd("iscsi", "multipathd-show-maps-json-"+mv+sfx+".json", "multipathd", "show", "maps", "json")
		c.cmd("iscsi", "multipathd-show-paths-"+mv+sfx+".txt", "multipathd", "show", "paths")
		c.cmd("iscsi", "multipathd-show-paths-raw-"+mv+sfx+".txt", "multipathd", "show", "paths", "raw", "format", "%w %i %d %D %t %o %T %m %P")
		c.snapshot("iscsi", "sysfs-"+kernel+sfx,
			[]string{"/sys/devices/platform/host", "/sys/devices/virtual/block/dm-"},
			"/sys/class/iscsi_session", "/sys/class/iscsi_connection", "/sys/class/iscsi_host",
			"/sys/class/iscsi_session/*", "/sys/class/iscsi_connection/*", "/sys/class/iscsi_host/*",
			"/sys/class/scsi_device/*", "/sys/block/sd*", "/sys/block/dm-*")
	}

	c.cmd("nvme", "nvme-discover-"+nv+".json", "nvme", "discover", "-t", "tcp", "-a", labtarget.Addr1, "-s", nt.Svc, "-o", "json")
	nvmeCmds("")
	c.cmd("iscsi", "iscsiadm-discovery-st-"+iv+".txt", "iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", labtarget.Addr1+":3260")
	iscsiCmds("")
	c.cmd("lvm", "lvm-fullreport-"+lv+".json", "lvm", "fullreport", "--reportformat", "json")
	c.cmd("lvm", "vgs-"+lv+".json", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+vg_tags,vg_uuid,vg_extent_size,vg_mda_size,vg_mda_free")
	c.cmd("lvm", "lvs-"+lv+".json", "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+lv_tags,lv_uuid,lv_active,lv_path,lv_dm_path")
	c.cmd("lvm", "pvs-"+lv+".json", "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+pv_uuid,dev_size,pv_mda_size,pv_mda_free")
	c.snapshot("lvm", "sysfs-"+kernel, []string{"/sys/devices/virtual/block/dm-"}, "/sys/block/dm-*")
	// What LVM says when something is missing (lvm.MissingOf): a VG and
	// an LV that are not there on a readable device, a device that does
	// not exist.
	c.lvmFails("lvm-error-vg-missing-"+lv+".txt", ndev, "lvs", "VG_sanvol-5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d")
	c.lvmFails("lvm-error-vg-missing-remove-"+lv+".txt", ndev, "lvremove", "VG_sanvol-5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d/v-0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b")
	c.lvmFails("lvm-error-lv-missing-"+lv+".txt", ndev, "lvremove", "capnvme/v-0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b")
	gone := "/dev/disk/by-id/nvme-uuid.00000000-0000-4000-8000-00000000dead"
	c.lvmFails("lvm-error-device-missing-pvremove-"+lv+".txt", gone, "pvremove", gone)
	c.lvmFails("lvm-error-vg-missing-nodevice-"+lv+".txt", gone, "lvs", "capnvme")

	// One path down on each stack: the NVMe controller on 127.0.0.2 goes
	// "connecting"; the iSCSI session there goes FAILED and multipath
	// marks its path failed.
	if err := nt.UnlinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NVMe path on 127.0.0.2 to go connecting", time.Minute, func() (bool, string) {
		cs := nvmeCtrls(nt.NQN)
		for _, x := range cs {
			if strings.Contains(x.Address, labtarget.Addr2+",") && x.State == "connecting" {
				return true, ""
			}
		}
		return false, fmt.Sprint(cs)
	})
	if err := it.DisablePortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "multipath to fail the path on 127.0.0.2", time.Minute, func() (bool, string) {
		ps := multipathPaths(it.WWID())
		return activePaths(ps) == 1 && len(ps) == 2, fmt.Sprint(ps)
	})
	nvmeCmds("-degraded")
	iscsiCmds("-degraded")

	if err := nt.LinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	if err := it.EnablePortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both stacks back to two paths", 2*time.Minute, func() (bool, string) {
		n, m := liveCount(nvmeCtrls(nt.NQN)), activePaths(multipathPaths(it.WWID()))
		return n == 2 && m == 2, fmt.Sprintf("nvme %d live, multipath %d active", n, m)
	})
	// A readable device whose PV label is gone (what a repeated SR.destroy
	// sees after pvremove).
	mustRun(t, "vgremove", "-ff", "-y", "capnvme")
	mustRun(t, "pvremove", "-ff", "-y", ndev)
	c.lvmFails("lvm-error-pv-missing-"+lv+".txt", ndev, "pvremove", ndev)
	c.lvmFails("lvm-error-vg-missing-nopv-"+lv+".txt", ndev, "vgremove", "capnvme")
	c.writeIndex(kernel)
}

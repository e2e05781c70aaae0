//go:build lab

package e2e

// TestCaptureLVMErrors records what the host's lvm2 prints, reports and
// failures alike, for lvm's unit tests: the JSON reports sanvol parses and
// the messages its error classification reads (missing LV/VG, the
// metadata_read_only refusal, lock contention, a metadata checksum error,
// a device LVM cannot see). tests/lab/run.sh capture --dom0 xcpng8 runs it
// with XCP-ng 8.x dom0's lvm2 2.02.180; each file name carries the version.
// Commands run as sanvol runs them: -qq, the C locale, and a --config
// carrying metadata_read_only (dom0's /etc/lvm/lvm.conf sets it to 1).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/labtarget"
)

// failing runs an LVM command expected to fail (or to refuse without
// failing) and saves its exit status, stderr and stdout as <pkg>/<file>:
//
//	exit N
//	--- stderr
//	...
//	--- stdout
//	...
func (c *capturer) failing(pkg, file string, args ...string) (int, string) {
	c.t.Helper()
	cmd := exec.Command("lvm", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("lvm %v: %v", args, err)
	}
	if se.Len() == 0 && so.Len() == 0 {
		c.t.Fatalf("lvm %s printed nothing (exit %d)", strings.Join(args, " "), code)
	}
	content := fmt.Sprintf("exit %d\n--- stderr\n%s--- stdout\n%s", code, se.String(), so.String())
	c.save(pkg, file, content, "lvm "+quoteArgs(args))
	return code, se.String()
}

func TestCaptureLVMErrors(t *testing.T) {
	dir := os.Getenv("SANVOL_LAB_CAPTURE")
	if dir == "" {
		t.Skip("only run by tests/lab/run.sh capture (SANVOL_LAB_CAPTURE names the output directory)")
	}
	c := &capturer{t: t, dir: dir, index: map[string][]string{}}
	kernel := strings.TrimSpace(mustRun(t, "uname", "-r"))
	lv := versionOf(t, "lvm", "version")

	nt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "caplvm", Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nt.Close() })
	dev := connectNVMe(t, nt)
	const vg = "caplvm"
	// What sanvol's --config says on the master and on a member.
	rw := "global{metadata_read_only=0}"
	ro := "global{metadata_read_only=1}"
	w := func(sub string, args ...string) {
		mustRun(t, "lvm", append([]string{sub, "--config", rw}, args...)...)
	}
	w("pvcreate", "-ff", "-y", dev)
	w("vgcreate", "--addtag", "sanvol_v1", "--addtag", "sr_uuid=5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d", vg, dev)
	w("lvcreate", "-y", "-W", "y", "-n", "vol-a", "-L", "32m", "--addtag", "uuid=0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b", "--addtag", "name=disk+0", vg)
	w("lvcreate", "-y", "-W", "y", "-n", "vol-b", "-L", "16m", "--addtag", "uuid=9a8b7c6d-3333-4f1e-9d2c-1b0a9f8e7d6c", vg)
	w("lvchange", "-an", vg+"/vol-b")

	t.Cleanup(func() {
		_, _ = run("lvm", "vgchange", "--config", rw, "-an", vg)
		_, _ = run("lvm", "vgremove", "--config", rw, "-ff", "-y", vg)
		_, _ = run("lvm", "pvremove", "--config", rw, "-ff", "-y", dev)
	})

	// The PV's first 8 KiB (label sectors, metadata area header at 4 KiB)
	// as lvm's report cache reads them (O_DIRECT), before and after one
	// more metadata commit (undone after): the cache's stamp. Early in
	// the test, which lvm2 2.03 fails further down (it ignores
	// metadata_read_only).
	head := func(file, how string) {
		b, err := host.DirectReader{Root: host.NewRoot("/")}.ReadAt(dev, 0, 8192)
		if err != nil {
			t.Fatal(err)
		}
		c.save("lvm", file, string(b), how)
	}
	head("pv-head-"+lv+".bin", "first 8 KiB of "+dev+" (O_DIRECT), the PV of the VG above")
	w("vgchange", "--addtag", "head_probe", vg)
	head("pv-head-after-commit-"+lv+".bin", "first 8 KiB of "+dev+" after vgchange --addtag head_probe "+vg)
	w("vgchange", "--deltag", "head_probe", vg)

	c.cmd("lvm", "lvm-version-"+lv+".txt", "lvm", "version")
	// Reports as the master runs them: dom0's lvm.conf says
	// metadata_read_only=1, under which 2.02.180's pvs fails (exit 5,
	// "Recovery of standalone physical volumes failed": a write lock on the
	// orphan PVs) while still printing the report; that is recorded below.
	c.cmd("lvm", "vgs-"+lv+".json", "vgs", "--config", rw, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+vg_tags,vg_uuid,vg_extent_size,vg_mda_size,vg_mda_free")
	c.cmd("lvm", "lvs-"+lv+".json", "lvs", "--config", rw, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+lv_tags,lv_uuid,lv_active,lv_path,lv_dm_path")
	c.cmd("lvm", "pvs-"+lv+".json", "pvs", "--config", rw, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "+pv_uuid,dev_size,pv_mda_size,pv_mda_free")

	c.failing("lvm", "read-only-pvs-"+lv+".txt", "pvs", "-qq", "--config", ro, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pv_name,vg_name")

	// Missing objects.
	c.failing("lvm", "err-lv-missing-"+lv+".txt", "lvs", "-qq", "--config", ro, vg+"/nosuch")
	c.failing("lvm", "err-lvchange-lv-missing-"+lv+".txt", "lvchange", "-qq", "--config", ro, "--activate", "y", "--ignoreactivationskip", vg+"/nosuch")
	c.failing("lvm", "err-vg-missing-"+lv+".txt", "vgs", "-qq", "--config", ro, "VG_nosuch")

	// metadata_read_only=1: a member's scope. lvcreate and vgchange are
	// refused; what lvchange does (the XenServer patch lets it through)
	// is recorded with the tags that are there afterwards.
	c.failing("lvm", "err-read-only-lvcreate-"+lv+".txt", "lvcreate", "-qq", "--config", ro, "-y", "-n", "vol-c", "-L", "8m", vg)
	c.failing("lvm", "err-read-only-vgchange-addtag-"+lv+".txt", "vgchange", "-qq", "--config", ro, "--addtag", "ro_probe", vg)
	code, _ := c.failing("lvm", "read-only-lvchange-addtag-"+lv+".txt", "lvchange", "-v", "--config", ro, "--addtag", "ro_probe", vg+"/vol-a")
	tags := strings.TrimSpace(mustOutput(t, "lvs", "--noheadings", "-o", "lv_tags", vg+"/vol-a"))
	c.save("lvm", "read-only-lvchange-addtag-after-"+lv+".txt", tags+"\n", "lvs --noheadings -o lv_tags "+vg+"/vol-a (after the lvchange above)")
	t.Logf("lvchange --addtag under metadata_read_only=1: exit %d, tags now %q", code, tags)
	if _, err := run("lvm", "lvs", "--noheadings", "-o", "lv_name", vg+"/vol-c"); err == nil {
		t.Logf("lvcreate under metadata_read_only=1 created the LV")
	}

	// Lock contention: another process holds the VG's lock (lvm2 takes
	// flock(2) on <locking_dir>/V_<vg>); wait_for_locks=0 fails at once.
	lockDir := "/run/lock/lvm"
	holder := exec.Command("flock", "-x", lockDir+"/V_"+vg, "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	c.failing("lvm", "err-lock-contention-"+lv+".txt", "lvcreate", "-qq", "--config", "global{metadata_read_only=0 wait_for_locks=0}", "-y", "-n", "vol-d", "-L", "8m", vg)
	_ = holder.Process.Kill()
	_ = holder.Wait()

	// A device LVM cannot see: one that does not exist, and the SR's
	// device rejected by the filter (the VG is then simply not there).
	c.failing("lvm", "err-pv-device-missing-"+lv+".txt", "pvs", "-qq", "--config", ro, "/dev/nvme99n99")
	c.failing("lvm", "err-vg-device-filtered-"+lv+".txt", "vgs", "-qq", "--config", `devices{global_filter=["r|.*|"] filter=["r|.*|"]} `+ro, vg)

	// A metadata checksum error, as a reader sees while the master
	// rewrites the metadata: one byte of the metadata area header (at
	// 4 KiB, 512 bytes, checksummed from byte 4) is flipped, then restored.
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	orig := make([]byte, 512)
	if _, err := f.ReadAt(orig, 4096); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[300] ^= 0xff
	if _, err := f.WriteAt(bad, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	c.failing("lvm", "err-checksum-vgs-"+lv+".txt", "vgs", "-qq", "--config", ro, vg)
	c.failing("lvm", "err-checksum-lvs-"+lv+".txt", "lvs", "-qq", "--config", ro, "--readonly", vg)
	if _, err := f.WriteAt(orig, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "vgs", vg) // restored

	if fileExists("/etc/sanvol-lab-dom0") {
		for i := range c.index["lvm"] {
			c.index["lvm"][i] += " (XCP-ng 8.x dom0's lvm2 build, run.sh --dom0 xcpng8)"
		}
	}
	c.writeIndex(kernel)
}

//go:build lab

package e2e

// The lab's own scenarios: they prove, with nothing but the system tools,
// that the guest really has two-path NVMe/TCP and iSCSI with failover and
// working LVM, so that a failing product scenario means a product bug.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/tests/labtarget"
)

// nvmeCtrl is one controller (path) of an NVMe subsystem as sysfs shows it.
type nvmeCtrl struct {
	Name, State, Address, Transport string
}

// nvmeSubsys finds the host-side subsystem directory for an NQN.
func nvmeSubsys(nqn string) string {
	dirs, _ := filepath.Glob("/sys/class/nvme-subsystem/nvme-subsys*")
	for _, d := range dirs {
		if readSys(filepath.Join(d, "subsysnqn")) == nqn {
			return d
		}
	}
	return ""
}

func nvmeCtrls(nqn string) []nvmeCtrl {
	sub := nvmeSubsys(nqn)
	if sub == "" {
		return nil
	}
	var out []nvmeCtrl
	ctrls, _ := filepath.Glob(filepath.Join(sub, "nvme[0-9]*"))
	for _, c := range ctrls {
		if strings.Contains(strings.TrimPrefix(filepath.Base(c), "nvme"), "n") {
			continue // a namespace (nvme0n1), not a controller
		}
		out = append(out, nvmeCtrl{
			Name: filepath.Base(c), State: readSys(filepath.Join(c, "state")),
			Address: readSys(filepath.Join(c, "address")), Transport: readSys(filepath.Join(c, "transport")),
		})
	}
	return out
}

func liveCount(ctrls []nvmeCtrl) int {
	n := 0
	for _, c := range ctrls {
		if c.State == "live" {
			n++
		}
	}
	return n
}

var nvmeHeadName = regexp.MustCompile(`^nvme\d+n\d+$`)

// nvmeDevice is the multipath head device (/dev/nvmeXnY) of the namespace
// with this NGUID: identity, never the device name.
func nvmeDevice(nguid string) string {
	heads, _ := filepath.Glob("/sys/block/nvme*n*")
	for _, h := range heads {
		if !nvmeHeadName.MatchString(filepath.Base(h)) {
			continue // a hidden per-path device (nvme0c1n1) has no /dev node
		}
		if strings.ReplaceAll(readSys(filepath.Join(h, "nguid")), "-", "") == nguid {
			return "/dev/" + filepath.Base(h)
		}
	}
	return ""
}

// connectNVMe connects every portal of the target with nvme-cli and sets
// round-robin, as the admin guides do by hand. It returns the device.
func connectNVMe(t *testing.T, tgt *labtarget.NVMeTarget) string {
	t.Helper()
	for _, a := range tgt.Addrs {
		// A short reconnect delay keeps the restore phase quick.
		mustRun(t, "nvme", "connect", "-t", "tcp", "-a", a, "-s", tgt.Svc, "-n", tgt.NQN,
			"--ctrl-loss-tmo=1800", "--reconnect-delay=1")
	}
	t.Cleanup(func() { _, _ = run("nvme", "disconnect", "-n", tgt.NQN) })
	waitFor(t, "both NVMe controllers live", 30*time.Second, func() (bool, string) {
		c := nvmeCtrls(tgt.NQN)
		return liveCount(c) == len(tgt.Addrs), fmt.Sprint(c)
	})
	ns, _ := tgt.Namespace(1)
	var dev string
	waitFor(t, "the namespace head device", 30*time.Second, func() (bool, string) {
		dev = nvmeDevice(ns.NGUID)
		return dev != "" && fileExists(dev), dev
	})
	sub := nvmeSubsys(tgt.NQN)
	if err := os.WriteFile(filepath.Join(sub, "iopolicy"), []byte("round-robin"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dev
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// mpPath is one path of a dm-multipath map as multipathd reports it.
type mpPath struct {
	WWID, Dev, DMState, Checker string
}

func multipathPaths(wwid string) []mpPath {
	out, err := labtarget.Output(context.Background(), "multipathd", "show", "paths", "raw", "format", "%w %d %t %T")
	if err != nil {
		return nil
	}
	var ps []mpPath
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == wwid {
			ps = append(ps, mpPath{f[0], f[1], f[2], f[3]})
		}
	}
	return ps
}

func activePaths(ps []mpPath) int {
	n := 0
	for _, p := range ps {
		if p.DMState == "active" && p.Checker == "ready" {
			n++
		}
	}
	return n
}

// loginISCSI discovers through the first portal, logs in to every portal
// of the main target and waits for the multipath map. It returns the map
// device.
func loginISCSI(t *testing.T, tgt *labtarget.ISCSITarget, addrs []string) string {
	t.Helper()
	first := fmt.Sprintf("%s:%d", addrs[0], tgt.Port)
	mustRun(t, "iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", first)
	t.Cleanup(func() { logoutISCSI(tgt, addrs) })
	for _, a := range addrs {
		mustRun(t, "iscsiadm", "-m", "node", "-T", tgt.IQN, "-p", fmt.Sprintf("%s:%d", a, tgt.Port), "--login")
	}
	wwid := tgt.WWID()
	waitFor(t, "two active multipath paths", 60*time.Second, func() (bool, string) {
		ps := multipathPaths(wwid)
		return activePaths(ps) == len(addrs), fmt.Sprint(ps)
	})
	dev := "/dev/mapper/" + wwid
	waitFor(t, dev, 30*time.Second, func() (bool, string) { return fileExists(dev), "" })
	return dev
}

func logoutISCSI(tgt *labtarget.ISCSITarget, addrs []string) {
	_, _ = run("multipath", "-f", tgt.WWID())
	_, _ = run("iscsiadm", "-m", "node", "-T", tgt.IQN, "--logout")
	_, _ = run("iscsiadm", "-m", "node", "-T", tgt.IQN, "-o", "delete")
	for _, a := range addrs {
		_, _ = run("iscsiadm", "-m", "discoverydb", "-t", "sendtargets", "-p", fmt.Sprintf("%s:%d", a, tgt.Port), "-o", "delete")
	}
}

// lvmLifecycle runs the LVM operations the product relies on against a
// shared device and checks the JSON report, then removes everything.
func lvmLifecycle(t *testing.T, dev, vg string) {
	t.Helper()
	mustRun(t, "pvcreate", "-ff", "-y", dev)
	mustRun(t, "vgcreate", vg, dev)
	defer func() {
		_, _ = run("vgchange", "-an", vg)
		_, _ = run("vgremove", "-ff", "-y", vg)
		_, _ = run("pvremove", "-ff", "-y", dev)
	}()
	mustRun(t, "lvcreate", "-y", "-W", "y", "-n", "disk0", "-L", "64m", vg)
	mustRun(t, "lvextend", "-L", "+32m", vg+"/disk0")
	mustRun(t, "vgchange", "-an", vg)
	mustRun(t, "lvchange", "-ay", vg+"/disk0")
	lvDev := "/dev/" + vg + "/disk0"
	if !fileExists(lvDev) {
		t.Fatalf("%s missing after activation", lvDev)
	}
	out := mustOutput(t, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size,lv_active", vg)
	var rep struct {
		Report []struct {
			LV []struct {
				Name   string `json:"lv_name"`
				Size   string `json:"lv_size"`
				Active string `json:"lv_active"`
			} `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("lvs JSON: %v\n%s", err, out)
	}
	if len(rep.Report) != 1 || len(rep.Report[0].LV) != 1 {
		t.Fatalf("lvs reported %s", out)
	}
	lv := rep.Report[0].LV[0]
	if lv.Name != "disk0" || lv.Size != fmt.Sprint(96<<20) || lv.Active != "active" {
		t.Fatalf("lvs: got %+v, want disk0 of %d bytes, active", lv, 96<<20)
	}
	// The LV carries data: a short O_DIRECT round trip through it.
	load := StartIO(t, lvDev, 8<<20)
	load.waitWrites(t, 16, time.Minute)
	if st := load.Stop(); len(st.Errors) > 0 {
		t.Fatalf("writes to %s failed: %v", lvDev, st.Errors)
	}
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "lvchange", "-an", vg+"/disk0")
}

// cutWithIO runs I/O on dev, cuts one path with cut, waits until fail says
// the path is seen as failed, checks I/O still flows, restores, waits for
// back, and finally checks that no write failed and all data reads back.
func cutWithIO(t *testing.T, dev string, cut, restore func() error, failed, back func() (bool, string)) {
	t.Helper()
	_, mark := dmesgSince(0)
	load := StartIO(t, dev, 64<<20)
	load.waitWrites(t, 8, time.Minute)
	t0 := time.Now()
	if err := cut(); err != nil {
		t.Fatal(err)
	}
	seen := waitFor(t, "the path to be seen as failed", 90*time.Second, failed)
	load.waitWrites(t, 16, 2*time.Minute)
	t.Logf("path failure seen after %s; I/O continued on the other path", seen.Round(100*time.Millisecond))
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	again := waitFor(t, "the path to come back", 90*time.Second, back)
	load.waitWrites(t, 16, 2*time.Minute)
	st := load.Stop()
	t.Logf("path back %s after restore; %d writes in %s, worst write latency %s",
		again.Round(100*time.Millisecond), st.Writes, time.Since(t0).Round(time.Second), st.MaxLatency.Round(time.Millisecond))
	if len(st.Errors) > 0 {
		t.Errorf("%d writes failed during the path cut, first: %v", len(st.Errors), st.Errors[0])
	}
	if err := load.Verify(); err != nil {
		t.Error(err)
	}
	lines, _ := dmesgSince(mark)
	for _, l := range lines {
		if strings.Contains(l, "I/O error") && strings.Contains(l, filepath.Base(dev)) {
			t.Errorf("kernel reported an I/O error on the multipath device: %s", l)
		}
	}
}

func TestLabNVMeMultipath(t *testing.T) {
	tgt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "labnvme", Size: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tgt.Close(); err != nil {
			t.Errorf("nvmet teardown: %v", err)
		}
	})
	dev := connectNVMe(t, tgt)
	ns, _ := tgt.Namespace(1)
	if got := readSys("/sys/block/" + filepath.Base(dev) + "/uuid"); got != ns.UUID {
		t.Errorf("namespace uuid %q, target set %q", got, ns.UUID)
	}
	t.Logf("%s: %v", dev, nvmeCtrls(tgt.NQN))

	t.Run("failover", func(t *testing.T) {
		pathOn := func(addr string) (nvmeCtrl, bool) {
			for _, c := range nvmeCtrls(tgt.NQN) {
				if strings.Contains(c.Address, "traddr="+addr+",") {
					return c, true
				}
			}
			return nvmeCtrl{}, false
		}
		cutWithIO(t, dev,
			func() error { return tgt.UnlinkPort(labtarget.Addr2) },
			func() error { return tgt.LinkPort(labtarget.Addr2) },
			func() (bool, string) {
				c, _ := pathOn(labtarget.Addr2)
				return c.State != "live", fmt.Sprint(nvmeCtrls(tgt.NQN))
			},
			func() (bool, string) {
				c := nvmeCtrls(tgt.NQN)
				return liveCount(c) == 2, fmt.Sprint(c)
			})
	})

	t.Run("grow", func(t *testing.T) {
		// nvmet announces the new size; the host updates without a rescan.
		if err := tgt.GrowNamespace(1, 768<<20); err != nil {
			t.Fatal(err)
		}
		sizeFile := "/sys/block/" + filepath.Base(dev) + "/size"
		waitFor(t, "the host to see the grown namespace", 30*time.Second, func() (bool, string) {
			s := readSys(sizeFile)
			return s == fmt.Sprint((768<<20)/512), s + " sectors"
		})
	})

	t.Run("lvm", func(t *testing.T) { lvmLifecycle(t, dev, "labnvme") })
}

func TestLabISCSIMultipath(t *testing.T) {
	tgt := labLIO(t, labtarget.ISCSIOptions{Name: "labiscsi", Size: 512 << 20})
	addrs := []string{labtarget.Addr1, labtarget.Addr2}
	dev := loginISCSI(t, tgt, addrs)
	t.Logf("%s: %v", dev, multipathPaths(tgt.WWID()))

	t.Run("failover", func(t *testing.T) {
		cutWithIO(t, dev,
			func() error { return tgt.DisablePortal(labtarget.Addr2) },
			func() error { return tgt.EnablePortal(labtarget.Addr2) },
			func() (bool, string) {
				ps := multipathPaths(tgt.WWID())
				return activePaths(ps) == 1, fmt.Sprint(ps)
			},
			func() (bool, string) {
				ps := multipathPaths(tgt.WWID())
				return activePaths(ps) == 2, fmt.Sprint(ps)
			})
	})

	t.Run("grow", func(t *testing.T) {
		// LIO does not announce a new size: the initiator rescans its
		// sessions and multipathd resizes the map.
		if err := tgt.Grow(768 << 20); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "iscsiadm", "-m", "session", "--rescan")
		mustRun(t, "multipathd", "resize", "map", tgt.WWID())
		sizeFile := "/sys/block/" + filepath.Base(mustEval(t, dev)) + "/size"
		waitFor(t, "the map to show the grown LUN", 30*time.Second, func() (bool, string) {
			s := readSys(sizeFile)
			return s == fmt.Sprint((768<<20)/512), s + " sectors"
		})
	})

	t.Run("lvm", func(t *testing.T) { lvmLifecycle(t, dev, "labiscsi") })
}

func mustEval(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLabNVMeSecondNamespace(t *testing.T) {
	tgt, err := labtarget.NewNVMe(t.Context(), labtarget.NVMeOptions{Name: "labns", Size: 128 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tgt.Close(); err != nil {
			t.Errorf("nvmet teardown: %v", err)
		}
	})
	connectNVMe(t, tgt)
	// nvmet announces the new namespace; the host adds it on both paths.
	ns, err := tgt.AddNamespace(2, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second namespace's head device", 30*time.Second, func() (bool, string) {
		dev := nvmeDevice(ns.NGUID)
		return dev != "" && readSys("/sys/block/"+filepath.Base(dev)+"/uuid") == ns.UUID, dev
	})
}

// initiatorName is this guest's iSCSI initiator IQN (made at boot).
func initiatorName(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/etc/iscsi/initiatorname.iscsi")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "InitiatorName="); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no InitiatorName in /etc/iscsi/initiatorname.iscsi")
	return ""
}

func TestLabISCSIChap(t *testing.T) {
	tgt := labLIO(t, labtarget.ISCSIOptions{Name: "labchap", Size: 64 << 20, Addrs: []string{labtarget.Addr1}})
	chap := &labtarget.CHAP{User: "labuser", Password: "initiator-secret1", MutualUser: "labarray", MutualPassword: "target-secret22"}
	if err := tgt.AllowInitiator(initiatorName(t), chap); err != nil {
		t.Fatal(err)
	}
	portal := fmt.Sprintf("%s:%d", labtarget.Addr1, tgt.Port)
	mustRun(t, "iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal)
	t.Cleanup(func() { logoutISCSI(tgt, []string{labtarget.Addr1}) })
	set := func(k, v string) {
		mustRun(t, "iscsiadm", "-m", "node", "-T", tgt.IQN, "-p", portal, "-o", "update", "-n", k, "-v", v)
	}
	login := func() error {
		_, err := run("iscsiadm", "-m", "node", "-T", tgt.IQN, "-p", portal, "--login")
		return err
	}
	set("node.session.auth.authmethod", "CHAP")
	set("node.session.auth.username", chap.User)
	set("node.session.auth.password", "a-wrong-secret")
	if err := login(); err == nil {
		t.Fatal("login with a wrong CHAP secret succeeded")
	}
	set("node.session.auth.password", chap.Password)
	set("node.session.auth.username_in", chap.MutualUser)
	set("node.session.auth.password_in", "wrong-target-secret")
	if err := login(); err == nil {
		t.Fatal("login succeeded although the target's mutual CHAP secret is wrong")
	}
	set("node.session.auth.password_in", chap.MutualPassword)
	if err := login(); err != nil {
		t.Fatalf("mutual CHAP login: %v", err)
	}
	waitFor(t, "a multipath path to the CHAP LUN", 30*time.Second, func() (bool, string) {
		ps := multipathPaths(tgt.WWID())
		return activePaths(ps) == 1, fmt.Sprint(ps)
	})
}

// TestLabISCSIMultipleIQN builds the array layout of the Citrix and
// NexentaStor guides: one target IQN per portal, the same LUN behind both.
// multipath must still see one LUN with two paths.
func TestLabISCSIMultipleIQN(t *testing.T) {
	tgt := labLIO(t, labtarget.ISCSIOptions{Name: "labmiqn", Size: 64 << 20, Addrs: []string{labtarget.Addr1}})
	second := tgt.IQN + "-b"
	if err := tgt.ExportIQN(second, labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	p1, p2 := fmt.Sprintf("%s:%d", labtarget.Addr1, tgt.Port), fmt.Sprintf("%s:%d", labtarget.Addr2, tgt.Port)
	out := mustRun(t, "iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", p2)
	if !strings.Contains(out, p2+",1 "+second) {
		t.Fatalf("discovery through %s does not offer %s there:\n%s", p2, second, out)
	}
	mustRun(t, "iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", p1)
	t.Cleanup(func() {
		logoutISCSI(tgt, []string{labtarget.Addr1, labtarget.Addr2})
		_, _ = run("iscsiadm", "-m", "node", "-T", second, "--logout")
		_, _ = run("iscsiadm", "-m", "node", "-T", second, "-o", "delete")
	})
	mustRun(t, "iscsiadm", "-m", "node", "-T", tgt.IQN, "-p", p1, "--login")
	mustRun(t, "iscsiadm", "-m", "node", "-T", second, "-p", p2, "--login")
	waitFor(t, "one LUN with a path through each IQN", 60*time.Second, func() (bool, string) {
		ps := multipathPaths(tgt.WWID())
		return activePaths(ps) == 2, fmt.Sprint(ps)
	})
}

// TestLabISCSIVanishAndReturn: the target behind one portal disappears
// entirely and comes back, as in an HA-Lizard failover; the path returns
// to the same LUN.
func TestLabISCSIVanishAndReturn(t *testing.T) {
	tgt := labLIO(t, labtarget.ISCSIOptions{Name: "labvanish", Size: 64 << 20})
	addrs := []string{labtarget.Addr1, labtarget.Addr2}
	loginISCSI(t, tgt, addrs)
	if err := tgt.VanishPortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "multipath to fail the vanished path", 90*time.Second, func() (bool, string) {
		ps := multipathPaths(tgt.WWID())
		return activePaths(ps) == 1, fmt.Sprint(ps)
	})
	if out, err := run("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", fmt.Sprintf("%s:%d", labtarget.Addr2, tgt.Port)); err == nil {
		t.Fatalf("discovery through the vanished portal still answers:\n%s", out)
	}
	if err := tgt.ReturnPortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the path to come back to the same LUN", 90*time.Second, func() (bool, string) {
		ps := multipathPaths(tgt.WWID())
		return activePaths(ps) == 2, fmt.Sprint(ps)
	})
}

// labLIO makes a LIO target for one scenario and tears it down after,
// failing the test if configfs is left dirty for the next scenario.
func labLIO(t *testing.T, o labtarget.ISCSIOptions) *labtarget.ISCSITarget {
	t.Helper()
	tgt, err := labtarget.NewISCSI(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tgt.Close(); err != nil {
			t.Errorf("LIO teardown: %v", err)
		}
	})
	return tgt
}

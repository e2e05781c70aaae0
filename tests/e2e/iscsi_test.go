//go:build lab

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/transport"
)

// These scenarios drive the iscsi-ng transport directly against the
// guest kernel's LIO target over loopback portals: real iscsiadm, real
// iscsid, real multipathd, real dm-multipath.

func newISCSITransport(t *testing.T, secrets host.SecretResolver) *iscsi.Transport {
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	root := host.NewRoot("/")
	return iscsi.New(iscsi.Deps{
		Runner:  host.NewExecRunner(log),
		Root:    root,
		Locker:  host.FileLocker{Root: root},
		Secrets: secrets,
		Log:     log,
	})
}

// newISCSILUN makes a LIO target with one LUN on the given portals and
// registers the safety net that removes whatever a failed scenario left:
// sessions, map and target.
func newISCSILUN(t *testing.T, name string, addrs ...string) *labtarget.ISCSITarget {
	t.Helper()
	tg, err := labtarget.NewISCSI(context.Background(), labtarget.ISCSIOptions{Name: name, Addrs: addrs, Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = run("multipath", "-f", tg.WWID())
		for _, s := range iscsiSessions() {
			if strings.HasPrefix(s.target, "iqn.2003-01.lab.sanvol:"+name) {
				_, _ = run("iscsiadm", "-m", "session", "-r", s.sid, "--logout")
			}
		}
		if err := tg.Close(); err != nil {
			t.Logf("LIO teardown: %v", err)
		}
	})
	return tg
}

func iscsiConfig(tg *labtarget.ISCSITarget, addrs ...string) map[string]string {
	return map[string]string{
		"target":    strings.Join(addrs, ","),
		"targetIQN": tg.IQN,
		"SCSIid":    tg.WWID(),
	}
}

type iscsiSess struct {
	sid, target, portal, state, recoveryTmo string
}

// iscsiSessions reads the sessions from sysfs, independently of the
// transport's own reader.
func iscsiSessions() []iscsiSess {
	var out []iscsiSess
	dirs, _ := filepath.Glob("/sys/class/iscsi_session/session*")
	for _, d := range dirs {
		sid := strings.TrimPrefix(filepath.Base(d), "session")
		conn := "/sys/class/iscsi_connection/connection" + sid + ":0"
		out = append(out, iscsiSess{
			sid: sid, target: readSys(d + "/targetname"), state: readSys(d + "/state"),
			portal:      readSys(conn+"/persistent_address") + ":" + readSys(conn+"/persistent_port"),
			recoveryTmo: readSys(d + "/recovery_tmo"),
		})
	}
	return out
}

func sessionsOf(prefix string) []iscsiSess {
	var out []iscsiSess
	for _, s := range iscsiSessions() {
		if strings.HasPrefix(s.target, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// mapSlaves returns the slaves of the multipath map of wwid, and whether
// the map exists.
func mapSlaves(wwid string) ([]string, bool) {
	uuids, _ := filepath.Glob("/sys/block/dm-*/dm/uuid")
	for _, u := range uuids {
		if readSys(u) == "mpath-"+wwid {
			entries, _ := os.ReadDir(filepath.Join(filepath.Dir(filepath.Dir(u)), "slaves"))
			var s []string
			for _, e := range entries {
				s = append(s, e.Name())
			}
			return s, true
		}
	}
	return nil, false
}

// assertClean checks that detach left no session, map or node record.
func assertClean(t *testing.T, tg *labtarget.ISCSITarget) {
	t.Helper()
	if s := sessionsOf(tg.IQN); len(s) != 0 {
		t.Errorf("sessions left: %+v", s)
	}
	if _, ok := mapSlaves(tg.WWID()); ok {
		t.Errorf("multipath map %s left", tg.WWID())
	}
	if out, err := run("iscsiadm", "-m", "node", "-T", tg.IQN); err == nil && strings.TrimSpace(out) != "" {
		t.Errorf("node records left:\n%s", out)
	}
	if b, err := os.ReadFile(iscsi.DropInPath); err == nil && strings.Contains(string(b), tg.WWID()) {
		t.Errorf("drop-in still has the LUN:\n%s", b)
	}
}

func attachISCSI(t *testing.T, tr *iscsi.Transport, cfg map[string]string) transport.Device {
	t.Helper()
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

func detachISCSI(t *testing.T, tr *iscsi.Transport, cfg map[string]string) {
	t.Helper()
	if err := tr.Detach(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
}

func initiatorIQN(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/etc/iscsi/initiatorname.iscsi")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "InitiatorName="); ok {
			return v
		}
	}
	t.Fatal("no InitiatorName")
	return ""
}

// saveISCSIFixture keeps a real tool output for the unit tests; run.sh
// test --keep leaves the run dir for copying it into iscsi/testdata.
func saveISCSIFixture(t *testing.T, file, content string) {
	dir := filepath.Join(LabDir(), "out", "iscsi-fixtures")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("fixture dir: %v", err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		t.Logf("fixture %s: %v", file, err)
	}
}

func kernelRelease() string { return readSys("/proc/sys/kernel/osrelease") }

func TestISCSIAttachTwoPortals(t *testing.T) {
	tg := newISCSILUN(t, "attach2", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	ctx := context.Background()
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)

	start := time.Now()
	dev := attachISCSI(t, tr, cfg)
	wall := time.Since(start)
	t.Logf("METRIC iscsi_attach_wall_2portals=%s", wall.Round(time.Millisecond))
	if dev.Path != "/dev/mapper/"+tg.WWID() || !fileExists(dev.Path) {
		t.Errorf("device %q", dev.Path)
	}
	if dev.Health.Live != 2 || dev.Health.Total != 2 {
		t.Errorf("health %+v", dev.Health)
	}
	if slaves, ok := mapSlaves(tg.WWID()); !ok || len(slaves) != 2 {
		t.Errorf("map slaves %v (exists %v)", slaves, ok)
	}
	sess := sessionsOf(tg.IQN)
	if len(sess) != 2 {
		t.Fatalf("sessions %+v", sess)
	}
	for _, s := range sess {
		t.Logf("session %s %s recovery_tmo %s", s.sid, s.portal, s.recoveryTmo)
		rec := mustRun(t, "iscsiadm", "-m", "node", "-T", tg.IQN, "-p", s.portal)
		for _, want := range []string{"node.startup = manual", "node.session.timeo.replacement_timeout = 10", "node.session.initial_login_retry_max = 1", "node.session.scan = manual"} {
			// open-iscsi 2.0.874 (XCP-ng 8.x dom0) has no node.session.scan
			// at all; where the record has it, it must be manual.
			if want == "node.session.scan = manual" && !strings.Contains(rec, "node.session.scan") {
				continue
			}
			if !strings.Contains(rec, want) {
				t.Errorf("node record of %s lacks %q", s.portal, want)
			}
		}
	}
	conf, err := os.ReadFile(iscsi.DropInPath)
	if err != nil || !strings.Contains(string(conf), "wwid "+tg.WWID()) || !strings.Contains(string(conf), "no_path_retry 12") {
		t.Errorf("drop-in: %v\n%s", err, conf)
	}
	// multipathd took the stanza: the map queues (no_path_retry > 0).
	table := mustRun(t, "dmsetup", "table", tg.WWID())
	if !strings.Contains(table, "queue_if_no_path") {
		t.Errorf("map does not queue: %s", table)
	}
	saveISCSIFixture(t, "dmsetup-table-"+kernelRelease()+".txt", table)
	saveISCSIFixture(t, "dmsetup-status-"+kernelRelease()+".txt", mustRun(t, "dmsetup", "status", tg.WWID()))
	saveISCSIFixture(t, "multipathd-show-config-"+readSys("/proc/sys/kernel/osrelease")+".txt", mustRun(t, "multipathd", "-kshow config"))

	if _, err := tr.Attach(ctx, cfg); err != nil {
		t.Fatalf("second attach: %v", err)
	}
	if s := sessionsOf(tg.IQN); len(s) != 2 {
		t.Errorf("second attach: sessions %+v", s)
	}
	d := tr.Diagnostics(ctx)
	t.Logf("diagnostics:\n%s", d)
	if !strings.Contains(d, tg.IQN) || !strings.Contains(d, "iscsiadm version 2.") || !strings.Contains(d, "multipath-tools v0.") { // 0.9 on Debian 12, 0.4.9 on XCP-ng 8.x
		t.Error("diagnostics miss the target or the tool versions")
	}
	detachISCSI(t, tr, cfg)
	assertClean(t, tg)
	detachISCSI(t, tr, cfg)
}

func TestISCSIFailover(t *testing.T) {
	tg := newISCSILUN(t, "failover", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	ctx := context.Background()
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	dev := attachISCSI(t, tr, cfg)
	defer detachISCSI(t, tr, cfg)

	health := func() transport.Health {
		h, err := tr.Health(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	var degraded transport.Health
	var tmo string
	cutWithIO(t, dev.Path,
		func() error { return tg.DisablePortal(labtarget.Addr2) },
		func() error { return tg.EnablePortal(labtarget.Addr2) },
		func() (bool, string) {
			degraded = health()
			if degraded.Live == 1 {
				for _, s := range sessionsOf(tg.IQN) {
					tmo = s.recoveryTmo
				}
				if st, err := run("dmsetup", "status", tg.WWID()); err == nil {
					saveISCSIFixture(t, "dmsetup-status-"+kernelRelease()+"-degraded.txt", st)
				}
			}
			return degraded.Live == 1 && degraded.Total == 2, degraded.Detail
		},
		func() (bool, string) {
			h := health()
			return h.Live == 2, h.Detail
		})
	t.Logf("degraded health: %s (session recovery_tmo %s s)", degraded.Detail, tmo)
	if !strings.HasPrefix(degraded.Detail, "1 of 2 paths down: 127.0.0.2:3260") {
		t.Errorf("degraded detail %q", degraded.Detail)
	}
	// The id of the PBD's mpath-<id> key: the WWID, as sm's SCSIid.
	if degraded.ID != tg.WWID() {
		t.Errorf("health id %q, want the LUN's WWID %s", degraded.ID, tg.WWID())
	}
}

// TestISCSIWriteStall measures the longest write while one of two portals
// goes away, against the session recovery timeout.
func TestISCSIWriteStall(t *testing.T) {
	tg := newISCSILUN(t, "stall", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	dev := attachISCSI(t, tr, cfg)
	defer detachISCSI(t, tr, cfg)
	load := StartIO(t, dev.Path, 32<<20)
	load.waitWrites(t, 8, time.Minute)
	if err := tg.VanishPortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Second)
	load.waitWrites(t, 8, time.Minute)
	st := load.Stop()
	if err := tg.ReturnPortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	tmo := ""
	for _, s := range sessionsOf(tg.IQN) {
		tmo = s.recoveryTmo
	}
	var secs float64
	fmt.Sscanf(tmo, "%g", &secs)
	t.Logf("METRIC iscsi_write_stall=%s recovery_tmo=%ss replacement-timeout=10s ratio_to_recovery_tmo=%.2f ratio_to_replacement_timeout=%.2f errors=%d",
		st.MaxLatency.Round(time.Millisecond), tmo, st.MaxLatency.Seconds()/secs, st.MaxLatency.Seconds()/10, len(st.Errors))
	if len(st.Errors) > 0 {
		t.Errorf("writes failed with one path left: %v", st.Errors[0])
	}
	if err := load.Verify(); err != nil {
		t.Error(err)
	}
}

func TestISCSICHAP(t *testing.T) {
	initiator := initiatorIQN(t)
	cases := []struct {
		name string
		chap labtarget.CHAP
	}{
		{"oneway", labtarget.CHAP{User: "sanvolinit", Password: "initsecret123"}},
		{"mutual", labtarget.CHAP{User: "sanvolinit", Password: "initsecret123", MutualUser: "sanvoltgt", MutualPassword: "tgtsecret4567"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tg := newISCSILUN(t, "chap"+c.name, labtarget.Addr1, labtarget.Addr2)
			if err := tg.AllowInitiator(initiator, &c.chap); err != nil {
				t.Fatal(err)
			}
			secrets := mapSecrets{"s-out": c.chap.Password, "s-in": c.chap.MutualPassword}
			tr := newISCSITransport(t, secrets)
			cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
			cfg["chapuser"] = c.chap.User
			cfg["chappassword_secret"] = "s-out"
			if c.chap.MutualUser != "" {
				cfg["incoming_chapuser"] = c.chap.MutualUser
				cfg["incoming_chappassword_secret"] = "s-in"
			}
			dev := attachISCSI(t, tr, cfg)
			if dev.Health.Live != 2 {
				t.Errorf("health %+v", dev.Health)
			}
			detachISCSI(t, tr, cfg)
			assertClean(t, tg)

			// A wrong secret: a clear authentication error, fast, once.
			bad := newISCSITransport(t, mapSecrets{"s-out": "wrongsecret99", "s-in": c.chap.MutualPassword})
			start := time.Now()
			_, err := bad.Attach(context.Background(), cfg)
			took := time.Since(start)
			t.Logf("wrong password: %s after %s", err, took.Round(time.Millisecond))
			if !errors.Is(err, host.ErrAuth) {
				t.Errorf("want an authentication error, got %v", err)
			}
			if err != nil && strings.Contains(err.Error(), "wrongsecret99") {
				t.Error("the error shows the password")
			}
			if took > 30*time.Second {
				t.Errorf("the refusal took %s", took)
			}
			assertClean(t, tg)
		})
	}
}

func TestISCSIWrongIQN(t *testing.T) {
	tg := newISCSILUN(t, "wrongiqn", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	cfg["targetIQN"] = tg.IQN + "-typo"
	start := time.Now()
	_, err := tr.Attach(context.Background(), cfg)
	t.Logf("wrong IQN: %v after %s", err, time.Since(start).Round(time.Millisecond))
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), tg.IQN) {
		t.Errorf("want NotFound naming the offered IQN, got %v", err)
	}
	if s := sessionsOf(tg.IQN); len(s) != 0 {
		t.Errorf("sessions %+v", s)
	}
}

func TestISCSIWildcardTwoIQNs(t *testing.T) {
	tg := newISCSILUN(t, "wild", labtarget.Addr1)
	second := tg.IQN + "-b"
	if err := tg.ExportIQN(second, labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	tr := newISCSITransport(t, nil)
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	cfg["targetIQN"] = "*"
	dev := attachISCSI(t, tr, cfg)
	if dev.Health.Live != 2 || dev.Health.Total != 2 {
		t.Errorf("health %+v", dev.Health)
	}
	if slaves, _ := mapSlaves(tg.WWID()); len(slaves) != 2 {
		t.Errorf("map slaves %v", slaves)
	}
	got := map[string]string{}
	for _, s := range sessionsOf(tg.IQN) {
		got[s.portal] = s.target
	}
	if got[labtarget.Addr1+":3260"] != tg.IQN || got[labtarget.Addr2+":3260"] != second {
		t.Errorf("sessions %v", got)
	}
	detachISCSI(t, tr, cfg)
	assertClean(t, tg)
}

func TestISCSIGrow(t *testing.T) {
	tg := newISCSILUN(t, "grow", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	ctx := context.Background()
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	dev := attachISCSI(t, tr, cfg)
	defer detachISCSI(t, tr, cfg)
	// SR.stat's Rescan, counting its processes: an unchanged LUN starts
	// none (the kernel answered READ CAPACITY through SG_IO), a grown one
	// the rescan's udevadm settle and multipathd resize.
	runs := &countingRunner{Runner: host.NewExecRunner(zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))}
	root := host.NewRoot("/")
	stat := iscsi.New(iscsi.Deps{Runner: runs, Root: root, Locker: host.FileLocker{Root: root}})
	procs := func() map[string]int {
		runs.mu.Lock()
		defer runs.mu.Unlock()
		n := runs.n
		runs.n, runs.log = nil, nil
		return n
	}
	if grew, err := stat.Rescan(ctx, cfg); err != nil || grew {
		t.Fatalf("unchanged LUN: grew %v, %v", grew, err)
	}
	if n := procs(); len(n) != 0 {
		t.Errorf("Rescan of an unchanged LUN started processes %v; want none", n)
	}
	if err := tg.Grow(384 << 20); err != nil {
		t.Fatal(err)
	}
	grew, err := stat.Rescan(ctx, cfg)
	if err != nil || !grew {
		t.Fatalf("grown LUN: grew %v, %v", grew, err)
	}
	if n := procs(); n["udevadm"] != 1 || n["multipathd"] != 1 {
		t.Errorf("Rescan of a grown LUN started %v; want one udevadm settle and one multipathd resize", n)
	}
	real := mustEval(t, dev.Path)
	if s := readSys("/sys/block/" + filepath.Base(real) + "/size"); s != fmt.Sprint((384<<20)/512) {
		t.Errorf("map size %s sectors", s)
	}
}

// TestISCSIFloatingPortal is HA-Lizard's failover: one floating portal
// whose target vanishes (DRBD promotes the peer, the IP moves) and comes
// back at the same address. With the default path-loss-policy the writes
// ride through; with 'fail', or a queueing time shorter than the outage,
// the outage reaches the writer as I/O errors, which shows the policy is
// applied to the map.
func TestISCSIFloatingPortal(t *testing.T) {
	cases := []struct {
		name    string
		policy  string
		outage  time.Duration
		wantErr bool
	}{
		{"default-5s", "", 5 * time.Second, false},
		{"default-30s", "", 30 * time.Second, false},
		{"fail-30s", "fail", 30 * time.Second, true},
		// Bounded: 10 s of queueing (2 checker intervals) after the
		// session timed out does not cover a 30 s outage.
		{"queue10-30s", "queue:10", 30 * time.Second, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tg := newISCSILUN(t, "float"+strings.ReplaceAll(c.name, "-", ""), labtarget.Addr1)
			tr := newISCSITransport(t, nil)
			cfg := iscsiConfig(tg, labtarget.Addr1)
			if c.policy != "" {
				cfg["path-loss-policy"] = c.policy
			}
			dev := attachISCSI(t, tr, cfg)
			defer detachISCSI(t, tr, cfg)
			load := StartIO(t, dev.Path, 16<<20)
			load.waitWrites(t, 8, time.Minute)
			if err := tg.VanishPortal(labtarget.Addr1); err != nil {
				t.Fatal(err)
			}
			time.Sleep(c.outage)
			if err := tg.ReturnPortal(labtarget.Addr1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the path to come back", 2*time.Minute, func() (bool, string) {
				h, err := tr.Health(context.Background(), cfg)
				return err == nil && h.Live == 1, fmt.Sprint(h, err)
			})
			if !c.wantErr {
				load.waitWrites(t, 8, time.Minute)
			}
			st := load.Stop()
			t.Logf("METRIC iscsi_floating_%s stall=%s errors=%d", c.name, st.MaxLatency.Round(time.Millisecond), len(st.Errors))
			if c.wantErr {
				// Verify also closes the device, which detach needs.
				_ = load.Verify()
				if len(st.Errors) == 0 {
					t.Error("no write failed although the policy is 'fail' and the outage outlasted the recovery timeout")
				}
				return
			}
			if len(st.Errors) > 0 {
				t.Errorf("%d writes failed, first: %v", len(st.Errors), st.Errors[0])
			}
			if err := load.Verify(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestISCSIParallelAttach(t *testing.T) {
	tg := newISCSILUN(t, "parallel", labtarget.Addr1, labtarget.Addr2)
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate transports: as two plugin processes would.
			_, errs[i] = newISCSITransport(t, nil).Attach(context.Background(), cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("attach %d: %v", i, err)
		}
	}
	perPortal := map[string]int{}
	for _, s := range sessionsOf(tg.IQN) {
		perPortal[s.portal]++
	}
	if perPortal[labtarget.Addr1+":3260"] != 1 || perPortal[labtarget.Addr2+":3260"] != 1 {
		t.Errorf("sessions per portal %v", perPortal)
	}
	detachISCSI(t, newISCSITransport(t, nil), cfg)
	assertClean(t, tg)
}

func TestISCSIProbe(t *testing.T) {
	tg := newISCSILUN(t, "probe", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	ctx := context.Background()
	cands, err := tr.Probe(ctx, map[string]string{"target": labtarget.Addr1 + "," + labtarget.Addr2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cands {
		t.Logf("target candidate %v %v", c.Configuration, c.Extra)
		found = found || c.Configuration["targetIQN"] == tg.IQN
	}
	if !found {
		t.Errorf("probe did not list %s", tg.IQN)
	}
	var inspected []string
	inspect := func(_ context.Context, dev string) (*transport.FoundSR, error) {
		if !fileExists(dev) {
			t.Errorf("inspector given %s, which does not exist", dev)
		}
		inspected = append(inspected, dev)
		return nil, nil
	}
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	delete(cfg, "SCSIid")
	cands, err = tr.Probe(ctx, cfg, inspect)
	if err != nil {
		t.Fatal(err)
	}
	if len(cands) != 1 || cands[0].Configuration["SCSIid"] != tg.WWID() || !cands[0].Complete {
		t.Fatalf("LUN candidates %+v", cands)
	}
	e := cands[0].Extra
	t.Logf("LUN candidate %v, inspected %v", e, inspected)
	if e["vendor"] != "LIO-ORG" || e["size"] != fmt.Sprint(256<<20) || e["paths"] != "2" {
		t.Errorf("extra %v", e)
	}
	if len(inspected) != 1 {
		t.Errorf("inspected %v", inspected)
	}
	waitFor(t, "probe's sessions to be gone", 30*time.Second, func() (bool, string) {
		s := sessionsOf(tg.IQN)
		_, m := mapSlaves(tg.WWID())
		return len(s) == 0 && !m, fmt.Sprint(s, m)
	})
	assertClean(t, tg)
}

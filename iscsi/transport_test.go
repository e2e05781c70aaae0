package iscsi

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

func attach(t *testing.T, tr *Transport, cfg map[string]string) transport.Device {
	t.Helper()
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	return dev
}

func TestAttachTwoPortals(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	dev := attach(t, tr, baseConfig())
	if dev.Path != "/dev/mapper/"+testWWID {
		t.Errorf("device %q", dev.Path)
	}
	if dev.Health.Live != 2 || dev.Health.Total != 2 || dev.Health.Detail != "2 of 2 paths live" {
		t.Errorf("health %+v", dev.Health)
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("%d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
	m, _ := tr.sys.findMap(testWWID, nil)
	if m == nil || len(m.slaves) != 2 {
		t.Fatalf("map %+v", m)
	}
	// Every node record carries the SR's settings, set before login.
	for _, p := range []Portal{portal1, portal2} {
		rec := f.nodes[path{Portal: p, IQN: testIQN, Iface: defaultIface}]
		for k, want := range map[string]string{
			"node.startup": "manual", "node.session.timeo.replacement_timeout": "10",
			"node.conn[0].timeo.login_timeout": "1", "node.session.initial_login_retry_max": "0",
			"node.session.scan": "manual", "node.session.auth.authmethod": "None",
		} {
			if rec[k] != want {
				t.Errorf("%s: %s = %q, want %q", p, k, rec[k], want)
			}
		}
	}
	// scan=manual: sanvol scanned the sessions itself.
	if !strings.Contains(f.read(DropInPath), "no_path_retry 12") {
		t.Errorf("drop-in: %s", f.read(DropInPath))
	}
	if n := len(f.commands("multipathd")); n == 0 || !strings.Contains(strings.Join(f.commands("multipathd"), "\n"), "reconfigure") {
		t.Errorf("multipathd not reconfigured for the new stanza: %v", f.commands("multipathd"))
	}
	if _, ok := tr.loadState(testWWID); !ok {
		t.Error("no attach record")
	}

	// Attaching again is a no-op: no login, no reconfigure.
	logins, reconf := f.countCalls("--login"), strings.Count(strings.Join(f.commands("multipathd"), "\n"), "reconfigure")
	dev2 := attach(t, tr, baseConfig())
	if dev2.Path != dev.Path || f.countCalls("--login") != logins || f.sessionCount() != 2 {
		t.Errorf("second attach logged in again or changed the device: %+v", dev2)
	}
	if strings.Count(strings.Join(f.commands("multipathd"), "\n"), "reconfigure") != reconf {
		t.Error("second attach reconfigured multipathd")
	}
}

func TestAttachOldIscsiadmWithoutScanSetting(t *testing.T) {
	f := newFakeHost(t)
	f.scanSupported = false
	dev := attach(t, f.transport(nil), baseConfig())
	if dev.Health.Live != 2 {
		t.Errorf("health %+v", dev.Health)
	}
}

func TestAttachBuildsMapWhenMultipathdDoesNot(t *testing.T) {
	f := newFakeHost(t)
	f.autoMap = false // find_multipaths yes with one path, say
	cfg := baseConfig()
	cfg[KeyTarget] = "127.0.0.1"
	dev := attach(t, f.transport(nil), cfg)
	if dev.Health.Live != 1 || dev.Health.Total != 1 {
		t.Errorf("health %+v", dev.Health)
	}
	if !strings.Contains(strings.Join(f.commands("multipathd"), "\n"), "add map "+testWWID) {
		t.Errorf("map not requested: %v", f.commands("multipathd"))
	}
	if !strings.Contains(strings.Join(f.commands("multipath"), "\n"), "multipath -a "+testWWID) {
		t.Errorf("WWID not added to the wwids file: %v", f.commands("multipath"))
	}
}

func TestAttachConcurrentOneSessionPerPortal(t *testing.T) {
	f := newFakeHost(t)
	f.loginDelay = 50 * time.Millisecond
	tr := f.transport(nil)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = tr.Attach(context.Background(), baseConfig())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("attach %d: %v", i, err)
		}
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("%d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
}

func TestAttachCHAP(t *testing.T) {
	for _, mutual := range []bool{false, true} {
		f := newFakeHost(t)
		f.targets[testIQN].chap = &chap{"initiator1", "out-secret-123"}
		cfg := baseConfig()
		cfg[KeyChapUser] = "initiator1"
		cfg[KeyChapPassword+secretSuffix] = "uuid-out"
		secrets := fakeSecrets{"uuid-out": "out-secret-123"}
		if mutual {
			f.targets[testIQN].mutual = &chap{"target1", "in-secret-456"}
			cfg[KeyIncomingUser] = "target1"
			cfg[KeyIncomingPassword+secretSuffix] = "uuid-in"
			secrets["uuid-in"] = "in-secret-456"
		}
		dev := attach(t, f.transport(secrets), cfg)
		if dev.Health.Live != 2 {
			t.Errorf("mutual=%v: health %+v", mutual, dev.Health)
		}
		f.assertNoSecret(t, "out-secret-123", "in-secret-456")
	}
}

func TestAttachWrongCHAPFailsOnceWithAuthError(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN].chap = &chap{"initiator1", "right"}
	cfg := baseConfig()
	cfg[KeyChapUser] = "initiator1"
	cfg[KeyChapPassword+secretSuffix] = "uuid"
	start := time.Now()
	_, err := f.transport(fakeSecrets{"uuid": "wrong-pass-789"}).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrAuth) {
		t.Fatalf("want an authentication error, got %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
	msg := err.Error()
	for _, want := range []string{"chapuser", testInitiator, "127.0.0.1:3260", "127.0.0.2:3260", "Fix:"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "wrong-pass-789") {
		t.Errorf("error leaks the password: %s", msg)
	}
	// One login per portal: no retry storm.
	if n := f.countCalls("--login"); n != 2 {
		t.Errorf("%d logins for 2 portals", n)
	}
	if f.sessionCount() != 0 || len(f.nodes) != 0 {
		t.Errorf("%d sessions and node records %v left", f.sessionCount(), f.nodes)
	}
}

func TestAttachACLRefusalWithoutCHAP(t *testing.T) {
	f := newFakeHost(t)
	f.initiatorACL = "iqn.1993-08.org.debian:01:someoneelse"
	_, err := f.transport(nil).Attach(context.Background(), baseConfig())
	if !errors.Is(err, host.ErrAuth) || !strings.Contains(err.Error(), "ACL") {
		t.Fatalf("want an auth error naming the ACL, got %v", err)
	}
}

func TestAttachWrongIQN(t *testing.T) {
	f := newFakeHost(t)
	cfg := baseConfig()
	cfg[KeyTargetIQN] = "iqn.2003-01.org.linux-iscsi.lab:typo"
	_, err := f.transport(nil).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("want NotFound, got %v", err)
	}
	if !strings.Contains(err.Error(), "not offered") || !strings.Contains(err.Error(), testIQN) {
		t.Errorf("error should list what the portals offer: %v", err)
	}
}

func TestAttachUnreachable(t *testing.T) {
	f := newFakeHost(t)
	f.down[portal1], f.down[portal2] = true, true
	_, err := f.transport(nil).Attach(context.Background(), baseConfig())
	if !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("want Unreachable, got %v", err)
	}
}

func TestAttachPartial(t *testing.T) {
	f := newFakeHost(t)
	f.down[portal2] = true
	dev := attach(t, f.transport(nil), baseConfig())
	h := dev.Health
	if h.Live != 1 || h.Total != 2 || !h.Degraded() {
		t.Errorf("health %+v", h)
	}
	if !strings.Contains(h.Detail, "1 of 2 paths down: 127.0.0.2:3260 (no session)") || !strings.Contains(h.Detail, "login failed") {
		t.Errorf("detail %q", h.Detail)
	}
	// Detach also forgets the record of the path that never logged in.
	if err := f.transport(nil).Detach(context.Background(), baseConfig(), nil); err != nil {
		t.Fatal(err)
	}
	if f.sessionCount() != 0 || len(f.nodes) != 0 {
		t.Errorf("left %d sessions, node records %v", f.sessionCount(), f.nodes)
	}
}

func TestAttachWildcardTwoIQNs(t *testing.T) {
	f := newFakeHost(t)
	lun := f.targets[testIQN].luns
	// An array that exposes one IQN per portal, the same LUN behind both.
	f.targets[testIQN].portals = []Portal{portal1}
	f.targets[testIQN2] = &fakeTarget{iqn: testIQN2, portals: []Portal{portal2}, tpgt: map[Portal]int{portal2: 1}, luns: lun}
	cfg := baseConfig()
	cfg[KeyTargetIQN] = "*"
	dev := attach(t, f.transport(nil), cfg)
	if dev.Health.Live != 2 || f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("health %+v, %d sessions, %d maps", dev.Health, f.sessionCount(), f.mapCount())
	}
	got := map[string]bool{}
	for _, s := range f.sess {
		got[s.p.IQN+"@"+s.p.Portal.String()] = true
	}
	if !got[testIQN+"@127.0.0.1:3260"] || !got[testIQN2+"@127.0.0.2:3260"] {
		t.Errorf("sessions %v", got)
	}
	if err := f.transport(nil).Detach(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if f.sessionCount() != 0 || f.mapCount() != 0 {
		t.Errorf("after detach: %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
}

func TestAttachWrongSCSIidRollsBack(t *testing.T) {
	f := newFakeHost(t)
	cfg := baseConfig()
	cfg[KeySCSIid] = otherWWID
	_, err := f.transport(nil).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), testWWID) {
		t.Fatalf("want NotFound listing the visible LUN, got %v", err)
	}
	if f.sessionCount() != 0 || f.mapCount() != 0 {
		t.Errorf("left %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
}

func TestAttachWithoutMapFailsAndRollsBack(t *testing.T) {
	f := newFakeHost(t)
	f.autoMap, f.noMaps = false, true
	_, err := f.transport(nil).Attach(context.Background(), baseConfig())
	if host.KindOf(err) != host.KindTimeout || !strings.Contains(err.Error(), "multipath -v3") {
		t.Fatalf("want a Timeout error with a fix, got %v", err)
	}
	if f.sessionCount() != 0 || len(f.nodes) != 0 {
		t.Errorf("left %d sessions, node records %v", f.sessionCount(), f.nodes)
	}
}

func TestAttachIfaceBinding(t *testing.T) {
	f := newFakeHost(t)
	cfg := baseConfig()
	cfg[KeyIface] = "eth1"
	dev := attach(t, f.transport(nil), cfg)
	if f.ifaces["sanvol-eth1"]["iface.net_ifacename"] != "eth1" {
		t.Errorf("iface record %v", f.ifaces)
	}
	for _, s := range f.sess {
		if s.p.Iface != "sanvol-eth1" {
			t.Errorf("session %d not bound: %+v", s.sid, s.p)
		}
	}
	if !strings.Contains(dev.Health.Detail, "2 of 2") {
		t.Errorf("health %+v", dev.Health)
	}
	cfg[KeyIface] = "eth9"
	if _, err := f.transport(nil).Attach(context.Background(), cfg); !errors.Is(err, host.ErrInvalid) {
		t.Errorf("unknown NIC: %v", err)
	}
}

func TestHealthReportsDownPath(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	f.failPortal(portal2)
	h, err := tr.Health(context.Background(), baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	if h.Live != 1 || h.Total != 2 || h.ID != testWWID {
		t.Errorf("health %+v", h)
	}
	if !strings.HasPrefix(h.Detail, "1 of 2 paths down: 127.0.0.2:3260 (sd") || !strings.Contains(h.Detail, "FAILED") {
		t.Errorf("detail %q", h.Detail)
	}
	// Not attached at all: a clear NotAttached error.
	cfg := baseConfig()
	cfg[KeySCSIid] = otherWWID
	cfg[KeyTargetIQN] = testIQN2
	if _, err := tr.Health(context.Background(), cfg); !errors.Is(err, host.ErrNotAttached) {
		t.Errorf("unattached: %v", err)
	}
}

func TestDetachCleansUpAndIsIdempotent(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	for i := 0; i < 2; i++ {
		if err := tr.Detach(context.Background(), baseConfig(), nil); err != nil {
			t.Fatalf("detach %d: %v", i, err)
		}
	}
	if f.sessionCount() != 0 || f.mapCount() != 0 {
		t.Errorf("left %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
	if len(f.nodes) != 0 {
		t.Errorf("node records left: %v", f.nodes)
	}
	if f.root.Exists(DropInPath) {
		t.Error("drop-in left")
	}
	if _, ok := tr.loadState(testWWID); ok {
		t.Error("attach record left")
	}
	if !strings.Contains(strings.Join(f.commands("multipath"), "\n"), "multipath -f "+testWWID) {
		t.Errorf("map not flushed with multipath -f: %v", f.commands("multipath"))
	}
	for _, c := range f.commands("dmsetup") {
		if strings.Contains(c, "remove") {
			t.Errorf("dmsetup remove used: %s", c)
		}
	}
}

func TestDetachRetriesAMapBrieflyInUse(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	f.flushInUse = 1
	if err := tr.Detach(context.Background(), baseConfig(), nil); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.Join(f.commands("multipath"), "\n"), "multipath -f"); n != 2 || f.mapCount() != 0 {
		t.Errorf("%d flushes, %d maps left", n, f.mapCount())
	}
	if !strings.Contains(strings.Join(f.commands("udevadm"), "\n"), "settle") {
		t.Error("no udevadm settle before the flush")
	}
}

func TestDetachKeepsSessionsOtherSRsUse(t *testing.T) {
	f := newFakeHost(t)
	f.addSecondLUN()
	tr := f.transport(nil)
	other := baseConfig()
	other[KeySCSIid] = otherWWID
	attach(t, tr, baseConfig())
	attach(t, tr, other)
	if f.sessionCount() != 2 || f.mapCount() != 2 {
		t.Fatalf("%d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
	if err := tr.Detach(context.Background(), baseConfig(), []map[string]string{other}); err != nil {
		t.Fatal(err)
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("after detach: %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
	h, err := tr.Health(context.Background(), other)
	if err != nil || h.Live != 2 {
		t.Errorf("the other SR lost paths: %+v %v", h, err)
	}
	if _, ok := parseDropIn(f.read(DropInPath))[otherWWID]; !ok {
		t.Error("the other SR's stanza went too")
	}
	// Even without `others`, a session whose other LUN is held by a map
	// stays logged in.
	if err := tr.Detach(context.Background(), baseConfig(), nil); err != nil || f.sessionCount() != 2 {
		t.Errorf("sessions carrying a held LUN were logged out: %v, %d", err, f.sessionCount())
	}
	if err := tr.Detach(context.Background(), other, nil); err != nil || f.sessionCount() != 0 || f.mapCount() != 0 {
		t.Errorf("last detach: %v, %d sessions, %d maps", err, f.sessionCount(), f.mapCount())
	}
}

func TestDetachBusyMapKeepsEverything(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	m, _ := tr.sys.findMap(testWWID, nil)
	f.mkdir("/sys/devices/virtual/block/" + m.dev + "/holders/dm-7")
	err := tr.Detach(context.Background(), baseConfig(), nil)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "dm-7") {
		t.Fatalf("want Busy naming the holder, got %v", err)
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("busy detach tore down: %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
}

func TestDetachFailedFlushResumesMap(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	f.flushFails = true
	err := tr.Detach(context.Background(), baseConfig(), nil)
	if !errors.Is(err, host.ErrBusy) {
		t.Fatalf("want Busy, got %v", err)
	}
	if !strings.Contains(strings.Join(f.commands("dmsetup"), "\n"), "dmsetup resume "+testWWID) {
		t.Errorf("suspended map not resumed: %v", f.commands("dmsetup"))
	}
	if m, _ := tr.sys.findMap(testWWID, nil); m == nil || m.suspended {
		t.Errorf("map %+v", m)
	}
	if f.sessionCount() != 2 {
		t.Errorf("sessions logged out under a live map: %d", f.sessionCount())
	}
}

func TestProbeTargets(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN2] = &fakeTarget{iqn: testIQN2, portals: []Portal{portal2}, tpgt: map[Portal]int{portal2: 3}}
	cands, err := f.transport(nil).Probe(context.Background(), map[string]string{KeyTarget: "127.0.0.1,127.0.0.2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cands) != 3 {
		t.Fatalf("%d candidates: %+v", len(cands), cands)
	}
	if cands[0].Configuration[KeyTargetIQN] != testIQN || cands[0].Extra["portals"] != "127.0.0.1:3260,127.0.0.2:3260" || cands[0].Complete {
		t.Errorf("first %+v", cands[0])
	}
	if cands[1].Configuration[KeyTargetIQN] != testIQN2 || cands[1].Extra["portals"] != "127.0.0.2:3260" || cands[1].Extra["tpgt"] != "3" {
		t.Errorf("second %+v", cands[1])
	}
	if cands[2].Configuration[KeyTargetIQN] != "*" {
		t.Errorf("no wildcard candidate: %+v", cands[2])
	}
	if f.sessionCount() != 0 {
		t.Error("target discovery logged in")
	}
}

func TestProbeDiscoveryCHAP(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN].discCHAP = &chap{"initiator1", "disc-secret"}
	cfg := map[string]string{KeyTarget: "127.0.0.1", KeyChapUser: "initiator1", KeyChapPassword + secretSuffix: "u"}
	if _, err := f.transport(fakeSecrets{"u": "disc-secret"}).Probe(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	_, err := f.transport(fakeSecrets{"u": "bad"}).Probe(context.Background(), cfg, nil)
	if !errors.Is(err, host.ErrAuth) {
		t.Errorf("wrong discovery CHAP: %v", err)
	}
	f.assertNoSecret(t, "disc-secret")
}

func TestProbeLUNsInspectsAndCleansUp(t *testing.T) {
	f := newFakeHost(t)
	f.addSecondLUN()
	var inspected []string
	inspect := func(_ context.Context, dev string) (*transport.FoundSR, error) {
		inspected = append(inspected, dev)
		if !f.root.Exists(dev) && !f.root.Exists("/sys/block/"+strings.TrimPrefix(dev, "/dev/")) {
			t.Errorf("inspected %s, which does not exist", dev)
		}
		if len(inspected) == 1 {
			return &transport.FoundSR{UUID: "11111111-2222-3333-4444-555555555555", Name: "old SR"}, nil
		}
		return nil, nil
	}
	cfg := map[string]string{KeyTarget: "127.0.0.1,127.0.0.2", KeyTargetIQN: testIQN}
	cands, err := f.transport(nil).Probe(context.Background(), cfg, inspect)
	if err != nil {
		t.Fatal(err)
	}
	if len(cands) != 2 || len(inspected) != 2 {
		t.Fatalf("%d candidates, inspected %v", len(cands), inspected)
	}
	c := cands[0]
	if c.Configuration[KeySCSIid] != testWWID || !c.Complete || c.SR == nil || c.Configuration["sr_uuid"] != "" {
		t.Errorf("first candidate %+v", c)
	}
	if c.Extra["vendor"] != "LIO-ORG" || c.Extra["product"] != "lun0" || c.Extra["size"] != "1073741824" || c.Extra["paths"] != "2" {
		t.Errorf("extra %v", c.Extra)
	}
	if cands[1].SR != nil || cands[1].Configuration["sr_uuid"] != "" || cands[1].Extra["size"] != "2147483648" {
		t.Errorf("second candidate %+v", cands[1])
	}
	if f.sessionCount() != 0 || f.mapCount() != 0 || len(f.nodes) != 0 {
		t.Errorf("probe left %d sessions, %d maps, %d node records", f.sessionCount(), f.mapCount(), len(f.nodes))
	}
}

func TestProbeLeavesAttachedSRAlone(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	cfg := baseConfig()
	delete(cfg, KeySCSIid)
	cands, err := tr.Probe(context.Background(), cfg, func(context.Context, string) (*transport.FoundSR, error) { return nil, nil })
	if err != nil || len(cands) != 1 {
		t.Fatalf("%v %+v", err, cands)
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("probe tore down an attached SR: %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
}

func TestPrepare(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	cfg := baseConfig()
	delete(cfg, KeySCSIid)
	got, err := tr.Prepare(context.Background(), cfg)
	if err != nil || got[KeySCSIid] != testWWID {
		t.Errorf("one LUN: %v %v", got, err)
	}
	f.addSecondLUN()
	_, err = tr.Prepare(context.Background(), cfg)
	if !errors.Is(err, host.ErrInvalid) || !strings.Contains(err.Error(), otherWWID) {
		t.Errorf("two LUNs: %v", err)
	}
	cfg[KeySCSIid] = testNAA
	if got, err := tr.Prepare(context.Background(), cfg); err != nil || got[KeySCSIid] != testWWID {
		t.Errorf("given: %v %v", got, err)
	}
	if f.sessionCount() != 0 {
		t.Errorf("prepare left %d sessions", f.sessionCount())
	}
}

func TestRescanGrowsMap(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	grew, err := tr.Rescan(context.Background(), baseConfig())
	if err != nil || grew {
		t.Fatalf("unchanged LUN: grew %v, %v", grew, err)
	}
	f.mu.Lock()
	f.targets[testIQN].luns[0].size *= 2
	f.mu.Unlock()
	grew, err = tr.Rescan(context.Background(), baseConfig())
	if err != nil || !grew {
		t.Fatalf("grown LUN: grew %v, %v", grew, err)
	}
	m, _ := tr.sys.findMap(testWWID, nil)
	if m.size != 2*1073741824 {
		t.Errorf("map size %d", m.size)
	}
}

func TestRescanRefusesWhenAPathLags(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	f.failPortal(portal2)
	f.mu.Lock()
	f.targets[testIQN].luns[0].size *= 2
	f.mu.Unlock()
	grew, err := tr.Rescan(context.Background(), baseConfig())
	if grew || !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "old size") {
		t.Errorf("grew %v, %v", grew, err)
	}
}

func TestDiagnostics(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	d := tr.Diagnostics(context.Background())
	for _, want := range []string{"iscsiadm version 2.1.8", testInitiator, testIQN + " at 127.0.0.1:3260 tpgt 1",
		testWWID, "no_path_retry 12", "status: 0 ", "6.1.0-test-amd64"} {
		if !strings.Contains(d, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, d)
		}
	}
}

func TestMissingInitiatorName(t *testing.T) {
	f := newFakeHost(t)
	if err := f.root.Remove(initiatorFile); err != nil {
		t.Fatal(err)
	}
	_, err := f.transport(nil).Attach(context.Background(), baseConfig())
	if !errors.Is(err, host.ErrUnsupported) || !strings.Contains(err.Error(), "iscsi_iqn") {
		t.Errorf("%v", err)
	}
}

// TestIscsiadmExitCodes pins how each iscsiadm exit status is read.
func TestIscsiadmExitCodes(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	ctx := context.Background()
	c, err := tr.parseConfig(ctx, "test", baseConfig(), parseNeeds{iqn: true, wwid: true})
	if err != nil {
		t.Fatal(err)
	}
	p := path{Portal: portal1, IQN: testIQN, Iface: defaultIface}
	if err := tr.setupNode(ctx, "test", c, p); err != nil {
		t.Fatal(err)
	}
	if le := tr.login(ctx, p); le != nil {
		t.Fatalf("first login: %v", le)
	}
	// 15: the session exists, which is what login wants.
	if le := tr.login(ctx, p); le != nil {
		t.Errorf("exit 15 taken as a failure: %v", le)
	}
	// 21: no such session or record, which is what logout and delete want.
	if err := tr.logout(ctx, 99); err != nil {
		t.Errorf("logout of a missing session: %v", err)
	}
	if err := tr.deleteNode(ctx, path{Portal: portal2, IQN: testIQN, Iface: defaultIface}); err != nil {
		t.Errorf("delete of a missing record: %v", err)
	}
	// 24 is an authentication error, 19 a refusal, 8 unreachable.
	f.targets[testIQN].chap = &chap{"u", "p"}
	p2 := path{Portal: portal2, IQN: testIQN, Iface: defaultIface}
	if err := tr.setupNode(ctx, "test", c, p2); err != nil {
		t.Fatal(err)
	}
	if le := tr.login(ctx, p2); le == nil || le.kind != host.KindAuth {
		t.Errorf("exit 24: %+v", le)
	}
	f.targets[testIQN].chap = nil
	f.down[portal2] = true
	if le := tr.login(ctx, p2); le == nil || le.kind != host.KindUnreachable {
		t.Errorf("exit 8: %+v", le)
	}
	p3 := path{Portal: portal1, IQN: testIQN2, Iface: defaultIface}
	if err := tr.setupNode(ctx, "test", c, p3); err != nil {
		t.Fatal(err)
	}
	if le := tr.login(ctx, p3); le == nil || le.kind != host.KindNotFound {
		t.Errorf("exit 19: %+v", le)
	}
}

// Another attached SR naming the same LUN (the same SCSIid, even through
// other portals) keeps its map, disks, stanza and sessions.
func TestDetachLeavesALUNAnotherSRNames(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	other := baseConfig()
	other[KeyTarget] = "127.0.0.2"
	other[KeySCSIid] = strings.ToUpper(testWWID)
	if err := tr.Detach(context.Background(), baseConfig(), []map[string]string{other}); err != nil {
		t.Fatal(err)
	}
	if f.sessionCount() != 2 || f.mapCount() != 1 {
		t.Errorf("after detach: %d sessions, %d maps", f.sessionCount(), f.mapCount())
	}
	if _, ok := parseDropIn(f.read(DropInPath))[testWWID]; !ok {
		t.Error("the stanza went")
	}
	for _, c := range f.commands("multipath") {
		if strings.Contains(c, "-f") || strings.Contains(c, "-w") {
			t.Errorf("ran %s on a LUN another SR uses", c)
		}
	}
	if h, err := tr.Health(context.Background(), baseConfig()); err != nil || h.Live != 2 {
		t.Errorf("the LUN lost paths: %+v %v", h, err)
	}
}

func TestDeviceID(t *testing.T) {
	tr := newFakeHost(t).transport(nil)
	a, err := tr.DeviceID(baseConfig())
	if err != nil || a != "wwid:"+strings.ToLower(testWWID) {
		t.Fatalf("DeviceID = %q, %v", a, err)
	}
	cfg := baseConfig()
	delete(cfg, KeySCSIid)
	if _, err := tr.DeviceID(cfg); host.KindOf(err) != host.KindInvalid {
		t.Fatalf("without SCSIid: %v", err)
	}
}

// statCost runs the transport's part of an SR.stat (Health, then Rescan)
// and reports the processes it started, the disk rescans and the READ
// CAPACITY questions.
func statCost(t *testing.T, f *fakeHost, tr *Transport) (procs []string, rescans, capacity int) {
	t.Helper()
	f.mu.Lock()
	calls, r0, c0 := len(f.calls), f.rescans, f.capacityCalls
	f.mu.Unlock()
	ctx := context.Background()
	if _, err := tr.Health(ctx, baseConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Rescan(ctx, baseConfig()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the fake kernel's rescans
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls[calls:] {
		procs = append(procs, c.Name+" "+strings.Join(c.Args, " "))
	}
	return procs, f.rescans - r0, f.capacityCalls - c0
}

// SR.stat of an unchanged LUN rescans nothing and waits for no udev
// event: one READ CAPACITY on one path and `dmsetup status` for the path
// states. Before (the array not answering READ CAPACITY, which is the
// old behaviour) it rescanned every path and ran `udevadm settle`. A
// grown LUN is still seen by the very next SR.stat (TestRescanGrowsMap).
// The numbers are in docs/benchmarks.md.
func TestStatProcessCount(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())

	procs, rescans, capacity := statCost(t, f, tr)
	if len(procs) != 1 || !strings.HasPrefix(procs[0], "dmsetup status") || rescans != 0 || capacity != 1 {
		t.Errorf("unchanged LUN: processes %q, %d rescans, %d READ CAPACITY; want only dmsetup status, no rescan, one READ CAPACITY", procs, rescans, capacity)
	}
	t.Logf("after: %d processes %q, %d disk rescans, %d READ CAPACITY", len(procs), procs, rescans, capacity)

	old := f.transport(nil)
	old.capacity = func(string) (int64, error) { return 0, syscall.ENOTTY }
	procs, rescans, _ = statCost(t, f, old)
	if !slices.ContainsFunc(procs, func(p string) bool { return strings.HasPrefix(p, "udevadm settle") }) || rescans != 2 {
		t.Errorf("without READ CAPACITY: processes %q, %d rescans; want the full rescan of both paths", procs, rescans)
	}
	t.Logf("before (full rescan at every call): %d processes %q, %d disk rescans", len(procs), procs, rescans)

	f.mu.Lock()
	f.targets[testIQN].luns[0].size *= 2
	f.mu.Unlock()
	procs, rescans, _ = statCost(t, f, tr)
	if rescans != 2 || !slices.ContainsFunc(procs, func(p string) bool { return strings.HasPrefix(p, "multipathd -kresize map") }) {
		t.Errorf("grown LUN: processes %q, %d rescans; want both paths rescanned and the map resized", procs, rescans)
	}
	t.Logf("grown LUN: %d processes %q, %d disk rescans", len(procs), procs, rescans)
}

// A disk that already shows more than the map (rescanned by an admin, or
// an earlier resize that failed) is acted on without asking the array.
func TestRescanActsOnAGrownDisk(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	tr.capacity = func(string) (int64, error) { return 1073741824, nil } // stale answer
	f.mu.Lock()
	f.targets[testIQN].luns[0].size *= 2
	for _, s := range f.sess {
		for _, sd := range s.disks {
			f.write("/sys/block/"+sd+"/size", strconv.FormatInt(f.targets[testIQN].luns[0].size, 10))
		}
	}
	f.mu.Unlock()
	if grew, err := tr.Rescan(context.Background(), baseConfig()); err != nil || !grew {
		t.Fatalf("grew %v, %v", grew, err)
	}
}

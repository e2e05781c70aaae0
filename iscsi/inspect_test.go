package iscsi

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

// After an attach, the read-only views see what the transport built:
// its sessions, node records and map, under the names it uses.
func TestInspectAttached(t *testing.T) {
	ctx := context.Background()
	f := newFakeHost(t)
	cfg := baseConfig()
	cfg[KeySCSIid] = testNAA
	if _, err := f.transport(nil).Attach(ctx, cfg); err != nil {
		t.Fatalf("attach: %v", err)
	}
	// A transport of its own, as the doctor makes: no locker, no secrets.
	tr := New(Deps{Runner: showNodes{f}, Root: f.root})

	c, err := tr.ParseConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.WWID != testWWID || c.TargetIQN != testIQN || c.ReplacementTimeout != DefaultReplacementTimeout || c.QueueSeconds != DefaultQueueSeconds {
		t.Errorf("config %+v", c)
	}

	ss, err := tr.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	var got []Portal
	slices.SortFunc(ss, func(a, b Session) int { return strings.Compare(a.Portal.String(), b.Portal.String()) })
	for _, s := range ss {
		got = append(got, s.Portal)
		if s.Target != testIQN || s.Iface != DefaultIface || s.RecoveryTmo != DefaultReplacementTimeout {
			t.Errorf("session %+v", s)
		}
	}
	if diff := cmp.Diff([]Portal{portal1, portal2}, got); diff != "" {
		t.Errorf("session portals (-want +got):\n%s", diff)
	}

	rec, ok, err := tr.NodeRecord(ctx, testIQN, portal1, IfaceName(""))
	if err != nil || !ok || rec["node.session.timeo.replacement_timeout"] != "10" {
		t.Errorf("node record %v %v %v", rec, ok, err)
	}
	if _, ok, err := tr.NodeRecord(ctx, testIQN2, portal1, IfaceName("")); ok || err != nil {
		t.Errorf("a record that does not exist: ok=%v err=%v", ok, err)
	}

	m, err := tr.FindMap(NormaliseWWID(strings.ToUpper(testWWID)))
	if err != nil || m == nil || m.Name != testWWID || len(m.Slaves) != 2 {
		t.Fatalf("map %+v, %v", m, err)
	}
	tab, err := tr.MapTable(ctx, m.Name)
	if err != nil || !strings.Contains(tab, "queue_if_no_path") {
		t.Errorf("table %q, %v", tab, err)
	}
	if m, err := tr.FindMap("36001405ffffffffffffffffffffffff"); m != nil || err != nil {
		t.Errorf("unknown WWID: %+v, %v", m, err)
	}
}

func TestParseConfigBindings(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	c, err := tr.ParseConfig(context.Background(), map[string]string{
		KeyTarget: "127.0.0.1,127.0.0.2", KeyIface: "eth1=127.0.0.2,eth2",
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]string{{"eth2"}, {"eth1", "eth2"}}, [][]string{c.PortalNICs(0), c.PortalNICs(1)}); diff != "" {
		t.Errorf("NICs (-want +got):\n%s", diff)
	}
	if IfaceName("eth1") != ifaceName("eth1") || IfaceName("") != defaultIface {
		t.Errorf("iface names %q %q", IfaceName("eth1"), IfaceName(""))
	}
}

// showNodes adds to the fake iscsiadm what only the doctor asks of it:
// printing one node record, or exit 21 when there is none.
type showNodes struct{ *fakeHost }

func (s showNodes) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	o := parseIscsiOpts(c.Args)
	if c.Name != "iscsiadm" || o.mode != "node" || o.op != "" || o.login || o.target == "" {
		return s.fakeHost.Run(ctx, c)
	}
	p := path{Portal: s.portalOf(o.portal), IQN: o.target, Iface: o.iface}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.nodes[p]
	if !ok {
		return fail(c, errNoObjsFound, "iscsiadm: No records found")
	}
	return host.Result{Stdout: []byte(renderRecord(rec))}, nil
}

// cannedRunner answers every command with one output.
type cannedRunner struct{ out string }

func (r cannedRunner) Run(context.Context, host.Cmd) (host.Result, error) {
	return host.Result{Stdout: []byte(r.out)}, nil
}

// multipathd's running configuration: the checker interval of the
// defaults section, and each WWID's no_path_retry, not a device
// section's.
func TestRunningMultipathd(t *testing.T) {
	conf := `defaults {
	verbosity 2
	polling_interval 7
}
devices {
	device {
		vendor "LIO-ORG"
		no_path_retry 99
	}
}
multipaths {
	multipath {
		wwid "36001405other"
		no_path_retry 4
	}
	multipath {
		wwid "` + testWWID + `"
		alias "` + testWWID + `"
		no_path_retry 9
	}
}`
	tr := New(Deps{Runner: cannedRunner{conf}, Root: host.NewRoot(t.TempDir())})
	got, err := tr.RunningMultipathd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := MultipathdConfig{PollingInterval: 7, NoPathRetry: map[string]string{"36001405other": "4", testWWID: "9"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if NoPathRetry(60, got.PollingInterval) != "9" || NoPathRetry(0, 7) != "fail" {
		t.Errorf("no_path_retry %s %s", NoPathRetry(60, 7), NoPathRetry(0, 7))
	}
}

// The captured multipath-tools 0.9.4 configuration has no sanvol stanza
// and the default interval.
func TestRunningMultipathdFixture(t *testing.T) {
	tr := New(Deps{Runner: cannedRunner{fixture(t, "multipathd-show-config-0.9.4.txt")}, Root: host.NewRoot(t.TempDir())})
	got, err := tr.RunningMultipathd(context.Background())
	if err != nil || got.PollingInterval != 5 || got.NoPathRetry[testWWID] != "" {
		t.Errorf("%+v, %v", got, err)
	}
}

func TestToolVersionLines(t *testing.T) {
	ctx := context.Background()
	tr := New(Deps{Runner: cannedRunner{"iscsiadm version 2.1.8\n"}, Root: host.NewRoot(t.TempDir())})
	if v := tr.IscsiadmVersion(ctx); v != "iscsiadm version 2.1.8" {
		t.Errorf("iscsiadm: %q", v)
	}
	tr = New(Deps{Runner: cannedRunner{"multipath-tools v0.9.4 (12/19, 2022)\nUsage: multipath [-v level] …\n"}, Root: host.NewRoot(t.TempDir())})
	if v := tr.MultipathVersion(ctx); v != "multipath-tools v0.9.4 (12/19, 2022)" {
		t.Errorf("multipath: %q", v)
	}
}

func TestExportedCheckIQN(t *testing.T) {
	if err := CheckIQN(testIQN); err != nil {
		t.Errorf("%s: %v", testIQN, err)
	}
	if err := CheckIQN("host1"); err == nil || !strings.Contains(err.Error(), "not an iSCSI name") {
		t.Errorf("host1: %v", err)
	}
}

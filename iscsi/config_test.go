package iscsi

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

func TestParsePortals(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	cases := []struct {
		target, port string
		want         []Portal
	}{
		{"10.0.0.1", "", []Portal{{"10.0.0.1", 3260}}},
		{"10.0.0.1, 10.0.0.2:3261,10.0.0.1", "", []Portal{{"10.0.0.1", 3260}, {"10.0.0.2", 3261}}},
		{"10.0.0.1", "3262", []Portal{{"10.0.0.1", 3262}}},
		{"fd00::1,[fd00::2]:3261,[fd00::3]", "", []Portal{{"fd00::1", 3260}, {"fd00::2", 3261}, {"fd00::3", 3260}}},
		{"::ffff:10.0.0.9", "", []Portal{{"10.0.0.9", 3260}}},
		// The resolver answers IPv6 first; IPv4 is preferred.
		{"array.example:3263", "", []Portal{{"10.0.0.5", 3263}}},
	}
	for _, c := range cases {
		t.Run(c.target, func(t *testing.T) {
			cfg := map[string]string{KeyTarget: c.target, KeyPort: c.port}
			got, err := tr.parseConfig(context.Background(), "test", cfg, parseNeeds{})
			if err != nil {
				t.Errorf("%q: %v", c.target, err)
				return
			}
			if diff := cmp.Diff(c.want, got.Portals); diff != "" {
				t.Errorf("%q: portals (-want +got):\n%s", c.target, diff)
			}
		})
	}
	if got := (Portal{"fd00::2", 3261}).String(); got != "[fd00::2]:3261" {
		t.Errorf("IPv6 portal prints as %q", got)
	}
}

func TestParseConfigRejects(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(fakeSecrets{})
	cases := []struct {
		name string
		cfg  map[string]string
		need parseNeeds
		key  string // the key the message must name
	}{
		{"no target", map[string]string{}, parseNeeds{}, "device-config:target"},
		{"bad port", map[string]string{KeyTarget: "10.0.0.1", KeyPort: "70000"}, parseNeeds{}, "device-config:port"},
		{"bad portal port", map[string]string{KeyTarget: "10.0.0.1:0"}, parseNeeds{}, "device-config:target"},
		{"unresolvable", map[string]string{KeyTarget: "nowhere.example"}, parseNeeds{}, "device-config:target"},
		{"zoned v6", map[string]string{KeyTarget: "fe80::1%eth0"}, parseNeeds{}, "device-config:target"},
		{"iqn missing", map[string]string{KeyTarget: "10.0.0.1"}, parseNeeds{iqn: true}, "device-config:targetIQN"},
		{"iqn bad", map[string]string{KeyTarget: "10.0.0.1", KeyTargetIQN: "target1"}, parseNeeds{}, "device-config:targetIQN"},
		{"wwid missing", map[string]string{KeyTarget: "10.0.0.1", KeyTargetIQN: testIQN}, parseNeeds{wwid: true}, "device-config:SCSIid"},
		{"wwid bad", map[string]string{KeyTarget: "10.0.0.1", KeySCSIid: "a b"}, parseNeeds{}, "device-config:SCSIid"},
		{"user without password", map[string]string{KeyTarget: "10.0.0.1", KeyChapUser: "u"}, parseNeeds{}, "device-config:chapuser"},
		{"password without user", map[string]string{KeyTarget: "10.0.0.1", KeyChapPassword + secretSuffix: "uuid"}, parseNeeds{}, "device-config:chappassword"},
		{"mutual without one-way", map[string]string{KeyTarget: "10.0.0.1", KeyIncomingUser: "t", KeyIncomingPassword: "p"}, parseNeeds{}, "device-config:incoming_chapuser"},
		{"iface portal unknown", map[string]string{KeyTarget: "10.0.0.1", KeyIface: "eth1=10.0.0.9"}, parseNeeds{}, "device-config:iface"},
		{"iface bad nic", map[string]string{KeyTarget: "10.0.0.1", KeyIface: "eth 1"}, parseNeeds{}, "device-config:iface"},
		{"timeout zero", map[string]string{KeyTarget: "10.0.0.1", KeyReplacementTimeout: "0"}, parseNeeds{}, "device-config:replacement-timeout"},
		{"timeout big", map[string]string{KeyTarget: "10.0.0.1", KeyReplacementTimeout: "601"}, parseNeeds{}, "device-config:replacement-timeout"},
		{"queue for ever", map[string]string{KeyTarget: "10.0.0.1", KeyPathLossPolicy: "queue:forever"}, parseNeeds{}, "device-config:path-loss-policy"},
		{"unknown policy", map[string]string{KeyTarget: "10.0.0.1", KeyPathLossPolicy: "retry"}, parseNeeds{}, "device-config:path-loss-policy"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := tr.parseConfig(context.Background(), "test", c.cfg, c.need)
			if err == nil {
				t.Errorf("%s: accepted", c.name)
				return
			}
			var he *host.Error
			if !errors.As(err, &he) || he.Kind != host.KindInvalid || he.Fix == "" {
				t.Errorf("%s: want an InvalidArgument error with a fix, got %#v", c.name, err)
			}
			if !strings.Contains(err.Error(), c.key) {
				t.Errorf("%s: %q does not name %s", c.name, err, c.key)
			}
		})
	}
}

func TestParseConfigValues(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(fakeSecrets{"s1": "out-secret", "s2": "in-secret"})
	cfg := map[string]string{
		KeyTarget: "10.0.0.1,10.0.0.2", KeyTargetIQN: testIQN, KeySCSIid: testNAA,
		KeyChapUser: "initiator", KeyChapPassword + secretSuffix: "s1",
		KeyIncomingUser: "target", KeyIncomingPassword + secretSuffix: "s2",
		KeyIface: "eth1, eth2=10.0.0.2", KeyReplacementTimeout: "15", KeyPathLossPolicy: "queue:30",
	}
	c, err := tr.parseConfig(context.Background(), "test", cfg, parseNeeds{iqn: true, wwid: true, secrets: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.WWID != testWWID {
		t.Errorf("wwid %q: naa. form not normalised", c.WWID)
	}
	if *c.chap != (chap{"initiator", "out-secret"}) || *c.mutual != (chap{"target", "in-secret"}) {
		t.Errorf("CHAP not resolved from the secrets: %+v %+v", c.chap, c.mutual)
	}
	if c.ReplacementTimeout != 15 || c.QueueSeconds != 30 {
		t.Errorf("timeout %d, queue %d", c.ReplacementTimeout, c.QueueSeconds)
	}
	if diff := cmp.Diff([]string{"sanvol-eth1"}, c.ifacesFor(0)); diff != "" {
		t.Errorf("portal 1 ifaces: %s", diff)
	}
	if diff := cmp.Diff([]string{"sanvol-eth1", "sanvol-eth2"}, c.ifacesFor(1)); diff != "" {
		t.Errorf("portal 2 ifaces: %s", diff)
	}

	// Without secrets (detach, health) the uuids are not resolved.
	c, err = tr.parseConfig(context.Background(), "test", cfg, parseNeeds{})
	if err != nil || c.chap.password != "" {
		t.Errorf("secrets resolved without need: %v %+v", err, c.chap)
	}

	// Defaults.
	c, err = tr.parseConfig(context.Background(), "test", map[string]string{KeyTarget: "10.0.0.1"}, parseNeeds{})
	if err != nil {
		t.Fatal(err)
	}
	if c.ReplacementTimeout != 10 || c.QueueSeconds != 60 || c.ifacesFor(0)[0] != defaultIface {
		t.Errorf("defaults: %+v", c)
	}
	for in, want := range map[string]int{"fail": 0, "queue": 60, "queue:1": 1, "queue:45s": 45, "queue:3600": 3600} {
		got, err := parsePolicy(in)
		if err != nil || got != want {
			t.Errorf("policy %q = %d, %v; want %d", in, got, err, want)
		}
	}
}

func TestConfigKeysDocumentEveryKey(t *testing.T) {
	tr := New(Deps{})
	keys := tr.ConfigKeys()
	for _, k := range []string{KeyTarget, KeyPort, KeyTargetIQN, KeySCSIid, KeyChapUser, KeyChapPassword, KeyIncomingUser,
		KeyIncomingPassword, KeyIface, KeyReplacementTimeout, KeyPathLossPolicy} {
		if len(keys[k]) < 20 {
			t.Errorf("key %s is not documented: %q", k, keys[k])
		}
	}
	if tr.Type() != "iscsi-ng" {
		t.Errorf("type %q", tr.Type())
	}
}

func TestNormaliseWWID(t *testing.T) {
	for in, want := range map[string]string{
		"naa.6001405A1B2C3D4E5F60718293A4B5C6": "36001405a1b2c3d4e5f60718293a4b5c6",
		"36001405A1B2C3D4E5F60718293A4B5C6":    "36001405a1b2c3d4e5f60718293a4b5c6",
		"eui.0025385b71b07e2f":                 "20025385b71b07e2f",
		"t10.ATA     QEMU HARDDISK   QM00001 ": "1ATA_QEMU_HARDDISK_QM00001",
		"  36001405abc\n":                      "36001405abc",
	} {
		if got := normaliseWWID(in); got != want {
			t.Errorf("normaliseWWID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRecords(t *testing.T) {
	out := "127.0.0.1:3260,1 " + testIQN + "\n" +
		"127.0.0.1:3260,1 " + testIQN + "\n" + // a second iface prints the same line
		"[fd00::2]:3261,2 " + testIQN2 + "\n" +
		"iscsiadm: some warning\n\n"
	want := []record{
		{portal: portal1, tpgt: 1, iqn: testIQN},
		{portal: Portal{"fd00::2", 3261}, tpgt: 2, iqn: testIQN2},
	}
	if diff := cmp.Diff(want, parseRecords(out), cmp.AllowUnexported(record{})); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	recs := []record{{portal: portal1, iqn: testIQN}, {portal: portal2, iqn: testIQN2}}
	if got := iqnsAt(recs, portal2); !cmp.Equal(got, []string{testIQN2}) {
		t.Errorf("iqnsAt portal2 = %v", got)
	}
	// A portal that advertises other addresses only (NAT): trust all.
	if got := iqnsAt(recs, Portal{"192.0.2.1", 3260}); len(got) != 2 {
		t.Errorf("iqnsAt NAT = %v", got)
	}
}

// A secret that cannot be read has the resolver's kind, as in nvmetcp
// (transport.SecretError): NotFound for a missing one, Unreachable when
// xapi is down.
func TestSecretErrorKind(t *testing.T) {
	f := newFakeHost(t)
	cfg := map[string]string{KeyTarget: "10.0.0.1", KeyChapUser: "u", KeyChapPassword + secretSuffix: "nope"}
	_, err := f.transport(fakeSecrets{}).parseConfig(context.Background(), "test", cfg, parseNeeds{secrets: true})
	if !errors.Is(err, host.ErrNotFound) || host.KindOf(err) != host.KindNotFound || !strings.Contains(err.Error(), "chappassword_secret") {
		t.Errorf("missing secret: %v", err)
	}
	down := host.NewError(host.KindUnreachable, "resolve secret nope", "xapi is not running", "", nil)
	tr := f.transport(nil)
	tr.secrets = failingSecrets{down}
	_, err = tr.parseConfig(context.Background(), "test", cfg, parseNeeds{secrets: true})
	if host.KindOf(err) != host.KindUnreachable {
		t.Errorf("xapi down: %v", err)
	}
}

type failingSecrets struct{ err error }

func (s failingSecrets) Secret(context.Context, string) (string, error) { return "", s.err }

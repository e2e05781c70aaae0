package iscsi

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
)

func TestCheckIQN(t *testing.T) {
	good := []string{testIQN, "iqn.1992-08.com.netapp:sn.135053389", "iqn.2000-01.com.synology:NAS.Target-1.abc",
		"eui.02004567A425678D", "naa.52004567BA64678D", "naa.6001405a1b2c3d4e5f60718293a4b5c6"}
	for _, s := range good {
		if err := checkIQN(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	bad := []string{"target1", "iqn.2003-01.org.x:a/../../../../tmp/pwn", "iqn.2003-01.org.x/..", "iqn.2003-13.org.x:y",
		"iqn.2003-01.org.x:a b", "iqn.2003-01.org.x:a,b", "iqn.2003-01.org.x:a=b", "iqn.2003-01.org.x:a\nnode.startup = automatic",
		"iqn.2003-01..", "eui.0123", "naa.0123456789abcdef0", "iqn.2003-01.org.x:" + strings.Repeat("a", 210), ".."}
	for _, s := range bad {
		if err := checkIQN(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestParseConfigRejectsUnsafeNames(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(fakeSecrets{"nl": "secret\nnode.startup = automatic", "blank": " secret", "long": strings.Repeat("s", 256), "ok": "secret"})
	base := func(kv ...string) map[string]string {
		m := map[string]string{KeyTarget: "10.0.0.1"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name string
		cfg  map[string]string
		key  string
	}{
		{"iqn traversal", base(KeyTargetIQN, "iqn.2003-01.org.x:a/../../../tmp/pwn"), "device-config:targetIQN"},
		{"iqn comma", base(KeyTargetIQN, testIQN+",x"), "device-config:targetIQN"},
		{"iqn long", base(KeyTargetIQN, "iqn.2003-01.org.x:"+strings.Repeat("a", 220)), "device-config:targetIQN"},
		{"user newline", base(KeyChapUser, "u\nnode.session.auth.authmethod = None", KeyChapPassword+secretSuffix, "ok"), "device-config:chapuser"},
		{"user long", base(KeyChapUser, strings.Repeat("u", 256), KeyChapPassword+secretSuffix, "ok"), "device-config:chapuser"},
		{"plain password newline", base(KeyChapUser, "u", KeyChapPassword, "p\nnode.startup = automatic"), "device-config:chappassword"},
		{"secret newline", base(KeyChapUser, "u", KeyChapPassword+secretSuffix, "nl"), "device-config:chappassword"},
		{"secret blank", base(KeyChapUser, "u", KeyChapPassword+secretSuffix, "blank"), "device-config:chappassword"},
		{"secret long", base(KeyChapUser, "u", KeyChapPassword+secretSuffix, "long"), "device-config:chappassword"},
		{"incoming secret newline", base(KeyChapUser, "u", KeyChapPassword+secretSuffix, "ok", KeyIncomingUser, "t", KeyIncomingPassword+secretSuffix, "nl"), "device-config:incoming_chappassword"},
		{"incoming user tab", base(KeyChapUser, "u", KeyChapPassword+secretSuffix, "ok", KeyIncomingUser, "t\tx", KeyIncomingPassword+secretSuffix, "ok"), "device-config:incoming_chapuser"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := tr.parseConfig(context.Background(), "test", c.cfg, parseNeeds{secrets: true})
			var he *host.Error
			if !errors.As(err, &he) || he.Kind != host.KindInvalid || he.Fix == "" {
				t.Errorf("%s: want an InvalidArgument error with a fix, got %v", c.name, err)
				return
			}
			if !strings.Contains(err.Error(), c.key) {
				t.Errorf("%s: %q does not name %s", c.name, err, c.key)
			}
			if strings.Contains(err.Error(), "secret\n") || strings.Contains(err.Error(), "p\nnode") {
				t.Errorf("%s: the message echoes the secret: %q", c.name, err)
			}
		})
	}
}

// A portal's sendtargets answer is data from the network: a record whose
// name is not an IQN is skipped, never handed to iscsiadm.
func TestDiscoveredBadIQNIsSkipped(t *testing.T) {
	const evil = "iqn.2003-01.org.x:a/../../../../tmp/pwn"
	f := newFakeHost(t)
	lun := f.targets[testIQN].luns
	f.targets[evil] = &fakeTarget{iqn: evil, portals: []Portal{portal1, portal2}, tpgt: map[Portal]int{portal1: 1, portal2: 2}, luns: lun}

	cands, err := f.transport(nil).Probe(context.Background(), map[string]string{KeyTarget: "127.0.0.1,127.0.0.2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cands {
		if strings.Contains(c.Configuration[KeyTargetIQN], "/") {
			t.Errorf("probe offers the bad IQN: %+v", c)
		}
	}
	if len(cands) != 1 || cands[0].Configuration[KeyTargetIQN] != testIQN {
		t.Errorf("candidates %+v", cands)
	}

	cfg := baseConfig()
	cfg[KeyTargetIQN] = wildcardIQN
	attach(t, f.transport(nil), cfg)
	for _, c := range f.commands("iscsiadm") {
		if strings.Contains(c, "/..") {
			t.Errorf("iscsiadm got the bad IQN: %s", c)
		}
	}
	for _, s := range f.sess {
		if s.p.IQN != testIQN {
			t.Errorf("session to %q", s.p.IQN)
		}
	}
}

// Whatever the source of a target name (a session in sysfs, an attach
// record), iscsiadm never gets one that is not an IQN.
func TestIscsiadmRefusesBadTargetName(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	err := tr.deleteNode(context.Background(), path{Portal: portal1, IQN: "iqn.2003-01.org.x:../../../etc", Iface: defaultIface})
	if !errors.Is(err, host.ErrInvalid) {
		t.Errorf("delete of a bad node: %v", err)
	}
	if n := len(f.commands("iscsiadm")); n != 0 {
		t.Errorf("%d iscsiadm calls", n)
	}
}

package nvme

import (
	"context"
	"strings"
	"testing"
)

// A discovery log is data from the network: an NQN that the configured
// one could not be (here with ",hostnqn=" that would become a second
// option of the connect) is skipped, never connected.
func TestProbeSkipsInvalidDiscoveredNQN(t *testing.T) {
	k := newFakeKernel(t)
	evil := testNQN + ",hostnqn=nqn.2014-08.org.evil:x"
	k.targets[evil] = k.targets[testNQN]
	k.discovery = strings.Replace(readFixture(t, "synthetic-nvme-discover-1.16.json"), `"subnqn" : "nqn.2024-01.org.sanvol:lab",
      "traddr" : "127.0.0.2"`, `"subnqn" : "`+evil+`",
      "traddr" : "127.0.0.2"`, 1)
	if !strings.Contains(k.discovery, "org.evil") {
		t.Fatal("fixture edit did not apply")
	}
	cands, err := k.transport(nil).Probe(context.Background(), map[string]string{KeyTarget: "127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cands {
		if strings.Contains(c.Configuration[KeyNQN], "evil") {
			t.Errorf("probe offers %q", c.Configuration[KeyNQN])
		}
	}
	for _, c := range k.connects() {
		if strings.Contains(strings.Join(c, ","), "evil") {
			t.Errorf("connected with the discovered NQN: %v", c)
		}
	}
	for _, s := range []string{"nqn.2024-01.x:a,b", "nqn.2024-01.x:a=b", "nqn.2024-01.x:a b", "nqn.2024-01.x:a\n", "nqn.2024-01.x:\x7f", "iqn.2024-01.x:a"} {
		if validNQN(s) {
			t.Errorf("validNQN(%q) = true", s)
		}
	}
}

// Both DH-HMAC-CHAP keys reach the kernel under its own option names,
// and no command sanvol runs carries either.
func TestBidirectionalKeysGoToFabricsOnly(t *testing.T) {
	const ctrlKey = "DHHC-1:00:Y3RybGtleWN0cmxrZXljdHJsa2V5Y3RybGtleTEyMzQ=:"
	k := newFakeKernel(t)
	k.authKernel = true
	k.targetKeys[testNQN] = testKey
	k.write("/boot/config-6.1.0-test-amd64", "CONFIG_NVME_HOST_AUTH=y")
	k.discovery = readFixture(t, "synthetic-nvme-discover-1.16.json")
	cfg := authCfg()
	cfg[KeyDHCHAPCtrl+"_secret"] = "sec-2"
	tr := k.transport(fakeSecrets{"sec-1": testKey, "sec-2": ctrlKey})
	if _, err := tr.Attach(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Probe(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if err := tr.Detach(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	got := k.connects()
	if len(got) < 2 {
		t.Fatalf("%d connects", len(got))
	}
	for _, c := range got {
		o := opts(c)
		if o["dhchap_secret"] != testKey || o["dhchap_ctrl_secret"] != ctrlKey || c[0] != "nqn="+testNQN {
			t.Errorf("options %v", c)
		}
	}
	k.assertNoSecret(t, testKey, ctrlKey)
}

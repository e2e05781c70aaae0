package nvme

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

func authCfg() map[string]string {
	cfg := baseCfg()
	cfg[KeyDHCHAP+"_secret"] = "sec-1"
	return cfg
}

var authSecrets = fakeSecrets{"sec-1": testKey}

// Linux 6.1 without CONFIG_NVME_AUTH: the build config says so, and
// sanvol refuses before it connects anything.
func TestAuthRefusedByKernelConfigBeforeConnecting(t *testing.T) {
	k := newFakeKernel(t)
	k.write("/boot/config-6.1.0-test-amd64", "CONFIG_NVME_TCP=m\n# CONFIG_NVME_AUTH is not set\nCONFIG_NVME_TARGET_TCP=m")
	_, err := k.transport(authSecrets).Attach(context.Background(), authCfg())
	if !errors.Is(err, host.ErrUnsupported) {
		t.Fatalf("err = %v, want Unsupported", err)
	}
	for _, s := range []string{"6.1.0-test-amd64", "cannot authenticate", "CONFIG_NVME_HOST_AUTH"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %q: %v", s, err)
		}
	}
	if n := len(k.connects()); n != 0 {
		t.Errorf("%d connects on a kernel that cannot authenticate", n)
	}
}

// Without a readable build config the kernel's answer is the only proof:
// `nvme connect --dhchap-secret` exits 0, but the controller has no
// dhchap_secret attribute. What was connected must be undone.
func TestAuthRefusedAfterUnauthenticatedConnect(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = false
	_, err := k.transport(authSecrets).Attach(context.Background(), authCfg())
	if !errors.Is(err, host.ErrUnsupported) || !strings.Contains(err.Error(), "no dhchap_secret attribute") {
		t.Fatalf("err = %v, want Unsupported about dhchap_secret", err)
	}
	if n := len(k.connects()); n != 2 {
		t.Errorf("%d connects, want 2", n)
	}
	if names := k.controllerNames(); len(names) != 0 {
		t.Errorf("controllers left connected without authentication: %v", names)
	}
	if strings.Contains(err.Error(), testKey) {
		t.Error("error leaks the key")
	}
}

func TestAuthConnectsWithKeyOnCapableKernel(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = true
	k.targetKeys[testNQN] = testKey
	k.write("/boot/config-6.1.0-test-amd64", "CONFIG_NVME_HOST_AUTH=y\nCONFIG_NVME_AUTH=m")
	dev, err := k.transport(authSecrets).Attach(context.Background(), authCfg())
	if err != nil {
		t.Fatal(err)
	}
	if dev.Health.Live != 2 {
		t.Errorf("health = %+v", dev.Health)
	}
	for _, c := range k.connects() {
		if opts(c)["dhchap_secret"] != testKey {
			t.Errorf("connect without the key: %v", c)
		}
	}
	k.assertNoSecret(t, testKey)
}

func TestAuthWrongKeyIsAuthError(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = true
	k.targetKeys[testNQN] = "DHHC-1:00:b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXIxMjM0:"
	_, err := k.transport(authSecrets).Attach(context.Background(), authCfg())
	if !errors.Is(err, host.ErrAuth) {
		t.Fatalf("err = %v, want Auth", err)
	}
	if !strings.Contains(err.Error(), "refused DH-HMAC-CHAP") || strings.Contains(err.Error(), testKey) {
		t.Errorf("error = %v", err)
	}
}

func TestAuthRequiredButNoKeyConfigured(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = true
	k.targetKeys[testNQN] = testKey
	_, err := k.transport(nil).Attach(context.Background(), baseCfg())
	if !errors.Is(err, host.ErrAuth) || !strings.Contains(err.Error(), "set device-config:dhchap-password") {
		t.Fatalf("err = %v, want Auth telling to set dhchap-password", err)
	}
}

// A path someone connected by hand without the key would carry the SR's
// I/O unauthenticated: refused, but not torn down (it is not ours).
func TestAuthRefusesExistingUnauthenticatedPath(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = true
	k.addController(testNQN, "127.0.0.1", "4420", "", testHostNQN, "live", "")
	_, err := k.transport(authSecrets).Attach(context.Background(), authCfg())
	if !errors.Is(err, host.ErrAuth) || !strings.Contains(err.Error(), "without DH-HMAC-CHAP") || !strings.Contains(err.Error(), "nvme disconnect -d nvme0") {
		t.Fatalf("err = %v", err)
	}
	if !k.root.Exists("/sys/class/nvme/nvme0") {
		t.Error("tore down a path sanvol did not make")
	}
	if k.root.Exists("/sys/class/nvme/nvme1") {
		t.Error("left its own new path connected after refusing")
	}
}

func TestProbeListsNamespacesAndDisconnects(t *testing.T) {
	k := newFakeKernel(t)
	k.discovery = readFixture(t, "synthetic-nvme-discover-1.16.json")
	var inspected []string
	inspect := func(_ context.Context, dev string) (*transport.FoundSR, error) {
		inspected = append(inspected, dev)
		return &transport.FoundSR{UUID: "sr-1", Name: "nvme SR"}, nil
	}
	cfg := map[string]string{KeyTarget: "127.0.0.1", KeyDHCHAP: testKey}
	k.authKernel = true
	cands, err := k.transport(authSecrets).Probe(context.Background(), cfg, inspect)
	if err != nil {
		t.Fatal(err)
	}
	if len(cands) != 1 {
		t.Fatalf("candidates = %+v, want 1 (the rdma-only subsystem is skipped)", cands)
	}
	c := cands[0]
	// sr_uuid is the engine's to add (volume.SRProbe applies xapi's rule).
	if !c.Complete || c.SR == nil || c.SR.UUID != "sr-1" || c.Configuration["sr_uuid"] != "" {
		t.Errorf("candidate = %+v", c)
	}
	if got := c.Configuration[KeyNamespace]; got != "uuid."+testUUID {
		t.Errorf("namespace = %q", got)
	}
	if got := c.Configuration[KeyTarget]; got != "127.0.0.1:4420,127.0.0.2:4420" {
		t.Errorf("target = %q, want both discovered portals", got)
	}
	if _, ok := c.Configuration[KeyDHCHAP]; ok {
		t.Error("probe result carries the plain key")
	}
	if c.Extra["size"] != "1073741824" || c.Extra["nsid"] != "1" || c.Extra["uuid"] != testUUID || c.Extra["nqn"] != testNQN {
		t.Errorf("extra = %v", c.Extra)
	}
	if len(inspected) != 1 || inspected[0] != "/dev/disk/by-id/nvme-uuid."+testUUID {
		t.Errorf("inspected %v", inspected)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("probe left %d controllers", n)
	}
	if n := len(k.connects()); n != 1 {
		t.Errorf("probe made %d connects, want one path", n)
	}
}

func TestProbeUnknownNQN(t *testing.T) {
	k := newFakeKernel(t)
	k.discovery = readFixture(t, "synthetic-nvme-discover-1.16.json")
	_, err := k.transport(nil).Probe(context.Background(), map[string]string{KeyTarget: "127.0.0.1", KeyNQN: "nqn.2024-01.org.sanvol:nope"}, nil)
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), testNQN) {
		t.Fatalf("err = %v", err)
	}
}

func TestProbeUnreachable(t *testing.T) {
	k := newFakeKernel(t)
	k.down["127.0.0.1:8009"] = true
	_, err := k.transport(nil).Probe(context.Background(), map[string]string{KeyTarget: "127.0.0.1", KeyDiscoveryPort: "8009"}, nil)
	if !errors.Is(err, host.ErrUnreachable) || !strings.Contains(err.Error(), "127.0.0.1:8009") {
		t.Fatalf("err = %v", err)
	}
}

func TestDiagnosticsDescribesPaths(t *testing.T) {
	k := newFakeKernel(t)
	tr := k.transport(nil)
	if _, err := tr.Attach(context.Background(), baseCfg()); err != nil {
		t.Fatal(err)
	}
	d := tr.Diagnostics(context.Background())
	for _, s := range []string{"kernel: 6.1.0-test-amd64", "nvme-cli: 2.3", "native multipath (nvme_core.multipath): Y",
		"subsystem nvme-subsys0 nqn=" + testNQN + " iopolicy=round-robin", "tcp 127.0.0.1:4420 state=live host_iface=lo",
		"namespace /dev/nvme0n1 nsid=1 wwid=uuid." + testUUID + " size=1073741824",
		"nvme-cli sees nvme-subsys0 " + testNQN + ": nvme0 127.0.0.", " live"} {
		if !strings.Contains(d, s) {
			t.Errorf("diagnostics lack %q:\n%s", s, d)
		}
	}
}

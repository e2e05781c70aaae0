package nvme

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

func threePortals() map[string]string {
	cfg := baseCfg()
	cfg[KeyTarget] = "127.0.0.1,127.0.0.2,127.0.0.3"
	return cfg
}

// traddrs lists the portal of every connect written, in order.
func (k *fakeKernel) traddrs() []string {
	var out []string
	for _, c := range k.connects() {
		out = append(out, opts(c)["traddr"])
	}
	return out
}

// The kernel takes one connect at a time (nvmf_dev_mutex), so sanvol
// writes them one after another, in the order of device-config:target.
func TestAttachConnectsPortalsOneAtATimeInOrder(t *testing.T) {
	k := newFakeKernel(t)
	k.connectDelay = 30 * time.Millisecond
	dev, err := k.transport(nil).Attach(context.Background(), threePortals())
	if err != nil {
		t.Fatal(err)
	}
	if dev.Health.Live != 3 {
		t.Errorf("health = %+v", dev.Health)
	}
	if got, want := strings.Join(k.traddrs(), " "), "127.0.0.1 127.0.0.2 127.0.0.3"; got != want {
		t.Errorf("connects to %s, want %s", got, want)
	}
	if k.maxActive != 1 {
		t.Errorf("%d connects in the kernel at once, want 1", k.maxActive)
	}
}

// The portals share one deadline: the second gets what the first left,
// not a timer of its own started after the first returned.
func TestConnectDeadlineIsSharedByThePortals(t *testing.T) {
	k := newFakeKernel(t)
	k.portalDelay["127.0.0.1:4420"] = 750 * time.Millisecond // slow but connects
	k.portalDelay["127.0.0.2:4420"] = 2 * time.Second        // stuck, then refused
	k.down["127.0.0.2:4420"] = true
	tr := k.transport(nil)
	tr.to.Connect = 500 * time.Millisecond // deadline 500 ms + 500 ms grace
	start := time.Now()
	dev, err := tr.Attach(context.Background(), baseCfg())
	took := time.Since(start)
	k.waitIdle()
	if err != nil {
		t.Fatal(err)
	}
	// One deadline: about 1 s. A timer per connect would end at 1.75 s.
	if took < time.Second || took > 1500*time.Millisecond {
		t.Errorf("attach took %s, want the shared deadline of 1s", took)
	}
	if dev.Health.Live != 1 || dev.Health.Total != 2 {
		t.Errorf("health = %+v", dev.Health)
	}
	if !strings.Contains(dev.Health.Detail, "127.0.0.2:4420 not connected (no answer from portal 127.0.0.2:4420 in the last") ||
		!strings.Contains(dev.Health.Detail, "of the attach's connect deadline (500ms, shared by its portals one after another)") {
		t.Errorf("detail = %q", dev.Health.Detail)
	}
}

// A connect stuck in the kernel at the deadline still holds its connect
// lock: the portals after it are reported as not tried, never written,
// and no discovery is queued behind it either.
func TestStuckConnectLeavesTheOtherPortalsNotTried(t *testing.T) {
	k := newFakeKernel(t)
	k.portalDelay["127.0.0.1:4420"] = 1500 * time.Millisecond
	k.down["127.0.0.1:4420"] = true
	tr := k.transport(nil)
	tr.to.Connect = 200 * time.Millisecond
	start := time.Now()
	_, err := tr.Attach(context.Background(), threePortals())
	if took := time.Since(start); took > time.Second {
		t.Errorf("attach waited %s for the stuck connect", took)
	}
	k.waitIdle()
	t.Logf("attach: %v", err)
	if !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("err = %v, want Unreachable", err)
	}
	for _, s := range []string{
		"(1 of 3 portals tried within 200ms)",
		"127.0.0.1:4420: no answer from portal 127.0.0.1:4420 within 200ms",
		"127.0.0.2:4420: not tried: the connect to portal 127.0.0.1:4420 still held the kernel's connect lock",
		"127.0.0.3:4420: not tried: the connect to portal 127.0.0.1:4420",
		"Fix: check that the target answers on 127.0.0.1:4420",
	} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	if got := k.traddrs(); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("connects written: %v, want only 127.0.0.1", got)
	}
	if n := k.ran("discover"); n != 0 {
		t.Errorf("%d discoveries queued behind the stuck connect", n)
	}
}

// The target holds the host's keys for the subsystem: once one portal
// refuses them, the others would too, each after the same wait.
func TestAuthRefusalStopsTheOtherPortals(t *testing.T) {
	k := newFakeKernel(t)
	k.authKernel = true
	k.targetKeys[testNQN] = "DHHC-1:00:b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXIxMjM0:"
	k.connectDelay = 100 * time.Millisecond // the kernel's wait for the refusal
	cfg := threePortals()
	cfg[KeyDHCHAP+"_secret"] = "sec-1"
	_, err := k.transport(authSecrets).Attach(context.Background(), cfg)
	t.Logf("attach: %v", err)
	if !errors.Is(err, host.ErrAuth) {
		t.Fatalf("err = %v, want Auth", err)
	}
	for _, s := range []string{
		"portal 127.0.0.1:4420 refused DH-HMAC-CHAP authentication for subsystem " + testNQN,
		"127.0.0.2:4420, 127.0.0.3:4420 not tried",
		"127.0.0.1:4420: /dev/nvme-fabrics: key was rejected by service",
		"Fix: check that dhchap-password is the key the target holds",
	} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	if strings.Contains(err.Error(), testKey) {
		t.Error("error leaks the key")
	}
	if got := k.traddrs(); len(got) != 1 {
		t.Errorf("connects written: %v, want only the first portal's", got)
	}
	if names := k.controllerNames(); len(names) != 0 {
		t.Errorf("controllers left: %v", names)
	}
}

// A portal that is down does not stop the others: the attach is
// degraded, the next portal is still connected.
func TestDownFirstPortalStillConnectsTheNext(t *testing.T) {
	k := newFakeKernel(t)
	k.down["127.0.0.1:4420"] = true
	dev, err := k.transport(nil).Attach(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(k.traddrs(), " "); got != "127.0.0.1 127.0.0.2" {
		t.Errorf("connects to %s", got)
	}
	if want := "1 of 2 paths live: 127.0.0.1:4420 not connected (cannot reach portal 127.0.0.1:4420)"; dev.Health.Detail != want {
		t.Errorf("detail = %q, want %q", dev.Health.Detail, want)
	}
}

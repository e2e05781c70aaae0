//go:build lab

package e2e

// The array inside the pool (issue 15; HA-Lizard's design): the storage
// target runs in a pool host's dom0 and its one portal is a floating
// address that moves to another host when the first one fails. Here A
// holds 10.99.0.3 (on its pool NIC for iSCSI, on an interface of its own
// for NVMe/TCP) and serves the target there; both hosts plug the SR
// through that portal alone (A to its own address). Then the address
// moves to B, and B relays the target's ports to A's fixed address: the
// lab cannot move the target's storage, which stays A's file, so B's
// relay stands in for the array's service coming up with its address on
// B. The initiators see what they would see: the connections to the
// portal break, and the portal answers again from another host.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

const poolAddrFloat = "10.99.0.3"

// TestPoolFloatingPortalNVMe has the floating address on an interface of
// its own (a dummy, as HA-Lizard and keepalived setups often have; the
// issue's first two-host lab had the portal there): A's path to its own
// address must not be bound to that interface, or it is stranded there
// once the address moves to B. With the address on the pool NIC instead,
// a path bound to the NIC would still reach the address on B through
// that NIC, so the NIC case cannot catch that mistake; the rest it would
// show (the address and its ARP moving between the hosts' NICs, the
// connections breaking and coming back from B) does not depend on the
// initiator, and TestPoolFloatingPortalISCSI shows it on the NIC.
func TestPoolFloatingPortalNVMe(t *testing.T) { poolFloating(t, "nvmetcp", true) }

func TestPoolFloatingPortalISCSI(t *testing.T) { poolFloating(t, "iscsi-ng", false) }

// nicOf is the interface holding addr on host h.
func nicOf(t *testing.T, h shellHost, addr string) string {
	t.Helper()
	out, err := h.Exec("ip", "-o", "-4", "addr", "show", "to", addr)
	f := strings.Fields(out)
	if err != nil || len(f) < 2 {
		t.Fatalf("the NIC holding %s: %q %v", addr, out, err)
	}
	return f[1]
}

// floatDummy is the interface of its own a dummy-hosted floating address
// lives on, on either host.
const floatDummy = "float0"

func poolFloating(t *testing.T, srType string, dummy bool) {
	l := newPoolLab(t)
	ctx := l.ctx
	a := localHost{}
	nicA, nicB := nicOf(t, a, poolAddrA1), nicOf(t, l.b, poolAddrB)
	float := poolAddrFloat + "/24"
	if dummy {
		// Each host reaches the other's dummy address over its pool
		// NIC's subnet route; the holder answers ARP for it there.
		float = poolAddrFloat + "/32"
		nicA, nicB = floatDummy, floatDummy
		for _, h := range []shellHost{a, l.b} {
			for _, c := range [][]string{{"ip", "link", "add", floatDummy, "type", "dummy"}, {"ip", "link", "set", floatDummy, "up"}} {
				if _, err := h.Exec(c...); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if _, err := a.Exec("ip", "addr", "add", float, "dev", nicA); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = l.b.Unforward()
		_, _ = l.b.Exec("ip", "addr", "del", float, "dev", nicB)
		_, _ = a.Exec("ip", "addr", "del", float, "dev", nicA)
		if dummy {
			_, _ = l.b.Exec("ip", "link", "del", floatDummy)
			_, _ = a.Exec("ip", "link", "del", floatDummy)
		}
	})

	// The target listens on the floating address and on A's fixed one
	// (where B's relay will reach it); the SR knows only the floating one.
	var cfg map[string]string
	var port string
	if srType == "nvmetcp" {
		c := l.nvmeTargetAt("float", poolAddrFloat, poolAddrA1)
		cfg = map[string]string{"target": poolAddrFloat, "nqn": c["nqn"]}
		port = "4420"
	} else {
		tg := newISCSILUN(t, "float", poolAddrFloat, poolAddrA1)
		if err := tg.Grow(srLUNSize); err != nil {
			t.Fatal(err)
		}
		l.memberCleanup()
		cfg = iscsiConfig(tg, poolAddrFloat)
		port = "3260"
	}
	ps := l.create(srType, cfg) // A connects to its own address
	for i := range ps.SRs {
		if st, err := ps.On(i).Stat(ctx); err != nil || st.Health.State != schema.Healthy {
			t.Fatalf("host %d's SR.stat through the floating portal: %+v %v", i, st, err)
		}
	}
	v, onA, load := l.writerOnA(ps, "float writer")

	// The move: the address leaves A and comes up on B with the service.
	start := time.Now()
	if _, err := a.Exec("ip", "addr", "del", float, "dev", nicA); err != nil {
		t.Fatal(err)
	}
	if _, err := l.b.Exec("ip", "addr", "add", float, "dev", nicB); err != nil {
		t.Fatal(err)
	}
	if err := l.b.Forward(poolAddrFloat+":"+port, poolAddrA1+":"+port); err != nil {
		t.Fatal(err)
	}
	load.waitWrites(t, 16, 4*time.Minute)
	resumed := time.Since(start)
	healthy := l.waitHealth(ps, 0, schema.Healthy, 3*time.Minute)
	l.waitHealth(ps, 1, schema.Healthy, 3*time.Minute)

	// Both hosts keep working through the moved portal: metadata writes on
	// A, a VM on B (B now connects to its own address).
	v2, err := ps.Master().VDICreate(ctx, "made after the move", "", 16<<20, false)
	if err != nil {
		t.Fatalf("vdi-create on A after the move: %v", err)
	}
	onB, err := ps.On(1).VMStart(ctx, v2.Key, "6")
	if err != nil {
		t.Fatalf("vm-start on B after the move: %v", err)
	}
	if err := l.b.Pattern(onB.Device, 7, 8, false); err != nil {
		t.Fatal(err)
	}
	if err := ps.On(1).VMShutdown(ctx, onB); err != nil {
		t.Fatal(err)
	}
	st := load.Stop()
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
	if dummy {
		srType += " (address on a dummy interface)"
	}
	t.Logf("pool-numbers floating portal %s: A's writes resumed %s after the move (%d writes, %d failed), SR.stat healthy after %s",
		srType, resumed.Round(time.Second), st.Writes, len(st.Errors), healthy.Round(time.Second))
	if len(st.Errors) > 0 {
		t.Errorf("the VM on A saw %d failed writes while the portal moved, first %v", len(st.Errors), st.Errors[0])
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{v.Key, v2.Key} {
		if err := ps.Master().VDIDestroy(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	l.destroy(ps)
	fmt.Printf("pool floating portal %s: the portal moved from A to B, both hosts kept working\n", srType)
}

package doctor

import (
	"errors"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// Two storage NICs on one subnet, as the XCP-ng guides allow with the
// ARP sysctls.
func sameSubnetHost(t *testing.T) *fakeHost {
	h := newFakeHost(t)
	h.net.routes, h.net.addrs = nil, nil
	h.net.addAddr("eth0", "192.168.1.10/24")
	h.net.addAddr("eth1", "10.0.1.5/24")
	h.net.addAddr("eth2", "10.0.1.6/24")
	return h
}

var boundISCSI = map[string]string{"target": "10.0.1.10,10.0.1.11", "iface": "eth1=10.0.1.10,eth2=10.0.1.11"}

func TestARPSameSubnet(t *testing.T) {
	h := sameSubnetHost(t)
	h.sysctl("all", "rp_filter", 2) // keep this test about ARP
	rep := h.doctor(Options{Type: TypeISCSI, Config: boundISCSI})
	r := expect(t, rep, chkARP, Fail, "eth1 arp_ignore=0", "net.ipv4.conf.all.arp_ignore = 2\nnet.ipv4.conf.default.arp_ignore = 2")
	expect(t, rep, chkARP, Fail, "eth2 arp_announce=0", "sysctl -p /etc/sysctl.d/90-sanvol-arp.conf")
	if r.Evidence[0] != "eth1 and eth2 share 10.0.1.0/24" {
		t.Errorf("evidence %q", r.Evidence)
	}
	// The bound paths make separate NICs: no single point of failure.
	expect(t, rep, chkRedundancy, Pass, "separate NICs", "")

	for _, i := range []string{"all", "eth1", "eth2"} {
		h.sysctl(i, "arp_ignore", 2)
		h.sysctl(i, "arp_announce", 2)
	}
	expect(t, h.doctor(Options{Type: TypeISCSI, Config: boundISCSI}), chkARP, Pass, "arp_ignore=2 and arp_announce=2", "")
}

// "all" counts: the kernel takes the larger of all and the interface.
func TestARPAllSuffices(t *testing.T) {
	h := sameSubnetHost(t)
	h.sysctl("all", "arp_ignore", 2)
	h.sysctl("all", "arp_announce", 2)
	r := expect(t, h.doctor(Options{Type: TypeISCSI, Config: boundISCSI}), chkARP, Pass, "", "")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "net.ipv4.conf.all.arp_ignore=2 net.ipv4.conf.eth1.arp_ignore=0 (effective 2)") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

// eth2's path is bound to eth2, but the route back to 10.0.1.11 leaves by
// eth1 (first on the subnet): strict reverse-path filtering drops the
// replies, the NexentaStor guide's case.
func TestRPFilterDropsBoundPath(t *testing.T) {
	h := sameSubnetHost(t)
	rep := h.doctor(Options{Type: TypeISCSI, Config: boundISCSI})
	r := expect(t, rep, chkRPFilter, Fail, "strict rp_filter on eth2 drops replies from 10.0.1.11, whose route back leaves via eth1",
		"sysctl -w net.ipv4.conf.eth2.rp_filter=2")
	if !strings.Contains(r.Fix, "/etc/sysctl.d/90-sanvol-rp-filter.conf") {
		t.Errorf("fix %q does not persist", r.Fix)
	}
	if strings.Contains(r.Fix, "eth1") {
		t.Errorf("fix %q touches eth1, whose replies are fine", r.Fix)
	}
	h.sysctl("eth2", "rp_filter", 2)
	expect(t, h.doctor(Options{Type: TypeISCSI, Config: boundISCSI}), chkRPFilter, Pass, "not filtered", "")
	// 0 on the interface does nothing while all=1: max(all, iface).
	h.sysctl("eth2", "rp_filter", 0)
	expect(t, h.doctor(Options{Type: TypeISCSI, Config: boundISCSI}), chkRPFilter, Fail, "strict rp_filter on eth2", "rp_filter=2")
}

func TestMTUMismatch(t *testing.T) {
	h := newFakeHost(t)
	h.run.on("ping -M do -s 8972 -c 1 -W 2 -I eth2 10.0.2.10", "1 packets transmitted, 0 received, 100% packet loss, time 0ms", exitErr(1, ""))
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	r := expect(t, rep, chkMTU, Fail,
		"MTU mismatch to 10.0.2.10: eth2 has MTU 9000 but a 9000-byte packet does not get through, the path MTU is between 1500 and 9000; suspects: the interface eth2, the switch ports on the way, the array's portal 10.0.2.10",
		"xe network-param-set uuid=$(xe pif-list device=eth2 host-uuid="+selfUUID+" params=network-uuid --minimal) MTU=1500")
	ev := strings.Join(r.Evidence, "\n")
	for _, want := range []string{
		"ping -M do -s 8972 -c 1 -W 2 -I eth2 10.0.2.10 → 1 packets transmitted, 0 received, 100% packet loss",
		"ping -M do -s 1472 -c 1 -W 2 -I eth2 10.0.2.10 → 1 packets transmitted, 1 received",
	} {
		if !strings.Contains(ev, want) {
			t.Errorf("evidence lacks %q:\n%s", want, ev)
		}
	}
	if !strings.Contains(r.Fix, "either set MTU 9000 on the switch ports between eth2 and 10.0.2.10") {
		t.Errorf("fix %q", r.Fix)
	}
}

func TestMTUBelow1500(t *testing.T) {
	h := newFakeHost(t)
	h.remove(inventoryPath)
	h.run.on("ping -M do", "", exitErr(1, "ping: local error: message too long, mtu=1400"))
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	expect(t, rep, chkMTU, Fail, "the path MTU is below 1500", "tracepath -n 10.0.1.10")
}

func TestMTUPortalSilent(t *testing.T) {
	h := newFakeHost(t)
	h.run.on("ping ", "", exitErr(1, ""))
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	expect(t, rep, chkMTU, Warn, "10.0.1.10 does not answer ping at all via eth1", "allow ICMP echo")
}

func TestMTUWithoutPing(t *testing.T) {
	h := newFakeHost(t)
	h.run.off("ping ") // the runner then says "not installed"
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.1.10,10.0.2.10", "nqn": subNQN}})
	expect(t, rep, chkMTU, Warn, "ping is not installed", "yum install -y iputils")
}

func TestMTUDiffersBetweenPaths(t *testing.T) {
	h := newFakeHost(t)
	h.net.link("eth2").MTU = 1500
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	expect(t, rep, chkMTU, Warn, "the paths use different MTUs (eth1 9000, eth2 1500)", "set one MTU on every storage interface")
}

// A dump the kernel flags as interrupted is partial; doctor must ask again
// rather than judge the host on it, and give up only after a bounded number
// of tries.
func TestRetryDumpInterrupted(t *testing.T) {
	calls := 0
	got, err := retryDump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Errorf("after two interrupted dumps: %v, %v, %d calls", got, err, calls)
	}
	calls = 0
	_, err = retryDump(func() ([]int, error) { calls++; return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpTries {
		t.Errorf("always interrupted: %v after %d calls, want %d", err, calls, dumpTries)
	}
	calls = 0
	other := errors.New("permission denied")
	if _, err = retryDump(func() ([]int, error) { calls++; return nil, other }); err != other || calls != 1 {
		t.Errorf("another error: %v after %d calls", err, calls)
	}
}

// CentOS 7's iputils has no ping -6: an IPv6 portal is pinged with ping6,
// and with ping -6 only where ping6 is not installed (newer iputils).
func TestMTUIPv6UsesPing6(t *testing.T) {
	for _, tc := range []struct {
		name, prog string
	}{{"centos7", "ping6 "}, {"merged iputils", "ping -6 "}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t)
			h.net.addAddr("eth1", "fd00:1::5/64")
			h.run.off("ping ")
			h.run.on(tc.prog, "1 packets transmitted, 1 received, 0% packet loss, time 0ms", nil)
			rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "[fd00:1::10]"}})
			r := expect(t, rep, chkMTU, Pass, "full-size don't-fragment pings reach every portal", "")
			if ev := strings.Join(r.Evidence, "\n"); !strings.Contains(ev, tc.prog+"-M do -s 8952 -c 1 -W 2 -I eth1 fd00:1::10") {
				t.Errorf("evidence %q lacks %s", ev, tc.prog)
			}
			for _, c := range h.run.calls {
				if strings.HasPrefix(c, "ping ") && !strings.HasPrefix(c, "ping -6 ") {
					t.Errorf("IPv4 ping for an IPv6 portal: %s", c)
				}
			}
		})
	}
}

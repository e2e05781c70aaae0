package doctor

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/transport"
)

func TestOnePath(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeISCSI, map[string]string{"target": "10.0.1.10", "targetIQN": targetIQN, "SCSIid": lunWWID})
	rep := h.doctor(Options{})
	expect(t, rep, chkPathCount, Fail, "only 1 path", "device-config:target=<portal 1>,<portal 2>")
	expect(t, rep, chkPathCount, Fail, "", "xe pbd-create sr-uuid="+srUUID)
}

func TestPortalWithoutRoute(t *testing.T) {
	h := newFakeHost(t)
	h.net.routes = h.net.routes[:len(h.net.routes)-1] // no default route
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.1.10,10.9.9.9", "nqn": subNQN}})
	r := expect(t, rep, chkPathCount, Fail, "2 paths configured but only 1 has a route", "xe pif-reconfigure-ip")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "10.9.9.9:4420: route to 10.9.9.9: network is unreachable") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestDegradedPaths(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeNVMeTCP, nvmeConfig())
	h.deps.Health = map[string]HealthReporter{TypeNVMeTCP: fakeHealth{h: transport.Health{Total: 2, Live: 1, Detail: "1 of 2 paths live: 10.0.2.10:4420 connecting"}}}
	r := expect(t, h.doctor(Options{}), chkPathLive, Fail, "1 of 2 paths live", "xe pbd-unplug uuid=<PBD> && xe pbd-plug uuid=<PBD>")
	if r.Evidence[1] != "1 of 2 paths live: 10.0.2.10:4420 connecting" {
		t.Errorf("evidence %q", r.Evidence)
	}
	h.deps.Health = map[string]HealthReporter{TypeNVMeTCP: fakeHealth{err: errors.New("sysfs unreadable")}}
	expect(t, h.doctor(Options{}), chkPathLive, Warn, "cannot read", "sanvol status")
}

// Both portals on the subnet of one NIC: two paths, one NIC.
func TestSinglePointOfFailure(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.1.11"}})
	r := expect(t, rep, chkRedundancy, Warn, "single point of failure: every path leaves through NIC eth1", "xe pif-reconfigure-ip uuid=<PIF of a second storage NIC>")
	if !strings.Contains(r.Fix, "device-config:iface=") {
		t.Errorf("fix %q lacks the iscsi binding", r.Fix)
	}
	if rep.ExitCode() != 1 {
		t.Errorf("exit %d:\n%s", rep.ExitCode(), text(rep))
	}
}

// Two VLANs on one NIC are two interfaces and two subnets, but one NIC.
func TestVLANsOnOneNIC(t *testing.T) {
	h := newFakeHost(t)
	h.net.addLink(Link{Name: "eth1.100", Kind: "vlan", MTU: 9000, ParentIndex: h.net.index("eth1")})
	h.net.addLink(Link{Name: "eth1.200", Kind: "vlan", MTU: 9000, ParentIndex: h.net.index("eth1")})
	h.net.addAddr("eth1.100", "10.0.100.5/24")
	h.net.addAddr("eth1.200", "10.0.200.5/24")
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.100.10,10.0.200.10", "nqn": subNQN}})
	expect(t, rep, chkRedundancy, Warn, "single point of failure: every path leaves through NIC eth1", "host-iface")
}

// XCP-ng's addresses sit on Open vSwitch bridges; ovs-vsctl says which
// NIC each one carries.
func ovsHost(t *testing.T, nic2 string) *fakeHost {
	h := newFakeHost(t)
	for _, br := range []string{"xenbr1", "xenbr2"} {
		h.net.addLink(Link{Name: br, Kind: "openvswitch", MTU: 9000})
	}
	h.net.addLink(Link{Name: "ovs-system", Kind: "openvswitch", MTU: 1500})
	h.net.routes = nil
	h.net.addrs = nil
	h.net.addAddr("eth0", "192.168.1.10/24")
	h.net.addAddr("xenbr1", "10.0.1.5/24")
	h.net.addAddr("xenbr2", "10.0.2.5/24")
	h.run.on("ovs-vsctl --timeout=5 br-to-parent xenbr1", "xenbr1\n", nil)
	h.run.on("ovs-vsctl --timeout=5 br-to-parent xenbr2", "xenbr2\n", nil)
	h.run.on("ovs-vsctl --timeout=5 list-ports xenbr1", "eth1\nvif3.0\n", nil)
	h.run.on("ovs-vsctl --timeout=5 list-ifaces xenbr1", "eth1\nvif3.0\nxenbr1\n", nil)
	h.run.on("ovs-vsctl --timeout=5 list-ports xenbr2", nic2+"\n", nil)
	h.run.on("ovs-vsctl --timeout=5 list-ifaces xenbr2", nic2+"\nxenbr2\n", nil)
	return h
}

func TestOVSBridges(t *testing.T) {
	h := ovsHost(t, "eth2")
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	expect(t, rep, chkRedundancy, Pass, "separate NICs (eth1, eth2)", "")
	if ev := find(t, rep, chkPathCount).Evidence[0]; ev != "10.0.1.10:3260 via xenbr1: xenbr1 10.0.1.5/24 on NIC eth1" {
		t.Errorf("evidence %q", ev)
	}
	// A second bridge on the same NIC (both carry eth1).
	h = ovsHost(t, "eth1")
	expect(t, h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}}), chkRedundancy, Warn, "single point of failure", "xe pif-reconfigure-ip")
}

func TestPathThroughManagementInterface(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,192.168.1.50"}})
	r := expect(t, rep, chkManagement, Fail, "path to 192.168.1.50:3260 goes through the management interface eth0", "device-config:iface=")
	if r.Evidence[0] != "management interface eth0 (MANAGEMENT_INTERFACE in /etc/xensource-inventory)" {
		t.Errorf("evidence %q", r.Evidence)
	}
}

// A storage VLAN on the management NIC is another interface, same wire.
func TestPathSharesManagementNIC(t *testing.T) {
	h := newFakeHost(t)
	h.net.addLink(Link{Name: "eth0.50", Kind: "vlan", MTU: 1500, ParentIndex: h.net.index("eth0")})
	h.net.addAddr("eth0.50", "10.0.50.5/24")
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.50.10"}})
	expect(t, rep, chkManagement, Warn, "shares NIC eth0 with the management interface eth0", "xe pif-reconfigure-ip")
}

// Off XCP-ng, the default route's interface stands for the management one.
func TestManagementWithoutInventory(t *testing.T) {
	h := newFakeHost(t)
	h.remove(inventoryPath)
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,192.168.1.50"}})
	r := expect(t, rep, chkManagement, Fail, "through the management interface eth0", "bind the paths")
	if !strings.Contains(r.Evidence[0], "taking the default route's interface eth0") {
		t.Errorf("evidence %q", r.Evidence[0])
	}
	if strings.Contains(r.Fix, "xe pif") {
		t.Errorf("xe fix off XCP-ng: %q", r.Fix)
	}
}

func TestPathThroughDefaultRoute(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.1.10,172.16.5.10", "nqn": subNQN}})
	expect(t, rep, chkDefaultRoute, Fail, "172.16.5.10:4420 (default route, gateway 192.168.1.1, eth0)", "other-config:static-routes=")
	// It also leaves through the management interface.
	expect(t, rep, chkManagement, Fail, "management interface eth0", "")
}

func TestMultipathOverBond(t *testing.T) {
	h := newFakeHost(t)
	h.net.addLink(Link{Name: "bond0", Kind: "bond", MTU: 9000})
	h.net.link("eth1").MasterIndex = h.net.index("bond0")
	h.net.addLink(Link{Name: "eth3", MTU: 9000})
	h.net.link("eth3").MasterIndex = h.net.index("bond0")
	h.net.routes, h.net.addrs = nil, nil
	h.net.addAddr("bond0", "10.0.1.5/24")
	h.net.addAddr("eth2", "10.0.2.5/24")
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	r := expect(t, rep, chkBond, Fail, "10.0.1.10:3260 via bond0 over bond bond0 (eth1+eth3)", "xe bond-destroy uuid=<bond uuid>")
	if r.Status != Fail {
		t.Fatal(r)
	}
	// The bond's NICs and eth2 are separate: the bond is the only issue.
	expect(t, rep, chkRedundancy, Pass, "separate NICs", "")
}

func TestMultipathOverOVSBond(t *testing.T) {
	h := ovsHost(t, "eth2")
	h.run.on("ovs-vsctl --timeout=5 list-ports xenbr2", "bond0\n", nil)
	h.run.on("ovs-vsctl --timeout=5 list-ifaces xenbr2", "eth2\neth3\nxenbr2\n", nil)
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10"}})
	expect(t, rep, chkBond, Fail, "over bond bond0 (eth2+eth3)", "xe bond-list")
}

func TestSingleBondedPathIsNotTheBondsFault(t *testing.T) {
	h := newFakeHost(t)
	h.net.addLink(Link{Name: "bond0", Kind: "bond", MTU: 9000})
	h.net.link("eth1").MasterIndex = h.net.index("bond0")
	h.net.addAddr("bond0", "10.0.7.5/24")
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.7.10"}})
	expect(t, rep, chkBond, Pass, "the only path runs over a bond", "")
	expect(t, rep, chkPathCount, Fail, "only 1 path", "target=")
}

func TestBoundToMissingInterface(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.1.10,10.0.2.10", "host-iface": "eth1,eth9", "nqn": subNQN}})
	r := expect(t, rep, chkPathCount, Fail, "only 1 has a route", "")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "bound to eth9, which does not exist on this host") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestPortalForms(t *testing.T) {
	s := newSubject(t.Context(), newTransports(Deps{Resolve: func(_ context.Context, name string) ([]string, error) {
		return []string{"fd00::10", "10.0.1.10"}, nil
	}}), TypeISCSI, "", map[string]string{"target": "10.0.1.10, [fd00::1]:3261 ,fd00::2,array.example:3262", "iface": "eth1=10.0.1.10,eth2"})
	if s.err != nil {
		t.Fatal(s.err)
	}
	want := []string{"10.0.1.10:3260", "[fd00::1]:3261", "[fd00::2]:3260", "10.0.1.10:3262"}
	for i, p := range s.Portals {
		if p.String() != want[i] {
			t.Errorf("portal %d = %s, want %s", i, p, want[i])
		}
	}
	if strings.Join(s.Bind[0], ",") != "eth1,eth2" || strings.Join(s.Bind[1], ",") != "eth2" {
		t.Errorf("bindings %v", s.Bind)
	}
	if netip.MustParseAddr("fd00::2") != s.Portals[2].Addr {
		t.Error("bare IPv6")
	}
}

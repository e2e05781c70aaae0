package nvme

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeTable is a routing table: a route per destination, link names by
// index, and the host's addresses.
type fakeTable struct {
	routes map[string]netlink.Route
	links  map[int]string
	addrs  []netlink.Addr
}

func (f fakeTable) RouteGet(dst net.IP) ([]netlink.Route, error) {
	r, ok := f.routes[dst.String()]
	if !ok {
		return nil, errors.New("network is unreachable")
	}
	return []netlink.Route{r}, nil
}

func (f fakeTable) LinkName(index int) (string, error) {
	if n, ok := f.links[index]; ok {
		return n, nil
	}
	return "", errors.New("link not found")
}

func (f fakeTable) Addrs() ([]netlink.Addr, error) { return f.addrs, nil }

func addrOn(ip string, link int) netlink.Addr {
	return netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(ip), Mask: net.CIDRMask(24, 32)}, LinkIndex: link}
}

// The dom0 that runs the target (seed 004's array inside the pool) routes
// its own portal address through lo as a local route. Bound to lo, the
// connect timed out in a two-host lab; bound to the holder, a path to a
// floating address on a dummy interface is stranded on that interface
// once the address moves to the other host. Such a path stays unbound.
func TestInterfaceForLocalPortalIsUnbound(t *testing.T) {
	table := fakeTable{
		routes: map[string]netlink.Route{
			"10.99.0.1":  {Type: unix.RTN_LOCAL, LinkIndex: 1},
			"10.99.0.2":  {Type: unix.RTN_LOCAL, LinkIndex: 1},
			"127.0.0.1":  {Type: unix.RTN_LOCAL, LinkIndex: 1},
			"10.99.0.20": {Type: unix.RTN_UNICAST, LinkIndex: 2},
		},
		links: map[int]string{1: "lo", 2: "eth0", 3: "dummy0"},
		addrs: []netlink.Addr{addrOn("127.0.0.1", 1), addrOn("10.99.0.1", 2), addrOn("10.99.0.2", 3)},
	}
	r := NetlinkRouter{table: table}
	for addr, want := range map[string]string{
		"10.99.0.1":  "",     // local, on the NIC
		"10.99.0.2":  "",     // local, on a dummy interface (floating address)
		"127.0.0.1":  "lo",   // loopback stays lo
		"10.99.0.20": "eth0", // a remote portal: the route's interface
	} {
		got, err := r.InterfaceFor(netip.MustParseAddr(addr))
		if err != nil || got != want {
			t.Errorf("InterfaceFor(%s) = %q, %v; want %q", addr, got, err, want)
		}
	}
}

func TestInterfaceForLocalRouteWithoutHolderFails(t *testing.T) {
	r := NetlinkRouter{table: fakeTable{
		routes: map[string]netlink.Route{"10.99.0.9": {Type: unix.RTN_LOCAL, LinkIndex: 1}},
		links:  map[int]string{1: "lo"},
	}}
	if got, err := r.InterfaceFor(netip.MustParseAddr("10.99.0.9")); err == nil {
		t.Fatalf("InterfaceFor = %q, want an error: a local route no interface holds", got)
	}
	if _, err := r.InterfaceFor(netip.MustParseAddr("10.99.0.7")); err == nil {
		t.Fatal("InterfaceFor of an unroutable address succeeded")
	}
}

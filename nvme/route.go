package nvme

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Router names the interface the kernel would use to reach an address.
// Binding each path to that interface (--host-iface) keeps the two paths
// of a multipathed subsystem on their own NICs even when routes change
// later, which is what the seed guide does by hand.
type Router interface {
	InterfaceFor(addr netip.Addr) (string, error)
}

// NetlinkRouter asks the kernel's routing table (RTM_GETROUTE).
type NetlinkRouter struct{}

// InterfaceFor returns the output interface of the route to addr.
func (NetlinkRouter) InterfaceFor(addr netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", addr, err)
	}
	for _, r := range routes {
		if r.LinkIndex <= 0 {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("route to %s: interface %d: %w", addr, r.LinkIndex, err)
		}
		return l.Attrs().Name, nil
	}
	return "", fmt.Errorf("no route to %s", addr)
}

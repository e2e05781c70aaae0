package nvme

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Router names the interface the kernel would use to reach an address.
// Binding each path to that interface (--host-iface) keeps the two paths
// of a multipathed subsystem on their own NICs even when routes change
// later, which is what the seed guide does by hand.
type Router interface {
	InterfaceFor(addr netip.Addr) (string, error)
}

// routeTable is the little of netlink InterfaceFor reads: the route to an
// address, a link by index, and every address of the host.
type routeTable interface {
	RouteGet(dst net.IP) ([]netlink.Route, error)
	LinkName(index int) (string, error)
	Addrs() ([]netlink.Addr, error)
}

// kernelTable is routeTable on the kernel's own tables.
type kernelTable struct{}

func (kernelTable) RouteGet(dst net.IP) ([]netlink.Route, error) { return netlink.RouteGet(dst) }

func (kernelTable) LinkName(index int) (string, error) {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

func (kernelTable) Addrs() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) }

// NetlinkRouter asks the kernel's routing table (RTM_GETROUTE). The zero
// value reads the kernel's tables.
type NetlinkRouter struct {
	table routeTable // nil: kernelTable
}

// InterfaceFor returns the output interface of the route to addr, or ""
// when the path must not be bound to one. A portal that is one of this
// host's own addresses (the target in a pool host's dom0 on a floating
// address, issue 15) has a local route whose output interface is lo: a
// connect bound to lo towards an address another interface holds never
// completes, and a connect bound to the holder (a dummy interface, a VLAN
// only this host has) is stranded there once the address moves to another
// host. Such a path is left unbound, so that every reconnect of the kernel
// follows the address wherever the routing table then sends it; loopback
// addresses (127.0.0.0/8, the single-host lab) stay on lo.
func (r NetlinkRouter) InterfaceFor(addr netip.Addr) (string, error) {
	t := r.table
	if t == nil {
		t = kernelTable{}
	}
	ip := net.IP(addr.AsSlice())
	routes, err := t.RouteGet(ip)
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", addr, err)
	}
	for _, rt := range routes {
		if rt.Type == unix.RTN_LOCAL {
			holder, err := holderOf(t, addr)
			if err != nil || holder != "lo" {
				return "", err
			}
			return holder, nil
		}
		if rt.LinkIndex <= 0 {
			continue
		}
		name, err := t.LinkName(rt.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("route to %s: interface %d: %w", addr, rt.LinkIndex, err)
		}
		return name, nil
	}
	return "", fmt.Errorf("no route to %s", addr)
}

// holderOf names the interface that has addr assigned.
func holderOf(t routeTable, addr netip.Addr) (string, error) {
	addrs, err := t.Addrs()
	if err != nil {
		return "", fmt.Errorf("local address %s: %w", addr, err)
	}
	for _, a := range addrs {
		if a.IPNet == nil || a.LinkIndex <= 0 {
			continue
		}
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == addr.Unmap() {
			name, err := t.LinkName(a.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("local address %s: interface %d: %w", addr, a.LinkIndex, err)
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("route to %s is local but no interface holds the address", addr)
}

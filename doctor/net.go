package doctor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Link is one network interface as the checks need it.
type Link struct {
	Index int
	Name  string
	// Kind is the kernel's link type: "device" (a NIC), "bond", "bridge",
	// "vlan", "openvswitch", "veth", "dummy"…
	Kind string
	MTU  int
	Up   bool
	// MasterIndex is the bond or bridge the link is enslaved to (0: none).
	MasterIndex int
	// ParentIndex is the lower device of a VLAN (0: none).
	ParentIndex int
}

// Addr is an address configured on a link, with its prefix length.
type Addr struct {
	LinkIndex int
	Prefix    netip.Prefix
}

// Route is the kernel's answer to "how do I reach this address".
type Route struct {
	LinkIndex int
	Src       netip.Addr // preferred source; invalid when the kernel gave none
	Gw        netip.Addr // next hop; invalid when the destination is on-link
	// Matched is the routing table entry that was used: a /0 means the
	// default route.
	Matched netip.Prefix
}

// Net reads the host's network configuration. The production value asks
// the kernel over netlink; tests use a fake.
type Net interface {
	Links() ([]Link, error)
	Addrs() ([]Addr, error)
	// RouteTo resolves dst as the kernel would for a socket bound to the
	// interface oif ("" for an unbound socket).
	RouteTo(dst netip.Addr, oif string) (Route, error)
	// DefaultRoutes lists the default routes of the main table.
	DefaultRoutes() ([]Route, error)
}

// Netlink is the production Net.
type Netlink struct{}

// dumpTries bounds retryDump: a dump is interrupted only while the table
// changes under it, which settles within a few tries.
const dumpTries = 5

// retryDump repeats a netlink dump that the kernel flagged as interrupted
// (NLM_F_DUMP_INTR: an address or route changed mid-dump, as when a NIC
// comes up while doctor runs). Its partial result would report a
// configured path as unrouted; a fresh dump is consistent.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpTries {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// Links lists every interface.
func (Netlink) Links() ([]Link, error) {
	ls, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces (netlink): %w", err)
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		k := Link{Index: a.Index, Name: a.Name, Kind: l.Type(), MTU: a.MTU, MasterIndex: a.MasterIndex,
			Up: a.Flags&net.FlagUp != 0 && a.OperState != netlink.OperDown}
		// IFLA_LINK of a veth names its peer, not a lower device; only a
		// VLAN's parent carries its traffic.
		if k.Kind == "vlan" {
			k.ParentIndex = a.ParentIndex
		}
		out = append(out, k)
	}
	return out, nil
}

// Addrs lists every IPv4 and IPv6 address.
func (Netlink) Addrs() ([]Addr, error) {
	as, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses (netlink): %w", err)
	}
	var out []Addr
	for _, a := range as {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, Addr{LinkIndex: a.LinkIndex, Prefix: netip.PrefixFrom(ip.Unmap(), ones)})
	}
	return out, nil
}

// RouteTo asks the kernel twice: once for the route a packet would take
// (next hop, source, interface), once with RTM_F_FIB_MATCH for the table
// entry that matched, which tells a default route from a specific one
// even under policy routing.
func (Netlink) RouteTo(dst netip.Addr, oif string) (Route, error) {
	ip := net.IP(dst.AsSlice())
	opts := &netlink.RouteGetOptions{Oif: oif}
	rs, err := netlink.RouteGetWithOptions(ip, opts)
	if err != nil {
		return Route{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(rs) == 0 {
		return Route{}, fmt.Errorf("route to %s: no route", dst)
	}
	r := Route{LinkIndex: rs[0].LinkIndex, Src: ipAddr(rs[0].Src), Gw: ipAddr(rs[0].Gw)}
	opts.FIBMatch = true
	if ms, err := netlink.RouteGetWithOptions(ip, opts); err == nil && len(ms) > 0 {
		if d := ms[0].Dst; d != nil {
			ones, _ := d.Mask.Size()
			r.Matched = netip.PrefixFrom(ipAddr(d.IP), ones)
		} else {
			// A nil destination is the default route of the family.
			r.Matched = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if dst.Is6() {
				r.Matched = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		}
	}
	return r, nil
}

// DefaultRoutes lists the IPv4 and IPv6 default routes of the main table.
func (Netlink) DefaultRoutes() ([]Route, error) {
	rs, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list routes (netlink): %w", err)
	}
	var out []Route
	for _, r := range rs {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		out = append(out, Route{LinkIndex: r.LinkIndex, Src: ipAddr(r.Src), Gw: ipAddr(r.Gw), Matched: netip.PrefixFrom(netip.IPv4Unspecified(), 0)})
	}
	return out, nil
}

func ipAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

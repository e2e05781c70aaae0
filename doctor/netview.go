package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// path is one way from this host to a portal: the interface the traffic
// leaves through and the physical NICs under it.
type path struct {
	Portal portal
	// Bound is the interface the admin bound the path to; "" when the
	// kernel's routing chooses.
	Bound string
	Iface string
	Route Route
	// Unbound is the route an unbound socket would take, for bound
	// paths: replies come back the way this route goes.
	Unbound Route
	Err     error
	lowers  lowers
}

func (p path) String() string {
	if p.Err != nil {
		return fmt.Sprintf("%s: %v", p.Portal, p.Err)
	}
	s := p.Portal.String() + " via " + p.Iface
	if p.Bound != "" {
		s += " (bound)"
	}
	if p.Route.Gw.IsValid() {
		s += " gateway " + p.Route.Gw.String()
	}
	return s
}

// lowers is what carries an interface's traffic: the physical NICs and
// any bonds on the way.
type lowers struct {
	NICs  []string
	Bonds []string
	// Note says what could not be resolved.
	Note string
}

// netView is the host's network configuration, read once per run.
type netView struct {
	d      Deps
	err    error
	links  []Link
	byIdx  map[int]*Link
	byName map[string]*Link
	addrs  []Addr
	cache  map[string]lowers
}

func newNetView(d Deps) *netView {
	v := &netView{d: d, byIdx: map[int]*Link{}, byName: map[string]*Link{}, cache: map[string]lowers{}}
	if d.Net == nil {
		v.err = fmt.Errorf("no netlink access")
		return v
	}
	if v.links, v.err = d.Net.Links(); v.err != nil {
		return v
	}
	for i := range v.links {
		v.byIdx[v.links[i].Index] = &v.links[i]
		v.byName[v.links[i].Name] = &v.links[i]
	}
	v.addrs, v.err = d.Net.Addrs()
	return v
}

func (v *netView) name(idx int) string {
	if l := v.byIdx[idx]; l != nil {
		return l.Name
	}
	return fmt.Sprintf("if%d", idx)
}

// prefixes lists the addresses of an interface.
func (v *netView) prefixes(iface string) []netip.Prefix {
	l := v.byName[iface]
	if l == nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range v.addrs {
		if a.LinkIndex == l.Index {
			out = append(out, a.Prefix)
		}
	}
	return out
}

// describe is an interface with its addresses and l, what lowersOf found
// under it, for evidence lines.
func (v *netView) describe(iface string, l lowers) string {
	var ps []string
	for _, p := range v.prefixes(iface) {
		if !p.Addr().IsLinkLocalUnicast() {
			ps = append(ps, p.String())
		}
	}
	s := iface
	if len(ps) > 0 {
		s += " " + strings.Join(ps, ",")
	}
	if len(l.NICs) > 0 && !(len(l.NICs) == 1 && l.NICs[0] == iface) {
		s += " on NIC " + strings.Join(l.NICs, "+")
	}
	if len(l.Bonds) > 0 {
		s += " over bond " + strings.Join(l.Bonds, ",")
	}
	return s
}

// paths lists every path of a subject: one per portal, or one per portal
// and bound interface.
func (v *netView) paths(ctx context.Context, s *subject) []path {
	var out []path
	for i, p := range s.Portals {
		binds := s.Bind[i]
		if len(binds) == 0 {
			binds = []string{""}
		}
		for _, b := range binds {
			out = append(out, v.path(ctx, p, b))
		}
	}
	return out
}

func (v *netView) path(ctx context.Context, p portal, bound string) path {
	pa := path{Portal: p, Bound: bound}
	if v.err != nil {
		pa.Err = v.err
		return pa
	}
	if bound != "" && v.byName[bound] == nil {
		pa.Err = fmt.Errorf("bound to %s, which does not exist on this host", bound)
		return pa
	}
	r, err := v.d.Net.RouteTo(p.Addr, bound)
	if err != nil {
		pa.Err = err
		return pa
	}
	pa.Route, pa.Iface = r, v.name(r.LinkIndex)
	if bound != "" {
		if u, err := v.d.Net.RouteTo(p.Addr, ""); err == nil {
			pa.Unbound = u
		}
	}
	pa.lowers = v.lowersOf(ctx, pa.Iface)
	return pa
}

// lowersOf finds the NICs under an interface: through VLANs to their
// parent, through kernel bridges and bonds to their ports, and through
// Open vSwitch bridges (XCP-ng's default network backend, where the
// storage address sits on xenbrN) with ovs-vsctl, since the kernel does
// not know which ports belong to which OVS bridge.
func (v *netView) lowersOf(ctx context.Context, iface string) lowers {
	if l, ok := v.cache[iface]; ok {
		return l
	}
	l := v.resolve(ctx, iface, 0)
	l.NICs, l.Bonds = dedupSorted(l.NICs), dedupSorted(l.Bonds)
	v.cache[iface] = l
	return l
}

func (v *netView) resolve(ctx context.Context, iface string, depth int) lowers {
	link := v.byName[iface]
	if link == nil || depth > 8 {
		return lowers{NICs: []string{iface}}
	}
	switch link.Kind {
	case "vlan":
		if p := v.byIdx[link.ParentIndex]; p != nil {
			return v.resolve(ctx, p.Name, depth+1)
		}
	case "bond", "bridge":
		var out lowers
		if link.Kind == "bond" {
			out.Bonds = []string{iface}
		}
		for _, port := range v.links {
			if port.MasterIndex != link.Index || guestPort(port.Name) {
				continue
			}
			sub := v.resolve(ctx, port.Name, depth+1)
			out.NICs = append(out.NICs, sub.NICs...)
			out.Bonds = append(out.Bonds, sub.Bonds...)
		}
		if len(out.NICs) == 0 {
			out.NICs = []string{iface}
		}
		return out
	case "openvswitch":
		return v.ovs(ctx, iface, depth)
	}
	return lowers{NICs: []string{iface}}
}

func (v *netView) ovs(ctx context.Context, br string, depth int) lowers {
	vsctl := func(args ...string) ([]string, error) {
		res, err := v.d.Runner.Run(ctx, host.Cmd{Name: "ovs-vsctl", Args: append([]string{"--timeout=5"}, args...), Timeout: 10 * time.Second})
		if err != nil {
			return nil, err
		}
		return strings.Fields(string(res.Stdout)), nil
	}
	fallback := func(err error) lowers {
		return lowers{NICs: []string{br}, Note: fmt.Sprintf("cannot list the ports of Open vSwitch bridge %s: %v", br, err)}
	}
	parent := br
	// A VLAN network of XCP-ng is a "fake bridge" (xapiN) on the
	// bridge of the physical PIF.
	if p, err := vsctl("br-to-parent", br); err == nil && len(p) == 1 {
		parent = p[0]
	}
	ports, err := vsctl("list-ports", parent)
	if err != nil {
		return fallback(err)
	}
	ifaces, err := vsctl("list-ifaces", parent)
	if err != nil {
		return fallback(err)
	}
	isIface := map[string]bool{}
	var out lowers
	for _, i := range ifaces {
		isIface[i] = true
		if l := v.byName[i]; i == parent || guestPort(i) || (l != nil && l.Kind == "openvswitch") {
			continue
		}
		sub := v.resolve(ctx, i, depth+1)
		out.NICs = append(out.NICs, sub.NICs...)
		out.Bonds = append(out.Bonds, sub.Bonds...)
	}
	// An OVS bond is a port with several interfaces: it is listed by
	// list-ports under its own name, its members by list-ifaces.
	for _, p := range ports {
		if !isIface[p] {
			out.Bonds = append(out.Bonds, p)
		}
	}
	if len(out.NICs) == 0 {
		out.NICs = []string{br}
	}
	return out
}

// guestPort reports whether a bridge port belongs to a VM (Xen netback
// vifs, qemu taps), not to the host's uplinks.
func guestPort(name string) bool {
	return strings.HasPrefix(name, "vif") || strings.HasPrefix(name, "tap")
}

func dedupSorted(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

// managementInterface names the interface xapi manages the host through
// (/etc/xensource-inventory), or, on a host without one, the interfaces
// of the default routes.
func (v *netView) managementInterface() (names []string, evidence string) {
	inv := readInventory(v.d.Root)
	if m := inv["MANAGEMENT_INTERFACE"]; m != "" {
		return []string{m}, fmt.Sprintf("management interface %s (MANAGEMENT_INTERFACE in %s)", m, inventoryPath)
	}
	if v.d.Net == nil {
		return nil, "no " + inventoryPath + " and no netlink access"
	}
	rs, err := v.d.Net.DefaultRoutes()
	if err != nil {
		return nil, "no " + inventoryPath + "; default routes unreadable: " + err.Error()
	}
	for _, r := range rs {
		names = append(names, v.name(r.LinkIndex))
	}
	names = dedupSorted(names)
	if len(names) == 0 {
		return nil, "no " + inventoryPath + " and no default route: no management interface to avoid"
	}
	return names, fmt.Sprintf("no %s: taking the default route's interface %s as the management interface", inventoryPath, strings.Join(names, ","))
}

const inventoryPath = host.InventoryPath

// readInventory parses xapi's KEY='value' inventory; empty off XCP-ng.
func readInventory(root host.Root) map[string]string { return host.ReadInventory(root) }

// onXCPng reports whether the host is an XCP-ng (or XenServer) dom0, so
// that fixes are given as xe commands rather than ip/sysctl ones.
func onXCPng(root host.Root) bool { return root.Exists(inventoryPath) }

// thisHost is this host's XenAPI uuid for xe commands.
func (r *run) thisHost() string {
	if u := readInventory(r.d.Root)["INSTALLATION_UUID"]; u != "" {
		return u
	}
	return "<this host's uuid>"
}

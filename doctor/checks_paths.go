package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

func pathLines(v *netView, paths []path) []string {
	var out []string
	for _, p := range paths {
		if p.Err != nil {
			out = append(out, p.String())
			continue
		}
		out = append(out, p.String()+": "+v.describe(p.Iface, p.lowers))
	}
	return out
}

func routable(paths []path) []path {
	var out []path
	for _, p := range paths {
		if p.Err == nil {
			out = append(out, p)
		}
	}
	return out
}

// bindHint is how the subject's type binds a path to an interface.
func bindHint(s *subject) string {
	if s.Type == TypeNVMeTCP {
		return "device-config:host-iface=<nic for portal 1>,<nic for portal 2>"
	}
	return "device-config:iface=<nic>=<portal 1>,<nic>=<portal 2>"
}

// recreatePBD is how an attached SR's device-config changes: xapi keeps
// it in the PBD, which cannot be edited in place.
func recreatePBD(s *subject, change string) string {
	sr := s.SR
	if sr == "" {
		return "create the SR with " + change
	}
	return fmt.Sprintf("re-create the SR's PBD on each host with %s:\n"+
		"xe pbd-list sr-uuid=%s params=uuid,host-uuid,device-config\n"+
		"xe pbd-unplug uuid=<pbd>; xe pbd-destroy uuid=<pbd>\n"+
		"xe pbd-create sr-uuid=%s host-uuid=<host> device-config:…(as before, with the change); xe pbd-plug uuid=<new pbd>", change, sr, sr)
}

func (r *run) checkPathCount(s *subject, paths []path) {
	ok := routable(paths)
	ev := pathLines(r.net, paths)
	switch {
	case len(ok) >= 2:
		r.add(result(chkPathCount, s.scope(), Pass, fmt.Sprintf("%d paths", len(ok)), ev, ""))
	case len(paths) >= 2:
		r.add(result(chkPathCount, s.scope(), Fail,
			fmt.Sprintf("%d paths configured but only %d has a route", len(paths), len(ok)), ev,
			"give this host an address on each portal's subnet (XCP-ng: xe pif-reconfigure-ip uuid=<PIF of the storage NIC> mode=static IP=<address> netmask=<mask>), then check: ip route get <portal>"))
	default:
		r.add(result(chkPathCount, s.scope(), Fail,
			fmt.Sprintf("only %d path: any failure of a NIC, cable, switch or array port stops the SR", len(ok)), ev,
			recreatePBD(s, "every portal of the array: device-config:target=<portal 1>,<portal 2>")))
	}
}

func (r *run) checkLivePaths(ctx context.Context, s *subject) {
	hr := r.d.Health[s.Type]
	if s.SR == "" || hr == nil {
		return
	}
	h, err := hr.Health(ctx, s.Config)
	if err != nil {
		r.add(result(chkPathLive, s.scope(), Warn, "cannot read the paths' state", []string{err.Error()}, "sanvol status"))
		return
	}
	ev := []string{fmt.Sprintf("%d of %d paths live", h.Live, h.Total)}
	if h.Detail != "" {
		ev = append(ev, h.Detail)
	}
	if h.Degraded() {
		r.add(result(chkPathLive, s.scope(), Fail, fmt.Sprintf("%d of %d paths live", h.Live, h.Total), ev,
			"repair the link named above (interface, cable, switch port, array portal); the initiator reconnects by itself.\n"+
				"to force it once the network is back, with no VM of this SR running on this host: xe pbd-unplug uuid=<PBD> && xe pbd-plug uuid=<PBD>"))
		return
	}
	r.add(result(chkPathLive, s.scope(), Pass, fmt.Sprintf("%d of %d paths live", h.Live, h.Total), ev, ""))
}

func disjoint(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// checkRedundancy wants two paths that share no NIC: two addresses on one
// NIC (aliases, VLANs, two subnets) still fail together.
func (r *run) checkRedundancy(s *subject, paths []path) {
	ok := routable(paths)
	ev := pathLines(r.net, paths)
	for i := range ok {
		for j := i + 1; j < len(ok); j++ {
			if disjoint(ok[i].lowers.NICs, ok[j].lowers.NICs) {
				r.add(result(chkRedundancy, s.scope(), Pass,
					fmt.Sprintf("paths leave through separate NICs (%s, %s)", strings.Join(ok[i].lowers.NICs, "+"), strings.Join(ok[j].lowers.NICs, "+")), ev, ""))
				return
			}
		}
	}
	var nics []string
	for _, p := range ok {
		nics = append(nics, p.lowers.NICs...)
		if p.lowers.Note != "" {
			ev = append(ev, p.lowers.Note)
		}
	}
	nics = dedupSorted(nics)
	fix := "give each path its own NIC, each on its own subnet with one portal of every array controller:\n"
	if onXCPng(r.d.Root) {
		fix += "xe pif-reconfigure-ip uuid=<PIF of a second storage NIC> mode=static IP=<address in the second portal's subnet> netmask=<mask>\n"
	} else {
		fix += "ip address add <address in the second portal's subnet>/<len> dev <second NIC>\n"
	}
	fix += "and if both portals share a subnet, bind one path to each NIC: " + recreatePBD(s, bindHint(s))
	r.add(result(chkRedundancy, s.scope(), Warn,
		fmt.Sprintf("single point of failure: every path leaves through NIC %s", strings.Join(nics, "+")), ev, fix))
}

func (r *run) checkManagement(ctx context.Context, s *subject, paths []path) {
	mgmt, how := r.net.managementInterface()
	ev := append([]string{how}, pathLines(r.net, paths)...)
	var mgmtNICs []string
	for _, m := range mgmt {
		mgmtNICs = append(mgmtNICs, r.net.lowersOf(ctx, m).NICs...)
	}
	worst, summary := Pass, "no path uses the management interface"
	if len(mgmt) > 0 {
		summary += " (" + strings.Join(mgmt, ",") + ")"
	}
	for _, p := range routable(paths) {
		switch {
		case slices.Contains(mgmt, p.Iface):
			worst, summary = Fail, fmt.Sprintf("path to %s goes through the management interface %s", p.Portal, p.Iface)
		case !disjoint(p.lowers.NICs, mgmtNICs) && worst < Warn:
			worst, summary = Warn, fmt.Sprintf("path to %s (%s) shares NIC %s with the management interface %s",
				p.Portal, p.Iface, strings.Join(p.lowers.NICs, "+"), strings.Join(mgmt, ","))
		}
	}
	fix := ""
	if worst > Pass {
		fix = "move storage traffic to dedicated storage NICs: put the array's portals on storage subnets that the management network does not carry, give each storage NIC an address there"
		if onXCPng(r.d.Root) {
			fix += " (xe pif-reconfigure-ip uuid=<PIF of the storage NIC> mode=static IP=<address> netmask=<mask>)"
		}
		fix += ", and bind the paths to them: " + recreatePBD(s, bindHint(s))
	}
	r.add(result(chkManagement, s.scope(), worst, summary, ev, fix))
}

func (r *run) checkDefaultRoute(s *subject, paths []path) {
	ev := pathLines(r.net, paths)
	var bad []string
	for _, p := range routable(paths) {
		if p.Route.Matched.IsValid() && p.Route.Matched.Bits() == 0 {
			gw := "on-link"
			if p.Route.Gw.IsValid() {
				gw = "gateway " + p.Route.Gw.String()
			}
			bad = append(bad, fmt.Sprintf("%s (default route, %s, %s)", p.Portal, gw, p.Iface))
		}
	}
	if len(bad) == 0 {
		r.add(result(chkDefaultRoute, s.scope(), Pass, "every portal is reached through a specific route", ev, ""))
		return
	}
	fix := "give this host an address on each portal's subnet, on a storage NIC, so the portal is on-link"
	if onXCPng(r.d.Root) {
		fix += ": xe pif-reconfigure-ip uuid=<PIF of the storage NIC> mode=static IP=<address> netmask=<mask>\n" +
			"or, for a routed storage network, a static route on the storage PIF: xe pif-param-set uuid=<PIF of the storage NIC> other-config:static-routes=<portal subnet>/<storage gateway>"
	} else {
		fix += ": ip address add <address>/<len> dev <storage NIC>\n" +
			"or, for a routed storage network: ip route add <portal subnet> via <storage gateway> dev <storage NIC>"
	}
	r.add(result(chkDefaultRoute, s.scope(), Fail,
		"storage traffic goes through the default route: "+strings.Join(bad, "; "), ev, fix))
}

func (r *run) checkBond(s *subject, paths []path) {
	ok := routable(paths)
	var bonded []string
	for _, p := range ok {
		if len(p.lowers.Bonds) > 0 {
			bonded = append(bonded, fmt.Sprintf("%s via %s over bond %s (%s)", p.Portal, p.Iface, strings.Join(p.lowers.Bonds, ","), strings.Join(p.lowers.NICs, "+")))
		}
	}
	ev := pathLines(r.net, paths)
	switch {
	case len(bonded) == 0:
		r.add(result(chkBond, s.scope(), Pass, "no path runs over a NIC bond", ev, ""))
	case len(ok) < 2:
		r.add(result(chkBond, s.scope(), Pass, "the only path runs over a bond, which is then the redundancy (see paths.count)", append(ev, bonded...), ""))
	default:
		fix := "do not layer multipathing on a bond: remove the bond and give each path one of its NICs, each with an address on its own storage subnet"
		if onXCPng(r.d.Root) {
			fix += ":\nxe bond-list params=uuid,master,slaves\nxe bond-destroy uuid=<bond uuid>\nxe pif-reconfigure-ip uuid=<PIF of each former member> mode=static IP=<address> netmask=<mask>"
		} else {
			fix += ": ip link set <nic> nomaster; ip link delete <bond>; ip address add <address>/<len> dev <nic>"
		}
		r.add(result(chkBond, s.scope(), Fail, "multipath over a NIC bond: "+strings.Join(bonded, "; "), ev, fix))
	}
}

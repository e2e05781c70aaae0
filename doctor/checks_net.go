package doctor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// sysctl reads net.ipv4.conf.<iface>.<key> through /proc.
func (r *run) sysctl(iface, key string) (int, error) {
	v, err := r.d.Root.ReadString("/proc/sys/net/ipv4/conf/" + iface + "/" + key)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

// effective is the value the kernel applies for arp_ignore, arp_announce
// and rp_filter on an interface: the larger of "all" and the interface's
// own (IN_DEV_MAXCONF / IN_DEV_RPFILTER).
func (r *run) effective(iface, key string) (int, string) {
	all, errA := r.sysctl("all", key)
	own, errO := r.sysctl(iface, key)
	if errA != nil || errO != nil {
		return -1, fmt.Sprintf("net.ipv4.conf.%s.%s unreadable", iface, key)
	}
	return max(all, own), fmt.Sprintf("net.ipv4.conf.all.%s=%d net.ipv4.conf.%s.%s=%d (effective %d)", key, all, iface, key, own, max(all, own))
}

// sharedSubnets groups the storage interfaces that have IPv4 addresses
// in a common subnet: with several NICs on one subnet, Linux answers
// ARP for any of its addresses on any NIC unless told otherwise.
func (r *run) sharedSubnets(paths []path) map[string][]string {
	ifaces := map[string]bool{}
	for _, p := range routable(paths) {
		ifaces[p.Iface] = true
	}
	names := sortedKeys(ifaces)
	groups := map[string][]string{}
	for i, a := range names {
		for _, b := range names[i+1:] {
			for _, pa := range r.net.prefixes(a) {
				for _, pb := range r.net.prefixes(b) {
					if pa.Addr().Is4() && pb.Addr().Is4() && pa.Masked().Overlaps(pb.Masked()) {
						subnet := pa.Masked().String()
						if pb.Bits() < pa.Bits() {
							subnet = pb.Masked().String()
						}
						groups[subnet] = dedupSorted(append(groups[subnet], a, b))
					}
				}
			}
		}
	}
	return groups
}

const arpFix = `cat > /etc/sysctl.d/90-sanvol-arp.conf <<'EOF'
net.ipv4.conf.all.arp_ignore = 2
net.ipv4.conf.default.arp_ignore = 2
net.ipv4.conf.all.arp_announce = 2
net.ipv4.conf.default.arp_announce = 2
EOF
sysctl -p /etc/sysctl.d/90-sanvol-arp.conf`

func (r *run) checkARP(s *subject, paths []path) {
	groups := r.sharedSubnets(paths)
	if len(groups) == 0 {
		r.add(result(chkARP, s.scope(), Skip, "not needed: no two storage interfaces share an IPv4 subnet", nil, ""))
		return
	}
	var ev, bad []string
	for _, subnet := range sortedKeys(groups) {
		ev = append(ev, fmt.Sprintf("%s share %s", strings.Join(groups[subnet], " and "), subnet))
		for _, iface := range groups[subnet] {
			for _, key := range []string{"arp_ignore", "arp_announce"} {
				v, line := r.effective(iface, key)
				ev = append(ev, line)
				if v != 2 {
					bad = append(bad, fmt.Sprintf("%s %s=%d", iface, key, v))
				}
			}
		}
	}
	if len(bad) > 0 {
		r.add(result(chkARP, s.scope(), Fail,
			"storage interfaces share a subnet but ARP may answer on the wrong NIC: "+strings.Join(dedupSorted(bad), ", "), ev, arpFix))
		return
	}
	r.add(result(chkARP, s.scope(), Pass, "arp_ignore=2 and arp_announce=2 on the interfaces that share a subnet", ev, ""))
}

// checkRPFilter looks at bound paths: the kernel sends them out of the
// bound interface, but checks a reply's source against the routing table;
// if the route back leaves by another interface, strict mode (1) drops
// the reply and the path never comes up.
func (r *run) checkRPFilter(s *subject, paths []path) {
	var ev []string
	worst, summary := Skip, "no path is bound to an interface"
	var fixIfaces []string
	for _, p := range routable(paths) {
		if p.Bound == "" || !p.Portal.Addr.Is4() {
			continue
		}
		if worst == Skip {
			worst, summary = Pass, "replies to the bound paths are not filtered"
		}
		v, line := r.effective(p.Bound, "rp_filter")
		back := r.net.name(p.Unbound.LinkIndex)
		ev = append(ev, fmt.Sprintf("%s bound to %s, route back via %s; %s", p.Portal, p.Bound, back, line))
		if v == 1 && back != p.Bound {
			fixIfaces = append(fixIfaces, p.Bound)
			worst, summary = Fail, fmt.Sprintf("strict rp_filter on %s drops replies from %s, whose route back leaves via %s", p.Bound, p.Portal.Addr, back)
		}
	}
	fix := ""
	if worst == Fail {
		fixIfaces = dedupSorted(fixIfaces)
		var set, persist []string
		for _, i := range fixIfaces {
			set = append(set, "net.ipv4.conf."+i+".rp_filter=2")
			persist = append(persist, "net.ipv4.conf."+i+".rp_filter = 2")
		}
		// 2 (loose), not the guide's 0: the kernel applies the larger of
		// "all" and the interface's value, so 0 on the interface does
		// nothing while all=1.
		fix = "sysctl -w " + strings.Join(set, " ") + "\n" +
			"printf '" + strings.Join(persist, `\n`) + `\n' > /etc/sysctl.d/90-sanvol-rp-filter.conf`
	}
	r.add(result(chkRPFilter, s.scope(), worst, summary, ev, fix))
}

// ping runs one ping and returns its last output line. An IPv6 portal is
// pinged with ping6: CentOS 7's iputils (20160308, XCP-ng 8.x dom0) has
// separate ping and ping6 programs and its ping has no -6, while newer
// iputils merged them (ping -6), where distributions may drop the ping6
// link; so ping -6 is the fallback when ping6 is not installed.
func (r *run) ping(ctx context.Context, p path, size int, df bool) (bool, string, error) {
	var args []string
	if df {
		args = append(args, "-M", "do")
	}
	args = append(args, "-s", strconv.Itoa(size), "-c", "1", "-W", "2", "-I", p.Iface, p.Portal.Addr.String())
	cmd := host.Cmd{Name: "ping", Args: args, Timeout: 10 * time.Second}
	if p.Portal.Addr.Is6() {
		cmd.Name = "ping6"
	}
	res, err := r.d.Runner.Run(ctx, cmd)
	if cmd.Name == "ping6" && errors.Is(err, host.ErrNotInstalled) {
		cmd.Name, cmd.Args = "ping", append([]string{"-6"}, args...)
		res, err = r.d.Runner.Run(ctx, cmd)
	}
	out := lastLine(string(res.Stdout) + "\n" + string(res.Stderr))
	if errors.Is(err, host.ErrNotInstalled) {
		return false, "", err
	}
	line := cmd.String()
	if out != "" {
		line += " → " + out
	}
	return err == nil, line, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return ""
}

// headers is what IP and ICMP add to a ping's payload.
func headers(a netip.Addr) int {
	if a.Is6() {
		return 48
	}
	return 28
}

// checkMTU sends, on every path, a don't-fragment ping that fills the
// interface's MTU. If it is lost while a 1500-byte (or a small) one gets
// through, a hop between the interface and the portal has a smaller MTU:
// large frames are dropped silently and I/O hangs.
func (r *run) checkMTU(ctx context.Context, s *subject, paths []path) {
	var ev, problems []string
	worst := Pass
	mtus := map[string]int{}
	var fixes []string
	for _, p := range routable(paths) {
		l := r.net.byName[p.Iface]
		if l == nil || l.MTU == 0 {
			continue
		}
		mtus[p.Iface] = l.MTU
		full := l.MTU - headers(p.Portal.Addr)
		ok, line, err := r.ping(ctx, p, full, true)
		if err != nil {
			r.add(result(chkMTU, s.scope(), Warn, "cannot measure the MTU: ping is not installed", []string{err.Error()}, "yum install -y iputils   (Debian: apt-get install iputils-ping)"))
			return
		}
		ev = append(ev, line)
		if ok {
			continue
		}
		// Find out whether the portal answers at all.
		probe := 1500 - headers(p.Portal.Addr)
		okStd, lineStd := false, ""
		if l.MTU > 1500 {
			okStd, lineStd, _ = r.ping(ctx, p, probe, true)
			ev = append(ev, lineStd)
		}
		okSmall := okStd
		if !okStd {
			var lineSmall string
			okSmall, lineSmall, _ = r.ping(ctx, p, 56, false)
			ev = append(ev, lineSmall)
		}
		if !okSmall {
			if worst < Warn {
				worst = Warn
			}
			problems = append(problems, fmt.Sprintf("%s does not answer ping at all via %s, so its MTU was not measured (ICMP filtered?)", p.Portal.Addr, p.Iface))
			continue
		}
		worst = Fail
		below := "below 1500"
		if okStd {
			below = "between 1500 and " + strconv.Itoa(l.MTU)
		}
		problems = append(problems, fmt.Sprintf("MTU mismatch to %s: %s has MTU %d but a %d-byte packet does not get through, the path MTU is %s; suspects: the interface %s, the switch ports on the way, the array's portal %s",
			p.Portal.Addr, p.Iface, l.MTU, l.MTU, below, p.Iface, p.Portal.Addr))
		fixes = append(fixes, r.mtuFix(p, l.MTU, okStd))
	}
	if len(dedupInts(mtus)) > 1 {
		var parts []string
		for _, i := range sortedKeys(mtus) {
			parts = append(parts, fmt.Sprintf("%s %d", i, mtus[i]))
		}
		if worst < Warn {
			worst = Warn
		}
		problems = append(problems, "the paths use different MTUs ("+strings.Join(parts, ", ")+"): I/O slows down or stalls when it fails over")
		fixes = append(fixes, "set one MTU on every storage interface, the switches and the array portals")
	}
	if worst == Pass {
		var parts []string
		for _, i := range sortedKeys(mtus) {
			parts = append(parts, fmt.Sprintf("%s %d", i, mtus[i]))
		}
		r.add(result(chkMTU, s.scope(), Pass, "full-size don't-fragment pings reach every portal (MTU "+strings.Join(parts, ", ")+")", ev, ""))
		return
	}
	if worst == Warn && len(fixes) == 0 {
		fixes = append(fixes, "allow ICMP echo to the array's storage portals, then run sanvol doctor again")
	}
	r.add(result(chkMTU, s.scope(), worst, strings.Join(problems, "; "), ev, strings.Join(dedupSorted(fixes), "\n")))
}

func (r *run) mtuFix(p path, mtu int, std bool) string {
	nic := p.Iface
	if len(p.lowers.NICs) == 1 {
		nic = p.lowers.NICs[0]
	}
	target := 1500
	raise := fmt.Sprintf("either set MTU %d on the switch ports between %s and %s and on the array's portal, ", mtu, nic, p.Portal.Addr)
	if !std {
		return raise + "or find the path MTU (tracepath -n " + p.Portal.Addr.String() + ") and set the same MTU on " + p.Iface
	}
	if onXCPng(r.d.Root) {
		return raise + fmt.Sprintf("or lower this host to %d: xe network-param-set uuid=$(xe pif-list device=%s host-uuid=%s params=network-uuid --minimal) MTU=%d, then re-plug the PIF (xe pif-unplug/pif-plug) or reboot", target, nic, r.thisHost(), target)
	}
	return raise + fmt.Sprintf("or lower this host to %d: ip link set dev %s mtu %d", target, p.Iface, target)
}

func dedupInts(m map[string]int) []int {
	out := slices.Collect(maps.Values(m))
	slices.Sort(out)
	return slices.Compact(out)
}

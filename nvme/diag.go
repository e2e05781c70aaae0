package nvme

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// Diagnostics describes the NVMe state of this host: versions, kernel
// features, and every subsystem with its paths, states and iopolicy, as
// read from sysfs. It never fails; what it cannot read it says.
func (t *Transport) Diagnostics(ctx context.Context) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	w("kernel: %s", t.kernelRelease())
	cli := "not installed or not runnable"
	if res, err := t.run.Run(ctx, host.Cmd{Name: nvmeCmd, Args: []string{"version"}, Timeout: 5 * time.Second}); err == nil {
		cli = parseVersion(res.Stdout)
	}
	w("nvme-cli: %s", cli)
	w("nvme_tcp module loaded: %t", t.root.Exists(sysModNVMeTCP))
	w("%s present: %t", devFabrics, t.root.Exists(devFabrics))
	mp, err := t.root.ReadString(sysMultipathParam)
	if err != nil {
		mp = "unavailable (CONFIG_NVME_MULTIPATH off or nvme_core not loaded)"
	}
	w("native multipath (nvme_core.multipath): %s", mp)
	switch ok, known := t.authSupport(); {
	case !known:
		w("DH-HMAC-CHAP in kernel: unknown (no /boot/config-%s); checked per path after connect", t.kernelRelease())
	default:
		w("DH-HMAC-CHAP in kernel: %t", ok)
	}
	if opts := t.fabricsOptions(); opts != nil {
		w("fabrics options: host_iface=%t dhchap_secret=%t fast_io_fail_tmo=%t", opts["host_iface"], opts["dhchap_secret"], opts["fast_io_fail_tmo"])
	}
	hostnqn, err := t.root.ReadString(HostNQNFile)
	if err != nil {
		hostnqn = "(none yet: generated at the first attach)"
	}
	hostid, _ := t.root.ReadString(HostIDFile)
	w("host identity: hostnqn=%s hostid=%s", hostnqn, hostid)

	subs, err := t.sys.subsystems()
	if err != nil {
		w("subsystems: cannot read %s: %v", sysClassSubsys, err)
		return b.String()
	}
	ctrls, _ := t.sys.controllers()
	byName := map[string]Controller{}
	for _, c := range ctrls {
		byName[c.Name] = c
	}
	if len(subs) == 0 {
		w("subsystems: none")
	}
	for _, sub := range subs {
		w("subsystem %s nqn=%s iopolicy=%s model=%s", sub.Name, sub.NQN, orDash(sub.IOPolicy), orDash(t.sys.attr(sysClassSubsys+"/"+sub.Name+"/model")))
		names := append([]string(nil), sub.Controllers...)
		sort.Slice(names, func(i, j int) bool { return ctrlIndex(names[i]) < ctrlIndex(names[j]) })
		for _, n := range names {
			c := byName[n]
			ana := t.sys.pathANAStates(n)
			var anaS []string
			for k, v := range ana {
				anaS = append(anaS, k+"="+v)
			}
			sort.Strings(anaS)
			w("  path %s %s %s state=%s host_iface=%s hostnqn=%s dhchap=%t ctrl_loss_tmo=%s reconnect_delay=%s ana=[%s]",
				n, c.Transport, c.Portal(), c.State, orDash(c.HostIface), c.HostNQN, c.HasDHCHAP,
				orDash(t.sys.attr(sysClassNVMe+"/"+n+"/ctrl_loss_tmo")), orDash(t.sys.attr(sysClassNVMe+"/"+n+"/reconnect_delay")),
				strings.Join(anaS, " "))
		}
		for _, h := range sub.Heads {
			ns := t.sys.namespace(h)
			w("  namespace /dev/%s nsid=%d wwid=%s size=%d holders=[%s]", ns.Name, ns.NSID, ns.WWID, ns.Size, strings.Join(ns.Holders, " "))
		}
	}
	// nvme-cli's own view, which is what an admin following a vendor
	// guide looks at; a disagreement with sysfs above is itself a clue.
	if res, err := t.run.Run(ctx, host.Cmd{Name: nvmeCmd, Args: []string{"list-subsys", "--output-format=json"}, Timeout: 10 * time.Second}); err != nil {
		w("nvme list-subsys: %v", err)
	} else if listed, err := ParseListSubsys(res.Stdout); err != nil {
		w("nvme list-subsys: %v", err)
	} else {
		for _, s := range listed {
			var paths []string
			for _, p := range s.Paths {
				paths = append(paths, p.Name+" "+p.Address["traddr"]+":"+p.Address["trsvcid"]+" "+p.State)
			}
			w("nvme-cli sees %s %s: %s", s.Name, s.NQN, strings.Join(paths, ", "))
		}
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dedup(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

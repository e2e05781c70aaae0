package nvme

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// maxProbeSubsystems bounds how many subsystems a probe without nqn
// connects to to list namespaces; an array can offer hundreds.
const maxProbeSubsystems = 8

// discover reads the discovery log of one portal; op is the caller's
// ("SR.probe: nvmetcp", or SR.attach looking for a wrong NQN).
func (t *Transport) discover(ctx context.Context, op string, c Config, id Identity, p Portal, port int) ([]DiscoveryRecord, error) {
	op += ": discover " + netip.AddrPortFrom(p.Addr, uint16(port)).String()
	args := []string{"discover", "--transport=tcp", "--traddr=" + p.TrAddr(), "--trsvcid=" + strconv.Itoa(port),
		"--hostnqn=" + id.HostNQN, "--hostid=" + id.HostID, "--output-format=json"}
	if p.Iface != "" {
		args = append(args, "--host-iface="+p.Iface)
	}
	res, err := runNVMe(ctx, t.run, t.to.Discover, c, args...)
	if err != nil {
		dp := p
		dp.Port = port
		return nil, classifyConnect(op, dp, c, err)
	}
	recs, err := ParseDiscovery(res.Stdout)
	if err != nil {
		return nil, host.NewError(host.KindInternal, op, "cannot read the discovery log", "", err)
	}
	return recs, nil
}

type probeSubsys struct {
	nqn     string
	portals []Portal // from the discovery log, tcp only
}

// Probe lists the subsystems the portals offer and, for each, the
// namespaces with their size and identity and any sanvol SR on them.
func (t *Transport) Probe(ctx context.Context, cfg map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	const op = "SR.probe: nvmetcp"
	c, err := parseConfig(ctx, cfg, parseOpts{secrets: t.secrets})
	if err != nil {
		return nil, err
	}
	if err := t.checkKernel(ctx, op); err != nil {
		return nil, err
	}
	id, err := t.identity(ctx, c, true)
	if err != nil {
		return nil, err
	}
	t.deriveIfaces(&c)

	var subs []*probeSubsys
	byNQN := map[string]*probeSubsys{}
	var failures []string
	reached := 0
	for _, p := range c.Portals {
		port := p.Port
		if c.DiscoveryPort != 0 {
			port = c.DiscoveryPort
		}
		recs, err := t.discover(ctx, op, c, id, p, port)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		reached++
		for _, r := range recs {
			if !r.IsNVMSubsystem() || r.TrType != "tcp" {
				continue
			}
			// The discovery log is data from the network; an NQN that
			// a configured one could not be never reaches a connect.
			if !validNQN(r.SubNQN) {
				t.log.Warn("discovery log names a subsystem whose NQN is not valid; skipped", zapStr("portal", p.String()), zapStr("nqn", fmt.Sprintf("%q", r.SubNQN)))
				continue
			}
			a, aerr := netip.ParseAddr(r.TrAddr)
			port, perr := strconv.Atoi(r.TrSvcID)
			if aerr != nil || perr != nil {
				continue
			}
			ps := byNQN[r.SubNQN]
			if ps == nil {
				ps = &probeSubsys{nqn: r.SubNQN}
				byNQN[r.SubNQN] = ps
				subs = append(subs, ps)
			}
			np := Portal{Addr: a.Unmap(), Port: port, Iface: p.Iface, IfaceExplicit: p.IfaceExplicit}
			if !hasPortal(ps.portals, np) {
				ps.portals = append(ps.portals, np)
			}
		}
	}
	if reached == 0 {
		return nil, host.NewError(host.KindUnreachable, op, "no portal answered discovery",
			"check device-config:target and discovery-port (the discovery service often listens on 8009 or 4420)", errors.New(strings.Join(failures, "; ")))
	}
	if c.NQN != "" {
		ps := byNQN[c.NQN]
		if ps == nil {
			var names []string
			for _, s := range subs {
				names = append(names, s.nqn)
			}
			return nil, host.NewError(host.KindNotFound, op, "the portals do not offer subsystem "+c.NQN+" (they offer: "+orNone(names)+")", "fix device-config:nqn", nil)
		}
		subs = []*probeSubsys{ps}
	}
	listNamespaces := len(subs) <= maxProbeSubsystems
	var out []transport.Candidate
	for _, ps := range subs {
		base := probeConfig(cfg, ps)
		if !listNamespaces {
			out = append(out, transport.Candidate{Configuration: base, Extra: map[string]string{
				"nqn": ps.nqn, "portals": portalList(ps.portals),
				"namespaces": fmt.Sprintf("not listed: %d subsystems found; probe again with device-config:nqn", len(subs)),
			}})
			continue
		}
		out = append(out, t.probeSubsystem(ctx, c, ps, base, inspect)...)
	}
	return out, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func hasPortal(ps []Portal, p Portal) bool {
	for _, q := range ps {
		if q.Addr == p.Addr && q.Port == p.Port {
			return true
		}
	}
	return false
}

func portalList(ps []Portal) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

// probeConfig is the device-config a candidate suggests: the caller's,
// with the subsystem and every portal the discovery log lists for it.
func probeConfig(cfg map[string]string, ps *probeSubsys) map[string]string {
	out := map[string]string{}
	for k, v := range cfg {
		out[k] = v
	}
	out[KeyNQN] = ps.nqn
	out[KeyTarget] = portalList(ps.portals)
	// Plain keys only come from callers other than xapi; a probe result
	// is printed, so they must not travel in it.
	delete(out, KeyNamespace)
	delete(out, KeyDHCHAP)
	delete(out, KeyDHCHAPCtrl)
	return out
}

// probeSubsystem connects one path of the subsystem (unless one exists),
// lists its namespaces, inspects each, and disconnects what it made.
func (t *Transport) probeSubsystem(ctx context.Context, c Config, ps *probeSubsys, base map[string]string, inspect transport.Inspector) []transport.Candidate {
	op := "SR.probe: nvmetcp: " + ps.nqn
	sc := c
	sc.NQN = ps.nqn
	sc.Namespace = NamespaceID{}
	// One path is enough to see the namespaces; prefer a portal the admin
	// gave, as discovery may list addresses of other fabrics.
	sc.Portals = []Portal{ps.portals[0]}
	for _, p := range ps.portals {
		for _, q := range c.Portals {
			if p.Addr == q.Addr {
				sc.Portals = []Portal{p}
			}
		}
	}
	extra := func() map[string]string {
		return map[string]string{"nqn": ps.nqn, "portals": portalList(ps.portals)}
	}
	s, err := t.connectAll(ctx, sc, op)
	if err != nil {
		e := extra()
		e["error"] = err.Error()
		return []transport.Candidate{{Configuration: base, Extra: e}}
	}
	defer func() {
		held := false
		if sub, found, _ := t.sys.subsystemByNQN(ps.nqn); found {
			for _, h := range sub.Heads {
				held = held || len(t.sys.namespace(h).Holders) > 0
			}
		}
		if held {
			// Something (LVM auto-activation, a mount) opened a namespace
			// while we looked: pulling the path would fail its I/O.
			t.log.Warn("namespace in use; leaving the probe's connection", zapStr("nqn", ps.nqn))
			s.done()
			return
		}
		t.rollback(ctx, s)
	}()
	heads := t.probeHeads(ctx, ps.nqn)
	if len(heads) == 0 {
		e := extra()
		e["namespaces"] = "0"
		return []transport.Candidate{{Configuration: base, Extra: e}}
	}
	model := ""
	if sub, found, _ := t.sys.subsystemByNQN(ps.nqn); found {
		model = t.sys.attr(sysClassSubsys + "/" + sub.Name + "/model")
	}
	var out []transport.Candidate
	for _, ns := range heads {
		e := extra()
		e["nsid"] = strconv.FormatUint(uint64(ns.NSID), 10)
		e["size"] = strconv.FormatInt(ns.Size, 10)
		e["wwid"] = ns.WWID
		if ns.UUID != "" {
			e["uuid"] = dashed(ns.UUID)
		}
		if ns.NGUID != "" {
			e["nguid"] = ns.NGUID
		}
		if ns.EUI64 != "" {
			e["eui64"] = ns.EUI64
		}
		if model != "" {
			e["model"] = model
		}
		cand := transport.Candidate{Configuration: map[string]string{}, Extra: e}
		for k, v := range base {
			cand.Configuration[k] = v
		}
		sid, ok := ns.StableID()
		if ok {
			cand.Configuration[KeyNamespace] = sid
			cand.Complete = true
		} else {
			e["error"] = "namespace has no NGUID, EUI-64 or UUID; give it one on the target"
		}
		if inspect != nil {
			// Probe only reads, and a namespace without a stable id is
			// inspected through its head for this call alone.
			dev, err := t.devicePath(ctx, "SR.probe: nvmetcp", ns)
			if err != nil {
				dev = "/dev/" + ns.Name
			}
			found, err := inspect(ctx, dev)
			switch {
			case err != nil:
				e["inspect-error"] = err.Error()
			case found != nil:
				cand.SR = found
			}
		}
		out = append(out, cand)
	}
	return out
}

// probeHeads waits briefly for the namespace scan after a connect: until
// the set of heads stops changing, or a few seconds for an empty
// subsystem.
func (t *Transport) probeHeads(ctx context.Context, nqn string) []Namespace {
	last, stable := -1, 0
	var heads []string
	wctx, cancel := context.WithTimeout(ctx, t.to.Namespace/4)
	defer cancel()
	err := host.Poll(wctx, t.to.Poll, func(context.Context) (bool, error) {
		sub, found, _ := t.sys.subsystemByNQN(nqn)
		heads = nil
		if found {
			heads = sub.Heads
		}
		if len(heads) == last && len(heads) > 0 {
			stable++
			return stable >= 5, nil
		}
		last, stable = len(heads), 0
		return false, nil
	})
	if err != nil && ctx.Err() != nil {
		return nil
	}
	var out []Namespace
	for _, h := range heads {
		out = append(out, t.sys.namespace(h))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NSID < out[j].NSID })
	return out
}

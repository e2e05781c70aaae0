package iscsi

import (
	"context"
	"slices"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// plan lists the sessions an SR needs. A named IQN is logged in at every
// portal directly; '*' asks each portal for its IQNs first. A portal whose
// discovery failed is kept as a placeholder path (IQN '*') so that it
// counts as down.
func (t *Transport) plan(ctx context.Context, op string, c *Config) ([]path, []error) {
	var paths []path
	var errs []error
	for i, p := range c.Portals {
		ifaces := c.ifacesFor(i)
		iqns := []string{c.TargetIQN}
		if c.TargetIQN == wildcardIQN {
			recs, err := t.discover(ctx, op, c, p, ifaces)
			if err != nil {
				errs = append(errs, err)
				t.log.Warn("discovery failed; the portal counts as down", zap.String("portal", p.String()), zap.Error(err))
			} else if iqns = iqnsAt(recs, p); len(iqns) == 0 {
				errs = append(errs, host.NewError(host.KindNotFound, op+": discovery at "+p.String(), "the portal offers no target", "export a target on this portal, or remove it from device-config:target", nil))
			}
			if len(iqns) == 0 || err != nil {
				iqns = []string{wildcardIQN}
			}
		}
		for _, iqn := range iqns {
			for _, ifc := range ifaces {
				paths = append(paths, path{Portal: p, IQN: iqn, Iface: ifc})
			}
		}
	}
	return paths, errs
}

// iqnsAt lists the IQNs a portal offers at its own address. When no record
// carries that address (NAT, or an array that advertises another one), it
// trusts every IQN the portal returned.
func iqnsAt(recs []record, p Portal) []string {
	var here, all []string
	for _, r := range recs {
		all = appendOnce(all, r.iqn)
		if r.portal == p {
			here = appendOnce(here, r.iqn)
		}
	}
	if len(here) > 0 {
		return here
	}
	return all
}

// configuredPaths is every (portal, iface) of a config with one IQN.
func configuredPaths(c *Config, iqn string) []path {
	var out []path
	for i, p := range c.Portals {
		for _, ifc := range c.ifacesFor(i) {
			out = append(out, path{Portal: p, IQN: iqn, Iface: ifc})
		}
	}
	return out
}

// knownPaths is the sessions an attached SR uses: what its SR.attach
// planned, or, without that record, what its config and the host's
// sessions imply.
func (t *Transport) knownPaths(c *Config, sessions []session) []path {
	if c.WWID != "" {
		if p, ok := t.loadState(c.WWID); ok {
			return p
		}
	}
	if c.TargetIQN != wildcardIQN {
		return configuredPaths(c, c.TargetIQN)
	}
	var out []path
	for _, p := range configuredPaths(c, wildcardIQN) {
		found := false
		for _, s := range sessions {
			cand := path{Portal: p.Portal, IQN: s.target, Iface: p.Iface}
			if cand.matches(s) && (c.WWID == "" || len(lunDisks(s, c.WWID)) > 0 || len(s.disks) == 0) {
				out = append(out, cand)
				found = true
			}
		}
		if !found {
			out = append(out, p)
		}
	}
	return out
}

func realPaths(paths []path) []path {
	var out []path
	for _, p := range paths {
		if p.IQN != wildcardIQN {
			out = append(out, p)
		}
	}
	return out
}

func hasSession(sessions []session, p path) bool {
	return slices.ContainsFunc(sessions, p.matches)
}

func ourSessions(sessions []session, paths []path) []session {
	var out []session
	for _, s := range sessions {
		if slices.ContainsFunc(paths, func(p path) bool { return p.matches(s) }) {
			out = append(out, s)
		}
	}
	return out
}

// lunDisks returns the disks of a session that are the LUN.
func lunDisks(s session, wwid string) []disk {
	var out []disk
	for _, d := range s.disks {
		if d.wwid == wwid {
			out = append(out, d)
		}
	}
	return out
}

// heldDisks lists the disks of other LUNs on a session that something
// (a map, an LV) holds: logging out would pull them from under it.
func heldDisks(s session, wwid string) []string {
	var out []string
	for _, d := range s.disks {
		if d.wwid != wwid && len(d.holders) > 0 {
			out = append(out, d.name)
		}
	}
	return out
}

// usedBy reports whether another SR's paths need a session.
func usedBy(s session, paths, wild []path) bool {
	if slices.ContainsFunc(paths, func(p path) bool { return p.matches(s) }) {
		return true
	}
	return slices.ContainsFunc(wild, func(p path) bool {
		p.IQN = s.target
		return p.matches(s)
	})
}

func ifaceOf(s session) string {
	if s.iface == "" {
		return defaultIface
	}
	return s.iface
}

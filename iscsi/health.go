package iscsi

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Health reports the state of every path of the SR, e.g.
// "1 of 2 paths down: 127.0.0.2:3260 (sdc failed)".
func (t *Transport) Health(ctx context.Context, cfg map[string]string) (transport.Health, error) {
	const op = "SR.stat: iscsi-ng"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, wwid: true})
	if err != nil {
		return transport.Health{}, err
	}
	v, err := t.view(op, c)
	if err != nil {
		return transport.Health{}, err
	}
	paths, sessions, ours, m := v.paths, v.sessions, v.ours, v.m
	if m == nil && len(ours) == 0 {
		return transport.Health{}, host.NewError(host.KindNotAttached, op, fmt.Sprintf("LUN %s has no session and no multipath map on this host", c.WWID), "plug the SR on this host (xe pbd-plug)", nil)
	}
	return t.health(ctx, c, paths, sessions, m), nil
}

// lunView is what the host has of one SR's LUN: the paths the SR uses,
// the host's sessions, the SR's among them, the LUN's disks on those, and
// its multipath map (nil when there is none).
type lunView struct {
	paths    []path
	sessions []session
	ours     []session
	disks    []disk
	m        *dmMap
}

func (t *Transport) view(op string, c *Config) (lunView, error) {
	var v lunView
	var err error
	if v.sessions, err = t.sys.sessions(); err != nil {
		return v, host.NewError(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
	}
	v.paths = t.knownPaths(c, v.sessions)
	v.ours = ourSessions(v.sessions, v.paths)
	for _, s := range v.ours {
		v.disks = append(v.disks, lunDisks(s, c.WWID)...)
	}
	if v.m, err = t.sys.findMap(c.WWID, v.disks); err != nil {
		return v, host.NewError(host.KindInternal, op, "cannot read device-mapper state from sysfs", sysfsFix, err)
	}
	return v, nil
}

// health judges every planned path: live when its session is logged in,
// its disk runs and the kernel's multipath target uses it.
func (t *Transport) health(ctx context.Context, c *Config, paths []path, sessions []session, m *dmMap) transport.Health {
	var states map[string]dmPathState
	if m != nil {
		var err error
		if states, err = t.pathStates(ctx, m.name); err != nil {
			t.log.Debug("no dm path states; judging paths from sysfs alone", zap.Error(err))
		}
	}
	h := transport.Health{ID: c.WWID}
	var down []string
	for _, p := range paths {
		h.Total++
		why := pathProblem(p, sessions, c.WWID, m, states)
		if why == "" {
			h.Live++
			continue
		}
		down = append(down, p.String()+" ("+why+")")
	}
	if len(down) == 0 {
		h.Detail = fmt.Sprintf("%d of %d paths live", h.Live, h.Total)
	} else {
		h.Detail = fmt.Sprintf("%d of %d paths down: %s", len(down), h.Total, strings.Join(down, ", "))
	}
	return h
}

// pathProblem says why a path is not live, or "" when it is.
func pathProblem(p path, sessions []session, wwid string, m *dmMap, states map[string]dmPathState) string {
	if p.IQN == wildcardIQN {
		return "discovery failed"
	}
	var s *session
	for i := range sessions {
		if p.matches(sessions[i]) {
			s = &sessions[i]
			break
		}
	}
	if s == nil {
		return "no session"
	}
	ds := lunDisks(*s, wwid)
	if len(ds) == 0 {
		if s.state != sessionLoggedIn {
			return "session " + s.state
		}
		return "LUN not visible"
	}
	d := ds[0]
	switch {
	case m == nil:
		return d.name + " has no multipath map"
	case !slices.Contains(m.slaves, d.name):
		return d.name + " not in the multipath map"
	}
	var why []string
	if s.state != sessionLoggedIn {
		why = append(why, "session "+s.state)
	}
	if d.state != "running" {
		why = append(why, "disk "+d.state)
	}
	if st, ok := states[d.dev]; ok && !st.active {
		why = append(why, "dm path failed")
	}
	if len(why) > 0 {
		return d.name + " failed: " + strings.Join(why, ", ")
	}
	return ""
}

// warnRecoveryTimeout tells the admin when the sessions' live recovery
// timeout is not replacement-timeout: multipathd (0.5 and later) sets it to
// fast_io_fail_tmo when multipath.conf has one (its default is 5 s), and
// that is a host-wide setting sanvol leaves alone.
func (t *Transport) warnRecoveryTimeout(c *Config, sessions []session) {
	for _, s := range sessions {
		if s.recoveryTmo != 0 && s.recoveryTmo != c.ReplacementTimeout {
			t.log.Warn("multipathd set the session recovery timeout from fast_io_fail_tmo; replacement-timeout applies only where multipath.conf sets none",
				zap.Int("sid", s.sid), zap.Int("recovery_tmo", s.recoveryTmo), zap.Int("replacement_timeout", c.ReplacementTimeout))
			return
		}
	}
}

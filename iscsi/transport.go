// Package iscsi is the iscsi-ng transport: it connects a host to the LUN of
// an SR over every iSCSI portal, with CHAP and optional NIC bindings, builds
// the dm-multipath map of that LUN (found by its WWID, never by a device
// name), reports the state of every path and tears down only what no other
// SR on the host still uses.
//
// It drives the tools XCP-ng 8.x dom0 ships (iscsi-initiator-utils
// 6.2.0.874, device-mapper-multipath 0.4.9) as well as current ones
// (open-iscsi 2.1.x, multipath-tools 0.9.x), so it only uses commands and
// options both have, and reads the kernel's state from sysfs rather than
// parsing tool output whose format differs between them.
package iscsi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Type is the SR type: `xe sr-create type=iscsi-ng`.
const Type = "iscsi-ng"

// stateDir keeps, per attached LUN, the sessions its SR.attach planned. It
// is under /run because sessions do not survive a reboot either.
const stateDir = "/run/sanvol/iscsi"

// initiatorFile is where open-iscsi (and XCP-ng, from
// host.other_config:iscsi_iqn) keeps the host's initiator name.
const initiatorFile = "/etc/iscsi/initiatorname.iscsi"

// Timings bounds every wait of the transport. xapi has no timeout of its
// own, so each of these is what keeps a dead portal from hanging a VM start.
type Timings struct {
	Command   time.Duration // an ordinary iscsiadm, multipath or dmsetup call
	Discovery time.Duration // sendtargets discovery on one portal
	// LoginTimeout (node.conn[0].timeo.login_timeout, seconds) and
	// LoginRetries (node.session.initial_login_retry_max) bound one
	// login: an unreachable portal costs (LoginRetries+1)×LoginTimeout.
	LoginTimeout int
	LoginRetries int
	DeviceWait   time.Duration // for the LUN's disks to appear after login
	MapWait      time.Duration // for the multipath map
	Flush        time.Duration // multipath -f
	LockWait     time.Duration // for another call on the same target
	Poll         time.Duration // sysfs polling step
}

// DefaultTimings are the production values.
func DefaultTimings() Timings {
	return Timings{
		Command:      30 * time.Second,
		Discovery:    30 * time.Second,
		LoginTimeout: 10,
		LoginRetries: 1,
		DeviceWait:   30 * time.Second,
		MapWait:      30 * time.Second,
		Flush:        30 * time.Second,
		LockWait:     3 * time.Minute,
		Poll:         200 * time.Millisecond,
	}
}

// Deps are the host services the transport uses.
type Deps struct {
	Runner  host.Runner
	Root    host.Root
	Locker  host.Locker
	Secrets host.SecretResolver // resolves chappassword_secret and incoming_chappassword_secret
	Log     *zap.Logger
	Timings Timings // the zero value takes DefaultTimings
	// Lookup resolves host names in device-config:target; nil uses the
	// system resolver.
	Lookup func(ctx context.Context, name string) ([]string, error)
}

// Transport implements transport.Transport for iSCSI with dm-multipath.
type Transport struct {
	run     host.Runner
	root    host.Root
	sys     sysfs
	locks   host.Locker
	secrets host.SecretResolver
	log     *zap.Logger
	timing  Timings
	lookup  func(ctx context.Context, name string) ([]string, error)
}

var _ transport.Transport = (*Transport)(nil)

// New returns the iscsi-ng transport.
func New(d Deps) *Transport {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Timings == (Timings{}) {
		d.Timings = DefaultTimings()
	}
	if d.Lookup == nil {
		d.Lookup = net.DefaultResolver.LookupHost
	}
	return &Transport{
		run: d.Runner, root: d.Root, sys: sysfs{root: d.Root}, locks: d.Locker, secrets: d.Secrets,
		log: d.Log.Named("iscsi"), timing: d.Timings, lookup: d.Lookup,
	}
}

// Type is the SR type.
func (t *Transport) Type() string { return Type }

// Prepare validates a create-time device-config and returns the LUN's
// identity. Without SCSIid it logs in to list the LUNs and takes the only
// one; with several it asks the admin to choose.
func (t *Transport) Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	const op = "iscsi-ng create"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, secrets: true})
	if err != nil {
		return nil, err
	}
	if err := t.refuseSMShared(op, c); err != nil {
		return nil, err
	}
	if c.wwid != "" {
		return map[string]string{keySCSIid: c.wwid}, nil
	}
	luns, err := t.listLUNs(ctx, op, c, nil)
	if err != nil {
		return nil, err
	}
	if len(luns) == 1 {
		return map[string]string{keySCSIid: luns[0].wwid}, nil
	}
	return nil, host.Errorf(host.KindInvalid, op, fmt.Sprintf("device-config:SCSIid is missing and target %s has %d LUNs: %s", c.iqn, len(luns), describeLUNs(luns)),
		"add device-config:SCSIid=<one of them> (xe sr-probe-ext lists them with their sizes)", nil)
}

// DeviceID is the LUN's WWID: two SRs with the same SCSIid share the LUN,
// its multipath map and its drop-in stanza, whatever their portals.
func (t *Transport) DeviceID(cfg map[string]string) (string, error) {
	w := normaliseWWID(strings.TrimSpace(cfg[keySCSIid]))
	if w == "" || !wwidRE.MatchString(w) {
		return "", host.Errorf(host.KindInvalid, "iscsi-ng", "device-config:SCSIid is missing or not a SCSI WWID",
			"give the SCSIid of the LUN as xe sr-probe-ext lists it", nil)
	}
	return "wwid:" + strings.ToLower(w), nil
}

// Attach logs in to every path, finds the LUN's disks by WWID, makes sure
// its multipath map exists with this SR's settings, and returns the map.
func (t *Transport) Attach(ctx context.Context, cfg map[string]string) (transport.Device, error) {
	const op = "iscsi-ng attach"
	start := time.Now()
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, wwid: true, secrets: true})
	if err != nil {
		return transport.Device{}, err
	}
	initiator, err := t.initiatorName(op)
	if err != nil {
		return transport.Device{}, err
	}
	if err := t.ensureIscsid(ctx, op); err != nil {
		return transport.Device{}, err
	}
	t.warnSMShared(c)
	if err := t.ensureIfaces(ctx, op, c); err != nil {
		return transport.Device{}, err
	}
	paths, discErrs := t.plan(ctx, op, c)
	if len(realPaths(paths)) == 0 {
		return transport.Device{}, firstError(discErrs)
	}
	unlock, err := t.lockTargets(ctx, op, paths)
	if err != nil {
		return transport.Device{}, err
	}
	defer unlock()

	before, err := t.sys.sessions()
	if err != nil {
		return transport.Device{}, host.Errorf(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
	}
	results := t.connect(ctx, op, c, paths, before)
	failures := loginFailures(results)
	if len(failures) == len(results) {
		err := t.loginFailure(ctx, op, c, initiator, failures)
		t.rollback(ctx, before, paths)
		return transport.Device{}, err
	}
	for _, f := range failures {
		t.log.Warn("path did not log in; attaching with the others", zap.String("path", f.path.String()), zap.String("reason", f.msg), zap.Error(f.err))
	}
	if err := t.saveState(c, paths); err != nil {
		t.log.Warn("cannot record the planned sessions", zap.Error(err))
	}

	sessions, disks, err := t.waitDisks(ctx, op, c, paths)
	if err != nil {
		t.rollback(ctx, before, paths)
		return transport.Device{}, err
	}
	m, err := t.ensureMap(ctx, op, c, disks)
	if err != nil {
		t.rollback(ctx, before, paths)
		return transport.Device{}, err
	}
	dev, err := t.devicePath(ctx, op, c, m)
	if err != nil {
		t.rollback(ctx, before, paths)
		return transport.Device{}, err
	}
	h := t.health(ctx, c, paths, sessions, m)
	t.warnRecoveryTimeout(c, ourSessions(sessions, paths))
	for _, f := range failures {
		h.Detail += "; " + f.path.String() + " login failed: " + f.msg
	}
	t.log.Info("attached", zap.String("wwid", c.wwid), zap.String("device", dev), zap.Int("live", h.Live), zap.Int("total", h.Total),
		zap.String("path_loss_policy", policyString(c.queueSeconds)), zap.Duration("elapsed", time.Since(start)))
	return transport.Device{Path: dev, Health: h}, nil
}

// Detach flushes the LUN's map, deletes its disks and logs out the
// sessions that none of the other attached SRs (others) uses.
func (t *Transport) Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error {
	const op = "iscsi-ng detach"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, wwid: true})
	if err != nil {
		return err
	}
	v, err := t.view(op, c)
	if err != nil {
		return err
	}
	unlock, err := t.lockTargets(ctx, op, v.paths)
	if err != nil {
		return err
	}
	defer unlock()
	// Another call may have changed things while this one waited.
	if v, err = t.view(op, c); err != nil {
		return err
	}
	// The LUN of another attached SR (the same SCSIid) keeps its map,
	// disks, stanza and sessions: they are that SR's device.
	id, _ := t.DeviceID(cfg)
	for _, o := range others {
		if oid, err := t.DeviceID(o); err == nil && oid == id {
			t.log.Warn("the LUN is in use by another attached SR; leaving it alone", zap.String("wwid", c.wwid))
			return nil
		}
	}
	sessions, ours, disks, m := v.sessions, v.ours, v.disks, v.m
	if m != nil {
		if err := t.flushMap(ctx, op, m); err != nil {
			return err
		}
	}
	for _, d := range disks {
		if err := within(ctx, t.timing.Command, func() error { return t.sys.deleteDisk(d.name) }); err != nil {
			t.log.Warn("cannot delete SCSI disk", zap.String("disk", d.name), zap.Error(err))
		}
	}
	if _, err := t.setStanza(ctx, c.wwid, nil); err != nil {
		t.log.Warn("cannot remove the map's stanza from "+DropInPath, zap.Error(err))
	}
	if _, err := t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{"-w", c.wwid}, Timeout: t.timing.Command}); err != nil {
		t.log.Debug("multipath -w failed", zap.Error(err))
	}

	var otherPaths []path
	var otherWild []path
	for _, o := range others {
		oc, err := t.parseConfig(ctx, op, o, parseNeeds{iqn: true})
		if err != nil {
			continue // another SR type, or not ours to judge
		}
		for _, p := range t.knownPaths(oc, sessions) {
			if p.IQN == wildcardIQN {
				otherWild = append(otherWild, p)
			} else {
				otherPaths = append(otherPaths, p)
			}
		}
		if oc.iqn == wildcardIQN {
			otherWild = append(otherWild, configuredPaths(oc, wildcardIQN)...)
		}
	}
	// Logout goes through iscsid: a daemon stopped since the attach (sm's
	// restart path stops it) is started again rather than leaving the
	// sessions behind.
	if len(ours) > 0 {
		if err := t.ensureIscsid(ctx, op); err != nil {
			t.log.Warn("cannot start iscsid for the logout", zap.Error(err))
		}
	}
	var errs []error
	for _, s := range ours {
		if usedBy(s, otherPaths, otherWild) {
			t.log.Info("session kept: another SR uses it", zap.Int("sid", s.sid), zap.String("portal", s.portal.String()))
			continue
		}
		if held := heldDisks(s, c.wwid); len(held) > 0 {
			t.log.Info("session kept: other LUNs on it are in use", zap.Int("sid", s.sid), zap.Strings("disks", held))
			continue
		}
		if err := t.logout(ctx, s.sid); err != nil {
			errs = append(errs, fmt.Errorf("log out of %s (%s, session %d): %w", s.portal, s.target, s.sid, err))
		}
	}
	forget := realPaths(v.paths)
	for _, s := range ours {
		if p := (path{Portal: s.portal, IQN: s.target, Iface: ifaceOf(s)}); !slices.Contains(forget, p) {
			forget = append(forget, p)
		}
	}
	t.forgetNodes(ctx, forget)
	if len(errs) > 0 {
		return host.Errorf(host.KindBusy, op, "the map is gone but sessions remain", "log them out by hand (iscsiadm -m session; iscsiadm -m session -r <sid> -u) or run SR.detach again", errors.Join(errs...))
	}
	t.removeState(c.wwid)
	return nil
}

// Health reports the state of every path of the SR, e.g.
// "1 of 2 paths down: 127.0.0.2:3260 (sdc failed)".
func (t *Transport) Health(ctx context.Context, cfg map[string]string) (transport.Health, error) {
	const op = "iscsi-ng stat"
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
		return transport.Health{}, host.Errorf(host.KindNotAttached, op, fmt.Sprintf("LUN %s has no session and no multipath map on this host", c.wwid), "plug the SR on this host (xe pbd-plug)", nil)
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

func (t *Transport) view(op string, c *config) (lunView, error) {
	var v lunView
	var err error
	if v.sessions, err = t.sys.sessions(); err != nil {
		return v, host.Errorf(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
	}
	v.paths = t.knownPaths(c, v.sessions)
	v.ours = ourSessions(v.sessions, v.paths)
	for _, s := range v.ours {
		v.disks = append(v.disks, lunDisks(s, c.wwid)...)
	}
	if v.m, err = t.sys.findMap(c.wwid, v.disks); err != nil {
		return v, host.Errorf(host.KindInternal, op, "cannot read device-mapper state from sysfs", sysfsFix, err)
	}
	return v, nil
}

// health judges every planned path: live when its session is logged in,
// its disk runs and the kernel's multipath target uses it.
func (t *Transport) health(ctx context.Context, c *config, paths []path, sessions []session, m *dmMap) transport.Health {
	var states map[string]dmPathState
	if m != nil {
		var err error
		if states, err = t.pathStates(ctx, m.name); err != nil {
			t.log.Debug("no dm path states; judging paths from sysfs alone", zap.Error(err))
		}
	}
	h := transport.Health{ID: c.wwid}
	var down []string
	for _, p := range paths {
		h.Total++
		why := pathProblem(p, sessions, c.wwid, m, states)
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
func (t *Transport) warnRecoveryTimeout(c *config, sessions []session) {
	for _, s := range sessions {
		if s.recoveryTmo != 0 && s.recoveryTmo != c.replacementTimeout {
			t.log.Warn("multipathd set the session recovery timeout from fast_io_fail_tmo; replacement-timeout applies only where multipath.conf sets none",
				zap.Int("sid", s.sid), zap.Int("recovery_tmo", s.recoveryTmo), zap.Int("replacement_timeout", c.replacementTimeout))
			return
		}
	}
}

// Probe discovers what a partial device-config reaches: without targetIQN
// the target IQNs of the portals, with it the LUNs, each inspected for an
// existing sanvol SR. What the probe logs in, it logs out again.
func (t *Transport) Probe(ctx context.Context, cfg map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	const op = "iscsi-ng probe"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{secrets: true})
	if err != nil {
		return nil, err
	}
	if err := t.ensureIscsid(ctx, op); err != nil {
		return nil, err
	}
	if err := t.ensureIfaces(ctx, op, c); err != nil {
		return nil, err
	}
	if c.iqn == "" {
		return t.probeTargets(ctx, op, c, cfg)
	}
	luns, err := t.listLUNs(ctx, op, c, inspect)
	if err != nil {
		return nil, err
	}
	var out []transport.Candidate
	for _, l := range luns {
		conf := copyConfig(cfg)
		conf[keySCSIid] = l.wwid
		cand := transport.Candidate{Configuration: conf, Complete: true, SR: l.sr, Extra: l.extra(c)}
		out = append(out, cand)
	}
	return out, nil
}

// probeTargets lists the IQNs the portals offer.
func (t *Transport) probeTargets(ctx context.Context, op string, c *config, cfg map[string]string) ([]transport.Candidate, error) {
	byIQN := map[string][]record{}
	var errs []error
	for i, p := range c.portals {
		recs, err := t.discover(ctx, op, c, p, c.ifacesFor(i))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range recs {
			byIQN[r.iqn] = append(byIQN[r.iqn], r)
		}
	}
	if len(byIQN) == 0 {
		if len(errs) > 0 {
			return nil, firstError(errs)
		}
		return nil, host.Errorf(host.KindNotFound, op, "the portals offer no target to this host", "check that the array exports a target on these portals and that its ACL admits this host's initiator name", nil)
	}
	for _, err := range errs {
		t.log.Warn("a portal did not answer discovery", zap.Error(err))
	}
	iqns := make([]string, 0, len(byIQN))
	for iqn := range byIQN {
		iqns = append(iqns, iqn)
	}
	sort.Strings(iqns)
	var out []transport.Candidate
	for _, iqn := range iqns {
		conf := copyConfig(cfg)
		conf[keyTargetIQN] = iqn
		var portals, tpgts []string
		for _, r := range byIQN[iqn] {
			portals = appendOnce(portals, r.portal.String())
			tpgts = appendOnce(tpgts, strconv.Itoa(r.tpgt))
		}
		out = append(out, transport.Candidate{Configuration: conf, Extra: map[string]string{
			"targetIQN": iqn, "portals": strings.Join(portals, ","), "tpgt": strings.Join(tpgts, ","),
		}})
	}
	if len(iqns) > 1 {
		conf := copyConfig(cfg)
		conf[keyTargetIQN] = wildcardIQN
		out = append(out, transport.Candidate{Configuration: conf, Extra: map[string]string{
			"targetIQN": wildcardIQN,
			"note":      "log in to every IQN each portal offers at its own address: for arrays that expose one IQN per portal",
		}})
	}
	return out, nil
}

// lun is one LUN a probe saw.
type lun struct {
	wwid    string
	lun     int
	vendor  string
	model   string
	size    int64
	iqns    []string
	portals []string
	sr      *transport.FoundSR
	inspect string // why inspection failed, if it did
}

func (l lun) extra(c *config) map[string]string {
	e := map[string]string{
		"SCSIid": l.wwid, "LUNid": strconv.Itoa(l.lun), "vendor": l.vendor, "product": l.model,
		"size": strconv.FormatInt(l.size, 10), "targetIQN": strings.Join(l.iqns, ","),
		"portals": strings.Join(l.portals, ","), "paths": strconv.Itoa(len(l.portals)),
	}
	if l.inspect != "" {
		e["inspect_error"] = l.inspect
	}
	return e
}

func describeLUNs(luns []lun) string {
	var s []string
	for _, l := range luns {
		s = append(s, fmt.Sprintf("%s (LUN %d, %s %s, %d bytes)", l.wwid, l.lun, l.vendor, l.model, l.size))
	}
	return strings.Join(s, "; ")
}

// listLUNs logs in to the target, lists its LUNs (only c.wwid when given),
// inspects each when inspect is set, and logs out what it logged in.
func (t *Transport) listLUNs(ctx context.Context, op string, c *config, inspect transport.Inspector) ([]lun, error) {
	initiator, err := t.initiatorName(op)
	if err != nil {
		return nil, err
	}
	paths, discErrs := t.plan(ctx, op, c)
	if len(realPaths(paths)) == 0 {
		return nil, firstError(discErrs)
	}
	unlock, err := t.lockTargets(ctx, op, paths)
	if err != nil {
		return nil, err
	}
	defer unlock()
	before, err := t.sys.sessions()
	if err != nil {
		return nil, host.Errorf(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
	}
	defer t.rollback(context.WithoutCancel(ctx), before, paths)
	results := t.connect(ctx, op, c, paths, before)
	failures := loginFailures(results)
	if len(failures) == len(results) {
		return nil, t.loginFailure(ctx, op, c, initiator, failures)
	}
	sessions := t.settledSessions(ctx, paths)
	byWWID := map[string]*lun{}
	var order []string
	for _, s := range ourSessions(sessions, paths) {
		for _, d := range s.disks {
			l, ok := byWWID[d.wwid]
			if !ok {
				l = &lun{wwid: d.wwid, lun: d.lun, vendor: d.vendor, model: d.model, size: d.size}
				byWWID[d.wwid] = l
				order = append(order, d.wwid)
			}
			l.iqns = appendOnce(l.iqns, s.target)
			l.portals = appendOnce(l.portals, s.portal.String())
		}
	}
	sort.Strings(order)
	var luns []lun
	for _, w := range order {
		if c.wwid == "" || w == c.wwid {
			luns = append(luns, *byWWID[w])
		}
	}
	if c.wwid != "" && len(luns) == 0 {
		var all []lun
		for _, w := range order {
			all = append(all, *byWWID[w])
		}
		return nil, host.Errorf(host.KindNotFound, op, fmt.Sprintf("LUN %s is not visible through target %s; visible: %s", c.wwid, c.iqn, orNone(describeLUNs(all))),
			"check device-config:SCSIid, and the LUN mapping for initiator "+initiator+" on the array", nil)
	}
	if len(luns) == 0 {
		return nil, host.Errorf(host.KindNotFound, op, "target "+c.iqn+" shows no LUN to this host",
			"map a LUN to initiator "+initiator+" on the array (LUN masking / host group)", nil)
	}
	if inspect != nil {
		t.settle(ctx)
		for i := range luns {
			dev := t.inspectDevice(sessions, paths, luns[i].wwid)
			sr, err := inspect(ctx, dev)
			if err != nil {
				t.log.Warn("cannot inspect LUN", zap.String("wwid", luns[i].wwid), zap.String("device", dev), zap.Error(err))
				luns[i].inspect = err.Error()
				continue
			}
			luns[i].sr = sr
		}
	}
	return luns, nil
}

// inspectDevice picks the device an inspector reads: the LUN's multipath
// map when one holds it (LVM ignores multipath components), else a disk.
func (t *Transport) inspectDevice(sessions []session, paths []path, wwid string) string {
	var disks []disk
	for _, s := range ourSessions(sessions, paths) {
		disks = append(disks, lunDisks(s, wwid)...)
	}
	if m, err := t.sys.findMap(wwid, disks); err == nil && m != nil {
		if dev := "/dev/mapper/" + m.name; t.root.Exists(dev) {
			return dev
		}
		return "/dev/" + m.dev
	}
	return "/dev/" + disks[0].name
}

// settledSessions scans the sessions of some paths and reads them again
// until the set of disks stops changing: sd attaches block devices
// asynchronously after the scan returns.
func (t *Transport) settledSessions(ctx context.Context, paths []path) []session {
	sessions, _ := t.sys.sessions()
	for _, s := range ourSessions(sessions, paths) {
		if s.state == sessionLoggedIn {
			t.scanHost(ctx, s.host)
		}
	}
	deadline := time.Now().Add(t.timing.DeviceWait)
	prev, stable := "", 0
	for {
		sessions, _ = t.sys.sessions()
		var names []string
		for _, s := range ourSessions(sessions, paths) {
			for _, d := range s.disks {
				names = append(names, d.name)
			}
		}
		cur := strings.Join(names, ",")
		if cur == prev && cur != "" && symmetric(ourSessions(sessions, paths)) {
			stable++
		} else {
			stable = 0
		}
		prev = cur
		if stable >= 3 || time.Now().After(deadline) || sleep(ctx, t.timing.Poll) != nil {
			return sessions
		}
	}
}

// symmetric reports whether every logged-in session of one target shows
// the same LUNs. Portals of one target export one LUN set, so a session
// still missing a LUN the others have is a path whose scan has not
// finished: judging the set stable then would count one path too few.
func symmetric(sessions []session) bool {
	luns := map[string]string{}
	for _, s := range sessions {
		if s.state != sessionLoggedIn {
			continue
		}
		var ids []string
		for _, d := range s.disks {
			ids = append(ids, strconv.Itoa(d.lun))
		}
		sort.Strings(ids)
		set := strings.Join(ids, ",")
		if prev, ok := luns[s.target]; ok && prev != set {
			return false
		}
		luns[s.target] = set
	}
	return true
}

// Rescan re-reads the LUN's size on every path and grows the multipath map
// to match, so that the engine can then pvresize. It reports whether the
// map grew. Every path must agree on the new size: a down path that still
// reports the old one makes it fail with a Busy error, to be retried.
func (t *Transport) Rescan(ctx context.Context, cfg map[string]string) (bool, error) {
	const op = "iscsi-ng rescan"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, wwid: true})
	if err != nil {
		return false, err
	}
	v, err := t.view(op, c)
	if err != nil {
		return false, err
	}
	m := v.m
	if m == nil {
		return false, host.Errorf(host.KindNotAttached, op, "LUN "+c.wwid+" has no multipath map on this host", "plug the SR on this host first", nil)
	}
	for _, s := range v.ours {
		for _, d := range lunDisks(s, c.wwid) {
			if s.state == sessionLoggedIn && d.state == "running" {
				if err := within(ctx, t.timing.Command, func() error { return t.sys.rescanDisk(d.name) }); err != nil {
					t.log.Warn("cannot rescan disk", zap.String("disk", d.name), zap.Error(err))
				}
			}
		}
	}
	// multipathd reads the new size from the udev database, which the
	// rescans' change events update.
	t.settle(ctx)
	sizes := map[string]int64{}
	var newSize int64
	for _, name := range m.slaves {
		if d, err := t.sys.disk(name, ""); err == nil {
			sizes[name] = d.size
			newSize = max(newSize, d.size)
		}
	}
	if newSize <= m.size {
		return false, nil
	}
	var stale []string
	for name, sz := range sizes {
		if sz < newSize {
			stale = append(stale, name)
		}
	}
	if len(stale) > 0 {
		sort.Strings(stale)
		return false, host.Errorf(host.KindBusy, op, fmt.Sprintf("the LUN grew to %d bytes but paths %s still report the old size", newSize, strings.Join(stale, ", ")),
			"wait for every path to be up (SR health) and retry", nil)
	}
	if _, err := t.multipathd(ctx, "resize map "+m.name); err != nil {
		if e := multipathdError(op, err); e != nil {
			return false, e
		}
		return false, host.Errorf(host.KindInternal, op, "multipathd could not resize map "+m.name, "run multipathd -k\"resize map "+m.name+"\" and read its log", err)
	}
	deadline := time.Now().Add(t.timing.Command)
	for {
		after, err := t.sys.findMap(c.wwid, nil)
		if err == nil && after != nil && after.size >= newSize {
			t.log.Info("multipath map grew", zap.String("map", m.name), zap.Int64("from", m.size), zap.Int64("to", after.size))
			return true, nil
		}
		if time.Now().After(deadline) || sleep(ctx, t.timing.Poll) != nil {
			return false, host.Errorf(host.KindTimeout, op, "map "+m.name+" did not take the new size", "run multipathd -k\"resize map "+m.name+"\" by hand", nil)
		}
	}
}

// --- planning, connecting and cleaning up -----------------------------

// plan lists the sessions an SR needs. A named IQN is logged in at every
// portal directly; '*' asks each portal for its IQNs first. A portal whose
// discovery failed is kept as a placeholder path (IQN '*') so that it
// counts as down.
func (t *Transport) plan(ctx context.Context, op string, c *config) ([]path, []error) {
	var paths []path
	var errs []error
	for i, p := range c.portals {
		ifaces := c.ifacesFor(i)
		iqns := []string{c.iqn}
		if c.iqn == wildcardIQN {
			recs, err := t.discover(ctx, op, c, p, ifaces)
			if err != nil {
				errs = append(errs, err)
				t.log.Warn("discovery failed; the portal counts as down", zap.String("portal", p.String()), zap.Error(err))
			} else if iqns = iqnsAt(recs, p); len(iqns) == 0 {
				errs = append(errs, host.Errorf(host.KindNotFound, op+": discovery at "+p.String(), "the portal offers no target", "export a target on this portal, or remove it from device-config:target", nil))
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
func configuredPaths(c *config, iqn string) []path {
	var out []path
	for i, p := range c.portals {
		for _, ifc := range c.ifacesFor(i) {
			out = append(out, path{Portal: p, IQN: iqn, Iface: ifc})
		}
	}
	return out
}

// knownPaths is the sessions an attached SR uses: what its SR.attach
// planned, or, without that record, what its config and the host's
// sessions imply.
func (t *Transport) knownPaths(c *config, sessions []session) []path {
	if c.wwid != "" {
		if p, ok := t.loadState(c.wwid); ok {
			return p
		}
	}
	if c.iqn != wildcardIQN {
		return configuredPaths(c, c.iqn)
	}
	var out []path
	for _, p := range configuredPaths(c, wildcardIQN) {
		found := false
		for _, s := range sessions {
			cand := path{Portal: p.Portal, IQN: s.target, Iface: p.Iface}
			if cand.matches(s) && (c.wwid == "" || len(lunDisks(s, c.wwid)) > 0 || len(s.disks) == 0) {
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

// connect sets up the node record of every path without a session and
// logs them in, in parallel: a dead portal costs one login timeout, not
// one per portal. Each path is tried once; iscsid's
// initial_login_retry_max is the only retry, and it never retries an
// authentication failure.
func (t *Transport) connect(ctx context.Context, op string, c *config, paths []path, before []session) []*loginError {
	results := make([]*loginError, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		if p.IQN == wildcardIQN {
			results[i] = &loginError{path: p, kind: host.KindUnreachable, msg: "discovery failed"}
			continue
		}
		if hasSession(before, p) {
			continue
		}
		if err := t.setupNode(ctx, op, c, p); err != nil {
			results[i] = &loginError{path: p, kind: host.KindOf(err), msg: err.Error(), err: err}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = t.login(ctx, p)
		}()
	}
	wg.Wait()
	return results
}

func loginFailures(results []*loginError) []*loginError {
	var out []*loginError
	for _, r := range results {
		if r != nil {
			out = append(out, r)
		}
	}
	return out
}

// loginFailure explains why no path logged in. A refused login is checked
// against discovery, to tell a wrong IQN from wrong credentials.
func (t *Transport) loginFailure(ctx context.Context, op string, c *config, initiator string, fails []*loginError) error {
	rank := map[host.Kind]int{host.KindAuth: 5, host.KindNotFound: 4, host.KindUnsupported: 3, host.KindUnreachable: 2, host.KindTimeout: 1}
	kind := host.KindInternal
	var parts []string
	var causes []error
	for _, f := range fails {
		if rank[f.kind] > rank[kind] {
			kind = f.kind
		}
		parts = append(parts, f.Error())
		if f.err != nil {
			causes = append(causes, f.err)
		}
	}
	msg := "no path to target " + c.iqn + " logged in: " + strings.Join(parts, "; ")
	var fix string
	// LIO answers an unknown IQN by dropping the connection, which
	// iscsiadm reports as a timeout: whatever the kind, a portal that
	// answers discovery without the IQN means the IQN is wrong.
	if kind != host.KindUnsupported {
		if offered, ok := t.offeredIQNs(ctx, op, c); ok && c.iqn != wildcardIQN && !slices.Contains(offered, c.iqn) {
			return host.Errorf(host.KindNotFound, op, fmt.Sprintf("target %s is not offered at %s; the portals offer: %s",
				c.iqn, portalList(c.portals), orNone(strings.Join(offered, ", "))),
				"correct device-config:targetIQN (xe sr-probe-ext with only device-config:target lists the IQNs)", errors.Join(causes...))
		}
	}
	switch kind {
	case host.KindAuth:
		if c.chap == nil {
			fix = "the target wants CHAP or does not admit this host: give device-config:chapuser and chappassword, or add initiator " + initiator + " to the target's ACL"
		} else {
			fix = "check device-config:chapuser and chappassword"
			if c.mutual != nil {
				fix += ", and incoming_chapuser and incoming_chappassword (what the target must answer with for mutual CHAP),"
			}
			fix += " against the target's settings, and that the target's ACL admits this host's initiator " + initiator
		}
	case host.KindNotFound:
		fix = "the target refused initiator " + initiator + ": check its ACL or host group on the array, and its session limits"
	case host.KindUnsupported:
		fix = "install iscsi-initiator-utils (Debian: open-iscsi) and start iscsid: systemctl start iscsid.service; see journalctl -u iscsid"
	case host.KindUnreachable, host.KindTimeout:
		fix = "check the portal addresses and port, that the array's iSCSI service listens there, and the storage network from this host (ping; nc -zv <address> <port>)"
	default:
		fix = "run one login by hand to read iscsiadm's message: iscsiadm -m node -T " + c.iqn + " -p " + c.portals[0].String() + " --login"
	}
	return host.Errorf(kind, op, msg, fix, errors.Join(causes...))
}

// offeredIQNs asks every portal for its IQNs; ok is false when none answered.
func (t *Transport) offeredIQNs(ctx context.Context, op string, c *config) ([]string, bool) {
	var iqns []string
	ok := false
	for i, p := range c.portals {
		recs, err := t.discover(ctx, op, c, p, c.ifacesFor(i))
		if err != nil {
			continue
		}
		ok = true
		for _, r := range recs {
			iqns = appendOnce(iqns, r.iqn)
		}
	}
	sort.Strings(iqns)
	return iqns, ok
}

func portalList(ps []Portal) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// waitDisks scans the sessions of the paths and waits until every logged-in
// one shows the LUN, or the deadline passes with at least one that does.
func (t *Transport) waitDisks(ctx context.Context, op string, c *config, paths []path) ([]session, []disk, error) {
	start := time.Now()
	deadline := start.Add(t.timing.DeviceWait)
	scans := map[int]int{}
	for {
		sessions, err := t.sys.sessions()
		if err != nil {
			return nil, nil, host.Errorf(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
		}
		var disks []disk
		var others []lun
		waiting := 0
		for _, s := range ourSessions(sessions, paths) {
			ds := lunDisks(s, c.wwid)
			if len(ds) > 0 {
				disks = append(disks, ds...)
				continue
			}
			for _, d := range s.disks {
				others = append(others, lun{wwid: d.wwid, lun: d.lun, vendor: d.vendor, model: d.model, size: d.size})
			}
			if s.state != sessionLoggedIn {
				continue
			}
			waiting++
			// One scan at once, one more halfway: sd may still be
			// attaching what the first one found.
			if scans[s.sid] == 0 || scans[s.sid] == 1 && time.Since(start) > t.timing.DeviceWait/2 {
				scans[s.sid]++
				t.scanHost(ctx, s.host)
			}
		}
		if waiting == 0 && len(disks) > 0 {
			return sessions, disks, nil
		}
		if time.Now().After(deadline) || sleep(ctx, t.timing.Poll) != nil {
			if len(disks) > 0 {
				t.log.Warn("the LUN did not appear on every session in time", zap.Int("sessions_without_it", waiting))
				return sessions, disks, nil
			}
			return nil, nil, host.Errorf(host.KindNotFound, op, fmt.Sprintf("LUN %s did not appear within %s on target %s; the sessions show: %s",
				c.wwid, t.timing.DeviceWait, c.iqn, orNone(describeLUNs(dedupeLUNs(others)))),
				"check device-config:SCSIid (xe sr-probe-ext lists the LUNs) and the LUN mapping for this host's initiator on the array", nil)
		}
	}
}

// scanHost asks a session's SCSI host for its LUNs, bounded: a scan on a
// session that fails under it can block in the kernel.
func (t *Transport) scanHost(ctx context.Context, hostNo int) {
	if err := within(ctx, t.timing.Command, func() error { return t.sys.scanHost(hostNo) }); err != nil {
		t.log.Warn("SCSI host scan failed", zap.Int("host", hostNo), zap.Error(err))
	}
}

// rollback undoes the sessions of paths that were not there before: their
// disks go (with a map multipathd may have built for them, if idle), then
// the session; last, the node records of paths left without a session.
func (t *Transport) rollback(ctx context.Context, before []session, paths []path) {
	defer t.forgetNodes(ctx, paths)
	now, err := t.sys.sessions()
	if err != nil {
		return
	}
	var created []session
	for _, s := range ourSessions(now, paths) {
		if !slices.ContainsFunc(before, func(b session) bool { return b.sid == s.sid }) {
			created = append(created, s)
		}
	}
	own := map[string]bool{}
	for _, s := range created {
		for _, d := range s.disks {
			own[d.name] = true
		}
	}
	maps, _ := t.sys.maps()
	for i := range maps {
		m := &maps[i]
		mine := len(m.slaves) > 0
		for _, sl := range m.slaves {
			mine = mine && own[sl]
		}
		if mine && len(m.holders) == 0 {
			if err := t.flushMap(ctx, "iscsi-ng cleanup", m); err != nil {
				t.log.Warn("cannot flush a map built during probe", zap.String("map", m.name), zap.Error(err))
			}
		}
	}
	for _, s := range created {
		for _, d := range s.disks {
			if len(d.holders) == 0 {
				_ = within(ctx, t.timing.Command, func() error { return t.sys.deleteDisk(d.name) })
			}
		}
		if err := t.logout(ctx, s.sid); err != nil {
			t.log.Warn("cannot log out a session made during probe", zap.Int("sid", s.sid), zap.Error(err))
		}
	}
}

// forgetNodes deletes the node records of paths that have no session, so
// that the CHAP secrets they hold do not stay on disk; the next attach
// writes them again.
func (t *Transport) forgetNodes(ctx context.Context, paths []path) {
	now, err := t.sys.sessions()
	if err != nil {
		return
	}
	for _, p := range realPaths(paths) {
		if hasSession(now, p) {
			continue
		}
		if err := t.deleteNode(ctx, p); err != nil {
			t.log.Warn("cannot delete node record", zap.String("path", p.String()), zap.Error(err))
		}
	}
}

// devicePath waits for the map's device node and returns its stable name:
// /dev/mapper/<wwid> (the alias sanvol gives the map), or the by-id link
// when the host named the map otherwise.
func (t *Transport) devicePath(ctx context.Context, op string, c *config, m *dmMap) (string, error) {
	dev := "/dev/mapper/" + m.name
	if m.name != c.wwid {
		dev = "/dev/disk/by-id/dm-uuid-mpath-" + m.wwid
		t.log.Warn("the map kept a host-specific name; using its by-id link", zap.String("map", m.name))
	}
	deadline := time.Now().Add(t.timing.MapWait)
	for !t.root.Exists(dev) {
		if time.Now().After(deadline) || sleep(ctx, t.timing.Poll) != nil {
			return "", host.Errorf(host.KindTimeout, op, "multipath map "+m.name+" has no device node "+dev,
				"check that udev runs (udevadm settle; ls -l /dev/mapper /dev/disk/by-id)", nil)
		}
	}
	return dev, nil
}

// settle waits for udev to process queued events, so that multipathd has
// seen new disks before a device is picked for inspection.
func (t *Transport) settle(ctx context.Context) {
	if _, err := t.run.Run(ctx, host.Cmd{Name: "udevadm", Args: []string{"settle", "--timeout=10"}, Timeout: 15 * time.Second}); err != nil {
		t.log.Debug("udevadm settle failed", zap.Error(err))
	}
}

// ensureIfaces creates the iface records of the NIC bindings.
func (t *Transport) ensureIfaces(ctx context.Context, op string, c *config) error {
	for _, nic := range c.nics() {
		if err := t.ensureIface(ctx, op, nic); err != nil {
			return err
		}
	}
	return nil
}

var lockNameRE = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// lockTargets takes the host-wide lock of every target of the paths, in
// sorted order so that two calls never wait on each other crosswise. It
// makes login, scan, map and logout decisions of one target atomic on the
// host: two SR.attach calls at once give one session per portal.
func (t *Transport) lockTargets(ctx context.Context, op string, paths []path) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, t.timing.LockWait)
	defer cancel()
	var unlocks []func()
	release := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	for _, iqn := range sortedIQNs(paths) {
		if iqn == wildcardIQN {
			continue
		}
		u, err := t.locks.Lock(lctx, "iscsi-target-"+lockNameRE.ReplaceAllString(iqn, "_"))
		if err != nil {
			release()
			return nil, host.Errorf(host.KindBusy, op, "another sanvol call on target "+iqn+" did not finish within "+t.timing.LockWait.String(),
				"retry; if it persists, look for a hung iscsiadm or multipath (ps -ef)", err)
		}
		unlocks = append(unlocks, u)
	}
	return release, nil
}

// initiatorName reads the host's initiator IQN.
func (t *Transport) initiatorName(op string) (string, error) {
	b, err := t.root.ReadFile(initiatorFile)
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "InitiatorName="); ok && strings.TrimSpace(v) != "" {
				return strings.TrimSpace(v), nil
			}
		}
	}
	return "", host.Errorf(host.KindUnsupported, op, "this host has no iSCSI initiator name in "+initiatorFile,
		"on XCP-ng set it with xe host-param-set uuid=<host> other-config:iscsi_iqn=<unique iqn>; elsewhere echo InitiatorName=$(iscsi-iname) > "+initiatorFile+" and restart iscsid. Every host needs its own: shared IQNs corrupt data", err)
}

// --- the record of planned paths ---------------------------------------

type attachState struct {
	WWID  string `json:"wwid"`
	Paths []path `json:"paths"`
}

func statePath(wwid string) string {
	return stateDir + "/" + lockNameRE.ReplaceAllString(wwid, "_") + ".json"
}

func (t *Transport) saveState(c *config, paths []path) error {
	b, err := json.Marshal(attachState{WWID: c.wwid, Paths: paths})
	if err != nil {
		return err
	}
	return t.root.WriteFileAtomic(statePath(c.wwid), b, 0o644)
}

func (t *Transport) loadState(wwid string) ([]path, bool) {
	b, err := t.root.ReadFile(statePath(wwid))
	if err != nil {
		return nil, false
	}
	var s attachState
	if err := json.Unmarshal(b, &s); err != nil || s.WWID != wwid || len(s.Paths) == 0 {
		return nil, false
	}
	return s.Paths, true
}

func (t *Transport) removeState(wwid string) {
	if err := t.root.Remove(statePath(wwid)); err != nil {
		t.log.Debug("cannot remove attach record", zap.Error(err))
	}
}

// --- small helpers -----------------------------------------------------

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

func dedupeLUNs(in []lun) []lun {
	var out []lun
	for _, l := range in {
		if !slices.ContainsFunc(out, func(o lun) bool { return o.wwid == l.wwid }) {
			out = append(out, l)
		}
	}
	return out
}

func appendOnce(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

func copyConfig(cfg map[string]string) map[string]string {
	out := make(map[string]string, len(cfg)+2)
	for k, v := range cfg {
		out[k] = v
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func firstError(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return host.Errorf(host.KindInvalid, "iscsi-ng", "device-config:target gives no usable portal", "give at least one portal address", nil)
}

// within runs a blocking sysfs write with a deadline. The kernel may block
// such a write (a scan or delete on a failing session); the call then
// returns and the goroutine finishes whenever the kernel lets it.
func within(ctx context.Context, d time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("%w after %s", host.ErrTimeout, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

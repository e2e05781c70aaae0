package iscsi

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Probe discovers what a partial device-config reaches: without targetIQN
// the target IQNs of the portals, with it the LUNs, each inspected for an
// existing sanvol SR. What the probe logs in, it logs out again.
func (t *Transport) Probe(ctx context.Context, cfg map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	const op = "SR.probe: iscsi-ng"
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
	if c.TargetIQN == "" {
		return t.probeTargets(ctx, op, c, cfg)
	}
	luns, err := t.listLUNs(ctx, op, c, inspect)
	if err != nil {
		return nil, err
	}
	var out []transport.Candidate
	for _, l := range luns {
		conf := copyConfig(cfg)
		conf[KeySCSIid] = l.wwid
		cand := transport.Candidate{Configuration: conf, Complete: true, SR: l.sr, Extra: l.extra(c)}
		out = append(out, cand)
	}
	return out, nil
}

// probeTargets lists the IQNs the portals offer.
func (t *Transport) probeTargets(ctx context.Context, op string, c *Config, cfg map[string]string) ([]transport.Candidate, error) {
	byIQN := map[string][]record{}
	var errs []error
	for i, p := range c.Portals {
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
		return nil, host.NewError(host.KindNotFound, op, "the portals offer no target to this host", "check that the array exports a target on these portals and that its ACL admits this host's initiator name", nil)
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
		conf[KeyTargetIQN] = iqn
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
		conf[KeyTargetIQN] = wildcardIQN
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

func (l lun) extra(c *Config) map[string]string {
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
func (t *Transport) listLUNs(ctx context.Context, op string, c *Config, inspect transport.Inspector) ([]lun, error) {
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
		return nil, host.NewError(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
	}
	defer t.rollback(ctx, before, paths)
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
		if c.WWID == "" || w == c.WWID {
			luns = append(luns, *byWWID[w])
		}
	}
	if c.WWID != "" && len(luns) == 0 {
		var all []lun
		for _, w := range order {
			all = append(all, *byWWID[w])
		}
		return nil, host.NewError(host.KindNotFound, op, fmt.Sprintf("LUN %s is not visible through target %s; visible: %s", c.WWID, c.TargetIQN, noneIfEmpty(describeLUNs(all))),
			"check device-config:SCSIid, and the LUN mapping for initiator "+initiator+" on the array", nil)
	}
	if len(luns) == 0 {
		return nil, host.NewError(host.KindNotFound, op, "target "+c.TargetIQN+" shows no LUN to this host",
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
	prev, stable := "", 0
	wctx, cancel := context.WithTimeout(ctx, t.to.DeviceWait)
	defer cancel()
	_ = host.Poll(wctx, t.to.Poll, func(context.Context) (bool, error) {
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
		return stable >= 3, nil
	})
	return sessions
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

func dedupeLUNs(in []lun) []lun {
	var out []lun
	for _, l := range in {
		if !slices.ContainsFunc(out, func(o lun) bool { return o.wwid == l.wwid }) {
			out = append(out, l)
		}
	}
	return out
}

func copyConfig(cfg map[string]string) map[string]string {
	out := make(map[string]string, len(cfg)+2)
	for k, v := range cfg {
		out[k] = v
	}
	return out
}

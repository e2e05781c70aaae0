package iscsi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// initiatorFile is where open-iscsi (and XCP-ng, from
// host.other_config:iscsi_iqn) keeps the host's initiator name.
const initiatorFile = "/etc/iscsi/initiatorname.iscsi"

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
	return "", host.NewError(host.KindUnsupported, op, "this host has no iSCSI initiator name in "+initiatorFile,
		"on XCP-ng set it with xe host-param-set uuid=<host> other-config:iscsi_iqn=<unique iqn>; elsewhere echo InitiatorName=$(iscsi-iname) > "+initiatorFile+" and restart iscsid. Every host needs its own: shared IQNs corrupt data", err)
}

// ensureIfaces creates the iface records of the NIC bindings.
func (t *Transport) ensureIfaces(ctx context.Context, op string, c *Config) error {
	for _, nic := range c.NICs() {
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
	lctx, cancel := context.WithTimeout(ctx, t.to.Lock)
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
		u, err := t.locker.Lock(lctx, "iscsi-target-"+lockNameRE.ReplaceAllString(iqn, "_"))
		if err != nil {
			release()
			return nil, host.NewError(host.KindBusy, op, "another sanvol call on target "+iqn+" did not finish within "+t.to.Lock.String(),
				"retry; if it persists, look for a hung iscsiadm or multipath (ps -ef)", err)
		}
		unlocks = append(unlocks, u)
	}
	return release, nil
}

// connect sets up the node record of every path without a session and
// logs them in, in parallel: a dead portal costs one login timeout, not
// one per portal. Each path is tried once; iscsid's
// initial_login_retry_max is the only retry, and it never retries an
// authentication failure.
func (t *Transport) connect(ctx context.Context, op string, c *Config, paths []path, before []session) []*loginError {
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
func (t *Transport) loginFailure(ctx context.Context, op string, c *Config, initiator string, fails []*loginError) error {
	// Busy (iscsiadm's node database held by another iscsiadm) ranks
	// lowest: any other failure says more about the SR.
	rank := map[host.Kind]int{host.KindAuth: 6, host.KindNotFound: 5, host.KindUnsupported: 4, host.KindUnreachable: 3, host.KindTimeout: 2, host.KindBusy: 1}
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
	msg := "no path to target " + c.TargetIQN + " logged in: " + strings.Join(parts, "; ")
	var fix string
	// LIO answers an unknown IQN by dropping the connection, which
	// iscsiadm reports as a timeout: whatever the kind, a portal that
	// answers discovery without the IQN means the IQN is wrong.
	if kind != host.KindUnsupported {
		if offered, ok := t.offeredIQNs(ctx, op, c); ok && c.TargetIQN != wildcardIQN && !slices.Contains(offered, c.TargetIQN) {
			return host.NewError(host.KindNotFound, op, fmt.Sprintf("target %s is not offered at %s; the portals offer: %s",
				c.TargetIQN, portalsText(c.Portals), noneIfEmpty(strings.Join(offered, ", "))),
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
	case host.KindBusy:
		// The path's own advice (which lock, how to wait) is kept.
	case host.KindUnreachable, host.KindTimeout:
		fix = "check the portal addresses and port, that the array's iSCSI service listens there, and the storage network from this host (ping; nc -zv <address> <port>)"
	default:
		fix = "run one login by hand to read iscsiadm's message: iscsiadm -m node -T " + c.TargetIQN + " -p " + c.Portals[0].String() + " --login"
	}
	return host.NewError(kind, op, msg, fix, errors.Join(causes...))
}

// offeredIQNs asks every portal for its IQNs; ok is false when none answered.
func (t *Transport) offeredIQNs(ctx context.Context, op string, c *Config) ([]string, bool) {
	var iqns []string
	ok := false
	for i, p := range c.Portals {
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

// portalsText lists portals for a message (nvme's portalList writes a
// device-config:target value instead).
func portalsText(ps []Portal) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// rollback undoes the sessions of paths that were not there before: their
// disks go (with a map multipathd may have built for them, if idle), then
// the session; last, the node records of paths left without a session.
func (t *Transport) rollback(ctx context.Context, before []session, paths []path) {
	ctx, cancel := host.RollbackContext(ctx, t.to.Rollback)
	defer cancel()
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
			if err := t.flushMap(ctx, "iscsi-ng: rollback", m); err != nil {
				t.log.Warn("cannot flush a map built during probe", zap.String("map", m.name), zap.Error(err))
			}
		}
	}
	for _, s := range created {
		for _, d := range s.disks {
			if len(d.holders) == 0 {
				_ = within(ctx, t.to.Command, func() error { return t.sys.deleteDisk(d.name) })
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

func firstError(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return host.NewError(host.KindInvalid, "iscsi-ng", "device-config:target gives no usable portal", "give at least one portal address", nil)
}

func appendOnce(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// noneIfEmpty is a list already joined for a message, or "none".
func noneIfEmpty(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

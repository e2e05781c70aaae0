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
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// SRType is the SR type admins give to `xe sr-create type=`.
const SRType = "iscsi-ng"

// Deps are the host services the transport uses.
type Deps struct {
	Runner   host.Runner
	Root     host.Root
	Locker   host.Locker
	Secrets  host.SecretResolver // resolves chappassword_secret and incoming_chappassword_secret
	Log      *zap.Logger
	Timeouts Timeouts // zero fields take DefaultTimeouts (see withDefaults)
	// Lookup resolves host names in device-config:target; nil uses the
	// system resolver.
	Lookup func(ctx context.Context, name string) ([]string, error)
	// Capacity reads a LUN's capacity from one of its disks; nil asks
	// the disk with SG_IO (scsiCapacity).
	Capacity CapacityFunc
	// SMAPIv1 lists the pool's SMAPIv1 iSCSI SRs through XenAPI, for
	// SR.create's pool-wide check (smshared.go); nil checks this host's
	// sm reference files only.
	SMAPIv1 host.SMAPIv1SRs
}

// Transport implements transport.Transport for iSCSI with dm-multipath.
type Transport struct {
	run     host.Runner
	root    host.Root
	sys     sysfs
	locker  host.Locker
	secrets host.SecretResolver
	log     *zap.Logger
	to      Timeouts
	lookup  func(ctx context.Context, name string) ([]string, error)
	// capacity reads a LUN's size cheaply, for Rescan.
	capacity CapacityFunc
	smapiv1  host.SMAPIv1SRs
}

var _ transport.Transport = (*Transport)(nil)

// New returns the iscsi-ng transport.
func New(d Deps) *Transport {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Lookup == nil {
		d.Lookup = net.DefaultResolver.LookupHost
	}
	to := d.Timeouts.withDefaults()
	if d.Capacity == nil {
		d.Capacity = scsiCapacity(d.Root, to.Command)
	}
	return &Transport{
		run: d.Runner, root: d.Root, sys: sysfs{root: d.Root}, locker: d.Locker, secrets: d.Secrets,
		log: d.Log.Named("iscsi"), to: to, lookup: d.Lookup, capacity: d.Capacity,
		smapiv1: d.SMAPIv1,
	}
}

// Type is the SR type.
func (t *Transport) Type() string { return SRType }

// Prepare validates a create-time device-config and returns the LUN's
// identity. Without SCSIid it logs in to list the LUNs and takes the only
// one; with several it asks the admin to choose.
func (t *Transport) Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	const op = "SR.create: iscsi-ng"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, secrets: true})
	if err != nil {
		return nil, err
	}
	if err := t.refuseSMShared(ctx, op, c); err != nil {
		return nil, err
	}
	if c.WWID != "" {
		return map[string]string{KeySCSIid: c.WWID}, nil
	}
	luns, err := t.listLUNs(ctx, op, c, nil)
	if err != nil {
		return nil, err
	}
	if len(luns) == 1 {
		return map[string]string{KeySCSIid: luns[0].wwid}, nil
	}
	return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:SCSIid is missing and target %s has %d LUNs: %s", c.TargetIQN, len(luns), describeLUNs(luns)),
		"add device-config:SCSIid=<one of them> (xe sr-probe-ext lists them with their sizes)", nil)
}

// DeviceID is the LUN's WWID: two SRs with the same SCSIid share the LUN,
// its multipath map and its drop-in stanza, whatever their portals.
func (t *Transport) DeviceID(cfg map[string]string) (string, error) {
	w := normaliseWWID(strings.TrimSpace(cfg[KeySCSIid]))
	if w == "" || !validWWID(w) {
		return "", host.NewError(host.KindInvalid, "iscsi-ng", "device-config:SCSIid is missing or not a SCSI WWID",
			"give the SCSIid of the LUN as xe sr-probe-ext lists it", nil)
	}
	return "wwid:" + strings.ToLower(w), nil
}

// Attach logs in to every path, finds the LUN's disks by WWID, makes sure
// its multipath map exists with this SR's settings, and returns the map.
func (t *Transport) Attach(ctx context.Context, cfg map[string]string) (transport.Device, error) {
	const op = "SR.attach: iscsi-ng"
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
		return transport.Device{}, host.NewError(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
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
	t.log.Info("attached", zap.String("wwid", c.WWID), zap.String("device", dev), zap.Int("live", h.Live), zap.Int("total", h.Total),
		zap.String("path_loss_policy", policyString(c.QueueSeconds)), zap.Duration("elapsed", time.Since(start)))
	return transport.Device{Path: dev, Health: h}, nil
}

// Detach flushes the LUN's map, deletes its disks and logs out the
// sessions that none of the other attached SRs (others) uses.
func (t *Transport) Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error {
	const op = "SR.detach: iscsi-ng"
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
			t.log.Warn("the LUN is in use by another attached SR; leaving it alone", zap.String("wwid", c.WWID))
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
		if err := within(ctx, t.to.Command, func() error { return t.sys.deleteDisk(d.name) }); err != nil {
			t.log.Warn("cannot delete SCSI disk", zap.String("disk", d.name), zap.Error(err))
		}
	}
	if _, err := t.setStanza(ctx, c.WWID, nil); err != nil {
		t.log.Warn("cannot remove the map's stanza from "+DropInPath, zap.Error(err))
	}
	if _, err := t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{"-w", c.WWID}, Timeout: t.to.Command}); err != nil {
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
		if oc.TargetIQN == wildcardIQN {
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
		if held := heldDisks(s, c.WWID); len(held) > 0 {
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
		return host.NewError(host.KindBusy, op, "the map is gone but sessions remain", "log them out by hand (iscsiadm -m session; iscsiadm -m session -r <sid> -u) or run SR.detach again", errors.Join(errs...))
	}
	t.removeState(c.WWID)
	return nil
}

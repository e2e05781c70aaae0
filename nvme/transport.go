// Package nvme is the NVMe/TCP transport of sanvol (SR type "nvmetcp"):
// it connects every portal of a subsystem with nvme-cli, relies on the
// kernel's native NVMe multipath, sets the subsystem's iopolicy, finds the
// namespace by its global identifier in sysfs, checks DH-HMAC-CHAP really
// is in force, and reports the state of each path.
package nvme

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// SRType is the SR type admins give to `xe sr-create type=`.
const SRType = "nvmetcp"

// Deps are the host services the transport uses.
type Deps struct {
	Runner  host.Runner
	Root    host.Root
	Locker  host.Locker
	Secrets host.SecretResolver // resolves dhchap-*password_secret uuids
	// Router derives host-iface when the admin gave none; nil disables
	// the derivation.
	Router   Router
	Log      *zap.Logger
	Timeouts Timeouts // zero fields take DefaultTimeouts
}

// Transport implements transport.Transport for NVMe/TCP.
type Transport struct {
	run     host.Runner
	root    host.Root
	sys     sysfs
	locker  host.Locker
	secrets host.SecretResolver
	router  Router
	log     *zap.Logger
	to      Timeouts
}

var _ transport.Transport = (*Transport)(nil)

// New returns the NVMe/TCP transport.
func New(d Deps) *Transport {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	return &Transport{
		run:     d.Runner,
		root:    d.Root,
		sys:     sysfs{root: d.Root},
		locker:  d.Locker,
		secrets: d.Secrets,
		router:  d.Router,
		log:     d.Log.Named("nvme"),
		to:      d.Timeouts.withDefaults(),
	}
}

func zapStr(k, v string) zap.Field { return zap.String(k, v) }

// Type is "nvmetcp".
func (t *Transport) Type() string { return SRType }

// ConfigKeys documents every device-config key.
func (t *Transport) ConfigKeys() map[string]string {
	return map[string]string{
		KeyTarget:         "Portal addresses of the subsystem, comma-separated: IPv4 or IPv6, as addr, addr:port or [v6addr]:port. Every portal is connected (one path each).",
		KeyPort:           "TCP port of the portals that do not name one (default 4420).",
		KeyDiscoveryPort:  "Port of the discovery service used by SR.probe (often 8009); default: the portal's port.",
		KeyNQN:            "Subsystem NQN (required for SR.create; SR.probe lists the subsystems the portals offer).",
		KeyNamespace:      "Namespace: NSID, NGUID, EUI-64 or UUID. SR.create stores the stable identity (uuid.<uuid> or eui.<nguid>); optional when the subsystem has one namespace.",
		KeyHostNQN:        "Host NQN (default: this host's /etc/nvme/hostnqn, generated once if absent). Applies to every host of the pool when set.",
		KeyHostID:         "Host ID, a UUID paired with hostnqn (default: /etc/nvme/hostid). Only with hostnqn.",
		KeyHostIface:      "Network interface(s) to bind the paths to: one for all portals, or one per portal in target order. Default with two or more portals: the interface of the route to each portal (none for a portal that is this host's own address); a single portal is not bound, so that its path follows a floating address.",
		KeyCtrlLossTmo:    "Seconds a lost path keeps reconnecting before the kernel removes it (default 1800; -1 = for ever, risks hung I/O).",
		KeyReconnectDelay: "Seconds between reconnect attempts of a lost path (default 10).",
		KeyKeepAliveTmo:   "NVMe keep-alive timeout in seconds (default: the kernel's).",
		KeyNrIOQueues:     "Number of I/O queues per path (default: the kernel's, one per CPU).",
		KeyIOPolicy:       "Native multipath I/O policy of the subsystem: round-robin (default), numa, or queue-depth (Linux 6.11+).",
		KeyDHCHAP:         "DH-HMAC-CHAP host key (DHHC-1:…), stored by xapi as a secret. Refused on kernels without NVMe in-band authentication.",
		KeyDHCHAPCtrl:     "DH-HMAC-CHAP controller key for bidirectional authentication (DHHC-1:…), stored by xapi as a secret.",
	}
}

// Prepare connects, finds the namespace and returns its stable identity
// as device-config:namespace. It leaves the host as it found it.
func (t *Transport) Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	const op = "SR.create: nvmetcp"
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true, secrets: t.secrets})
	if err != nil {
		return nil, err
	}
	s, err := t.connectAll(ctx, c, op)
	if err != nil {
		return nil, err
	}
	defer t.rollback(ctx, s)
	_, ns, err := t.waitNamespace(ctx, c, op)
	if err != nil {
		return nil, err
	}
	id, ok := ns.StableID()
	if !ok {
		return nil, host.NewError(host.KindUnsupported, op,
			fmt.Sprintf("namespace %d of %s reports no NGUID, EUI-64 or UUID, so it cannot be named the same way on every host", ns.NSID, c.NQN),
			"give the namespace a UUID or NGUID on the target (Linux nvmet: namespaces/N/device_uuid or device_nguid)", nil)
	}
	return map[string]string{KeyNamespace: id}, nil
}

// DeviceID is the subsystem NQN with the namespace's identifier (the
// stable id SR.create records, or an NSID if that is what the
// configuration gives).
func (t *Transport) DeviceID(cfg map[string]string) (string, error) {
	nqn := strings.TrimSpace(cfg[KeyNQN])
	ns, err := ParseNamespaceID(cfg[KeyNamespace])
	if err != nil || nqn == "" || ns.IsZero() {
		return "", host.NewError(host.KindInvalid, "nvmetcp", "device-config lacks nqn or namespace",
			"give device-config:nqn and device-config:namespace as SR.create recorded them (xe pbd-param-list)", err)
	}
	if ns.NSID != 0 {
		return fmt.Sprintf("%s/nsid:%d", nqn, ns.NSID), nil
	}
	return nqn + "/" + ns.Hex, nil
}

// Attach connects every portal, finds the namespace, sets the iopolicy
// and returns the device.
func (t *Transport) Attach(ctx context.Context, cfg map[string]string) (transport.Device, error) {
	const op = "SR.attach: nvmetcp"
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true, secrets: t.secrets})
	if err != nil {
		return transport.Device{}, err
	}
	start := time.Now()
	s, err := t.connectAll(ctx, c, op)
	if err != nil {
		return transport.Device{}, err
	}
	sub, ns, err := t.waitNamespace(ctx, c, op)
	if err == nil {
		err = t.setIOPolicy(sub, c.IOPolicy, op)
	}
	if err != nil {
		t.rollback(ctx, s)
		return transport.Device{}, err
	}
	path, err := t.devicePath(ctx, op, ns)
	if err != nil {
		t.rollback(ctx, s)
		return transport.Device{}, err
	}
	defer s.done()
	ctrls, _ := t.sys.controllers()
	h := pathHealth(s.cfg, s.id, ctrls, s.failures)
	dev := transport.Device{Path: path, Health: h}
	t.log.Info("attached", zapStr("nqn", c.NQN), zapStr("device", dev.Path), zapStr("health", h.Detail), zap.Duration("elapsed", time.Since(start)))
	return dev, nil
}

// Detach disconnects the subsystem's controllers of this host identity,
// unless another attached SR uses the same subsystem.
func (t *Transport) Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error {
	const op = "SR.detach: nvmetcp"
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true})
	if err != nil {
		return err
	}
	for _, o := range others {
		if strings.TrimSpace(o[KeyNQN]) == c.NQN {
			t.log.Info("subsystem still used by another SR; leaving it connected", zapStr("nqn", c.NQN))
			return nil
		}
	}
	unlock, err := transport.Lock(ctx, t.locker, t.to.Lock, op, lockName(c.NQN), "another operation on subsystem "+c.NQN)
	if err != nil {
		return err
	}
	defer unlock()
	id, err := t.identity(ctx, c, false)
	if err != nil {
		return err
	}
	if sub, found, err := t.sys.subsystemByNQN(c.NQN); err == nil && found {
		for _, h := range sub.Heads {
			if ns := t.sys.namespace(h); len(ns.Holders) > 0 {
				return host.NewError(host.KindBusy, op,
					fmt.Sprintf("/dev/%s of subsystem %s is still in use by %s", h, c.NQN, strings.Join(ns.Holders, ", ")),
					"deactivate the SR's logical volumes first (lvs; dmsetup ls --tree), then detach again", nil)
			}
		}
	}
	ctrls, err := t.sys.controllers()
	if err != nil {
		return host.NewError(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
	}
	var errs []string
	for _, ctrl := range ctrls {
		if ctrl.SubsysNQN != c.NQN || (id.HostNQN != "" && ctrl.HostNQN != "" && ctrl.HostNQN != id.HostNQN) {
			continue
		}
		if err := t.disconnect(ctx, c, ctrl.Name); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		t.log.Info("disconnected", zapStr("ctrl", ctrl.Name), zapStr("portal", ctrl.Portal()))
	}
	if len(errs) > 0 {
		return host.NewError(host.KindBusy, op, "some paths of "+c.NQN+" could not be disconnected", "check dmesg and retry the detach", errors.New(strings.Join(errs, "; ")))
	}
	return nil
}

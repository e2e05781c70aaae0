// Package nvme is the NVMe/TCP transport of sanvol (SR type "nvmetcp"):
// it connects every portal of a subsystem with nvme-cli, relies on the
// kernel's native NVMe multipath, sets the subsystem's iopolicy, finds the
// namespace by its global identifier in sysfs, checks DH-HMAC-CHAP really
// is in force, and reports the state of each path.
package nvme

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"syscall"
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
		KeyHostIface:      "Network interface(s) to bind the paths to: one for all portals, or one per portal in target order. Default: the interface of the route to each portal.",
		KeyCtrlLossTmo:    "Seconds a lost path keeps reconnecting before the kernel removes it (default 1800; -1 = for ever, risks hung I/O).",
		KeyReconnectDelay: "Seconds between reconnect attempts of a lost path (default 10).",
		KeyKeepAliveTmo:   "NVMe keep-alive timeout in seconds (default: the kernel's).",
		KeyNrIOQueues:     "Number of I/O queues per path (default: the kernel's, one per CPU).",
		KeyIOPolicy:       "Native multipath I/O policy of the subsystem: round-robin (default), numa, or queue-depth (Linux 6.11+).",
		KeyDHCHAP:         "DH-HMAC-CHAP host key (DHHC-1:…), stored by xapi as a secret. Refused on kernels without NVMe in-band authentication.",
		KeyDHCHAPCtrl:     "DH-HMAC-CHAP controller key for bidirectional authentication (DHHC-1:…), stored by xapi as a secret.",
	}
}

// ---------------------------------------------------------------------
// Kernel checks

const kernelFix = "boot a dom0 kernel 5.0 or newer built with CONFIG_NVME_TCP and CONFIG_NVME_MULTIPATH=y (5.14+ for host-iface; Linux 6.0+ with CONFIG_NVME_AUTH/CONFIG_NVME_HOST_AUTH for DH-HMAC-CHAP). XCP-ng 8.3's 4.19 dom0 kernel has no nvme-tcp"

func (t *Transport) kernelRelease() string {
	if r, err := t.root.ReadString(procOSRelease); err == nil && r != "" {
		return r
	}
	return "unknown"
}

// checkKernel makes sure this kernel can be an NVMe/TCP host with native
// multipath. It loads nvme-tcp if needed; a module that is not there
// fails at once instead of letting `nvme connect` print a bare error.
func (t *Transport) checkKernel(ctx context.Context, op string) error {
	rel := t.kernelRelease()
	if !t.root.Exists(sysModNVMeTCP) {
		_, err := t.run.Run(ctx, host.Cmd{Name: "modprobe", Args: []string{"nvme-tcp"}, Timeout: t.to.Modprobe})
		if err != nil {
			return host.Errorf(host.KindUnsupported, op,
				"kernel "+rel+" cannot load the NVMe/TCP host module nvme-tcp", kernelFix, err)
		}
	}
	if !t.root.Exists(devFabrics) {
		if _, err := t.run.Run(ctx, host.Cmd{Name: "modprobe", Args: []string{"nvme-fabrics"}, Timeout: t.to.Modprobe}); err != nil || !t.root.Exists(devFabrics) {
			return host.Errorf(host.KindUnsupported, op, devFabrics+" is missing on kernel "+rel,
				"load nvme-fabrics (modprobe nvme-fabrics) and check that devtmpfs/udev create "+devFabrics+"; "+kernelFix, err)
		}
	}
	mp, err := t.root.ReadString(sysMultipathParam)
	switch {
	case err != nil:
		return host.Errorf(host.KindUnsupported, op,
			"kernel "+rel+" has no native NVMe multipath ("+sysMultipathParam+" is missing: CONFIG_NVME_MULTIPATH is off)",
			"boot a kernel built with CONFIG_NVME_MULTIPATH=y", nil)
	case mp != "Y" && mp != "y" && mp != "1":
		return host.Errorf(host.KindUnsupported, op,
			"native NVMe multipath is off (nvme_core multipath="+mp+"), so each path would be a separate disk",
			"echo 'options nvme_core multipath=Y' > /etc/modprobe.d/nvme-multipath.conf, rebuild the initrd (dracut -f) and reboot: the parameter cannot change while NVMe controllers exist", nil)
	}
	return nil
}

// fabricsOptions lists the connect options the kernel accepts, which
// reading /dev/nvme-fabrics prints since Linux 5.17 (libnvme uses it the
// same way). nil means the kernel does not say.
func (t *Transport) fabricsOptions() map[string]bool {
	s, err := t.root.ReadString(devFabrics)
	if err != nil || s == "" {
		return nil
	}
	out := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, _, _ := strings.Cut(strings.TrimSpace(f), "=")
		out[k] = true
	}
	return out
}

// authSupport says whether the kernel can do NVMe in-band authentication,
// from its build configuration: CONFIG_NVME_HOST_AUTH since 6.7,
// CONFIG_NVME_AUTH before. known=false when the config is not readable;
// the per-controller dhchap_secret attribute then decides after connect.
func (t *Transport) authSupport() (ok, known bool) {
	b, err := t.root.ReadFile("/boot/config-" + t.kernelRelease())
	if err != nil {
		return false, false
	}
	cfg := string(b)
	if strings.Contains(cfg, "CONFIG_NVME_HOST_AUTH") {
		return strings.Contains(cfg, "CONFIG_NVME_HOST_AUTH=y"), true
	}
	return strings.Contains(cfg, "CONFIG_NVME_AUTH=y") || strings.Contains(cfg, "CONFIG_NVME_AUTH=m"), true
}

func (t *Transport) authRefusal(op, what string) error {
	return host.Errorf(host.KindUnsupported, op,
		"DH-HMAC-CHAP is configured but kernel "+t.kernelRelease()+" cannot authenticate NVMe connections (no CONFIG_NVME_AUTH/CONFIG_NVME_HOST_AUTH); "+what+
			". sanvol refuses rather than connect without authentication",
		"boot a kernel with NVMe in-band authentication (Linux 6.0+ built with CONFIG_NVME_HOST_AUTH, e.g. Debian bookworm-backports 6.12), or remove dhchap-password from the device-config if the target does not require it", nil)
}

// ---------------------------------------------------------------------
// Connecting

// session is the result of connecting the portals of one subsystem. It
// holds the subsystem lock until done is called.
type session struct {
	cfg      Config
	id       Identity
	created  []string         // controllers this call made
	failures map[string]error // portal -> why it could not be connected
	unlock   func()
}

func (s *session) done() {
	if s.unlock != nil {
		s.unlock()
		s.unlock = nil
	}
}

func lockName(nqn string) string {
	h := sha256.Sum256([]byte(nqn))
	return "nvme-subsys-" + hex.EncodeToString(h[:8])
}

// ctrlUsable is false for controllers on their way out: the kernel does
// not count them as duplicates, and they will never carry I/O again.
func ctrlUsable(state string) bool {
	return !strings.HasPrefix(state, "deleting") && state != "dead"
}

// pathMatches reports whether ctrl is the path to portal p of c for this
// host identity. A derived interface is only a preference, so an unbound
// existing path satisfies it; an explicit one must match.
func pathMatches(ctrl Controller, c Config, id Identity, p Portal) bool {
	if ctrl.SubsysNQN != c.NQN || ctrl.Transport != "tcp" || ctrl.TrSvcID != strconv.Itoa(p.Port) {
		return false
	}
	a, err := netip.ParseAddr(ctrl.TrAddr)
	if err != nil || a.Unmap() != p.Addr {
		return false
	}
	if id.HostNQN != "" && ctrl.HostNQN != "" && ctrl.HostNQN != id.HostNQN {
		return false
	}
	if p.IfaceExplicit && ctrl.HostIface != p.Iface {
		return false
	}
	return true
}

// pathFor returns the best controller for portal p (live first).
func pathFor(ctrls []Controller, c Config, id Identity, p Portal) (Controller, bool) {
	var best Controller
	found := false
	for _, ctrl := range ctrls {
		if !pathMatches(ctrl, c, id, p) {
			continue
		}
		if !found || (ctrl.State == "live" && best.State != "live") || (!ctrlUsable(best.State) && ctrlUsable(ctrl.State)) {
			best, found = ctrl, true
		}
	}
	return best, found
}

// deriveIfaces fills in host-iface from the routing table for portals the
// admin did not bind, when the kernel accepts host_iface.
func (t *Transport) deriveIfaces(c *Config) {
	if t.router == nil {
		return
	}
	if opts := t.fabricsOptions(); !opts["host_iface"] {
		return
	}
	for i := range c.Portals {
		p := &c.Portals[i]
		if p.Iface != "" {
			continue
		}
		name, err := t.router.InterfaceFor(p.Addr)
		if err != nil {
			t.log.Warn("no route to portal; connecting without host-iface", zapStr("portal", p.String()), zap.Error(err))
			continue
		}
		p.Iface = name
	}
}

// connectAll connects every portal of c that has no usable path yet,
// under the subsystem's lock so that parallel attaches of SRs on the same
// subsystem connect each path exactly once. At least one path must end up
// usable; the others are reported in failures.
func (t *Transport) connectAll(ctx context.Context, c Config, op string) (*session, error) {
	if err := t.checkKernel(ctx, op); err != nil {
		return nil, err
	}
	if c.Auth() {
		if ok, known := t.authSupport(); known && !ok {
			return nil, t.authRefusal(op, "its build configuration has neither option")
		}
	}
	id, err := t.identity(ctx, c, true)
	if err != nil {
		return nil, err
	}
	t.deriveIfaces(&c)

	lctx, cancel := context.WithTimeout(ctx, t.to.Lock)
	unlock, err := t.locker.Lock(lctx, lockName(c.NQN))
	cancel()
	if err != nil {
		return nil, host.LockError(op, "another operation on subsystem "+c.NQN, err)
	}
	s := &session{cfg: c, id: id, failures: map[string]error{}, unlock: unlock}

	before, err := t.sys.controllers()
	if err != nil {
		s.done()
		return nil, host.Errorf(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
	}
	existed := map[string]bool{}
	for _, ctrl := range before {
		existed[ctrl.Name] = true
	}
	var todo []Portal
	for _, p := range c.Portals {
		if ctrl, ok := pathFor(before, c, id, p); ok && ctrlUsable(ctrl.State) {
			t.log.Debug("path already connected", zapStr("portal", p.String()), zapStr("ctrl", ctrl.Name), zapStr("state", ctrl.State))
			continue
		}
		todo = append(todo, p)
	}

	for p, err := range t.connectPortals(ctx, op, c, id, todo) {
		s.failures[p] = err
	}

	after, err := t.sys.controllers()
	if err != nil {
		t.rollback(ctx, s)
		return nil, host.Errorf(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
	}
	usable := 0
	for _, p := range c.Portals {
		ctrl, ok := pathFor(after, c, id, p)
		if ok && !existed[ctrl.Name] {
			s.created = append(s.created, ctrl.Name)
		}
		if ok && ctrlUsable(ctrl.State) {
			usable++
		}
	}
	if c.Auth() {
		if err := t.verifyAuth(op, s, after); err != nil {
			t.rollback(ctx, s)
			return nil, err
		}
	}
	if usable == 0 {
		err := t.allFailed(ctx, op, s)
		t.rollback(ctx, s)
		return nil, err
	}
	for p, err := range s.failures {
		t.log.Warn("path not connected; continuing degraded", zapStr("portal", p), zap.Error(err))
	}
	return s, nil
}

// connectPortals writes one connect per portal in parallel and
// returns the failures by portal. It waits at most the connect timeout
// (plus a grace for the runner to reap): a process stuck in the kernel's
// write to /dev/nvme-fabrics cannot be killed until the kernel gives up
// (60 s for a target that stops answering mid-authentication), and xapi
// must not wait for that. Such a straggler is reported as a timeout; if it
// succeeds later, the next attach adopts its path and detach removes it.
func (t *Transport) connectPortals(ctx context.Context, op string, c Config, id Identity, todo []Portal) map[string]error {
	type result struct {
		portal string
		err    error
	}
	timeout := t.connectTimeout(c)
	results := make(chan result, len(todo))
	for _, p := range todo {
		go func(p Portal) {
			err := t.fabricsConnect(p, connectOptions(c, p, id))
			switch {
			case err == nil:
				t.log.Info("connected", zapStr("portal", p.String()), zapStr("nqn", c.NQN), zapStr("iface", p.Iface))
			case isAlreadyConnected(err):
				t.log.Info("path already connected (nvme-cli)", zapStr("portal", p.String()))
				err = nil
			default:
				err = classifyConnect(op+": connect "+p.String(), p, c, err)
			}
			results <- result{p.String(), err}
		}(p)
	}
	failures := map[string]error{}
	pending := map[string]Portal{}
	for _, p := range todo {
		pending[p.String()] = p
	}
	wall := time.NewTimer(timeout + min(3*time.Second, timeout))
	defer wall.Stop()
	for len(pending) > 0 {
		select {
		case r := <-results:
			delete(pending, r.portal)
			if r.err != nil {
				failures[r.portal] = r.err
			}
		case <-wall.C:
			for name, p := range pending {
				fix := "check that the target answers on " + name + " (dmesg | grep nvme shows what the kernel is waiting for)"
				if c.DHCHAPCtrl != "" {
					fix = "a dhchap-ctrl-password the target does not hold makes the kernel wait for the target until its 60 s admin timeout (dmesg: \"controller authentication failed\"); check the controller key"
				}
				failures[name] = host.Errorf(host.KindUnreachable, op+": connect "+name,
					fmt.Sprintf("no answer from portal %s within %s", p, timeout), fix, nil)
			}
			return failures
		}
	}
	return failures
}

// fabricsConnect writes one connect to /dev/nvme-fabrics (see
// connectOptions for why sanvol does not run `nvme connect`). The caller
// bounds the wait (connectPortals) and answers at its deadline. A write
// stuck in the kernel (a target that stops answering mid-connect) cannot
// be interrupted, though, and the sanvol process cannot exit before it
// returns: xapi then gets the already decided failure only when the
// kernel gives up, after its 60 s admin timeout at most. With `nvme
// connect` the stuck process was a child that sanvol could abandon; that
// is the price of keeping the keys off every command line.
func (t *Transport) fabricsConnect(p Portal, opts string) error {
	b, err := t.root.WriteRead(devFabrics, []byte(opts))
	if err != nil {
		return err
	}
	name, err := parseInstance(b)
	if err != nil {
		return err
	}
	t.log.Debug("controller created", zapStr("portal", p.String()), zapStr("ctrl", name))
	return nil
}

// connectTimeout bounds one connect. With a controller key the kernel
// reports a key the target does not hold only after its 60 s admin
// timeout, and that precise error is worth the wait.
func (t *Transport) connectTimeout(c Config) time.Duration {
	if c.DHCHAPCtrl != "" && t.to.Connect < 70*time.Second {
		return 70 * time.Second
	}
	return t.to.Connect
}

// verifyAuth proves the kernel could authenticate every path of the
// subsystem. Linux 6.1 without CONFIG_NVME_AUTH accepts --dhchap-secret,
// connects without authenticating when the target does not insist, and
// `nvme connect` exits 0; only the missing dhchap_secret attribute (built
// only with NVME_AUTH) shows it. Paths made by someone else without the
// key are refused too, as they would carry the SR's I/O unauthenticated.
func (t *Transport) verifyAuth(op string, s *session, ctrls []Controller) error {
	for _, p := range s.cfg.Portals {
		ctrl, ok := pathFor(ctrls, s.cfg, s.id, p)
		if !ok {
			continue
		}
		if !ctrl.HasDHCHAP {
			return t.authRefusal(op, "path "+ctrl.Name+" to "+p.String()+" has no dhchap_secret attribute")
		}
		key := t.sys.attr(sysClassNVMe + "/" + ctrl.Name + "/dhchap_secret")
		if key != s.cfg.DHCHAP {
			what := "with a different DH-HMAC-CHAP key"
			if key == "" || key == "none" {
				what = "without DH-HMAC-CHAP"
			}
			return host.Errorf(host.KindAuth, op,
				"path "+ctrl.Name+" to "+p.String()+" was already connected "+what+", so it is not authenticated with this SR's key",
				"disconnect it (nvme disconnect -d "+ctrl.Name+") and plug the SR again", nil)
		}
	}
	return nil
}

// allFailed explains why no path could be made. When the portals answer
// but refuse the connect, the discovery log tells whether the NQN is
// wrong, which nvme-cli's errno text never says.
func (t *Transport) allFailed(ctx context.Context, op string, s *session) error {
	var parts []string
	kinds := map[host.Kind]int{}
	var first error
	for _, p := range s.cfg.Portals {
		err, ok := s.failures[p.String()]
		if !ok {
			err = fmt.Errorf("%s: the connect succeeded but no usable controller appeared in %s", p, sysClassNVMe)
		}
		if first == nil {
			first = err
		}
		kinds[host.KindOf(err)]++
		parts = append(parts, p.String()+": "+shortReason(err))
	}
	if kinds[host.KindAuth] > 0 {
		fix := ""
		for _, err := range s.failures {
			var he *host.Error
			if errors.As(err, &he) && he.Kind == host.KindAuth {
				fix = he.Fix
				break
			}
		}
		return host.Errorf(host.KindAuth, op, "the portals refused DH-HMAC-CHAP authentication for subsystem "+s.cfg.NQN+" (hostnqn "+s.id.HostNQN+")", fix, errors.New(strings.Join(parts, "; ")))
	}
	if kinds[host.KindUnsupported] > 0 || kinds[host.KindInvalid] > 0 {
		return first
	}
	for _, p := range s.cfg.Portals {
		var he *host.Error
		if errors.As(s.failures[p.String()], &he) && strings.HasPrefix(he.Msg, "cannot reach") {
			continue
		}
		recs, err := t.discover(ctx, s.cfg, s.id, p, p.Port)
		if err != nil {
			break
		}
		var offered []string
		for _, r := range recs {
			if r.IsNVMSubsystem() && validNQN(r.SubNQN) {
				if r.SubNQN == s.cfg.NQN {
					offered = nil
					break
				}
				offered = append(offered, r.SubNQN)
			}
		}
		if len(offered) > 0 {
			return host.Errorf(host.KindNotFound, op,
				"portal "+p.String()+" does not offer subsystem "+s.cfg.NQN+" (it offers "+strings.Join(dedup(offered), ", ")+")",
				"fix device-config:nqn; `xe sr-probe-ext type=nvmetcp device-config:target=…` lists the subsystems", nil)
		}
		break
	}
	return host.Errorf(host.KindUnreachable, op,
		fmt.Sprintf("no path to subsystem %s could be connected (%d portals tried within %s)", s.cfg.NQN, len(s.cfg.Portals), t.connectTimeout(s.cfg)),
		"check the portals, the NQN, and that the target allows this host's NQN "+s.id.HostNQN, errors.New(strings.Join(parts, "; ")))
}

// rollback disconnects the controllers this session made and releases
// the lock.
func (t *Transport) rollback(ctx context.Context, s *session) {
	defer s.done()
	for _, name := range s.created {
		if err := t.disconnect(ctx, s.cfg, name); err != nil {
			t.log.Warn("could not undo a connect", zapStr("ctrl", name), zap.Error(err))
		}
	}
	s.created = nil
}

// disconnect removes one controller; one already gone is success.
func (t *Transport) disconnect(ctx context.Context, c Config, name string) error {
	_, err := runNVMe(ctx, t.run, t.to.Disconnect, c, "disconnect", "--device="+name)
	if err != nil && t.root.Exists(sysClassNVMe+"/"+name) {
		return host.Errorf(host.KindBusy, "nvmetcp: disconnect "+name, "nvme disconnect failed", "check dmesg; the controller may be stuck reconnecting", err)
	}
	return nil
}

// ---------------------------------------------------------------------
// Namespaces

// waitNamespace waits for the subsystem's namespace head named by
// c.Namespace (or its only namespace when none is named). Namespaces are
// scanned asynchronously after the connect, so it polls sysfs.
func (t *Transport) waitNamespace(ctx context.Context, c Config, op string) (Subsystem, Namespace, error) {
	deadline := time.Now().Add(t.to.Namespace)
	var sub Subsystem
	var heads []Namespace
	stableSince := time.Time{}
	lastCount := -1
	for {
		var found bool
		var err error
		sub, found, err = t.sys.subsystemByNQN(c.NQN)
		if err != nil {
			return sub, Namespace{}, host.Errorf(host.KindInternal, op, "cannot read "+sysClassSubsys, "", err)
		}
		heads = heads[:0]
		if found {
			for _, h := range sub.Heads {
				heads = append(heads, t.sys.namespace(h))
			}
		}
		if !c.Namespace.IsZero() {
			for _, ns := range heads {
				if ns.Matches(c.Namespace) {
					return sub, ns, nil
				}
			}
		} else if len(heads) > 0 {
			// No namespace named: wait until the scan settles, so that a
			// second namespace still being scanned makes it ambiguous.
			if len(heads) != lastCount {
				lastCount, stableSince = len(heads), time.Now()
			} else if time.Since(stableSince) >= 10*t.to.Poll {
				if len(heads) == 1 {
					return sub, heads[0], nil
				}
				return sub, Namespace{}, host.Errorf(host.KindInvalid, op,
					fmt.Sprintf("subsystem %s has %d namespaces and device-config:namespace does not say which one (%s)", c.NQN, len(heads), describeHeads(heads)),
					"add device-config:namespace=<NSID, NGUID or UUID>", nil)
			}
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return sub, Namespace{}, host.Errorf(host.KindTimeout, op, "gave up waiting for the namespace", "", ctx.Err())
		case <-time.After(t.to.Poll):
		}
	}
	want := "any namespace"
	if !c.Namespace.IsZero() {
		want = "namespace " + c.Namespace.String()
	}
	have := "none"
	if len(heads) > 0 {
		have = describeHeads(heads)
	}
	return sub, Namespace{}, host.Errorf(host.KindNotFound, op,
		fmt.Sprintf("%s did not appear in subsystem %s within %s (it has: %s)", want, c.NQN, t.to.Namespace, have),
		"check that the target exports the namespace to this host and that device-config:namespace is right (nvme list-subsys; ls /sys/class/nvme-subsystem/*/)", nil)
}

func describeHeads(heads []Namespace) string {
	var parts []string
	for _, ns := range heads {
		id, _ := ns.StableID()
		parts = append(parts, fmt.Sprintf("%s nsid %d %s", ns.Name, ns.NSID, id))
	}
	return strings.Join(parts, ", ")
}

// setIOPolicy applies the iopolicy to the whole subsystem (the kernel
// has it per subsystem, so SRs on the same subsystem share it).
func (t *Transport) setIOPolicy(sub Subsystem, policy, op string) error {
	p := sysClassSubsys + "/" + sub.Name + "/iopolicy"
	cur := t.sys.attr(p)
	if cur == policy {
		return nil
	}
	if err := t.root.WriteFile(p, []byte(policy), 0o644); err != nil {
		fix := "use iopolicy=round-robin or numa"
		if policy == "queue-depth" {
			fix = "queue-depth needs Linux 6.11 or later; use iopolicy=round-robin"
		}
		return host.Errorf(host.KindUnsupported, op, "kernel "+t.kernelRelease()+" refused iopolicy "+policy+" for "+sub.Name, fix, err)
	}
	if got := t.sys.attr(p); got != policy {
		return host.Errorf(host.KindUnsupported, op, fmt.Sprintf("iopolicy of %s is %q after writing %q", sub.Name, got, policy), "check the kernel log", nil)
	}
	t.log.Info("iopolicy set", zapStr("subsystem", sub.Name), zapStr("iopolicy", policy))
	return nil
}

// byIDDir holds udev's persistent links; nvme-<wwid> names a namespace
// by the kernel's wwid attribute.
const byIDDir = "/dev/disk/by-id"

// devicePath returns the path handed to LVM and recorded by SR.attach:
// /dev/disk/by-id/nvme-<wwid> (nvme-uuid.<uuid> or nvme-eui.<nguid>),
// which names the namespace by its identity on every host, and never the
// head /dev/nvmeXnY, which names whatever namespace the kernel gives that
// number after a reconnect. udev makes the link (60-persistent-storage
// rules, systemd 230 and later; the lab's Debian 12 guest has it). Where
// it has not (an older udev, or a link left pointing at a head that is
// gone), sanvol makes the same link to the head it found by identity, so
// the path always exists and always leads to this namespace. The check
// runs at every attach and before every use of an attach record
// (ResolveDevice).
func (t *Transport) devicePath(ctx context.Context, op string, ns Namespace) (string, error) {
	if !strings.HasPrefix(ns.WWID, "uuid.") && !strings.HasPrefix(ns.WWID, "eui.") {
		return "", host.Errorf(host.KindUnsupported, op,
			fmt.Sprintf("the kernel names namespace %d (/dev/%s) by %q, not by its UUID or NGUID, so it has no stable path", ns.NSID, ns.Name, ns.WWID),
			"give the namespace a UUID or NGUID on the target (Linux nvmet: namespaces/N/device_uuid or device_nguid)", nil)
	}
	head := "/dev/" + ns.Name
	link := byIDDir + "/nvme-" + ns.WWID
	check := func() bool {
		target, err := t.root.EvalSymlinks(link)
		return err == nil && target == head
	}
	if check() {
		return link, nil
	}
	// udev may still be handling the new disk's uevent.
	_, _ = t.run.Run(ctx, host.Cmd{Name: "udevadm", Args: []string{"settle", "--timeout=5"}, Timeout: 7 * time.Second})
	if check() {
		return link, nil
	}
	if err := t.root.Remove(link); err == nil {
		_ = t.root.MkdirAll(byIDDir, 0o755)
		err = t.root.Symlink("../../"+ns.Name, link)
		if err == nil && check() {
			t.log.Info("udev made no by-id link for the namespace; made it", zapStr("link", link), zapStr("device", head))
			return link, nil
		}
	}
	return "", host.Errorf(host.KindInternal, op, fmt.Sprintf("cannot make %s point at %s", link, head),
		"check that /dev/disk/by-id is writable and that udev runs (udevadm settle; ls -l /dev/disk/by-id)", nil)
}

// ResolveDevice checks the device an attach record names before a call
// uses it, and returns the path to use: the by-id link of the namespace
// the configuration names, made to point at it (devicePath). A record of
// an older sanvol that holds a head name (/dev/nvmeXnY) is thereby
// migrated. When the namespace is not on this host (every path lost for
// longer than ctrl_loss_tmo), a by-id path is returned as recorded, for
// LVM to find nothing behind; a head name is refused, since the kernel
// may have given it to another namespace.
func (t *Transport) ResolveDevice(ctx context.Context, cfg map[string]string, recorded string) (string, error) {
	const op = "nvmetcp: check the SR's device"
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true})
	if err != nil {
		return "", err
	}
	if !c.Namespace.IsZero() {
		if sub, found, err := t.sys.subsystemByNQN(c.NQN); err == nil && found {
			for _, h := range sub.Heads {
				if ns := t.sys.namespace(h); ns.Matches(c.Namespace) {
					return t.devicePath(ctx, op, ns)
				}
			}
		}
	}
	if strings.HasPrefix(recorded, byIDDir+"/") {
		return recorded, nil
	}
	return "", host.Errorf(host.KindUnreachable, op,
		fmt.Sprintf("namespace %s of subsystem %s is not present on this host, and the attach record names the kernel device %s, which may now be another namespace", c.Namespace, c.NQN, recorded),
		"check the paths (nvme list-subsys) and the target; once the namespace is back, retry (sanvol then records its /dev/disk/by-id path)", nil)
}

// ---------------------------------------------------------------------
// transport.Transport

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
		return nil, host.Errorf(host.KindUnsupported, op,
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
		return "", host.Errorf(host.KindInvalid, "nvmetcp", "device-config lacks nqn or namespace",
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

// pathHealth counts the configured portals whose controller is live.
func pathHealth(c Config, id Identity, ctrls []Controller, failures map[string]error) transport.Health {
	h := transport.Health{ID: c.Namespace.StableID(), Total: len(c.Portals)}
	var bad []string
	for _, p := range c.Portals {
		ctrl, ok := pathFor(ctrls, c, id, p)
		switch {
		case ok && ctrl.State == "live":
			h.Live++
		case ok:
			bad = append(bad, p.String()+" "+ctrl.State)
		case failures[p.String()] != nil:
			bad = append(bad, p.String()+" not connected ("+reason(failures[p.String()])+")")
		default:
			bad = append(bad, p.String()+" not connected")
		}
	}
	h.Detail = fmt.Sprintf("%d of %d paths live", h.Live, h.Total)
	if len(bad) > 0 {
		h.Detail += ": " + strings.Join(bad, ", ")
	}
	return h
}

// shortReason is the kernel's own words for a failed nvme-cli call (its
// first stderr line, "Failed to write to /dev/nvme-fabrics: Connection
// timed out"), or our message when there are none.
func shortReason(err error) string {
	var ee *host.ExitError
	if errors.As(err, &ee) && ee.Stderr != "" {
		line, _, _ := strings.Cut(ee.Stderr, "\n")
		return line
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return devFabrics + ": " + errno.Error()
	}
	return reason(err)
}

func reason(err error) string {
	var he *host.Error
	if errors.As(err, &he) {
		return he.Msg
	}
	return err.Error()
}

// Health reads every configured path's controller state from sysfs.
func (t *Transport) Health(ctx context.Context, cfg map[string]string) (transport.Health, error) {
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true})
	if err != nil {
		return transport.Health{}, err
	}
	id, err := t.identity(ctx, c, false)
	if err != nil {
		return transport.Health{}, err
	}
	ctrls, err := t.sys.controllers()
	if err != nil {
		return transport.Health{}, host.Errorf(host.KindInternal, "SR.stat: nvmetcp", "cannot read "+sysClassNVMe, "", err)
	}
	return pathHealth(c, id, ctrls, nil), nil
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
	unlock, err := t.locker.Lock(ctx, lockName(c.NQN))
	if err != nil {
		return host.LockError(op, "another operation on subsystem "+c.NQN, err)
	}
	defer unlock()
	id, err := t.identity(ctx, c, false)
	if err != nil {
		return err
	}
	if sub, found, err := t.sys.subsystemByNQN(c.NQN); err == nil && found {
		for _, h := range sub.Heads {
			if ns := t.sys.namespace(h); len(ns.Holders) > 0 {
				return host.Errorf(host.KindBusy, op,
					fmt.Sprintf("/dev/%s of subsystem %s is still in use by %s", h, c.NQN, strings.Join(ns.Holders, ", ")),
					"deactivate the SR's logical volumes first (lvs; dmsetup ls --tree), then detach again", nil)
			}
		}
	}
	ctrls, err := t.sys.controllers()
	if err != nil {
		return host.Errorf(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
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
		return host.Errorf(host.KindBusy, op, "some paths of "+c.NQN+" could not be disconnected", "check dmesg and retry the detach", errors.New(strings.Join(errs, "; ")))
	}
	return nil
}

// ---------------------------------------------------------------------
// Probe

// maxProbeSubsystems bounds how many subsystems a probe without nqn
// connects to to list namespaces; an array can offer hundreds.
const maxProbeSubsystems = 8

func (t *Transport) discover(ctx context.Context, c Config, id Identity, p Portal, port int) ([]DiscoveryRecord, error) {
	op := "SR.probe: nvmetcp: discover " + netip.AddrPortFrom(p.Addr, uint16(port)).String()
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
		return nil, host.Errorf(host.KindInternal, op, "cannot read the discovery log", "", err)
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
		recs, err := t.discover(ctx, c, id, p, port)
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
		return nil, host.Errorf(host.KindUnreachable, op, "no portal answered discovery",
			"check device-config:target and discovery-port (the discovery service often listens on 8009 or 4420)", errors.New(strings.Join(failures, "; ")))
	}
	if c.NQN != "" {
		ps := byNQN[c.NQN]
		if ps == nil {
			var names []string
			for _, s := range subs {
				names = append(names, s.nqn)
			}
			return nil, host.Errorf(host.KindNotFound, op, "the portals do not offer subsystem "+c.NQN+" (they offer: "+orNone(names)+")", "fix device-config:nqn", nil)
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
	deadline := time.Now().Add(t.to.Namespace / 4)
	last, stable := -1, 0
	var heads []string
	for time.Now().Before(deadline) {
		sub, found, _ := t.sys.subsystemByNQN(nqn)
		heads = nil
		if found {
			heads = sub.Heads
		}
		if len(heads) == last && len(heads) > 0 {
			stable++
			if stable >= 5 {
				break
			}
		} else {
			last, stable = len(heads), 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.to.Poll):
		}
	}
	var out []Namespace
	for _, h := range heads {
		out = append(out, t.sys.namespace(h))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NSID < out[j].NSID })
	return out
}

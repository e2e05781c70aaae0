package nvme

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

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
	// Binding keeps two paths on their own NICs. A lone portal has no
	// other path to keep apart, and bound it cannot follow a floating
	// portal address (the array inside the pool, issue 15) that moves
	// onto this host, where a path bound to the NIC that led to it stays
	// "connecting" for ever (seen in the pool lab with the address on a
	// dummy interface); unbound, each reconnect takes the route of the
	// moment.
	if len(c.Portals) < 2 {
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
		if name == "" {
			t.log.Info("portal is this host's own address; its path stays unbound so that it follows the address", zapStr("portal", p.String()))
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

	unlock, err := transport.Lock(ctx, t.locker, t.to.Lock, op, lockName(c.NQN), "another operation on subsystem "+c.NQN)
	if err != nil {
		return nil, err
	}
	s := &session{cfg: c, id: id, failures: map[string]error{}, unlock: unlock}

	before, err := t.sys.controllers()
	if err != nil {
		s.done()
		return nil, host.NewError(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
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

	for p, err := range t.connectPortals(op, c, id, todo) {
		s.failures[p] = err
	}

	after, err := t.sys.controllers()
	if err != nil {
		t.rollback(ctx, s)
		return nil, host.NewError(host.KindInternal, op, "cannot read "+sysClassNVMe, "", err)
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

// connectPortals connects the portals one after another within one
// deadline for them all (each connect gets what is left of it) and
// returns the failures by portal.
//
// One at a time, because the kernel takes one at a time anyway:
// nvmf_dev_write (drivers/nvme/host/fabrics.c) holds the global
// nvmf_dev_mutex across nvmf_create_ctrl, which for TCP opens the admin
// queue and runs its Connect and any DH-HMAC-CHAP exchange
// (nvmf_connect_admin_queue, nvme_auth_wait). Writes made in parallel
// waited in the kernel behind each other while each was timed on its
// own, so a second portal could time out without ever being tried
// (behind a first whose wrong key the kernel took its 60 s admin
// timeout to refuse).
//
// A write stuck in the kernel cannot be interrupted (a target that stops
// answering mid-connect holds it until that admin timeout), so each
// connect runs in a goroutine and attach answers at the deadline
// regardless. The portals after a connect still stuck then are reported
// as not tried: the kernel would only have queued them behind it. If the
// straggler succeeds later, the next attach adopts its path and detach
// removes it.
//
// A portal that refuses authentication ends the loop: the target holds
// the host's keys for the subsystem, not for one port, so the others
// would refuse the same keys after the same wait.
func (t *Transport) connectPortals(op string, c Config, id Identity, todo []Portal) map[string]error {
	failures := map[string]error{}
	timeout := t.connectTimeout(c)
	start := time.Now()
	// The grace lets a connect the kernel answers right at the deadline
	// still count.
	budget := timeout + min(3*time.Second, timeout)
	wall := time.NewTimer(budget)
	defer wall.Stop()
	for i, p := range todo {
		left := max(0, budget-time.Since(start))
		done := make(chan error, 1)
		go func() { done <- t.connectPortal(op, c, id, p) }()
		select {
		case err := <-done:
			if err == nil {
				continue
			}
			failures[p.String()] = err
			if host.KindOf(err) == host.KindAuth && i+1 < len(todo) {
				markNotTried(failures, op, todo[i+1:], host.KindAuth,
					"not tried: portal "+p.String()+" refused the DH-HMAC-CHAP keys, which the target holds for the whole subsystem", "", false)
				t.log.Warn("authentication refused; not trying the other portals with the same keys", zapStr("portal", p.String()), zap.Error(err))
				return failures
			}
		case <-wall.C:
			fix := "check that the target answers on " + p.String() + " (dmesg | grep nvme shows what the kernel is waiting for)"
			if c.DHCHAPCtrl != "" {
				fix = "a dhchap-ctrl-password the target does not hold makes the kernel wait for the target until its 60 s admin timeout (dmesg: \"controller authentication failed\"); check the controller key"
			}
			msg := fmt.Sprintf("no answer from portal %s within %s", p, timeout)
			if i > 0 {
				msg = fmt.Sprintf("no answer from portal %s in the last %s of the attach's connect deadline (%s, shared by its portals one after another)",
					p, left.Round(time.Millisecond), timeout)
			}
			failures[p.String()] = host.NewError(host.KindUnreachable, op+": connect "+p.String(), msg, fix, kernelBusy{})
			markNotTried(failures, op, todo[i+1:], host.KindUnreachable,
				"not tried: the connect to portal "+p.String()+" still held the kernel's connect lock (/dev/nvme-fabrics takes one connect at a time) at the deadline",
				"find why portal "+p.String()+" does not answer first (dmesg | grep nvme)", true)
			return failures
		}
	}
	return failures
}

// markNotTried records the portals left out after another portal's
// outcome decided the attach.
func markNotTried(failures map[string]error, op string, rest []Portal, kind host.Kind, msg, fix string, busy bool) {
	for _, q := range rest {
		failures[q.String()] = host.NewError(kind, op+": connect "+q.String(), msg, fix, notTried{busy: busy})
	}
}

// connectPortal writes the connect of one portal; a path the kernel or
// nvme-cli says exists is success.
func (t *Transport) connectPortal(op string, c Config, id Identity, p Portal) error {
	err := t.fabricsConnect(p, connectOptions(c, p, id))
	switch {
	case err == nil:
		t.log.Info("connected", zapStr("portal", p.String()), zapStr("nqn", c.NQN), zapStr("iface", p.Iface))
		return nil
	case isAlreadyConnected(err):
		t.log.Info("path already connected (nvme-cli)", zapStr("portal", p.String()))
		return nil
	}
	return classifyConnect(op+": connect "+p.String(), p, c, err)
}

// kernelBusy marks a connect still in the kernel at the attach's
// deadline: while it holds /dev/nvme-fabrics, a discovery (a write there
// too) would only queue behind it, so allFailed asks no portal for its
// discovery log.
type kernelBusy struct{}

func (kernelBusy) Error() string { return "the connect was still in the kernel at the deadline" }

// notTried marks a portal that was not connected because another
// portal's outcome decided the attach first; busy says that outcome was
// a connect stuck in the kernel.
type notTried struct{ busy bool }

func (notTried) Error() string { return "another portal's outcome decided the attach before this one" }

// heldKernel reports whether err is a connect stuck in the kernel, or a
// portal not tried because of one.
func heldKernel(err error) bool {
	var nt notTried
	return errors.As(err, new(kernelBusy)) || (errors.As(err, &nt) && nt.busy)
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
			return host.NewError(host.KindAuth, op,
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
	var parts, skipped []string
	kinds := map[host.Kind]int{}
	var first, refused error
	busy := false
	for _, p := range s.cfg.Portals {
		err, ok := s.failures[p.String()]
		if !ok {
			err = fmt.Errorf("%s: the connect succeeded but no usable controller appeared in %s", p, sysClassNVMe)
		}
		busy = busy || heldKernel(err)
		if errors.As(err, new(notTried)) {
			skipped = append(skipped, p.String())
		} else {
			if first == nil {
				first = err
			}
			if refused == nil && host.KindOf(err) == host.KindAuth {
				refused = err
			}
		}
		kinds[host.KindOf(err)]++
		parts = append(parts, p.String()+": "+shortReason(err))
	}
	if refused != nil {
		var he *host.Error
		errors.As(refused, &he)
		msg := "the portals refused DH-HMAC-CHAP authentication for subsystem " + s.cfg.NQN + " (hostnqn " + s.id.HostNQN + ")"
		if len(skipped) > 0 {
			// classifyConnect's words name the portal that refused.
			msg = he.Msg + " for subsystem " + s.cfg.NQN + " (hostnqn " + s.id.HostNQN + "); " + strings.Join(skipped, ", ") +
				" not tried, as the target holds the keys for the whole subsystem and would refuse them there too"
		}
		return host.NewError(host.KindAuth, op, msg, he.Fix, errors.New(strings.Join(parts, "; ")))
	}
	if kinds[host.KindUnsupported] > 0 || kinds[host.KindInvalid] > 0 {
		return first
	}
	// A connect still stuck in the kernel holds /dev/nvme-fabrics, and a
	// discovery is a write there too: it would only wait behind it.
	for _, p := range s.cfg.Portals {
		if busy {
			break
		}
		if errors.As(s.failures[p.String()], new(portalDown)) {
			continue
		}
		recs, err := t.discover(ctx, op, s.cfg, s.id, p, p.Port)
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
			return host.NewError(host.KindNotFound, op,
				"portal "+p.String()+" does not offer subsystem "+s.cfg.NQN+" (it offers "+strings.Join(dedup(offered), ", ")+")",
				"fix device-config:nqn; `xe sr-probe-ext type=nvmetcp device-config:target=…` lists the subsystems", nil)
		}
		break
	}
	tried := fmt.Sprint(len(s.cfg.Portals) - len(skipped))
	if len(skipped) > 0 {
		tried += fmt.Sprintf(" of %d", len(s.cfg.Portals))
	}
	tried += fmt.Sprintf(" portals tried within %s", t.connectTimeout(s.cfg))
	fix := "check the portals, the NQN, and that the target allows this host's NQN " + s.id.HostNQN
	for _, p := range s.cfg.Portals {
		var he *host.Error
		if err := s.failures[p.String()]; errors.As(err, new(kernelBusy)) && errors.As(err, &he) {
			fix = he.Fix // the stuck portal's, which the others waited for
		}
	}
	return host.NewError(host.KindUnreachable, op,
		fmt.Sprintf("no path to subsystem %s could be connected (%s)", s.cfg.NQN, tried), fix, errors.New(strings.Join(parts, "; ")))
}

// rollback disconnects the controllers this session made and releases
// the lock.
func (t *Transport) rollback(ctx context.Context, s *session) {
	defer s.done()
	ctx, cancel := host.RollbackContext(ctx, t.to.Rollback)
	defer cancel()
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
		return host.NewError(host.KindBusy, "nvmetcp: disconnect "+name, "nvme disconnect failed", "check dmesg; the controller may be stuck reconnecting", err)
	}
	return nil
}

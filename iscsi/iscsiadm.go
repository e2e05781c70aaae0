package iscsi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// defaultIface is open-iscsi's iface for "no binding": the kernel routes.
const defaultIface = "default"

// iscsiadm exit codes (open-iscsi include/iscsi_err.h); they are the same in
// XCP-ng's iscsi-initiator-utils 6.2.0.874 and open-iscsi 2.1.x.
const (
	errSessNotFound    = 2
	errTrans           = 4
	errLogin           = 5
	errInval           = 7
	errTransTimeout    = 8
	errPDUTimeout      = 11
	errSessExists      = 15
	errFatalLogin      = 19
	errIscsidNotConn   = 20
	errNoObjsFound     = 21
	errLoginAuthFailed = 24
)

// path is one session sanvol wants: a target IQN at a portal through an
// iface. It is what one iscsiadm node record describes.
type path struct {
	Portal Portal `json:"portal"`
	IQN    string `json:"iqn"`
	Iface  string `json:"iface"`
}

// String names the path for admins: the portal, and the NIC when bound.
func (p path) String() string {
	s := p.Portal.String()
	if p.Iface != defaultIface && p.Iface != "" {
		s += " via " + strings.TrimPrefix(p.Iface, "sanvol-")
	}
	return s
}

// matches reports whether a session is this path.
func (p path) matches(s session) bool {
	if s.target != p.IQN || s.portal != p.Portal {
		return false
	}
	if p.Iface == defaultIface || p.Iface == "" {
		return s.iface == "" || s.iface == defaultIface
	}
	return s.iface == p.Iface
}

// record is one line of sendtargets discovery: "addr:port,tpgt iqn".
type record struct {
	portal Portal
	tpgt   int
	iqn    string
}

var recordRE = regexp.MustCompile(`^(\[[^\]]+\]|[^\s,\[\]]+):(\d+),(-?\d+)\s+(\S+)$`)

// parseRecords reads discovery (and `iscsiadm -m node`) output. Duplicate
// lines, which discovery through several ifaces prints, are merged.
func parseRecords(out string) []record {
	var recs []record
	seen := map[record]bool{}
	for _, line := range strings.Split(out, "\n") {
		m := recordRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		port, _ := strconv.Atoi(m[2])
		tpgt, _ := strconv.Atoi(m[3])
		r := record{portal: Portal{Addr: canonicalAddr(m[1]), Port: port}, tpgt: tpgt, iqn: m[4]}
		if !seen[r] {
			seen[r] = true
			recs = append(recs, r)
		}
	}
	return recs
}

// iscsiadm runs one iscsiadm command.
func (t *Transport) iscsiadm(ctx context.Context, timeout time.Duration, secrets []string, args ...string) (host.Result, error) {
	// Every target name reaches iscsiadm through here, whatever its
	// source (device-config, discovery, a session in sysfs, an attach
	// record): iscsiadm makes /etc/iscsi/nodes/<name>/ paths from it.
	for i, a := range args {
		if a == "-T" && i+1 < len(args) {
			if err := checkIQN(args[i+1]); err != nil {
				return host.Result{}, host.NewError(host.KindInvalid, "iscsiadm", "target name "+err.Error(), "sanvol refuses to pass it to iscsiadm; check the array's target names", nil)
			}
		}
	}
	return t.run.Run(ctx, host.Cmd{Name: "iscsiadm", Args: args, Timeout: timeout, Secrets: secrets})
}

// exitCode returns the exit status of a failed command, or -1.
func exitCode(err error) int {
	var ee *host.ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// toolError turns a failure to run a tool at all into an admin error.
func toolError(op, tool, pkg string, err error) error {
	if errors.Is(err, host.ErrNotInstalled) {
		return host.NewError(host.KindUnsupported, op, tool+" is not installed on this host", "install "+pkg, err)
	}
	if exitCode(err) == errIscsidNotConn && tool == "iscsiadm" {
		return host.NewError(host.KindUnsupported, op, "iscsid is not running on this host", "start it: systemctl start iscsid.service (XCP-ng keeps the unit disabled by preset; sanvol starts it as sm does), then see journalctl -u iscsid if it stops again", err)
	}
	return nil
}

// discover runs sendtargets discovery on one portal. The node database is
// left alone (-o nonpersistent): a default discovery would reset the node
// records of SRs attached from the same array to iscsid.conf's defaults.
// Discovery CHAP uses the login credentials, as lvmoiscsi does.
func (t *Transport) discover(ctx context.Context, op string, c *Config, p Portal, ifaces []string) ([]record, error) {
	var ifArgs []string
	for _, i := range ifaces {
		if i != defaultIface {
			ifArgs = append(ifArgs, "-I", i)
		}
	}
	base := slices.Concat([]string{"-t", "sendtargets", "-p", p.String()}, ifArgs)
	var args []string
	if c.chap != nil {
		// CHAP for discovery lives in the discovery record, so one is
		// created (or reset) and given the credentials first, written
		// into the record file (never on iscsiadm's command line), and
		// taken out again once discovery is over.
		db := slices.Concat([]string{"-m", "discoverydb"}, base)
		if _, err := t.iscsiadm(ctx, t.to.Command, nil, slices.Concat(db, []string{"-o", "new"})...); err != nil {
			return nil, t.discoveryError(op, p, err)
		}
		set := [][2]string{{"discovery.sendtargets.auth.authmethod", "CHAP"},
			{"discovery.sendtargets.auth.username", c.chap.user}, {"discovery.sendtargets.auth.password", c.chap.password}}
		if err := t.setDiscoveryCHAP(ctx, op, p, set); err != nil {
			return nil, err
		}
		defer func() {
			ctx, cancel := host.RollbackContext(ctx, t.to.Rollback)
			defer cancel()
			if err := t.setDiscoveryCHAP(ctx, op, p, nil); err != nil {
				t.log.Warn("discovery CHAP credentials could not be removed from the sendtargets record", zap.Error(err))
			}
		}()
		args = slices.Concat(db, []string{"--discover", "-o", "nonpersistent"})
	} else {
		args = slices.Concat([]string{"-m", "discovery"}, base, []string{"-o", "nonpersistent"})
	}
	res, err := t.iscsiadm(ctx, t.to.Discovery, nil, args...)
	if err != nil {
		if exitCode(err) == errNoObjsFound {
			return nil, nil
		}
		return nil, t.discoveryError(op, p, err)
	}
	return t.validRecords(op, p, parseRecords(string(res.Stdout))), nil
}

// validRecords drops the records whose IQN is not an iSCSI name: a
// portal's answer is data from the network, and iscsiadm would build
// node record paths (and sanvol command lines) from it.
func (t *Transport) validRecords(op string, p Portal, recs []record) []record {
	out := recs[:0]
	for _, r := range recs {
		if err := checkIQN(r.iqn); err != nil {
			t.log.Warn("discovery returned a target name that is not an IQN; skipped",
				zap.String("op", op), zap.String("portal", p.String()), zap.String("reason", err.Error()))
			continue
		}
		out = append(out, r)
	}
	return out
}

func (t *Transport) discoveryError(op string, p Portal, err error) error {
	op = op + ": discovery at " + p.String()
	if e := toolError(op, "iscsiadm", "open-iscsi (iscsi-initiator-utils)", err); e != nil {
		return e
	}
	switch code := exitCode(err); {
	case code == errLoginAuthFailed:
		return host.NewError(host.KindAuth, op, "the portal refused the discovery CHAP credentials",
			"check device-config:chapuser and chappassword against the array's discovery authentication", err)
	case errors.Is(err, host.ErrTimeout), code == errTrans, code == errTransTimeout, code == errPDUTimeout, code == errLogin:
		return host.NewError(host.KindUnreachable, op, "the portal did not answer",
			"check the address and port, that the array's iSCSI service listens there, and the network from this host (ping, nc -zv "+p.Addr+" "+strconv.Itoa(p.Port)+")", err)
	}
	return host.NewError(host.KindInternal, op, "sendtargets discovery failed", "run the same discovery by hand: iscsiadm -m discovery -t st -p "+p.String(), err)
}

// ensureIface creates the iface record that binds sessions to a NIC.
func (t *Transport) ensureIface(ctx context.Context, op, nic string) error {
	if !t.root.Exists("/sys/class/net/" + nic) {
		return host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:iface names %s, which is not a network interface of this host", nic),
			"give the name of the storage NIC on this host (ip -br link); every host of the pool needs the same NIC names", nil)
	}
	name := ifaceName(nic)
	if _, err := t.iscsiadm(ctx, t.to.Command, nil, "-m", "iface", "-I", name, "-o", "new"); err != nil {
		var ee *host.ExitError
		exists := errors.As(err, &ee) && (ee.Code == errSessExists || strings.Contains(ee.Stderr, "exists"))
		if !exists {
			if e := toolError(op, "iscsiadm", "open-iscsi (iscsi-initiator-utils)", err); e != nil {
				return e
			}
			return host.NewError(host.KindInternal, op, "cannot create the iscsiadm iface record "+name, "run it by hand to read iscsiadm's message: iscsiadm -m iface -I "+name+" -o new", err)
		}
	}
	if _, err := t.iscsiadm(ctx, t.to.Command, nil, "-m", "iface", "-I", name, "-o", "update",
		"-n", "iface.net_ifacename", "-v", nic); err != nil {
		return host.NewError(host.KindInternal, op, "cannot bind the iscsiadm iface record "+name+" to "+nic, "run it by hand to read iscsiadm's message: iscsiadm -m iface -I "+name+" -o update -n iface.net_ifacename -v "+nic, err)
	}
	return nil
}

// nodeArgs selects one node record.
func nodeArgs(p path) []string {
	return []string{"-m", "node", "-T", p.IQN, "-p", p.Portal.String(), "-I", p.Iface}
}

// setupNode (re)creates the node record of a path with this SR's settings.
// Everything is set before login: iscsid copies the record when it logs in.
func (t *Transport) setupNode(ctx context.Context, op string, c *Config, p path) error {
	if _, err := t.iscsiadm(ctx, t.to.Command, nil, append(nodeArgs(p), "-o", "new")...); err != nil {
		if e := toolError(op, "iscsiadm", "open-iscsi (iscsi-initiator-utils)", err); e != nil {
			return e
		}
		return host.NewError(host.KindInternal, op+": node record "+p.String(), "cannot create the node record", "run it by hand to read iscsiadm's message: iscsiadm "+strings.Join(nodeArgs(p), " ")+" -o new", err)
	}
	set := [][2]string{
		// Only xapi plugs SRs: nothing may log in at boot behind its back.
		{"node.startup", "manual"},
		{"node.session.timeo.replacement_timeout", strconv.Itoa(c.ReplacementTimeout)},
		{"node.conn[0].timeo.login_timeout", strconv.Itoa(t.to.LoginTimeout)},
		// A login that times out is retried this often, and no more:
		// an unreachable portal must not hold SR.attach for minutes.
		{"node.session.initial_login_retry_max", strconv.Itoa(t.to.LoginRetries)},
	}
	if c.chap == nil {
		set = append(set, [2]string{"node.session.auth.authmethod", "None"})
	}
	args := append(nodeArgs(p), "-o", "update")
	for _, kv := range set {
		args = append(args, "-n", kv[0], "-v", kv[1])
	}
	if _, err := t.iscsiadm(ctx, t.to.Command, nil, args...); err != nil {
		return host.NewError(host.KindInternal, op+": node record "+p.String(), "cannot set the node record's settings", "show the record to see what iscsiadm refuses: iscsiadm "+strings.Join(nodeArgs(p), " "), err)
	}
	// scan=manual keeps iscsid from scanning LUNs on its own (after a
	// session recovery, say) while sanvol deletes the SR's disks on
	// detach. open-iscsi older than 2.0.874 does not know the setting and
	// always scans, which is harmless, so a refusal is only logged.
	if _, err := t.iscsiadm(ctx, t.to.Command, nil, append(nodeArgs(p), "-o", "update", "-n", "node.session.scan", "-v", "manual")...); err != nil {
		t.log.Debug("node.session.scan not supported by this iscsiadm; the kernel scans at login")
	}
	// CHAP goes in last, into the record file: see record.go.
	if c.chap != nil {
		return t.writeNodeCHAP(ctx, op, c, p)
	}
	return nil
}

// loginError is why one path could not log in.
type loginError struct {
	path path
	kind host.Kind
	msg  string
	err  error
}

func (e *loginError) Error() string { return e.path.String() + ": " + e.msg }

// login logs a path in. An existing session is success (exit 15).
func (t *Transport) login(ctx context.Context, p path) *loginError {
	timeout := time.Duration((t.to.LoginRetries+1)*t.to.LoginTimeout)*time.Second + 15*time.Second
	_, err := t.iscsiadm(ctx, timeout, nil, append(nodeArgs(p), "--login")...)
	if err == nil {
		return nil
	}
	code := exitCode(err)
	le := &loginError{path: p, err: err}
	switch {
	case code == errSessExists:
		return nil
	case code == errLoginAuthFailed:
		le.kind, le.msg = host.KindAuth, "login refused: authentication or authorisation failed"
	case code == errFatalLogin:
		le.kind, le.msg = host.KindNotFound, "login refused by the target (non-retryable iSCSI login failure)"
	case code == errIscsidNotConn:
		le.kind, le.msg = host.KindUnsupported, "iscsid is not running"
	case errors.Is(err, host.ErrNotInstalled):
		le.kind, le.msg = host.KindUnsupported, "iscsiadm is not installed"
	case errors.Is(err, host.ErrTimeout):
		le.kind, le.msg = host.KindUnreachable, "login timed out"
	case code == errTrans, code == errTransTimeout, code == errPDUTimeout, code == errLogin:
		le.kind, le.msg = host.KindUnreachable, "cannot connect to the portal"
	default:
		le.kind, le.msg = host.KindInternal, fmt.Sprintf("login failed (iscsiadm exit %d)", code)
	}
	return le
}

// logout ends one session by its id. A session already gone is success.
func (t *Transport) logout(ctx context.Context, sid int) error {
	_, err := t.iscsiadm(ctx, t.to.Command, nil, "-m", "session", "-r", strconv.Itoa(sid), "--logout")
	if c := exitCode(err); c == errNoObjsFound || c == errSessNotFound {
		return nil
	}
	return err
}

// deleteNode removes a node record sanvol made, so that the CHAP secrets
// it holds do not outlive the SR's attachment. A missing record is fine.
func (t *Transport) deleteNode(ctx context.Context, p path) error {
	_, err := t.iscsiadm(ctx, t.to.Command, nil, append(nodeArgs(p), "-o", "delete")...)
	if c := exitCode(err); c == errNoObjsFound || c == errInval {
		return nil
	}
	return err
}

// sortedIQNs lists the distinct target IQNs of some paths.
func sortedIQNs(paths []path) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		if !seen[p.IQN] {
			seen[p.IQN] = true
			out = append(out, p.IQN)
		}
	}
	sort.Strings(out)
	return out
}

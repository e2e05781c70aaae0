package iscsi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

// fakeHost is a host.Runner that behaves like iscsiadm, multipath(d),
// dmsetup and udevadm on a kernel with LIO targets behind it. Logins build
// session, SCSI host and disk trees in a temporary sysfs; multipathd builds
// maps; a goroutine plays the kernel's side of the sysfs attributes sanvol
// writes (scan, delete, rescan). Every command is recorded.
type fakeHost struct {
	t    *testing.T
	dir  string
	root host.Root

	mu    sync.Mutex
	calls []host.Cmd
	// capacityCalls counts READ CAPACITY questions, rescans the disk
	// rescans the fake kernel carried out.
	capacityCalls int
	rescans       int
	targets       map[string]*fakeTarget
	down          map[Portal]bool
	nodes         map[path]map[string]string
	disc          map[Portal]map[string]string // discoverydb records
	ifaces        map[string]map[string]string
	sess          map[int]*fakeSession
	nextSID       int
	nextSD        int
	nextDM        int
	maps          map[string]*fakeMap // by name

	// autoScan scans the LUNs at login, like iscsid with scan=auto.
	autoScan bool
	// autoMap builds a map as soon as a disk appears, like multipathd.
	autoMap bool
	// noMaps makes multipath(d) refuse to build any map, as when the
	// array is blacklisted.
	noMaps bool
	// scanSupported makes node.session.scan a known setting.
	scanSupported bool
	// flushFails makes multipath -f fail and leave the map suspended.
	flushFails bool
	// flushInUse makes that many multipath -f calls fail as when udev's
	// blkid has the map open for a moment.
	flushInUse int
	// loginDelay slows every login, to widen races.
	loginDelay time.Duration
	// initiatorACL, when set, is the only initiator the targets admit.
	initiatorACL string
	// startFails makes `systemctl start iscsid.service` fail.
	startFails bool
}

type fakeTarget struct {
	iqn      string
	portals  []Portal
	tpgt     map[Portal]int
	luns     []fakeLUN
	chap     *chap // required one-way CHAP
	mutual   *chap // what the target answers with
	discCHAP *chap
}

type fakeLUN struct {
	lun    int
	wwid   string // as sysfs prints it: naa.…
	size   int64  // sectors
	vendor string
	model  string
}

type fakeSession struct {
	sid   int
	host  int
	p     path
	state string
	disks map[int]string // lun -> sdX
	dir   string         // host path of the session device
}

type fakeMap struct {
	dev       string
	name      string
	wwid      string
	suspended bool
}

const (
	testIQN       = "iqn.2003-01.org.linux-iscsi.lab:sanvol"
	testIQN2      = "iqn.2003-01.org.linux-iscsi.lab:second"
	testInitiator = "iqn.1993-08.org.debian:01:abcdef012345"
	testNAA       = "naa.6001405a1b2c3d4e5f60718293a4b5c6"
	testWWID      = "36001405a1b2c3d4e5f60718293a4b5c6"
	otherNAA      = "naa.6001405ffffffffffffffffffffffff0"
	otherWWID     = "36001405ffffffffffffffffffffffff0"
)

var (
	portal1 = Portal{Addr: "127.0.0.1", Port: 3260}
	portal2 = Portal{Addr: "127.0.0.2", Port: 3260}
)

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	dir := t.TempDir()
	f := &fakeHost{
		t: t, dir: dir, root: host.NewRoot(dir),
		targets: map[string]*fakeTarget{
			testIQN: {iqn: testIQN, portals: []Portal{portal1, portal2}, tpgt: map[Portal]int{portal1: 1, portal2: 2},
				luns: []fakeLUN{{lun: 0, wwid: testNAA, size: 2097152, vendor: "LIO-ORG", model: "lun0"}}},
		},
		down:          map[Portal]bool{},
		nodes:         map[path]map[string]string{},
		disc:          map[Portal]map[string]string{},
		ifaces:        map[string]map[string]string{},
		sess:          map[int]*fakeSession{},
		maps:          map[string]*fakeMap{},
		nextSID:       1,
		nextDM:        0,
		autoScan:      true,
		autoMap:       true,
		scanSupported: true,
	}
	f.write("/etc/iscsi/initiatorname.iscsi", "## comment\nInitiatorName="+testInitiator+"\n")
	f.write("/proc/sys/kernel/osrelease", "6.1.0-test-amd64")
	// iscsid runs unless a test stops it (stopIscsid).
	f.write(fakeIscsidComm, "iscsid\n")
	f.mkdir("/sys/class/iscsi_session")
	f.mkdir("/sys/class/iscsi_connection")
	f.mkdir("/sys/class/net/lo")
	f.mkdir("/sys/class/net/eth1")
	f.mkdir("/dev/mapper")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go f.kernel(ctx, done)
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func (f *fakeHost) path(p string) string { return filepath.Join(f.dir, p) }

func (f *fakeHost) write(p, content string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Dir(f.path(p)), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(f.path(p), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeHost) mkdir(p string) {
	f.t.Helper()
	if err := os.MkdirAll(f.path(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// link makes a relative symlink at p pointing to target (both host paths).
func (f *fakeHost) link(target, p string) {
	f.t.Helper()
	f.mkdir(filepath.Dir(p))
	rel, err := filepath.Rel(filepath.Dir(f.path(p)), f.path(target))
	if err != nil {
		f.t.Fatal(err)
	}
	_ = os.Remove(f.path(p))
	if err := os.Symlink(rel, f.path(p)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeHost) read(p string) string {
	b, _ := os.ReadFile(f.path(p))
	return strings.TrimSpace(string(b))
}

// kernel plays the kernel's side of the attributes sanvol writes. The
// real kernel acts within the write(2); the fake acts within a few
// milliseconds, and at the latest before the next command runs.
func (f *fakeHost) kernel(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Millisecond):
		}
		f.mu.Lock()
		f.tickLocked()
		f.mu.Unlock()
	}
}

func (f *fakeHost) tickLocked() {
	for _, s := range f.sess {
		if strings.TrimSpace(f.read(fmt.Sprintf("/sys/class/scsi_host/host%d/scan", s.host))) == "- - -" {
			f.write(fmt.Sprintf("/sys/class/scsi_host/host%d/scan", s.host), "")
			f.scanLocked(s)
		}
		for lun, sd := range s.disks {
			if f.read("/sys/block/"+sd+"/device/delete") == "1" {
				f.removeDiskLocked(s, lun)
			} else if f.read("/sys/block/"+sd+"/device/rescan") == "1" {
				f.write("/sys/block/"+sd+"/device/rescan", "")
				f.rescans++
				if l, ok := f.lunLocked(s.p.IQN, lun); ok {
					f.write("/sys/block/"+sd+"/size", strconv.FormatInt(l.size, 10))
				}
			}
		}
	}
}

func (f *fakeHost) lunLocked(iqn string, lun int) (fakeLUN, bool) {
	tg := f.targets[iqn]
	if tg == nil {
		return fakeLUN{}, false
	}
	for _, l := range tg.luns {
		if l.lun == lun {
			return l, true
		}
	}
	return fakeLUN{}, false
}

// Run implements host.Runner.
func (f *fakeHost) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	f.mu.Lock()
	c.Args = slices.Clone(c.Args)
	f.calls = append(f.calls, c)
	f.tickLocked()
	f.mu.Unlock()
	switch c.Name {
	case "iscsiadm":
		return f.iscsiadm(ctx, c)
	case "multipath":
		return f.multipath(c)
	case "multipathd":
		return f.multipathd(c)
	case "dmsetup":
		return f.dmsetup(c)
	case "udevadm":
		return host.Result{}, nil
	case "systemctl":
		return f.systemctl(c)
	}
	return host.Result{}, &host.CmdError{Cmd: c.String(), Err: fmt.Errorf("%w: %s", host.ErrNotInstalled, c.Name)}
}

func fail(c host.Cmd, code int, stderr string) (host.Result, error) {
	return host.Result{ExitCode: code, Stderr: []byte(stderr)}, &host.ExitError{Cmd: c.String(), Code: code, Stderr: host.Redact(stderr, c.Secrets)}
}

func ok(stdout string) (host.Result, error) { return host.Result{Stdout: []byte(stdout)}, nil }

// opts parses iscsiadm's options.
type iscsiOpts struct {
	mode, typ, op, target, iface string
	portal                       string
	sid                          int
	login, logout, discover      bool
	params                       [][2]string
	ifaces                       []string
	version                      bool
}

func parseIscsiOpts(args []string) iscsiOpts {
	var o iscsiOpts
	var name string
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string { i++; return args[i] }
		switch a {
		case "-m":
			o.mode = next()
		case "-t":
			o.typ = next()
		case "-p":
			o.portal = next()
		case "-T":
			o.target = next()
		case "-I":
			v := next()
			o.iface = v
			o.ifaces = append(o.ifaces, v)
		case "-o":
			o.op = next()
		case "-r":
			o.sid, _ = strconv.Atoi(next())
		case "-n":
			name = next()
		case "-v":
			o.params = append(o.params, [2]string{name, next()})
		case "--login":
			o.login = true
		case "--logout":
			o.logout = true
		case "--discover":
			o.discover = true
		case "--version":
			o.version = true
		}
	}
	return o
}

func (f *fakeHost) portalOf(s string) Portal {
	f.t.Helper()
	h, p, ok := strings.Cut(s, "]:")
	if ok {
		n, _ := strconv.Atoi(p)
		return Portal{Addr: strings.TrimPrefix(h, "["), Port: n}
	}
	i := strings.LastIndex(s, ":")
	n, _ := strconv.Atoi(s[i+1:])
	return Portal{Addr: s[:i], Port: n}
}

func (f *fakeHost) iscsiadm(ctx context.Context, c host.Cmd) (host.Result, error) {
	o := parseIscsiOpts(c.Args)
	if o.version {
		return ok("iscsiadm version 2.1.8\n")
	}
	// Discovery, login and logout go through iscsid's IPC socket;
	// iscsiadm exits with ISCSI_ERR_ISCSID_NOTCONN without it.
	if (o.discover || o.login || o.logout) && !f.iscsidUp() {
		return fail(c, errIscsidNotConn, "iscsiadm: can not connect to iSCSI daemon (111)!\n")
	}
	switch o.mode {
	case "discovery", "discoverydb":
		return f.discovery(c, o)
	case "iface":
		f.mu.Lock()
		defer f.mu.Unlock()
		if o.op == "new" {
			if _, exists := f.ifaces[o.iface]; exists {
				return fail(c, 15, "iscsiadm: interface "+o.iface+" already exists")
			}
			f.ifaces[o.iface] = map[string]string{}
			return ok("New interface " + o.iface + " added\n")
		}
		for _, kv := range o.params {
			f.ifaces[o.iface][kv[0]] = kv[1]
		}
		return ok(o.iface + " updated.\n")
	case "node":
		return f.node(ctx, c, o)
	case "session":
		if o.logout {
			return f.logoutSID(c, o.sid)
		}
	}
	return fail(c, 7, "fake iscsiadm: unsupported "+strings.Join(c.Args, " "))
}

func (f *fakeHost) discovery(c host.Cmd, o iscsiOpts) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.portalOf(o.portal)
	stFile := fmt.Sprintf("/etc/iscsi/send_targets/%s,%d/st_config", p.Addr, p.Port)
	if o.mode == "discoverydb" && !o.discover {
		if o.op == "new" {
			f.disc[p] = map[string]string{"discovery.sendtargets.address": p.Addr, "discovery.sendtargets.port": strconv.Itoa(p.Port)}
		} else {
			f.disc[p] = parseRecord([]byte(f.read(stFile)))
			for _, kv := range o.params {
				f.disc[p][kv[0]] = kv[1]
			}
		}
		f.write(stFile, renderRecord(f.disc[p]))
		return ok("")
	}
	if o.mode == "discoverydb" {
		f.disc[p] = parseRecord([]byte(f.read(stFile)))
	}
	if o.op != "nonpersistent" {
		f.t.Errorf("discovery without -o nonpersistent would rewrite node records: %v", c.Args)
	}
	if f.down[p] {
		return fail(c, 4, "iscsiadm: cannot make connection to "+p.Addr+": Connection refused\niscsiadm: connection login retries (reopen_max) 5 exceeded")
	}
	var lines []string
	for _, tg := range f.sortedTargets() {
		if !slices.Contains(tg.portals, p) {
			continue
		}
		if tg.discCHAP != nil {
			rec := map[string]string{}
			if o.mode == "discoverydb" {
				rec = f.disc[p]
			}
			if rec["discovery.sendtargets.auth.username"] != tg.discCHAP.user || rec["discovery.sendtargets.auth.password"] != tg.discCHAP.password {
				return fail(c, 24, "iscsiadm: Login failed to authenticate with target\niscsiadm: discovery login to "+p.Addr+" rejected: initiator failed authorization")
			}
		}
		for _, tp := range tg.portals {
			n := len(o.ifaces)
			if n == 0 {
				n = 1
			}
			for i := 0; i < n; i++ {
				lines = append(lines, fmt.Sprintf("%s,%d %s", tp, tg.tpgt[tp], tg.iqn))
			}
		}
	}
	return ok(strings.Join(lines, "\n") + "\n")
}

func (f *fakeHost) sortedTargets() []*fakeTarget {
	var out []*fakeTarget
	for _, tg := range f.targets {
		out = append(out, tg)
	}
	slices.SortFunc(out, func(a, b *fakeTarget) int { return strings.Compare(a.iqn, b.iqn) })
	return out
}

func (f *fakeHost) node(ctx context.Context, c host.Cmd, o iscsiOpts) (host.Result, error) {
	p := path{Portal: f.portalOf(o.portal), IQN: o.target, Iface: o.iface}
	if p.Iface == "" {
		p.Iface = defaultIface
	}
	f.mu.Lock()
	switch {
	case o.op == "new":
		f.nodes[p] = map[string]string{"node.startup": "automatic", "node.session.timeo.replacement_timeout": "120"}
		f.writeNodeLocked(p)
		f.mu.Unlock()
		return ok("New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=" + p.Iface + "] " + p.Portal.String() + ",-1 " + p.IQN + "] added\n")
	case o.op == "update":
		rec, exists := f.nodes[p]
		if !exists {
			f.mu.Unlock()
			return fail(c, 21, "iscsiadm: No records found")
		}
		f.readNodeLocked(p, rec)
		for _, kv := range o.params {
			if kv[0] == "node.session.scan" && !f.scanSupported {
				f.mu.Unlock()
				return fail(c, 7, "iscsiadm: Cannot modify node.session.scan. Invalid param name.")
			}
			rec[kv[0]] = kv[1]
		}
		f.writeNodeLocked(p)
		f.mu.Unlock()
		return ok("")
	case o.op == "delete":
		if _, exists := f.nodes[p]; !exists {
			f.mu.Unlock()
			return fail(c, 21, "iscsiadm: No records found")
		}
		delete(f.nodes, p)
		_ = os.Remove(f.path(f.nodeFile(p)))
		f.mu.Unlock()
		return ok("")
	case o.login:
		f.mu.Unlock()
		return f.login(ctx, c, p)
	}
	f.mu.Unlock()
	return fail(c, 7, "fake iscsiadm: unsupported node command")
}

// nodeFile is where iscsiadm keeps a node record: the old layout (a
// file per portal, made by -o new without a tpgt) for the default iface,
// the layout with tpgt and iface for bound ifaces, so both are exercised.
func (f *fakeHost) nodeFile(p path) string {
	if p.Iface == defaultIface {
		return fmt.Sprintf("/etc/iscsi/nodes/%s/%s,%d", p.IQN, p.Portal.Addr, p.Portal.Port)
	}
	tpgt := 1
	if tg := f.targets[p.IQN]; tg != nil {
		tpgt = tg.tpgt[p.Portal]
	}
	return fmt.Sprintf("/etc/iscsi/nodes/%s/%s,%d,%d/%s", p.IQN, p.Portal.Addr, p.Portal.Port, tpgt, p.Iface)
}

func renderRecord(rec map[string]string) string {
	var lines []string
	for k, v := range rec {
		lines = append(lines, k+" = "+v)
	}
	slices.Sort(lines)
	return "# BEGIN RECORD 2.1.8\n" + strings.Join(lines, "\n") + "\n# END RECORD"
}

func (f *fakeHost) writeNodeLocked(p path) {
	rec := f.nodes[p]
	rec["node.name"] = p.IQN
	rec["node.conn[0].address"] = p.Portal.Addr
	rec["node.conn[0].port"] = strconv.Itoa(p.Portal.Port)
	rec["iface.iscsi_ifacename"] = p.Iface
	f.write(f.nodeFile(p), renderRecord(rec))
}

// readNodeLocked reloads a record from its file, which sanvol may have
// rewritten, the way iscsiadm parses it.
func (f *fakeHost) readNodeLocked(p path, rec map[string]string) {
	b, err := os.ReadFile(f.path(f.nodeFile(p)))
	if err != nil {
		return
	}
	clear(rec)
	for k, v := range parseRecord(b) {
		rec[k] = v
	}
}

func (f *fakeHost) login(ctx context.Context, c host.Cmd, p path) (host.Result, error) {
	if f.loginDelay > 0 {
		select {
		case <-time.After(f.loginDelay):
		case <-ctx.Done():
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, exists := f.nodes[p]
	if !exists {
		return fail(c, 21, "iscsiadm: No records found")
	}
	// iscsiadm reads the record file at login and hands it to iscsid.
	f.readNodeLocked(p, rec)
	for _, s := range f.sess {
		if s.p == p {
			return fail(c, 15, "iscsiadm: default: 1 session requested, but 1 already present.\niscsiadm: Could not log into all portals")
		}
	}
	loginLine := "Logging in to [iface: " + p.Iface + ", target: " + p.IQN + ", portal: " + p.Portal.String() + "]\n"
	if f.down[p.Portal] {
		return fail(c, 8, "iscsiadm: Could not login to [iface: "+p.Iface+", target: "+p.IQN+", portal: "+p.Portal.String()+"].\niscsiadm: initiator reported error (8 - connection timed out)")
	}
	tg := f.targets[p.IQN]
	if tg == nil || !slices.Contains(tg.portals, p.Portal) {
		return fail(c, 19, "iscsiadm: Could not login to [iface: "+p.Iface+", target: "+p.IQN+", portal: "+p.Portal.String()+"].\niscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)")
	}
	authFail := func() (host.Result, error) {
		return fail(c, 24, loginLine+"iscsiadm: Could not login to [iface: "+p.Iface+", target: "+p.IQN+", portal: "+p.Portal.String()+"].\niscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)")
	}
	if f.initiatorACL != "" && f.initiatorACL != testInitiator {
		return authFail()
	}
	if tg.chap != nil && (rec["node.session.auth.authmethod"] != "CHAP" || rec["node.session.auth.username"] != tg.chap.user || rec["node.session.auth.password"] != tg.chap.password) {
		return authFail()
	}
	if tg.mutual != nil && (rec["node.session.auth.username_in"] != tg.mutual.user || rec["node.session.auth.password_in"] != tg.mutual.password) {
		return authFail()
	}
	f.createSessionLocked(p, rec)
	return ok(loginLine + "Login to [iface: " + p.Iface + ", target: " + p.IQN + ", portal: " + p.Portal.String() + "] successful.\n")
}

func (f *fakeHost) createSessionLocked(p path, rec map[string]string) *fakeSession {
	sid := f.nextSID
	f.nextSID++
	hostNo := sid + 1
	s := &fakeSession{sid: sid, host: hostNo, p: p, state: sessionLoggedIn, disks: map[int]string{},
		dir: fmt.Sprintf("/sys/devices/platform/host%d/session%d", hostNo, sid)}
	f.sess[sid] = s
	sdir := s.dir + fmt.Sprintf("/iscsi_session/session%d", sid)
	f.write(sdir+"/targetname", p.IQN+"\n")
	f.write(sdir+"/state", sessionLoggedIn+"\n")
	iface := p.Iface
	f.write(sdir+"/ifacename", iface+"\n")
	f.write(sdir+"/tpgt", strconv.Itoa(f.targets[p.IQN].tpgt[p.Portal])+"\n")
	rt := rec["node.session.timeo.replacement_timeout"]
	f.write(sdir+"/recovery_tmo", rt+"\n")
	f.link(s.dir, sdir+"/device")
	f.link(sdir, fmt.Sprintf("/sys/class/iscsi_session/session%d", sid))
	cdir := s.dir + fmt.Sprintf("/connection%d:0/iscsi_connection/connection%d:0", sid, sid)
	f.write(cdir+"/persistent_address", p.Portal.Addr+"\n")
	f.write(cdir+"/persistent_port", strconv.Itoa(p.Portal.Port)+"\n")
	f.write(cdir+"/address", p.Portal.Addr+"\n")
	f.write(cdir+"/port", strconv.Itoa(p.Portal.Port)+"\n")
	f.link(cdir, fmt.Sprintf("/sys/class/iscsi_connection/connection%d:0", sid))
	f.write(fmt.Sprintf("/sys/class/scsi_host/host%d/scan", hostNo), "")
	if f.autoScan && (rec["node.session.scan"] != "manual" || !f.scanSupported) {
		f.scanLocked(s)
	}
	return s
}

// scanLocked adds a disk for every LUN of the session's target it lacks.
func (f *fakeHost) scanLocked(s *fakeSession) {
	tg := f.targets[s.p.IQN]
	if tg == nil || s.state != sessionLoggedIn {
		return
	}
	for _, l := range tg.luns {
		if _, has := s.disks[l.lun]; has {
			continue
		}
		sd := "sd" + string(rune('a'+f.nextSD))
		n := f.nextSD
		f.nextSD++
		s.disks[l.lun] = sd
		hctl := fmt.Sprintf("%d:0:0:%d", s.host, l.lun)
		ddir := s.dir + fmt.Sprintf("/target%d:0:0/%s", s.host, hctl)
		f.write(ddir+"/wwid", l.wwid+"\n")
		f.write(ddir+"/state", "running\n")
		f.write(ddir+"/vendor", l.vendor+"\n")
		f.write(ddir+"/model", l.model+"\n")
		f.write(ddir+"/rescan", "")
		f.write(ddir+"/delete", "")
		f.write(ddir+"/type", "0\n")
		bdir := ddir + "/block/" + sd
		f.write(bdir+"/size", strconv.FormatInt(l.size, 10)+"\n")
		f.write(bdir+"/dev", fmt.Sprintf("8:%d\n", n*16))
		f.mkdir(bdir + "/holders")
		f.link(ddir, bdir+"/device")
		f.link(bdir, "/sys/block/"+sd)
		f.write("/dev/"+sd, "")
		if f.autoMap {
			f.addPathLocked(l.wwid, sd)
		}
	}
}

func (f *fakeHost) removeDiskLocked(s *fakeSession, lun int) {
	sd := s.disks[lun]
	delete(s.disks, lun)
	for _, m := range f.maps {
		base := "/sys/devices/virtual/block/" + m.dev
		if _, err := os.Lstat(f.path(base + "/slaves/" + sd)); err == nil {
			_ = os.Remove(f.path(base + "/slaves/" + sd))
		}
	}
	hctl := fmt.Sprintf("%d:0:0:%d", s.host, lun)
	_ = os.RemoveAll(f.path(s.dir + fmt.Sprintf("/target%d:0:0/%s", s.host, hctl)))
	_ = os.Remove(f.path("/sys/block/" + sd))
	_ = os.Remove(f.path("/dev/" + sd))
}

func (f *fakeHost) logoutSID(c host.Cmd, sid int) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sess[sid]
	if s == nil {
		return fail(c, 21, "iscsiadm: No session found.")
	}
	for lun := range s.disks {
		f.removeDiskLocked(s, lun)
	}
	_ = os.RemoveAll(f.path(s.dir))
	_ = os.Remove(f.path(fmt.Sprintf("/sys/class/iscsi_session/session%d", sid)))
	_ = os.Remove(f.path(fmt.Sprintf("/sys/class/iscsi_connection/connection%d:0", sid)))
	_ = os.RemoveAll(f.path(fmt.Sprintf("/sys/class/scsi_host/host%d", s.host)))
	delete(f.sess, sid)
	return ok("Logging out of session [sid: " + strconv.Itoa(sid) + "]\nLogout of [sid: " + strconv.Itoa(sid) + "] successful.\n")
}

// mapOfLocked finds the map of a WWID as multipath names it.
func (f *fakeHost) mapOfLocked(wwid string) *fakeMap {
	for _, m := range f.maps {
		if m.wwid == wwid {
			return m
		}
	}
	return nil
}

// addPathLocked puts a disk into its LUN's map, creating the map.
func (f *fakeHost) addPathLocked(sysfsWWID, sd string) {
	wwid := normaliseWWID(sysfsWWID)
	m := f.mapOfLocked(wwid)
	if m == nil {
		m = &fakeMap{dev: fmt.Sprintf("dm-%d", f.nextDM), name: wwid, wwid: wwid}
		f.nextDM++
		f.maps[m.name] = m
		base := "/sys/devices/virtual/block/" + m.dev
		f.write(base+"/dm/name", m.name+"\n")
		f.write(base+"/dm/uuid", "mpath-"+wwid+"\n")
		f.write(base+"/dm/suspended", "0\n")
		f.write(base+"/size", f.read("/sys/block/"+sd+"/size")+"\n")
		f.mkdir(base + "/slaves")
		f.mkdir(base + "/holders")
		f.link(base, "/sys/block/"+m.dev)
		f.write("/dev/mapper/"+m.name, "")
	}
	base := "/sys/devices/virtual/block/" + m.dev
	f.link("/sys/block/"+sd, base+"/slaves/"+sd)
	f.link(base, "/sys/block/"+sd+"/holders/"+m.dev)
}

func (f *fakeHost) removeMapLocked(m *fakeMap) {
	base := "/sys/devices/virtual/block/" + m.dev
	entries, _ := os.ReadDir(f.path(base + "/slaves"))
	for _, e := range entries {
		_ = os.Remove(f.path("/sys/block/" + e.Name() + "/holders/" + m.dev))
	}
	_ = os.RemoveAll(f.path(base))
	_ = os.Remove(f.path("/sys/block/" + m.dev))
	_ = os.Remove(f.path("/dev/mapper/" + m.name))
	delete(f.maps, m.name)
}

// disksOfLocked lists every disk of a WWID (as multipath names it).
func (f *fakeHost) disksOfLocked(wwid string) []string {
	var out []string
	for _, s := range f.sess {
		for lun, sd := range s.disks {
			if l, ok := f.lunLocked(s.p.IQN, lun); ok && normaliseWWID(l.wwid) == wwid {
				out = append(out, sd)
			}
		}
	}
	sort := slices.Clone(out)
	slices.Sort(sort)
	return sort
}

func (f *fakeHost) multipath(c host.Cmd) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := c.Args
	switch {
	case len(a) == 2 && (a[0] == "-a" || a[0] == "-w"):
		return ok("wwid '" + a[1] + "' added\n")
	case len(a) == 2 && a[0] == "-f":
		m := f.maps[a[1]]
		if m == nil {
			return ok("")
		}
		if f.flushInUse > 0 {
			f.flushInUse--
			return fail(c, 1, "205.115 | "+a[1]+": map in use")
		}
		if f.flushFails || len(f.list("/sys/devices/virtual/block/"+m.dev+"/holders")) > 0 {
			f.write("/sys/devices/virtual/block/"+m.dev+"/dm/suspended", "1\n")
			m.suspended = true
			return fail(c, 1, a[1]+": map in use")
		}
		f.removeMapLocked(m)
		return ok("")
	case len(a) == 2 && a[0] == "-r":
		return ok("")
	case len(a) == 1 && f.noMaps:
		return ok("")
	case len(a) == 1:
		for _, sd := range f.disksOfLocked(a[0]) {
			f.addPathLocked(f.read("/sys/block/"+sd+"/device/wwid"), sd)
		}
		return ok("")
	}
	return fail(c, 1, "fake multipath: unsupported")
}

func (f *fakeHost) list(dir string) []string {
	entries, _ := os.ReadDir(f.path(dir))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func (f *fakeHost) multipathd(c host.Cmd) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := strings.TrimPrefix(c.Args[0], "-k")
	switch {
	case cmd == "reconfigure":
		return ok("ok\n")
	case cmd == "show config":
		return ok("defaults {\n\tverbosity 2\n\tpolling_interval 5\n\tmax_polling_interval 20\n}\n")
	case cmd == "show paths":
		return ok("hcil    dev dev_t pri dm_st  chk_st dev_st  next_check\n")
	case strings.HasPrefix(cmd, "add map ") && f.noMaps:
		return ok("fail\n")
	case strings.HasPrefix(cmd, "add map "):
		w := strings.TrimPrefix(cmd, "add map ")
		disks := f.disksOfLocked(w)
		if len(disks) == 0 {
			return ok("fail\n")
		}
		for _, sd := range disks {
			f.addPathLocked(f.read("/sys/block/"+sd+"/device/wwid"), sd)
		}
		return ok("ok\n")
	case strings.HasPrefix(cmd, "add path "):
		sd := strings.TrimPrefix(cmd, "add path ")
		f.addPathLocked(f.read("/sys/block/"+sd+"/device/wwid"), sd)
		return ok("ok\n")
	case strings.HasPrefix(cmd, "resize map "):
		m := f.maps[strings.TrimPrefix(cmd, "resize map ")]
		if m == nil {
			return ok("fail\n")
		}
		slaves := f.list("/sys/devices/virtual/block/" + m.dev + "/slaves")
		f.write("/sys/devices/virtual/block/"+m.dev+"/size", f.read("/sys/block/"+slaves[0]+"/size")+"\n")
		return ok("ok\n")
	}
	return ok("fail\n")
}

// dmsetup answers status like the kernel's multipath target with the
// service-time selector (two per-path status values).
func (f *fakeHost) dmsetup(c host.Cmd) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.maps[c.Args[len(c.Args)-1]]
	if m == nil {
		return fail(c, 1, "Device does not exist.\nCommand failed.")
	}
	switch c.Args[0] {
	case "resume":
		f.write("/sys/devices/virtual/block/"+m.dev+"/dm/suspended", "0\n")
		m.suspended = false
		return ok("")
	case "table":
		return ok("0 2097152 multipath 1 queue_if_no_path 1 alua 1 1 service-time 0 1 2 8:0 1 1\n")
	case "status":
		slaves := f.list("/sys/devices/virtual/block/" + m.dev + "/slaves")
		var b strings.Builder
		fmt.Fprintf(&b, "0 %s multipath 2 0 0 0 1 1 A 0 %d 2", f.read("/sys/devices/virtual/block/"+m.dev+"/size"), len(slaves))
		for _, sd := range slaves {
			st := "A"
			if f.read("/sys/block/"+sd+"/device/state") != "running" {
				st = "F"
			}
			fmt.Fprintf(&b, " %s %s 0 0 1", f.read("/sys/block/"+sd+"/dev"), st)
		}
		return ok(b.String() + "\n")
	}
	return fail(c, 1, "fake dmsetup: unsupported")
}

// --- test controls ------------------------------------------------------

// failPortal marks a portal's sessions FAILED and their disks blocked, as
// when the target disappears, and refuses new connections to it.
func (f *fakeHost) failPortal(p Portal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[p] = true
	for _, s := range f.sess {
		if s.p.Portal != p {
			continue
		}
		s.state = sessionFailed
		f.write(s.dir+fmt.Sprintf("/iscsi_session/session%d/state", s.sid), sessionFailed+"\n")
		for _, sd := range s.disks {
			f.write("/sys/block/"+sd+"/device/state", "transport-offline\n")
		}
	}
}

func (f *fakeHost) sessionCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sess)
}

func (f *fakeHost) mapCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.maps)
}

// commands returns the recorded command lines (redacted) of one tool.
func (f *fakeHost) commands(name string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if c.Name == name {
			out = append(out, c.String())
		}
	}
	return out
}

func (f *fakeHost) countCalls(substr string) int {
	n := 0
	for _, c := range f.commands("iscsiadm") {
		if strings.Contains(c, substr) {
			n++
		}
	}
	return n
}

// addSecondLUN exports LUN 1 (otherNAA, 2 GiB) next to LUN 0.
func (f *fakeHost) addSecondLUN() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets[testIQN].luns = append(f.targets[testIQN].luns, fakeLUN{lun: 1, wwid: otherNAA, size: 4194304, vendor: "LIO-ORG", model: "lun1"})
}

// assertNoSecret checks the raw arguments of every command (not the
// redacted String, which would hide the very leak it looks for): argv is
// world-readable in /proc/<pid>/cmdline.
func (f *fakeHost) assertNoSecret(t *testing.T, secrets ...string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		line := strings.Join(append([]string{c.Name}, c.Args...), " ") + " " + strings.Join(c.Env, " ")
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("secret %q on a command line: %s", s, c.String())
			}
		}
	}
}

// fakeSecrets resolves secret uuids from a map.
type fakeSecrets map[string]string

func (s fakeSecrets) Secret(_ context.Context, uuid string) (string, error) {
	v, ok := s[uuid]
	if !ok {
		return "", host.NewError(host.KindNotFound, "resolve secret "+uuid, "no such secret", "", nil)
	}
	return v, nil
}

func fastTimeouts() Timeouts {
	return Timeouts{
		Command: 2 * time.Second, Discovery: 2 * time.Second, LoginTimeout: 1, LoginRetries: 0,
		DeviceWait: 2 * time.Second, MapWait: 2 * time.Second, Flush: 2 * time.Second,
		Lock: 5 * time.Second, Poll: 5 * time.Millisecond,
	}
}

func (f *fakeHost) transport(secrets fakeSecrets) *Transport {
	return New(Deps{
		Runner: f, Root: f.root, Locker: host.FileLocker{Root: f.root}, Secrets: secrets, Timeouts: fastTimeouts(),
		Lookup: func(_ context.Context, name string) ([]string, error) {
			if name == "array.example" {
				return []string{"fd00::5", "10.0.0.5"}, nil
			}
			return nil, fmt.Errorf("no such host")
		},
		Capacity: f.capacity,
	})
}

// capacity answers READ CAPACITY for a disk of a live session with the
// LUN's size on the target now, as an array does; counted as "sg_io".
func (f *fakeHost) capacity(dev string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capacityCalls++
	for _, s := range f.sess {
		for lun, sd := range s.disks {
			if "/dev/"+sd != dev {
				continue
			}
			if f.down[s.p.Portal] {
				return 0, fmt.Errorf("%s: %w", dev, syscall.EIO)
			}
			if l, ok := f.lunLocked(s.p.IQN, lun); ok {
				return l.size * 512, nil
			}
		}
	}
	return 0, fmt.Errorf("%s: %w", dev, syscall.ENODEV)
}

func baseConfig() map[string]string {
	return map[string]string{
		KeyTarget: "127.0.0.1,127.0.0.2", KeyTargetIQN: testIQN, KeySCSIid: testWWID,
	}
}

const fakeIscsidComm = "/proc/100/comm"

func (f *fakeHost) iscsidUp() bool {
	_, err := os.Stat(f.path(fakeIscsidComm))
	return err == nil
}

// stopIscsid plays XCP-ng's boot: iscsid.service is disabled by preset.
func (f *fakeHost) stopIscsid() {
	f.t.Helper()
	if err := os.Remove(f.path(fakeIscsidComm)); err != nil {
		f.t.Fatal(err)
	}
}

// systemctl plays `systemctl start iscsid.service`.
func (f *fakeHost) systemctl(c host.Cmd) (host.Result, error) {
	if len(c.Args) != 2 || c.Args[0] != "start" || c.Args[1] != "iscsid.service" {
		return fail(c, 1, "fake systemctl: unexpected "+c.String()+"\n")
	}
	if f.startFails {
		return fail(c, 1, "Job for iscsid.service failed because the control process exited with error code.\n")
	}
	f.write(fakeIscsidComm, "iscsid\n")
	return ok("")
}

package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// fakeNet is a routing table and a set of links and addresses.
type fakeNet struct {
	links  []Link
	addrs  []Addr
	routes []fakeRoute
	err    error
}

type fakeRoute struct {
	dst  netip.Prefix
	link string
	gw   string
}

func (n *fakeNet) Links() ([]Link, error) { return n.links, n.err }
func (n *fakeNet) Addrs() ([]Addr, error) { return n.addrs, n.err }

func (n *fakeNet) index(name string) int {
	for _, l := range n.links {
		if l.Name == name {
			return l.Index
		}
	}
	return 0
}

// RouteTo does a longest-prefix match; a bound socket (oif) only uses
// routes through its interface, and is sent out of it regardless.
func (n *fakeNet) RouteTo(dst netip.Addr, oif string) (Route, error) {
	var best *fakeRoute
	for i, r := range n.routes {
		if !r.dst.Contains(dst) || (oif != "" && r.link != oif) {
			continue
		}
		if best == nil || r.dst.Bits() > best.dst.Bits() {
			best = &n.routes[i]
		}
	}
	if best == nil {
		if oif != "" {
			return Route{LinkIndex: n.index(oif)}, nil
		}
		return Route{}, fmt.Errorf("route to %s: network is unreachable", dst)
	}
	r := Route{LinkIndex: n.index(best.link), Matched: best.dst}
	if best.gw != "" {
		r.Gw = netip.MustParseAddr(best.gw)
	}
	return r, nil
}

func (n *fakeNet) DefaultRoutes() ([]Route, error) {
	var out []Route
	for _, r := range n.routes {
		if r.dst.Bits() == 0 {
			out = append(out, Route{LinkIndex: n.index(r.link), Matched: r.dst})
		}
	}
	return out, nil
}

func (n *fakeNet) addLink(l Link) {
	l.Index = len(n.links) + 1
	if l.Kind == "" {
		l.Kind = "device"
	}
	l.Up = true
	n.links = append(n.links, l)
}

func (n *fakeNet) link(name string) *Link {
	for i := range n.links {
		if n.links[i].Name == name {
			return &n.links[i]
		}
	}
	return nil
}

// addAddr puts an address on a link and its on-link route in the table.
func (n *fakeNet) addAddr(link, cidr string) {
	p := netip.MustParsePrefix(cidr)
	n.addrs = append(n.addrs, Addr{LinkIndex: n.index(link), Prefix: p})
	n.routes = append(n.routes, fakeRoute{dst: p.Masked(), link: link})
}

// fakeRunner answers commands by their full command line.
type fakeRunner struct {
	mu    sync.Mutex
	calls []string
	rules []rule
}

type rule struct {
	match func(line string) bool
	res   host.Result
	err   error
}

func (f *fakeRunner) on(prefix string, stdout string, err error) {
	f.rules = append([]rule{{match: func(l string) bool { return strings.HasPrefix(l, prefix) }, res: host.Result{Stdout: []byte(stdout)}, err: err}}, f.rules...)
}

// off forgets the rules that answer a command line.
func (f *fakeRunner) off(line string) {
	var keep []rule
	for _, r := range f.rules {
		if !r.match(line) {
			keep = append(keep, r)
		}
	}
	f.rules = keep
}

func (f *fakeRunner) Run(_ context.Context, c host.Cmd) (host.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	line := c.String()
	f.calls = append(f.calls, line)
	for _, r := range f.rules {
		if r.match(line) {
			res := r.res
			if r.err != nil {
				var ee *host.ExitError
				if errors.As(r.err, &ee) {
					res.ExitCode, res.Stderr = ee.Code, []byte(ee.Stderr)
				}
			}
			return res, r.err
		}
	}
	return host.Result{}, &host.CmdError{Cmd: line, Err: fmt.Errorf("%w: %s", host.ErrNotInstalled, c.Name)}
}

func exitErr(code int, stderr string) error {
	return &host.ExitError{Cmd: "x", Code: code, Stderr: stderr}
}

// fakePool is a pool of hosts.
type fakePool struct {
	hosts    []PoolHost
	err      error
	recorded map[string]string
}

func (p *fakePool) Hosts(context.Context) ([]PoolHost, error) { return p.hosts, p.err }
func (p *fakePool) RecordHostNQN(_ context.Context, uuid, nqn string) error {
	if p.recorded == nil {
		p.recorded = map[string]string{}
	}
	p.recorded[uuid] = nqn
	return nil
}

type fakeHealth struct {
	h   transport.Health
	err error
}

func (f fakeHealth) Health(context.Context, map[string]string) (transport.Health, error) {
	return f.h, f.err
}
func (f fakeHealth) Diagnostics(context.Context) string { return "fake transport state\n" }

const (
	selfUUID  = "11111111-1111-4111-8111-111111111111"
	otherUUID = "22222222-2222-4222-8222-222222222222"
	srUUID    = "33333333-3333-4333-8333-333333333333"
	localIQN  = "iqn.2024-01.com.example:xcp1"
	localNQN  = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-4908-8706-050403020100"
	subNQN    = "nqn.2014-08.org.example:array1"
	targetIQN = "iqn.2003-01.org.example:array1"
	lunWWID   = "36001405aabbccddeeff00112233445566"
)

// fakeHost is a well-configured XCP-ng host with two storage NICs, each
// on its own subnet with one portal: every check passes on it. Tests
// break one thing at a time.
type fakeHost struct {
	t    *testing.T
	dir  string
	net  *fakeNet
	run  *fakeRunner
	pool *fakePool
	deps Deps
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	h := &fakeHost{t: t, dir: t.TempDir(), net: &fakeNet{}, run: &fakeRunner{}}
	h.net.addLink(Link{Name: "lo", Kind: "", MTU: 65536})
	h.net.addLink(Link{Name: "eth0", MTU: 1500})
	h.net.addLink(Link{Name: "eth1", MTU: 9000})
	h.net.addLink(Link{Name: "eth2", MTU: 9000})
	h.net.addAddr("eth0", "192.168.1.10/24")
	h.net.addAddr("eth1", "10.0.1.5/24")
	h.net.addAddr("eth2", "10.0.2.5/24")
	h.net.routes = append(h.net.routes, fakeRoute{dst: netip.MustParsePrefix("0.0.0.0/0"), link: "eth0", gw: "192.168.1.1"})

	h.write("/proc/sys/kernel/hostname", "xcp1")
	h.write("/proc/sys/kernel/osrelease", "6.1.0-18-amd64")
	h.write("/etc/xensource-inventory", "PRODUCT_BRAND='XCP-ng'\nPRODUCT_VERSION='8.3.0'\nINSTALLATION_UUID='"+selfUUID+"'\nMANAGEMENT_INTERFACE='eth0'\n")
	for _, i := range []string{"all", "default", "eth0", "eth1", "eth2"} {
		h.sysctl(i, "arp_ignore", 0)
		h.sysctl(i, "arp_announce", 0)
		h.sysctl(i, "rp_filter", 1)
	}
	h.write("/proc/101/comm", "iscsid")
	h.write("/proc/102/comm", "multipathd")
	h.write("/proc/1/comm", "systemd")
	h.write(initiatorFile, "## generated by xapi\nInitiatorName="+localIQN+"\n")
	h.write(hostNQNFile, localNQN)
	h.write(sysMultipathParam, "Y")
	h.write("/sys/module/nvme_tcp/refcnt", "2")
	h.write("/sys/class/nvme-subsystem/nvme-subsys0/subsysnqn", subNQN)
	h.write("/sys/class/nvme-subsystem/nvme-subsys0/iopolicy", "round-robin")

	h.run.on("ping ", "1 packets transmitted, 1 received, 0% packet loss, time 0ms", nil)
	h.run.on("nvme version", "nvme version 2.3 (git 2.3)\nlibnvme version 1.3 (git 1.3)\n", nil)
	h.run.on("iscsiadm -m node", "", exitErr(21, "iscsiadm: No records found"))
	h.node(targetIQN, "10.0.1.10:3260", "default", "10")
	h.node(targetIQN, "10.0.2.10:3260", "default", "10")
	h.session(1, targetIQN, "10.0.1.10", 10)
	h.session(2, targetIQN, "10.0.2.10", 10)
	h.write("/sys/block/dm-3/dm/uuid", "mpath-"+lunWWID)
	h.write("/sys/block/dm-3/dm/name", lunWWID)
	h.run.on("multipathd -kshow config", "defaults {\n\tpolling_interval 5\n\tfind_multipaths \"yes\"\n}\nblacklist {\n\tdevnode \"^nvme\"\n}\nmultipaths {\n\tmultipath {\n\t\twwid \""+lunWWID+"\"\n\t\talias \""+lunWWID+"\"\n\t\tno_path_retry 12\n\t}\n}\n", nil)
	h.run.on("dmsetup table "+lunWWID, "0 2097152 multipath 1 queue_if_no_path 1 alua 1 1 service-time 0 2 1 8:16 1 8:32 1\n", nil)

	h.pool = &fakePool{hosts: []PoolHost{
		{UUID: selfUUID, Name: "xcp1", IQN: localIQN, HostNQN: localNQN},
		{UUID: otherUUID, Name: "xcp2", IQN: "iqn.2024-01.com.example:xcp2", HostNQN: "nqn.2014-08.org.nvmexpress:uuid:99999999-0b0a-4908-8706-050403020100"},
	}}
	h.deps = Deps{Root: host.NewRoot(h.dir), Runner: h.run, Net: h.net, Pool: h.pool,
		Resolve: func(context.Context, string) ([]string, error) { return nil, errors.New("no DNS in tests") }}
	return h
}

func (h *fakeHost) write(p, content string) {
	h.t.Helper()
	full := filepath.Join(h.dir, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content+"\n"), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) remove(p string) {
	h.t.Helper()
	if err := os.RemoveAll(filepath.Join(h.dir, p)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) sysctl(iface, key string, v int) {
	h.write("/proc/sys/net/ipv4/conf/"+iface+"/"+key, fmt.Sprint(v))
}

func (h *fakeHost) node(iqn, portal, iface, timeout string) {
	h.run.on(fmt.Sprintf("iscsiadm -m node -T %s -p %s -I %s", iqn, portal, iface),
		"# BEGIN RECORD 2.1.8\nnode.name = "+iqn+"\nnode.tpgt = 1\nnode.startup = manual\nnode.session.timeo.replacement_timeout = "+timeout+"\nnode.conn[0].address = "+portal+"\n# END RECORD\n", nil)
}

func (h *fakeHost) session(id int, iqn, addr string, tmo int) {
	h.write(fmt.Sprintf("/sys/class/iscsi_session/session%d/targetname", id), iqn)
	h.write(fmt.Sprintf("/sys/class/iscsi_session/session%d/recovery_tmo", id), fmt.Sprint(tmo))
	h.write(fmt.Sprintf("/sys/class/iscsi_session/session%d/device/uevent", id), "")
	h.write(fmt.Sprintf("/sys/class/iscsi_connection/connection%d:0/persistent_address", id), addr)
}

// attach records an SR as attached on this host, as SR.attach does.
func (h *fakeHost) attach(typ string, cfg map[string]string) {
	h.t.Helper()
	b := fmt.Sprintf(`{"type":%q,"uuid":%q,"configuration":{`, typ, srUUID)
	first := true
	for _, k := range sortedKeys(cfg) {
		if !first {
			b += ","
		}
		first = false
		b += fmt.Sprintf("%q:%q", k, cfg[k])
	}
	b += `},"device":"/dev/mapper/x","vg":"sanvol-` + srUUID + `"}`
	h.write(volume.StateDir+"/"+srUUID+".json", b)
}

func nvmeConfig() map[string]string {
	return map[string]string{"target": "10.0.1.10,10.0.2.10", "nqn": subNQN}
}

func iscsiConfig() map[string]string {
	return map[string]string{"target": "10.0.1.10,10.0.2.10", "targetIQN": targetIQN, "SCSIid": lunWWID}
}

func (h *fakeHost) doctor(o Options) Report {
	h.t.Helper()
	rep, err := Run(context.Background(), h.deps, o)
	if err != nil {
		h.t.Fatalf("doctor: %v", err)
	}
	return rep
}

// find returns the one result of a check.
func find(t *testing.T, rep Report, id string) Result {
	t.Helper()
	var found []Result
	for _, r := range rep.Results {
		if r.Check == id {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d results for %s in:\n%s", len(found), id, text(rep))
	}
	return found[0]
}

func text(rep Report) string {
	var b strings.Builder
	_ = rep.Text(&b)
	return b.String()
}

// expect asserts a check's status and that its fix (or, when fix is
// empty, its summary) says what the test names.
func expect(t *testing.T, rep Report, id string, st Status, inSummary, inFix string) Result {
	t.Helper()
	r := find(t, rep, id)
	if r.Status != st {
		t.Fatalf("%s: status %s, want %s\n%s", id, r.Status, st, text(rep))
	}
	if !strings.Contains(r.Summary, inSummary) {
		t.Errorf("%s: summary %q lacks %q", id, r.Summary, inSummary)
	}
	if !strings.Contains(r.Fix, inFix) {
		t.Errorf("%s: fix %q lacks %q", id, r.Fix, inFix)
	}
	if st >= Warn && r.Fix == "" {
		t.Errorf("%s: a %s without a fix", id, st)
	}
	if r.Source == "" {
		t.Errorf("%s: no source", id)
	}
	return r
}

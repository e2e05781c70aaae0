package nvme

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

// fakeKernel is a host.Runner that behaves like nvme-cli on a kernel with
// nvmet targets behind it: connect creates controllers, subsystems and
// namespace heads in a temporary sysfs tree, disconnect removes them. It
// records every command.
type fakeKernel struct {
	t    *testing.T
	dir  string
	root host.Root

	mu    sync.Mutex
	calls []host.Cmd
	next  int // next controller instance

	// targets: nqn -> namespaces it exports.
	targets map[string][]fakeNS
	// down portals ("addr:port") refuse connections.
	down map[string]bool
	// authKernel creates dhchap_secret attributes (CONFIG_NVME_AUTH).
	authKernel bool
	// targetKeys: nqn -> the host key the target requires ("" = none).
	targetKeys map[string]string
	// fabrics holds every options string written to /dev/nvme-fabrics.
	fabrics []string
	// discovery is the JSON `nvme discover` prints.
	discovery string
	// connectDelay slows each connect, to widen races.
	connectDelay time.Duration
	// portalDelay slows the connects to one portal ("addr:port") more,
	// like a target that makes the kernel wait (its 60 s admin timeout
	// for a refused controller key).
	portalDelay map[string]time.Duration
	// active counts the connects inside WriteRead; maxActive is its peak.
	active, maxActive int
}

type fakeNS struct {
	nsid  int
	wwid  string
	nguid string // dashed, as the kernel prints it
	size  int64  // sectors
}

const (
	testNQN     = "nqn.2024-01.org.sanvol:lab"
	testHostNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
	testHostID  = "11111111-2222-4333-8444-555555555555"
	testUUID    = "6a8e4f5c-1b2d-4e3f-9a0b-1c2d3e4f5a6b"
	testKey     = "DHHC-1:00:ZmFrZWtleWZha2VrZXlmYWtla2V5ZmFrZWtleTEyMzQ=:"
)

func newFakeKernel(t *testing.T) *fakeKernel {
	t.Helper()
	dir := t.TempDir()
	k := &fakeKernel{
		t: t, dir: dir,
		targets: map[string][]fakeNS{
			testNQN: {{nsid: 1, wwid: "uuid." + testUUID, size: 2097152}},
		},
		down:        map[string]bool{},
		targetKeys:  map[string]string{},
		portalDelay: map[string]time.Duration{},
	}
	k.root = host.Root{Dir: dir, Devices: k}
	k.write("/sys/module/nvme_tcp/parameters/so_priority", "0")
	k.write("/sys/module/nvme_core/parameters/multipath", "Y")
	k.write("/dev/nvme-fabrics", "instance=-1,cntlid=-1,transport=%s,traddr=%s,trsvcid=%s,nqn=%s,queue_size=%d,nr_io_queues=%d,reconnect_delay=%d,ctrl_loss_tmo=%d,keep_alive_tmo=%d,hostnqn=%s,host_traddr=%s,host_iface=%s,hostid=%s,duplicate_connect,disable_sqflow,hdr_digest,data_digest,nr_write_queues=%d,nr_poll_queues=%d,tos=%d,fast_io_fail_tmo=%d,discovery,dhchap_secret=%s,dhchap_ctrl_secret=%s\n")
	k.write("/proc/sys/kernel/osrelease", "6.1.0-test-amd64")
	k.write(HostNQNFile, testHostNQN)
	k.write(HostIDFile, testHostID)
	if err := os.MkdirAll(filepath.Join(dir, "sys/class/nvme"), 0o755); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *fakeKernel) write(p, content string) {
	k.t.Helper()
	real := k.root.Path(p)
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(real, []byte(content+"\n"), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) read(p string) string {
	s, _ := k.root.ReadString(p)
	return s
}

// addController puts a controller in sysfs as the kernel would.
func (k *fakeKernel) addController(nqn, traddr, trsvcid, iface, hostnqn, state, key string) string {
	name := "nvme" + strconv.Itoa(k.next)
	k.next++
	dir := "/sys/class/nvme/" + name
	addr := "traddr=" + traddr + ",trsvcid=" + trsvcid
	if iface != "" {
		addr += ",host_iface=" + iface
	}
	k.write(dir+"/address", addr+",src_addr=127.0.0.1")
	k.write(dir+"/state", state)
	k.write(dir+"/subsysnqn", nqn)
	k.write(dir+"/transport", "tcp")
	k.write(dir+"/hostnqn", hostnqn)
	k.write(dir+"/hostid", testHostID)
	k.write(dir+"/ctrl_loss_tmo", "1800")
	if k.authKernel {
		if key == "" {
			key = "none"
		}
		k.write(dir+"/dhchap_secret", key)
	}
	sub := k.subsysFor(nqn)
	k.write("/sys/class/nvme-subsystem/"+sub+"/"+name+"/state", state)
	for i, ns := range k.targets[nqn] {
		head := fmt.Sprintf("nvme%sn%d", strings.TrimPrefix(sub, "nvme-subsys"), ns.nsid)
		if k.root.Exists("/sys/block/" + head) {
			continue
		}
		_ = i
		k.write("/sys/class/nvme-subsystem/"+sub+"/"+head+"/dev", "259:0")
		k.write("/sys/block/"+head+"/wwid", ns.wwid)
		k.write("/sys/block/"+head+"/nsid", strconv.Itoa(ns.nsid))
		k.write("/sys/block/"+head+"/size", strconv.FormatInt(ns.size, 10))
		if ns.nguid != "" {
			k.write("/sys/block/"+head+"/nguid", ns.nguid)
		}
		if err := os.MkdirAll(k.root.Path("/sys/block/"+head+"/holders"), 0o755); err != nil {
			k.t.Fatal(err)
		}
		k.write("/dev/"+head, "")
		link := k.root.Path("/dev/disk/by-id/nvme-" + ns.wwid)
		_ = os.MkdirAll(filepath.Dir(link), 0o755)
		_ = os.Symlink("../../"+head, link)
	}
	return name
}

// subsysFor returns the subsystem of nqn, creating it.
func (k *fakeKernel) subsysFor(nqn string) string {
	ents, _ := os.ReadDir(k.root.Path("/sys/class/nvme-subsystem"))
	for _, e := range ents {
		if k.read("/sys/class/nvme-subsystem/"+e.Name()+"/subsysnqn") == nqn {
			return e.Name()
		}
	}
	name := "nvme-subsys" + strconv.Itoa(len(ents))
	k.write("/sys/class/nvme-subsystem/"+name+"/subsysnqn", nqn)
	k.write("/sys/class/nvme-subsystem/"+name+"/iopolicy", "numa")
	k.write("/sys/class/nvme-subsystem/"+name+"/model", "Linux")
	return name
}

// removeController deletes a controller, and its subsystem with the
// heads when it was the last path, as the kernel does.
func (k *fakeKernel) removeController(name string) bool {
	dir := k.root.Path("/sys/class/nvme/" + name)
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	nqn := k.read("/sys/class/nvme/" + name + "/subsysnqn")
	os.RemoveAll(dir)
	sub := k.subsysFor(nqn)
	subDir := k.root.Path("/sys/class/nvme-subsystem/" + sub)
	os.RemoveAll(filepath.Join(subDir, name))
	ents, _ := os.ReadDir(subDir)
	for _, e := range ents {
		if ctrlNameRe.MatchString(e.Name()) {
			return true
		}
	}
	for _, e := range ents {
		if headNameRe.MatchString(e.Name()) {
			os.RemoveAll(k.root.Path("/sys/block/" + e.Name()))
			os.Remove(k.root.Path("/dev/" + e.Name()))
		}
	}
	links, _ := filepath.Glob(k.root.Path("/dev/disk/by-id/nvme-*"))
	for _, l := range links {
		if _, err := os.Stat(l); err != nil {
			os.Remove(l)
		}
	}
	os.RemoveAll(subDir)
	return true
}

func (k *fakeKernel) controllerNames() []string {
	ents, _ := os.ReadDir(k.root.Path("/sys/class/nvme"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func opts(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "="); ok {
			m[k] = v
		}
	}
	return m
}

func exitErr(c host.Cmd, code int, stderr string) error {
	return &host.ExitError{Cmd: c.String(), Code: code, Stderr: host.Redact(stderr, c.Secrets)}
}

func (k *fakeKernel) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	if c.Timeout <= 0 {
		k.t.Errorf("command without a timeout: %s", c)
	}
	k.mu.Lock()
	k.calls = append(k.calls, c)
	k.mu.Unlock()
	switch c.Name {
	case "modprobe", "udevadm":
		return host.Result{}, nil
	case nvmeCmd:
	default:
		return host.Result{}, &host.CmdError{Cmd: c.String(), Err: host.ErrNotInstalled}
	}
	if len(c.Args) == 0 {
		return host.Result{}, exitErr(c, 1, "usage")
	}
	o := opts(c.Args)
	switch c.Args[0] {
	case "version":
		return host.Result{Stdout: []byte("nvme version 2.3 (git 2.3)\nlibnvme version 1.3 (git 1.3)\n")}, nil
	case "discover":
		if k.down[o["traddr"]+":"+o["trsvcid"]] {
			return host.Result{}, exitErr(c, 1, "Failed to write to /dev/nvme-fabrics: Connection refused\nfailed to add controller, error failed to write to nvme-fabrics device")
		}
		return host.Result{Stdout: []byte(k.discovery)}, nil
	case "list-subsys":
		return host.Result{Stdout: []byte(k.listSubsys())}, nil
	case "disconnect":
		k.mu.Lock()
		defer k.mu.Unlock()
		if !k.removeController(o["device"]) {
			return host.Result{}, exitErr(c, 1, "Failed to scan topology: No such file or directory")
		}
		return host.Result{Stdout: []byte("NQN:" + testNQN + " disconnected 1 controller(s)\n")}, nil
	case "connect":
		k.t.Errorf("nvme connect ran; sanvol writes /dev/nvme-fabrics itself: %s", c)
	}
	return host.Result{}, exitErr(c, 1, "unknown command "+c.Args[0])
}

// WriteRead plays the kernel's /dev/nvme-fabrics (host.DeviceIO): a
// write of an options string connects, and the answer names the new
// controller; failures are the errnos the kernel returns.
func (k *fakeKernel) WriteRead(p string, data []byte) ([]byte, error) {
	if p != devFabrics {
		return nil, &os.PathError{Op: "open", Path: p, Err: syscall.ENODEV}
	}
	fail := func(errno syscall.Errno) ([]byte, error) {
		return nil, &os.PathError{Op: "write", Path: p, Err: errno}
	}
	o := map[string]string{}
	for _, f := range strings.Split(string(data), ",") {
		key, v, ok := strings.Cut(f, "=")
		if !ok || o[key] != "" {
			k.t.Errorf("malformed or repeated option %q in %q", f, data)
			return fail(syscall.EINVAL)
		}
		o[key] = v
	}
	portal := o["traddr"] + ":" + o["trsvcid"]
	if a, err := netip.ParseAddr(o["traddr"]); err == nil && a.Is6() {
		portal = "[" + o["traddr"] + "]:" + o["trsvcid"]
	}
	k.mu.Lock()
	k.fabrics = append(k.fabrics, string(data))
	k.active++
	k.maxActive = max(k.maxActive, k.active)
	delay := k.connectDelay + k.portalDelay[portal]
	k.mu.Unlock()
	time.Sleep(delay)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.active--
	if k.down[portal] {
		return fail(syscall.ECONNREFUSED)
	}
	if _, ok := k.targets[o["nqn"]]; !ok {
		return fail(syscall.EIO)
	}
	if want := k.targetKeys[o["nqn"]]; want != "" && k.authKernel && o["dhchap_secret"] != want {
		return fail(syscall.EKEYREJECTED)
	}
	// The kernel's duplicate check (nvmf_ip_options_match).
	for _, name := range k.controllerNames() {
		d := "/sys/class/nvme/" + name
		addr := parseAddress(k.read(d + "/address"))
		if k.read(d+"/subsysnqn") == o["nqn"] && addr["traddr"] == o["traddr"] && addr["trsvcid"] == o["trsvcid"] &&
			addr["host_iface"] == o["host_iface"] && !strings.HasPrefix(k.read(d+"/state"), "deleting") {
			return fail(syscall.EALREADY)
		}
	}
	name := k.addController(o["nqn"], o["traddr"], o["trsvcid"], o["host_iface"], o["hostnqn"], "live", o["dhchap_secret"])
	return []byte("instance=" + strings.TrimPrefix(name, "nvme") + ",cntlid=1\n"), nil
}

// waitIdle waits until no connect is left in WriteRead: one that
// attach gave up on must not touch the test's directory after it ends.
func (k *fakeKernel) waitIdle() {
	for {
		k.mu.Lock()
		n := k.active
		k.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listSubsys prints the sysfs state the way nvme-cli 2.x does.
func (k *fakeKernel) listSubsys() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var subs []string
	ents, _ := os.ReadDir(k.root.Path("/sys/class/nvme-subsystem"))
	for _, e := range ents {
		d := "/sys/class/nvme-subsystem/" + e.Name()
		var paths []string
		cs, _ := os.ReadDir(k.root.Path(d))
		for _, c := range cs {
			if ctrlNameRe.MatchString(c.Name()) {
				cd := "/sys/class/nvme/" + c.Name()
				paths = append(paths, fmt.Sprintf(`{"Name":%q,"Transport":"tcp","Address":%q,"State":%q}`, c.Name(), k.read(cd+"/address"), k.read(cd+"/state")))
			}
		}
		subs = append(subs, fmt.Sprintf(`{"Name":%q,"NQN":%q,"Paths":[%s]}`, e.Name(), k.read(d+"/subsysnqn"), strings.Join(paths, ",")))
	}
	return fmt.Sprintf(`[{"HostNQN":%q,"Subsystems":[%s]}]`, testHostNQN, strings.Join(subs, ","))
}

// connects returns the options of every connect written to
// /dev/nvme-fabrics, one "key=value" element each.
func (k *fakeKernel) connects() [][]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out [][]string
	for _, f := range k.fabrics {
		out = append(out, strings.Split(f, ","))
	}
	return out
}

func (k *fakeKernel) ran(sub string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.calls {
		if strings.Contains(strings.Join(append([]string{c.Name}, c.Args...), " "), sub) {
			n++
		}
	}
	return n
}

type fakeRouter map[string]string

func (r fakeRouter) InterfaceFor(a netip.Addr) (string, error) {
	if n, ok := r[a.String()]; ok {
		return n, nil
	}
	return "", fmt.Errorf("no route to %s", a)
}

type fakeSecrets map[string]string

func (s fakeSecrets) Secret(_ context.Context, uuid string) (string, error) {
	if v, ok := s[uuid]; ok {
		return v, nil
	}
	return "", host.NewError(host.KindNotFound, "resolve secret "+uuid, "no such secret", "", nil)
}

func (k *fakeKernel) transport(secrets host.SecretResolver) *Transport {
	return New(Deps{
		Runner:  k,
		Root:    k.root,
		Locker:  host.FileLocker{Root: k.root},
		Secrets: secrets,
		Router:  fakeRouter{"127.0.0.1": "lo", "127.0.0.2": "lo", "127.0.0.3": "lo"},
		Timeouts: Timeouts{
			Namespace: 500 * time.Millisecond,
			Poll:      5 * time.Millisecond,
			Lock:      5 * time.Second,
		},
	})
}

func baseCfg() map[string]string {
	return map[string]string{
		KeyTarget: "127.0.0.1,127.0.0.2",
		KeyNQN:    testNQN,
	}
}

// assertNoSecret checks the raw argv and environment of every command
// sanvol ran (c.String() is redacted and would hide the leak): argv is
// world-readable in /proc/<pid>/cmdline.
func (k *fakeKernel) assertNoSecret(t *testing.T, secrets ...string) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.calls {
		line := strings.Join(append(append([]string{c.Name}, c.Args...), c.Env...), " ")
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("secret on a command line: %s", c.String())
			}
		}
	}
}

package nvme

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

func TestAttachConnectsEveryPortalWithExplicitOptions(t *testing.T) {
	k := newFakeKernel(t)
	tr := k.transport(nil)
	dev, err := tr.Attach(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if want := "/dev/disk/by-id/nvme-uuid." + testUUID; dev.Path != want {
		t.Errorf("Path = %s, want %s", dev.Path, want)
	}
	if diff := cmp.Diff(transport.Health{Total: 2, Live: 2, Detail: "2 of 2 paths live"}, dev.Health); diff != "" {
		t.Errorf("health (-want +got):\n%s", diff)
	}
	got := k.connects()
	want := [][]string{}
	for _, a := range []string{"127.0.0.1", "127.0.0.2"} {
		want = append(want, []string{"nqn=" + testNQN, "transport=tcp", "traddr=" + a, "host_iface=lo", "trsvcid=4420",
			"hostnqn=" + testHostNQN, "hostid=" + testHostID, "reconnect_delay=10", "ctrl_loss_tmo=1800"})
	}
	sortArgv(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/dev/nvme-fabrics options (-want +got):\n%s", diff)
	}
	if p := k.read("/sys/class/nvme-subsystem/nvme-subsys0/iopolicy"); p != "round-robin" {
		t.Errorf("iopolicy = %q", p)
	}
}

func sortArgv(a [][]string) {
	for i := range a {
		for j := i + 1; j < len(a); j++ {
			if strings.Join(a[j], " ") < strings.Join(a[i], " ") {
				a[i], a[j] = a[j], a[i]
			}
		}
	}
}

func TestAttachSkipsLivePathsAndIsIdempotent(t *testing.T) {
	k := newFakeKernel(t)
	// An existing unbound path to the first portal, e.g. from an earlier
	// attach on a kernel without host_iface: a derived interface must not
	// make it look like a different path.
	k.addController(testNQN, "127.0.0.1", "4420", "", testHostNQN, "live", "")
	tr := k.transport(nil)
	if _, err := tr.Attach(context.Background(), baseCfg()); err != nil {
		t.Fatal(err)
	}
	c := k.connects()
	if len(c) != 1 || opts(c[0])["traddr"] != "127.0.0.2" {
		t.Fatalf("connects = %v, want only 127.0.0.2", c)
	}
	if _, err := tr.Attach(context.Background(), baseCfg()); err != nil {
		t.Fatal(err)
	}
	if n := len(k.connects()); n != 1 {
		t.Fatalf("second attach ran connect again (%d connects)", n)
	}
	if n := len(k.controllerNames()); n != 2 {
		t.Fatalf("%d controllers, want 2", n)
	}
}

func TestAttachExplicitIfaceDoesNotReuseOtherBinding(t *testing.T) {
	k := newFakeKernel(t)
	k.addController(testNQN, "127.0.0.1", "4420", "", testHostNQN, "live", "")
	cfg := baseCfg()
	cfg[KeyHostIface] = "eth1,eth2"
	if _, err := k.transport(nil).Attach(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	var ifaces []string
	for _, c := range k.connects() {
		ifaces = append(ifaces, opts(c)["host_iface"])
	}
	if diff := cmp.Diff([]string{"eth1", "eth2"}, sortedCopy(ifaces)); diff != "" {
		t.Errorf("host-iface (-want +got):\n%s", diff)
	}
}

// Derived interfaces bind the paths of a multipathed subsystem; a lone
// portal stays unbound so that its path follows the routing table (a
// floating portal that moves onto this host).
func TestAttachDerivesIfacesOnlyForSeveralPortals(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   []string
	}{
		{"127.0.0.1,127.0.0.2", []string{"lo", "lo"}},
		{"127.0.0.1", []string{""}},
	} {
		t.Run(tc.target, func(t *testing.T) {
			k := newFakeKernel(t)
			cfg := baseCfg()
			cfg[KeyTarget] = tc.target
			if _, err := k.transport(nil).Attach(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			var ifaces []string
			for _, c := range k.connects() {
				ifaces = append(ifaces, opts(c)["host_iface"])
			}
			if diff := cmp.Diff(tc.want, ifaces); diff != "" {
				t.Errorf("host-iface (-want +got):\n%s", diff)
			}
		})
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestAlreadyConnectedAnswers(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nvme-cli 1.16 EALREADY", &host.ExitError{Code: 114}, true},
		{"nvme-cli 1.16 70", &host.ExitError{Code: 70, Stderr: "Failed to write to /dev/nvme-fabrics: Operation already in progress"}, true},
		{"nvme-cli 2.x", &host.ExitError{Code: 1, Stderr: "Failed to write to /dev/nvme-fabrics: Operation already in progress\nalready connected"}, true},
		{"refused", &host.ExitError{Code: 1, Stderr: "Failed to write to /dev/nvme-fabrics: Connection refused"}, false},
		{"timeout", &host.CmdError{Cmd: "nvme connect", Err: host.ErrTimeout}, false},
		{"kernel EALREADY", &os.PathError{Op: "write", Path: devFabrics, Err: syscall.EALREADY}, true},
		{"kernel refused", &os.PathError{Op: "write", Path: devFabrics, Err: syscall.ECONNREFUSED}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := isAlreadyConnected(c.err); got != c.want {
				t.Errorf("%s: isAlreadyConnected = %t, want %t", c.name, got, c.want)
			}
		})
	}
}

// The kernel answers a duplicate connect with EALREADY: when sysfs shows
// no match (here a controller of an older nvme-cli with another iface
// that the kernel still counts as a duplicate), attach must still succeed.
func TestAttachAcceptsKernelAlreadyConnected(t *testing.T) {
	k := newFakeKernel(t)
	k.addController(testNQN, "127.0.0.2", "4420", "lo", "", "live", "")
	tr := k.transport(nil)
	dev, err := tr.Attach(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if dev.Health.Live != 2 {
		t.Errorf("health = %+v", dev.Health)
	}
}

func TestAttachPartialSuccessIsDegraded(t *testing.T) {
	k := newFakeKernel(t)
	k.down["127.0.0.2:4420"] = true
	dev, err := k.transport(nil).Attach(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if !dev.Health.Degraded() || dev.Health.Live != 1 || dev.Health.Total != 2 {
		t.Fatalf("health = %+v", dev.Health)
	}
	if want := "1 of 2 paths live: 127.0.0.2:4420 not connected (cannot reach portal 127.0.0.2:4420)"; dev.Health.Detail != want {
		t.Errorf("detail = %q, want %q", dev.Health.Detail, want)
	}
}

func TestAttachAllPortalsDownFails(t *testing.T) {
	k := newFakeKernel(t)
	k.down["127.0.0.1:4420"] = true
	k.down["127.0.0.2:4420"] = true
	_, err := k.transport(nil).Attach(context.Background(), baseCfg())
	if !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("err = %v, want Unreachable", err)
	}
	for _, s := range []string{"127.0.0.1:4420", "127.0.0.2:4420", "/dev/nvme-fabrics: connection refused", testNQN} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %q: %v", s, err)
		}
	}
	if k.ran("discover") != 0 {
		t.Error("ran discovery although every portal refused the TCP connection")
	}
}

func TestAttachWrongNQNNamesWhatThePortalOffers(t *testing.T) {
	k := newFakeKernel(t)
	k.discovery = readFixture(t, "synthetic-nvme-discover-1.16.json")
	cfg := baseCfg()
	cfg[KeyNQN] = "nqn.2024-01.org.sanvol:wrong"
	_, err := k.transport(nil).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("err = %v, want NotFound", err)
	}
	if !strings.Contains(err.Error(), "does not offer subsystem nqn.2024-01.org.sanvol:wrong") || !strings.Contains(err.Error(), testNQN) {
		t.Errorf("error = %v", err)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("%d controllers left", n)
	}
}

func TestParallelAttachConnectsEachPathOnce(t *testing.T) {
	k := newFakeKernel(t)
	// Without the subsystem lock both attaches would see no path and
	// connect; nvme-cli 1.16 older than the kernel's duplicate check
	// would then make two controllers per portal (nvme-cli#176).
	k.connectDelay = 20e6
	tr := k.transport(nil)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = tr.Attach(context.Background(), baseCfg())
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(k.connects()); n != 2 {
		t.Errorf("%d connects, want 2 (one per portal)", n)
	}
	if n := len(k.controllerNames()); n != 2 {
		t.Errorf("%d controllers, want 2", n)
	}
}

func TestHealthReportsConnectingPath(t *testing.T) {
	k := newFakeKernel(t)
	k.addController(testNQN, "127.0.0.1", "4420", "lo", testHostNQN, "live", "")
	k.addController(testNQN, "127.0.0.2", "4420", "lo", testHostNQN, "connecting", "")
	h, err := k.transport(nil).Health(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	want := transport.Health{Total: 2, Live: 1, Detail: "1 of 2 paths live: 127.0.0.2:4420 connecting"}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("health (-want +got):\n%s", diff)
	}
	if k.ran("") != 0 {
		t.Error("Health ran a command; it must only read sysfs")
	}
	// The id of the PBD's mpath-<id> key is the namespace's wwid as
	// SR.create recorded it; an NSID names nothing stable, so no id.
	for ns, id := range map[string]string{
		"uuid.6A8E0C8D-2F4B-4D1E-9B7A-0C1D2E3F4A5B": "uuid.6a8e0c8d-2f4b-4d1e-9b7a-0c1d2e3f4a5b",
		"eui.0123456789abcdef0123456789abcdef":      "eui.0123456789abcdef0123456789abcdef",
		"eui.0123456789abcdef":                      "eui.0123456789abcdef",
		"1":                                         "",
	} {
		cfg := baseCfg()
		cfg[KeyNamespace] = ns
		if h, err := k.transport(nil).Health(context.Background(), cfg); err != nil || h.ID != id {
			t.Errorf("namespace %s: id %q, want %q (%v)", ns, h.ID, id, err)
		}
	}
}

func TestHealthIgnoresOtherHostIdentity(t *testing.T) {
	k := newFakeKernel(t)
	k.addController(testNQN, "127.0.0.1", "4420", "", "nqn.2014-08.org.nvmexpress:uuid:other", "live", "")
	h, err := k.transport(nil).Health(context.Background(), baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if h.Live != 0 || h.Detail != "0 of 2 paths live: 127.0.0.1:4420 not connected, 127.0.0.2:4420 not connected" {
		t.Errorf("health = %+v", h)
	}
}

func TestDetachLeavesSubsystemUsedByAnotherSR(t *testing.T) {
	k := newFakeKernel(t)
	tr := k.transport(nil)
	if _, err := tr.Attach(context.Background(), baseCfg()); err != nil {
		t.Fatal(err)
	}
	other := map[string]string{KeyTarget: "127.0.0.1", KeyNQN: testNQN, KeyNamespace: "2"}
	unrelated := map[string]string{KeyTarget: "127.0.0.1", KeyNQN: "nqn.2024-01.org.sanvol:other"}
	if err := tr.Detach(context.Background(), baseCfg(), []map[string]string{unrelated, other}); err != nil {
		t.Fatal(err)
	}
	if n := len(k.controllerNames()); n != 2 || k.ran("disconnect") != 0 {
		t.Fatalf("controllers = %d, disconnects = %d; want the subsystem left alone", n, k.ran("disconnect"))
	}
	if err := tr.Detach(context.Background(), baseCfg(), []map[string]string{unrelated}); err != nil {
		t.Fatal(err)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Fatalf("%d controllers left after detach", n)
	}
	if k.root.Exists("/sys/class/nvme-subsystem/nvme-subsys0") {
		t.Error("subsystem left after detach")
	}
	before := k.ran("")
	if err := tr.Detach(context.Background(), baseCfg(), nil); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if k.ran("") != before {
		t.Error("second detach ran commands")
	}
}

func TestDetachRefusesWhileNamespaceIsHeld(t *testing.T) {
	k := newFakeKernel(t)
	tr := k.transport(nil)
	if _, err := tr.Attach(context.Background(), baseCfg()); err != nil {
		t.Fatal(err)
	}
	k.write("/sys/block/nvme0n1/holders/dm-3/dev", "253:3")
	err := tr.Detach(context.Background(), baseCfg(), nil)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "dm-3") {
		t.Fatalf("err = %v, want Busy naming dm-3", err)
	}
	if k.ran("disconnect") != 0 {
		t.Error("disconnected a held namespace")
	}
}

func TestKernelWithoutNVMeTCP(t *testing.T) {
	k := newFakeKernel(t)
	_ = k.root.Remove("/sys/module/nvme_tcp/parameters/so_priority")
	_ = k.root.Remove("/sys/module/nvme_tcp/parameters")
	_ = k.root.Remove("/sys/module/nvme_tcp")
	k.write("/proc/sys/kernel/osrelease", "4.19.0+1")
	tr := New(Deps{Runner: modprobeFails{k}, Root: k.root, Locker: host.FileLocker{Root: k.root}})
	_, err := tr.Attach(context.Background(), baseCfg())
	if !errors.Is(err, host.ErrUnsupported) {
		t.Fatalf("err = %v, want Unsupported", err)
	}
	for _, s := range []string{"4.19.0+1", "XCP-ng 8.3", "CONFIG_NVME_TCP", "modprobe nvme-tcp"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %q: %v", s, err)
		}
	}
	if len(k.connects()) != 0 {
		t.Error("connected without nvme-tcp")
	}
}

type modprobeFails struct{ *fakeKernel }

func (m modprobeFails) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	if c.Name == "modprobe" {
		return host.Result{}, &host.ExitError{Cmd: c.String(), Code: 1, Stderr: "modprobe: FATAL: Module nvme-tcp not found in directory /lib/modules/4.19.0+1"}
	}
	return m.fakeKernel.Run(ctx, c)
}

func TestKernelWithoutNativeMultipath(t *testing.T) {
	k := newFakeKernel(t)
	k.write("/sys/module/nvme_core/parameters/multipath", "N")
	_, err := k.transport(nil).Attach(context.Background(), baseCfg())
	if !errors.Is(err, host.ErrUnsupported) {
		t.Fatalf("err = %v", err)
	}
	for _, s := range []string{"options nvme_core multipath=Y", "reboot"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %q: %v", s, err)
		}
	}
}

func TestNamespaceSelection(t *testing.T) {
	nguid := "0123456789abcdef0123456789abcdef"
	k := newFakeKernel(t)
	k.targets[testNQN] = []fakeNS{
		{nsid: 1, wwid: "uuid." + testUUID, size: 2048},
		{nsid: 2, wwid: "eui." + nguid, nguid: "01234567-89ab-cdef-0123-456789abcdef", size: 4096},
	}
	tr := k.transport(nil)
	for _, c := range []struct{ ns, dev string }{
		{"2", "/dev/disk/by-id/nvme-eui." + nguid},
		{nguid, "/dev/disk/by-id/nvme-eui." + nguid},
		{"01234567-89AB-CDEF-0123-456789ABCDEF", "/dev/disk/by-id/nvme-eui." + nguid},
		{"uuid." + testUUID, "/dev/disk/by-id/nvme-uuid." + testUUID},
		{testUUID, "/dev/disk/by-id/nvme-uuid." + testUUID},
	} {
		t.Run(c.ns, func(t *testing.T) {
			cfg := baseCfg()
			cfg[KeyNamespace] = c.ns
			dev, err := tr.Attach(context.Background(), cfg)
			if err != nil {
				t.Fatalf("namespace=%s: %v", c.ns, err)
			}
			if dev.Path != c.dev {
				t.Errorf("namespace=%s: path %s, want %s", c.ns, dev.Path, c.dev)
			}
		})
	}
	cfg := baseCfg()
	cfg[KeyNamespace] = "7"
	if _, err := tr.Attach(context.Background(), cfg); !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), "nsid 7") {
		t.Errorf("namespace=7: err = %v, want NotFound", err)
	}
	if _, err := tr.Attach(context.Background(), baseCfg()); !errors.Is(err, host.ErrInvalid) || !strings.Contains(err.Error(), "2 namespaces") {
		t.Errorf("no namespace, two exported: err = %v, want Invalid", err)
	}
}

// A namespace the kernel names by vendor and serial (no UUID, NGUID or
// EUI-64) has no stable path: the attach is refused and rolled back
// rather than recording /dev/nvme0n1, which may name another namespace
// after a reconnect.
func TestAttachRefusesANamespaceWithoutStablePath(t *testing.T) {
	k := newFakeKernel(t)
	k.targets[testNQN] = []fakeNS{{nsid: 1, wwid: "nvme.1b36-3132-51454d55-00000001", size: 2048}}
	cfg := baseCfg()
	cfg[KeyNamespace] = "1"
	_, err := k.transport(nil).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrUnsupported) || !strings.Contains(err.Error(), "device_uuid") {
		t.Fatalf("err = %v", err)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("%d controllers left", n)
	}
}

// Before every use of an attach record the device is re-resolved from the
// namespace's identity: a head name recorded by an older sanvol becomes
// the by-id link, and a by-id link that points at another head (made by
// sanvol, then the kernel reused the head's name) is re-pointed.
func TestResolveDeviceMigratesAndRepairs(t *testing.T) {
	k := newFakeKernel(t)
	tr := k.transport(nil)
	cfg := baseCfg()
	cfg[KeyNamespace] = "uuid." + testUUID
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tr.ResolveDevice(context.Background(), cfg, "/dev/nvme0n1")
	if err != nil || got != dev.Path {
		t.Fatalf("migrating /dev/nvme0n1: %q, %v; want %s", got, err, dev.Path)
	}
	k.write("/dev/nvme0n9", "")
	if err := k.root.Remove(dev.Path); err != nil {
		t.Fatal(err)
	}
	if err := k.root.Symlink("../../nvme0n9", dev.Path); err != nil {
		t.Fatal(err)
	}
	got, err = tr.ResolveDevice(context.Background(), cfg, dev.Path)
	if target, _ := k.root.EvalSymlinks(got); err != nil || got != dev.Path || target != "/dev/nvme0n1" {
		t.Fatalf("stale link: %q -> %q, %v", got, target, err)
	}
	// Every path gone: a by-id path stays (LVM will find nothing behind
	// it); a head name is refused.
	if err := tr.Detach(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := tr.ResolveDevice(context.Background(), cfg, dev.Path); err != nil || got != dev.Path {
		t.Fatalf("namespace gone, by-id record: %q, %v", got, err)
	}
	if _, err := tr.ResolveDevice(context.Background(), cfg, "/dev/nvme0n1"); !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("namespace gone, head record: %v", err)
	}
}

func TestNamespaceNotFoundRollsBackConnects(t *testing.T) {
	k := newFakeKernel(t)
	cfg := baseCfg()
	cfg[KeyNamespace] = "uuid.00000000-0000-4000-8000-000000000001"
	_, err := k.transport(nil).Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "uuid."+testUUID) {
		t.Errorf("error does not list the namespaces the subsystem has: %v", err)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("%d controllers left after a failed attach", n)
	}
}

func TestPrepareStoresStableIdentityAndLeavesNoPaths(t *testing.T) {
	k := newFakeKernel(t)
	cfg := baseCfg()
	cfg[KeyNamespace] = "1"
	got, err := k.transport(nil).Prepare(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{KeyNamespace: "uuid." + testUUID}, got); diff != "" {
		t.Errorf("Prepare (-want +got):\n%s", diff)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("%d controllers left", n)
	}
}

func TestPrepareRefusesNamespaceWithoutGlobalID(t *testing.T) {
	k := newFakeKernel(t)
	k.targets[testNQN] = []fakeNS{{nsid: 1, wwid: "nvme.1b36-3132-51454d55-00000001", size: 2048}}
	_, err := k.transport(nil).Prepare(context.Background(), baseCfg())
	if !errors.Is(err, host.ErrUnsupported) || !strings.Contains(err.Error(), "device_uuid") {
		t.Fatalf("err = %v", err)
	}
}

// A connect stuck in the kernel cannot be killed until the kernel gives
// up; attach must return at its own deadline regardless.
func TestAttachDoesNotWaitForStuckConnects(t *testing.T) {
	k := newFakeKernel(t)
	k.down["127.0.0.1:4420"] = true
	k.down["127.0.0.2:4420"] = true
	k.connectDelay = 3 * time.Second // the fake ignores the context, like a D-state write
	tr := k.transport(nil)
	tr.to.Connect = 200 * time.Millisecond
	start := time.Now()
	_, err := tr.Attach(context.Background(), baseCfg())
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("attach waited %s for stuck connects", took)
	}
	if !errors.Is(err, host.ErrUnreachable) || !strings.Contains(err.Error(), "no answer from portal 127.0.0.1:4420 within 200ms") {
		t.Fatalf("err = %v", err)
	}
}

// The same namespace written in any accepted form is one device; another
// namespace of the same subsystem is another.
func TestDeviceID(t *testing.T) {
	tr := newFakeKernel(t).transport(nil)
	id := func(ns string) string {
		cfg := baseCfg()
		cfg[KeyNamespace] = ns
		s, err := tr.DeviceID(cfg)
		if err != nil {
			t.Fatalf("%s: %v", ns, err)
		}
		return s
	}
	if a, b := id("uuid."+testUUID), id(strings.ToUpper(testUUID)); a != b {
		t.Errorf("%s != %s", a, b)
	}
	if a, b := id("1"), id("2"); a == b {
		t.Errorf("nsid 1 and 2: both %s", a)
	}
	if _, err := tr.DeviceID(baseCfg()); !errors.Is(err, host.ErrInvalid) {
		t.Errorf("without namespace: %v", err)
	}
}

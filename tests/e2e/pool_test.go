//go:build lab

package e2e

// The pool scenarios (issue 15), run by `tests/lab/run.sh test --pool`:
// guest A (this one) is the pool master and serves the targets on
// 10.99.0.1 and 10.99.0.2, its own addresses; guest B is a member on
// 10.99.0.20, driven through its agent (pool_agent_test.go). The
// simulator is a xapisim.PoolSim: SR and VDI operations on A, each VBD's
// calls on the host running the VM, and one XenAPI database that B's
// plugin reaches through its agent's socket proxy. In a one-guest run
// they skip.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/tests/xapisim"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// poolMaster tells whether this guest is the pool lab's master.
func poolMaster() bool { return os.Getenv("SANVOL_LAB_POOL") == "master" }

// prefixed writes each narration line with the host it happened on.
type prefixed string

func (p prefixed) Write(b []byte) (int, error) {
	if _, err := os.Stdout.WriteString(string(p) + string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

type poolLab struct {
	t    *testing.T
	ctx  context.Context
	b    *member
	pool *xapisim.PoolSim
}

// newPoolLab installs sanvol on both hosts and makes the pool simulator
// with B's daemon running its method files on B.
func newPoolLab(t *testing.T) *poolLab {
	t.Helper()
	if !poolMaster() {
		t.Skip("a pool scenario: it runs in the pool lab (tests/lab/run.sh test --pool)")
	}
	ctx := context.Background()
	m := &member{c: http.Client{Timeout: 10 * time.Minute}}
	if err := m.waitUp(4 * time.Minute); err != nil {
		t.Fatal(err)
	}
	installSanvol(t)
	if _, err := m.Exec(SanvolBinary(), "install", "--root", "/"); err != nil {
		t.Fatal(err)
	}
	a, b := xapisim.New(xapisim.DefaultRoot, prefixed("[A] ")), xapisim.New(xapisim.DefaultRoot, prefixed("[B] "))
	b.Exec = m.Invoke
	b.HostPlugin = m.Plugin
	pool := xapisim.NewPoolSim(a, b)
	serveXapi(t, a)
	l, err := net.Listen("tcp", poolXenAPI)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.XenAPIHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	if err := m.ProxyXenAPI(poolXenAPI); err != nil {
		t.Fatal(err)
	}
	if err := m.Write(host.InventoryPath, b.Inventory()); err != nil {
		t.Fatal(err)
	}
	a.Register(ctx)
	b.Register(ctx)
	return &poolLab{t: t, ctx: ctx, b: m, pool: pool}
}

// memberCleanup drops whatever B still holds of the targets, before the
// targets go (cleanups run last first: call it after making them).
func (l *poolLab) memberCleanup() {
	l.t.Cleanup(func() {
		_, _ = l.b.Exec("nvme", "disconnect-all")
		_, _ = l.b.Exec("iscsiadm", "-m", "node", "-u")
		_, _ = l.b.Exec("multipath", "-F")
	})
}

// nvmeTarget serves an NVMe/TCP subsystem on A's two addresses.
func (l *poolLab) nvmeTarget(name string) map[string]string {
	return l.nvmeTargetAt(name, poolAddrA1, poolAddrA2)
}

// nvmeTargetAt serves an NVMe/TCP subsystem on addrs, addresses of A's.
func (l *poolLab) nvmeTargetAt(name string, addrs ...string) map[string]string {
	tgt := l.nvmeArray(name, addrs...)
	return map[string]string{"target": strings.Join(addrs, ","), "nqn": tgt.NQN}
}

// nvmeArray makes nvmeTargetAt's subsystem and returns it.
func (l *poolLab) nvmeArray(name string, addrs ...string) *labtarget.NVMeTarget {
	t := l.t
	tgt, err := labtarget.NewNVMe(l.ctx, labtarget.NVMeOptions{Name: name, Addrs: addrs, Size: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = run("nvme", "disconnect", "-n", tgt.NQN)
		if err := tgt.Close(); err != nil {
			t.Logf("nvmet teardown: %v", err)
		}
	})
	l.memberCleanup()
	return tgt
}

// iscsiTarget serves an iSCSI LUN on A's two addresses.
func (l *poolLab) iscsiTarget(name string) map[string]string {
	return iscsiConfig(l.iscsiArray(name), poolAddrA1, poolAddrA2)
}

// iscsiArray makes iscsiTarget's LUN and returns it.
func (l *poolLab) iscsiArray(name string) *labtarget.ISCSITarget {
	tg := newISCSILUN(l.t, name, poolAddrA1, poolAddrA2)
	if err := tg.Grow(srLUNSize); err != nil {
		l.t.Fatal(err)
	}
	l.memberCleanup()
	return tg
}

// create makes the shared SR from A and plugs it on both hosts.
func (l *poolLab) create(srType string, cfg map[string]string) *xapisim.PoolSR {
	l.t.Helper()
	ps, err := l.pool.SRCreate(l.ctx, srType, "pool "+srType, "issue 15", cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	return ps
}

// destroy unplugs the SR on B, then on A, and destroys it from A.
func (l *poolLab) destroy(ps *xapisim.PoolSR) {
	t := l.t
	t.Helper()
	for i := len(ps.SRs) - 1; i >= 0; i-- {
		if err := ps.On(i).Unplug(l.ctx); err != nil {
			t.Fatalf("pbd-unplug on host %d: %v", i, err)
		}
	}
	if err := ps.Master().Destroy(l.ctx); err != nil {
		t.Fatal(err)
	}
}

// scanFor scans from host i until key shows, and returns it.
func (l *poolLab) scanFor(ps *xapisim.PoolSR, i int, key string) schema.Volume {
	l.t.Helper()
	vols, err := ps.On(i).Scan(l.ctx)
	if err != nil {
		l.t.Fatalf("sr-scan on host %d: %v", i, err)
	}
	for _, v := range vols {
		if v.Key == key {
			return v
		}
	}
	l.t.Fatalf("host %d's scan does not list %s: %v", i, key, vols)
	return schema.Volume{}
}

// metadataArea hashes the start of the SR's PV up to its first extent,
// read with O_DIRECT on A: the PV label and the VG metadata area.
func (l *poolLab) metadataArea(srUUID string) string {
	t := l.t
	t.Helper()
	out := mustOutput(t, "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start", "-S", "vg_name=VG_sanvol-"+srUUID)
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("the SR's PV: pvs said %q", out)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return digest(t, f[0], n)
}

// wantNotMaster checks err is the member's refusal telling xapi to go
// to the master at addr.
func wantNotMaster(t *testing.T, what string, err error, addr string) {
	t.Helper()
	var ce *plugin.CallError
	if !errors.As(err, &ce) || len(ce.Doc.Params) < 2 || ce.Doc.Params[0] != string(host.KindNotMaster) || !strings.Contains(ce.Doc.Params[1], addr) {
		t.Fatalf("%s on a member: %v; want a %s error naming the master %s", what, err, host.KindNotMaster, addr)
	}
}

// TestPoolNVMe and TestPoolISCSI are issue 15's pool story on each SR
// type, and together the demo (tests/lab/run.sh demo, make demo), told in
// chapters an XCP-ng admin can follow (poolLab.scenario).
func TestPoolNVMe(t *testing.T) {
	l := newPoolLab(t)
	tgt := l.nvmeArray("pool", poolAddrA1, poolAddrA2)
	ns, _ := tgt.Namespace(1)
	cfg := map[string]string{"target": poolAddrA1 + "," + poolAddrA2, "nqn": tgt.NQN}
	l.scenario("nvmetcp", cfg, poolArray{
		about: fmt.Sprintf("NVMe/TCP subsystem %s, namespace 1 (NGUID %s), on portals %s:%s and %s:%s",
			tgt.NQN, ns.NGUID, poolAddrA1, tgt.Svc, poolAddrA2, tgt.Svc),
		drop:    func() error { return tgt.UnlinkPort(poolAddrA2) },
		restore: func() error { return tgt.LinkPort(poolAddrA2) },
		paths:   []string{"nvme", "list-subsys"},
	}, func() {
		// The array inside the pool: A's paths are to its own addresses.
		// They are not bound to an interface (bound to lo the connect
		// timed out; bound to the holder a floating address could not
		// move), with no host-iface given.
		ctrls := nvmeCtrls(cfg["nqn"])
		if len(ctrls) != 2 {
			t.Errorf("A has %d paths, want 2: %v", len(ctrls), ctrls)
		}
		for _, c := range ctrls {
			if strings.Contains(c.Address, "host_iface=") || c.State != "live" {
				t.Errorf("A's path %s: %s, address %q; want live and unbound", c.Name, c.State, c.Address)
			}
		}
		t.Logf("A's paths to its own addresses: %v", ctrls)
	})
}

func TestPoolISCSI(t *testing.T) {
	l := newPoolLab(t)
	tg := l.iscsiArray("pool")
	l.scenario("iscsi-ng", iscsiConfig(tg, poolAddrA1, poolAddrA2), poolArray{
		about: fmt.Sprintf("iSCSI target %s, LUN 0 (%d MiB, WWID %s), on portals %s:3260 and %s:3260 (two portal groups)",
			tg.IQN, srLUNSize>>20, tg.WWID(), poolAddrA1, poolAddrA2),
		drop:    func() error { return tg.DisablePortal(poolAddrA2) },
		restore: func() error { return tg.EnablePortal(poolAddrA2) },
		paths:   []string{"multipath", "-ll", tg.WWID()},
	}, nil)
}

// demo narrates a scenario in chapters: the simulator prints each xe
// command and the storage calls it made, marked with the host ([A] or
// [B]); the chapters and the "#" lines say what to look at.
type demo struct{ start time.Time }

func (d *demo) chapter(title string) {
	fmt.Printf("\n== %s  (t+%s)\n", title, time.Since(d.start).Round(time.Second))
}

func (d *demo) say(format string, a ...any) { fmt.Printf(format+"\n", a...) }

// shell shows a command run on host name (h) and its output, as on that
// host's terminal.
func (d *demo) shell(t *testing.T, name string, h shellHost, argv ...string) {
	t.Helper()
	out, err := h.Exec(argv...)
	d.say("[%s] $ %s", name, strings.Join(argv, " "))
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("[%s]   %s", name, line)
	}
	if err != nil {
		t.Fatalf("%s on %s: %v", strings.Join(argv, " "), name, err)
	}
}

// poolArray is a scenario's storage array, served by A: what the demo
// calls it, how it drops its second portal (poolAddrA2) and brings it
// back, and the command that shows a host's paths to it.
type poolArray struct {
	about         string
	drop, restore func() error
	paths         []string
}

// waitPaths waits until host i's SR.stat has published want ("[1, 2]")
// as its PBD's path count; every SR.stat on the way must say Healthy,
// since one live path still serves the SR's I/O.
func (l *poolLab) waitPaths(ps *xapisim.PoolSR, i int, id, want string) time.Duration {
	t := l.t
	t.Helper()
	return waitFor(t, fmt.Sprintf("host %d's PBD to count paths %s", i, want), 3*time.Minute, func() (bool, string) {
		st, err := ps.On(i).Stat(l.ctx)
		if err != nil {
			t.Fatalf("SR.stat on host %d: %v", i, err)
		}
		if st.Health.State != schema.Healthy {
			t.Fatalf("host %d's SR.stat with a path cut: %s (%s), want Healthy", i, st.Health.State, st.Health.Message)
		}
		got := ps.On(i).PBDOtherConfig()["mpath-"+id]
		return got == want, fmt.Sprintf("mpath-%s = %q (%s)", id, got, st.Health.Message)
	})
}

// scenario is TestPoolNVMe's and TestPoolISCSI's story, narrated; checkA
// runs after the SR is plugged on both hosts.
func (l *poolLab) scenario(srType string, cfg map[string]string, arr poolArray, checkA func()) {
	t, ctx := l.t, l.ctx
	d := &demo{start: time.Now()}
	d.chapter("A pool of two hosts: A (the pool master, " + poolAddrA1 + ") is also the array; B (a member, " + poolAddrB + ")")
	d.say("# the array: %s", arr.about)
	d.shell(t, "A", localHost{}, "cat", "/etc/xensource/pool.conf")
	d.shell(t, "B", l.b, "cat", "/etc/xensource/pool.conf")

	d.chapter("xe sr-create shared=true on A: xapi plugs the SR's PBD on each host")
	ps := l.create(srType, cfg)
	if checkA != nil {
		checkA()
	}
	for i := range ps.SRs {
		if _, err := ps.On(i).Scan(ctx); err != nil {
			t.Fatalf("sr-scan on host %d: %v", i, err)
		}
	}
	// The path count's key in each PBD's other-config: mpath-<SCSIid>,
	// as XO reads it, or for nvmetcp mpath-<namespace> (plugin/paths.go).
	id := ps.Master().Config["SCSIid"]
	if srType == "nvmetcp" {
		id = ps.Master().Config["namespace"]
	}

	// A creates; B sees the VDI at its next call, with the right size.
	d.chapter("xe vdi-create on A (the master); B sees the new VDI at its next scan")
	start := time.Now()
	v, err := ps.Master().VDICreate(ctx, "pool disk", "", 64<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.scanFor(ps, 1, v.Key); got.VirtualSize != 64<<20 {
		t.Fatalf("B sees %s at %d bytes, want %d", v.Key, got.VirtualSize, 64<<20)
	}
	seen := time.Since(start)

	// B writes no metadata: it refuses every metadata-writing call but
	// reset-on-boot's four, which it forwards to the master
	// (plugin/forward.go); with the master's host plugin unreachable
	// those fail, retryable, naming the master. The metadata area is
	// byte-identical around all of them, reads included.
	d.chapter("Only the master writes the SR's LVM metadata")
	d.say("# B refuses vdi-create, vdi-resize and renames with NotPoolMaster, naming the master;")
	d.say("# the calls of a disk with on-boot=reset (Volume.set, unset, destroy) it forwards to the")
	d.say("# master, and while the master is unreachable they fail, retryable")
	before := l.metadataArea(ps.Master().UUID)
	b := ps.On(1)
	for _, c := range []struct {
		method string
		args   any
	}{
		{"Volume.create", schema.VolumeCreateArgs{Dbg: "pool", SR: b.Handle, Name: "from B", Size: 8 << 20}},
		{"Volume.resize", schema.VolumeResizeArgs{Dbg: "pool", SR: b.Handle, Key: v.Key, NewSize: 96 << 20}},
		{"Volume.set_name", schema.VolumeSetNameArgs{Dbg: "pool", SR: b.Handle, Key: v.Key, NewName: "from B"}},
		{"Volume.set_description", schema.VolumeSetDescriptionArgs{Dbg: "pool", SR: b.Handle, Key: v.Key, NewDescription: "from B"}},
	} {
		wantNotMaster(t, c.method, b.Call(ctx, c.method, c.args, nil), poolAddrA1)
	}
	forwarded := []struct {
		method string
		args   any
	}{
		{"Volume.set", schema.VolumeSetArgs{Dbg: "pool", SR: b.Handle, Key: v.Key, K: "from", V: "B"}},
		{"Volume.unset", schema.VolumeUnsetArgs{Dbg: "pool", SR: b.Handle, Key: v.Key, K: "from"}},
		{"Volume.destroy", schema.VolumeArgs{Dbg: "pool", SR: b.Handle, Key: v.Key}},
	}
	l.pool.Down(0, true)
	for _, c := range forwarded {
		err := b.Call(ctx, c.method, c.args, nil)
		var ce *plugin.CallError
		if !errors.As(err, &ce) || len(ce.Doc.Params) < 2 || ce.Doc.Params[0] != string(host.KindUnreachable) ||
			!strings.Contains(ce.Doc.Params[1], poolAddrA1) || !strings.Contains(ce.Doc.Params[1], "retry") {
			t.Fatalf("%s on B with the master unreachable: %v; want a retryable Unreachable naming %s", c.method, err, poolAddrA1)
		}
	}
	l.pool.Down(0, false)
	l.scanFor(ps, 1, v.Key)
	if after := l.metadataArea(ps.Master().UUID); after != before {
		t.Fatalf("the VG metadata area changed around B's calls: %s -> %s", before, after)
	}
	d.say("# the VG's metadata area on disk is byte-identical before and after all of B's calls")
	// Forwarded, the master writes them: A sees B's key come and go.
	keyFrom := func() string {
		var st schema.Volume
		if err := ps.Master().Call(ctx, "Volume.stat", schema.VolumeArgs{Dbg: "pool", SR: ps.Master().Handle, Key: v.Key}, &st); err != nil {
			t.Fatal(err)
		}
		return st.Keys["from"]
	}
	d.say("# with the master back, B's forwarded Volume.set and Volume.unset land: A reads the key come and go")
	for i, want := range []string{"B", ""} {
		if err := b.Call(ctx, forwarded[i].method, forwarded[i].args, nil); err != nil {
			t.Fatalf("%s forwarded from B: %v", forwarded[i].method, err)
		}
		if got := keyFrom(); got != want {
			t.Fatalf("after B's %s A reads from=%q, want %q", forwarded[i].method, got, want)
		}
	}

	// A resizes: B's next look has the new size, never the old one.
	d.chapter("xe vdi-resize on A; B's next scan has the new size")
	if _, err := ps.Master().VDIResize(ctx, v.Key, 96<<20); err != nil {
		t.Fatal(err)
	}
	if got := l.scanFor(ps, 1, v.Key); got.VirtualSize != 96<<20 {
		t.Fatalf("after A's resize B sees %d bytes, want %d", got.VirtualSize, 96<<20)
	}

	// A VM on B writes without pause while the array drops a portal: its
	// writes go on over the other path, B's SR stays Healthy (xapi scans
	// only Healthy SRs) and its PBD counts 1 of 2 paths, then 2 of 2.
	d.chapter("A VM on B writes without pause; the array loses its portal " + poolAddrA2 + ", then gets it back")
	t0 := time.Now()
	onB, err := b.VMStart(ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	startB := time.Since(t0)
	if err := l.b.FlowLoad(onB.Device, 32<<20); err != nil {
		t.Fatal(err)
	}
	l.waitLoad(onB.Device, 8)
	d.say("# [B] the VM writes its disk without pause (O_DIRECT, 10 writes a second); now the array drops %s", poolAddrA2)
	if err := arr.drop(); err != nil {
		t.Fatal(err)
	}
	lost := l.waitPaths(ps, 1, id, "[1, 2]")
	l.waitLoad(onB.Device, 16)
	d.say("# B is down to one path and its VM's writes go on:")
	d.shell(t, "B", l.b, arr.paths...)
	d.say("# B's SR stays Healthy, so xapi's scans go on, and its PBD tells XO and xe the path count")
	scanKeepsPassing(t, ctx, b, id, "[1, 2]")
	d.say("# the array brings %s back; B's SR.stat (xe sr-update) until its PBD counts both paths", poolAddrA2)
	if err := arr.restore(); err != nil {
		t.Fatal(err)
	}
	back := l.waitPaths(ps, 1, id, "[2, 2]")
	l.waitPaths(ps, 0, id, "[2, 2]") // A lost it too; it starts the next VM
	l.waitLoad(onB.Device, 8)
	st := l.stopLoad(onB.Device, "portal cut under B's writer")
	scanKeepsPassing(t, ctx, b, id, "[2, 2]")
	d.say("# B counted 1 of 2 paths %s after the cut and 2 of 2 %s after the portal returned;",
		lost.Round(100*time.Millisecond), back.Round(100*time.Millisecond))
	d.say("# the VM made %d writes, none failed, the longest took %s; every chunk reads back as written",
		st.Writes, st.MaxLatency.Round(time.Millisecond))

	// The VM stops on B and starts on A, which reads what it wrote.
	d.chapter("The VM writes a pattern on B, shuts down, and starts on A: A reads what B wrote")
	if err := l.b.Pattern(onB.Device, 1, 16, false); err != nil {
		t.Fatal(err)
	}
	if err := b.VMShutdown(ctx, onB); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	onA, err := ps.Master().VMStart(ctx, v.Key, "6")
	if err != nil {
		t.Fatal(err)
	}
	startA := time.Since(t0)
	if err := directIO(onA.Device, 16, 1, true); err != nil {
		t.Fatalf("A reads what the VM wrote on B: %v", err)
	}
	d.say("# [A] read back 16 MiB from %s: the pattern written on B, intact", onA.Device)
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}

	// Live migration B → A in xenopsd's order (xapisim.PoolSR.Migrate).
	d.chapter("xe vm-migrate live=true from B to A, in xenopsd's order")
	onB, err = b.VMStart(ctx, v.Key, "7")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.b.Pattern(onB.Device, 2, 16, false); err != nil {
		t.Fatal(err)
	}
	onA, tm, err := ps.Migrate(ctx, onB, 1, 0, "8")
	if err != nil {
		t.Fatal(err)
	}
	if err := directIO(onA.Device, 16, 2, true); err != nil {
		t.Fatalf("after the migration A reads what the VM wrote on B: %v", err)
	}
	d.say("# [A] read back 16 MiB from %s: what the VM wrote on B before the migration, intact", onA.Device)
	d.say("# the datapath's share of the downtime: %s (deactivate on B, then activate on A)",
		tm.Activated.Sub(tm.Suspended).Round(time.Millisecond))
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	t.Logf("pool-numbers %s: create on A to seen on B %s; attach+activate on B %s, on A %s (B/A %.2f); migration downtime from the datapath %s (deactivate on B %s, activate on A %s); portal cut: B at 1 of 2 paths after %s, 2 of 2 %s after its return, %d writes, longest %s",
		srType, seen.Round(time.Millisecond), startB.Round(time.Millisecond), startA.Round(time.Millisecond),
		startB.Seconds()/startA.Seconds(), tm.Activated.Sub(tm.Suspended).Round(time.Millisecond),
		tm.Deactivated.Sub(tm.Suspended).Round(time.Millisecond), tm.Activated.Sub(tm.Deactivated).Round(time.Millisecond),
		lost.Round(100*time.Millisecond), back.Round(100*time.Millisecond), st.Writes, st.MaxLatency.Round(time.Millisecond))

	d.chapter("xe vdi-destroy on A: B's next look fails and its scan no longer lists the VDI")
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	// A destroyed it: B's next look fails clearly and its scan no longer
	// lists it (no resurrected volume).
	var gone schema.Volume
	if err := b.Call(ctx, "Volume.stat", schema.VolumeArgs{Dbg: "pool", SR: b.Handle, Key: v.Key}, &gone); err == nil {
		t.Fatalf("B's Volume.stat of a volume A destroyed answered %+v", gone)
	}
	vols, err := b.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, vol := range vols {
		if vol.Key == v.Key {
			t.Fatalf("B's scan still lists %s, which A destroyed", v.Key)
		}
	}

	d.chapter("xe pbd-unplug on B, then on A (each PBD's path keys go with it); xe sr-destroy on A")
	for i := len(ps.SRs) - 1; i >= 0; i-- {
		if err := ps.On(i).Unplug(ctx); err != nil {
			t.Fatalf("pbd-unplug on host %d: %v", i, err)
		}
		wantNoPathKeys(t, ps.On(i), id)
	}
	if err := ps.Master().Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	d.chapter("Done")
}

// TestPoolMemberReboot: B loses its kernel state and /run, as a reboot
// does; xapi plugs its PBD again at boot, and a VM starts on B with the
// data it wrote before.
func TestPoolMemberReboot(t *testing.T) {
	l := newPoolLab(t)
	ctx := l.ctx
	ps := l.create("nvmetcp", l.nvmeTarget("reboot"))
	v, err := ps.Master().VDICreate(ctx, "reboot disk", "", 32<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := ps.On(1).VMStart(ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.b.Pattern(onB.Device, 3, 8, false); err != nil {
		t.Fatal(err)
	}
	// The reboot: the device-mapper devices, the NVMe connections and
	// /run go; the VM and the PBD's attach with them. --retry: udev may
	// still be probing the LV the pattern was just written to.
	dms, err := l.b.Exec("dmsetup", "ls")
	if err != nil {
		t.Fatal(err)
	}
	// Top-down: the VM's device (sanvol-<sr>-<key>, Datapath.attach)
	// holds the LV's.
	for _, prefix := range []string{"sanvol-", "VG_sanvol--"} {
		for _, line := range strings.Split(dms, "\n") {
			if name, _, _ := strings.Cut(line, "\t"); strings.HasPrefix(name, prefix) {
				if _, err := l.b.Exec("dmsetup", "remove", "--retry", name); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, argv := range [][]string{{"nvme", "disconnect-all"}, {"rm", "-rf", "/run/sanvol"}} {
		if _, err := l.b.Exec(argv...); err != nil {
			t.Fatal(err)
		}
	}
	ps.On(1).Handle = "" // xapi marks the PBD unplugged when the host went
	if err := ps.On(1).Plug(ctx); err != nil {
		t.Fatalf("pbd-plug on B after its reboot: %v", err)
	}
	onB, err = ps.On(1).VMStart(ctx, v.Key, "6")
	if err != nil {
		t.Fatalf("vm-start on B after its reboot: %v", err)
	}
	if err := l.b.Pattern(onB.Device, 3, 8, true); err != nil {
		t.Fatalf("B reads back what it wrote before the reboot: %v", err)
	}
	if err := ps.On(1).VMShutdown(ctx, onB); err != nil {
		t.Fatal(err)
	}
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps)
}

// TestPoolMasterChange: pool.conf swaps as `xe pool-designate-new-master`
// leaves it; B's next write call works and A's is refused.
func TestPoolMasterChange(t *testing.T) {
	l := newPoolLab(t)
	ctx := l.ctx
	ps := l.create("nvmetcp", l.nvmeTarget("master"))
	restore := l.promoteB()
	v, err := ps.On(1).VDICreate(ctx, "made on the new master", "", 16<<20, false)
	if err != nil {
		t.Fatalf("vdi-create on B, the new master: %v", err)
	}
	_, err = ps.Master().VDICreate(ctx, "made on the old master", "", 16<<20, false)
	wantNotMaster(t, "vdi-create on A, now a member", err, poolAddrB)
	if got := l.scanFor(ps, 0, v.Key); got.VirtualSize != 16<<20 {
		t.Fatalf("A sees B's VDI at %d bytes", got.VirtualSize)
	}
	if err := ps.On(1).VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	restore()
	l.destroy(ps)
	fmt.Println("pool master change: B wrote as master, A refused as member")
}

// cutMemberPaths drops, on B's NIC, every packet B sends to the target
// ports of A's two portal addresses (tc, egress). A blackhole route would
// not do: a path bound to an interface (host-iface) does not consult it.
// The returned func lets them through again.
func (l *poolLab) cutMemberPaths(port string) func() {
	t := l.t
	t.Helper()
	out, err := l.b.Exec("ip", "-o", "-4", "addr", "show", "to", poolAddrB)
	f := strings.Fields(out)
	if err != nil || len(f) < 2 {
		t.Fatalf("B's NIC: %q %v", out, err)
	}
	nic := f[1]
	cmds := [][]string{{"tc", "qdisc", "add", "dev", nic, "root", "handle", "1:", "prio"}}
	for _, a := range []string{poolAddrA1, poolAddrA2} {
		cmds = append(cmds, []string{"tc", "filter", "add", "dev", nic, "parent", "1:", "protocol", "ip", "u32",
			"match", "ip", "dst", a + "/32", "match", "ip", "dport", port, "0xffff", "action", "drop"})
	}
	for _, c := range cmds {
		if _, err := l.b.Exec(c...); err != nil {
			t.Fatal(err)
		}
	}
	restore := func() { _, _ = l.b.Exec("tc", "qdisc", "del", "dev", nic, "root") }
	t.Cleanup(restore)
	return restore
}

// waitHealth waits until host i's SR.stat answers state.
func (l *poolLab) waitHealth(ps *xapisim.PoolSR, i int, state schema.HealthState, timeout time.Duration) time.Duration {
	return waitFor(l.t, fmt.Sprintf("host %d's SR.stat to say %s", i, state), timeout, func() (bool, string) {
		st, err := ps.On(i).Stat(l.ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Health.State == state, fmt.Sprintf("%s (%s)", st.Health.State, st.Health.Message)
	})
}

// writerOnA makes a 32 MiB VDI, starts a VM with it on A and a writer
// on its device, and waits for the first writes.
func (l *poolLab) writerOnA(ps *xapisim.PoolSR, name string) (schema.Volume, *xapisim.Attachment, *IOLoad) {
	t := l.t
	t.Helper()
	v, err := ps.Master().VDICreate(l.ctx, name, "", 32<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	onA, err := ps.Master().VMStart(l.ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	load := StartIO(t, onA.Device, 32<<20)
	load.waitWrites(t, 8, time.Minute)
	return v, onA, load
}

// TestPoolMemberPathLoss: B loses both paths while A keeps them and a VM
// on A writes: B's SR.stat says so, the VM on A never notices, B recovers
// when the paths return; then B unplugs while the VM on A still writes.
func TestPoolMemberPathLoss(t *testing.T) {
	l := newPoolLab(t)
	ctx := l.ctx
	ps := l.create("nvmetcp", l.nvmeTarget("cut"))
	v, onA, load := l.writerOnA(ps, "writer on A")

	restore := l.cutMemberPaths("4420")
	lost := l.waitHealth(ps, 1, schema.Unreachable, 3*time.Minute)
	if st, err := ps.Master().Stat(ctx); err != nil || st.Health.State != schema.Healthy {
		t.Fatalf("A's SR.stat while B has no path: %+v %v", st, err)
	}
	load.waitWrites(t, 16, time.Minute)
	restore()
	back := l.waitHealth(ps, 1, schema.Healthy, 3*time.Minute)
	t.Logf("pool-numbers path loss: B Unreachable after %s, Healthy %s after the paths returned", lost.Round(time.Second), back.Round(time.Second))
	if _, err := ps.On(1).Scan(ctx); err != nil {
		t.Fatalf("sr-scan on B after recovery: %v", err)
	}

	if err := ps.On(1).Unplug(ctx); err != nil {
		t.Fatalf("pbd-unplug on B while A's VM writes: %v", err)
	}
	load.waitWrites(t, 16, time.Minute)
	st := load.Stop()
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
	if len(st.Errors) > 0 {
		t.Fatalf("the VM on A saw %d failed writes, first %v", len(st.Errors), st.Errors[0])
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps) // B's unplug again answers success: no attach recorded
}

// poolDisk is one VDI of the interleaved run and the pattern it holds.
type poolDisk struct {
	key  string
	size int64
	seed uint32 // last pattern written, 0 = none
}

// TestPoolInterleaved: 100 operations from both hosts at once, each one
// xapi call (a VM's start and stop are its four datapath calls). A creates,
// resizes, destroys and starts VMs on its disks and scans; B starts VMs on
// its disks, writes them, stops them and scans. Then vgck is clean, lvs
// shows the same volumes from both hosts, and every disk holds what was
// last written to it.
func TestPoolInterleaved(t *testing.T) {
	l := newPoolLab(t)
	ctx := l.ctx
	ps := l.create("nvmetcp", l.nvmeTarget("mix"))
	const chunks = 2 // MiB of pattern per write
	newDisk := func(name string) *poolDisk {
		v, err := ps.Master().VDICreate(ctx, name, "", 8<<20, false)
		if err != nil {
			t.Error(err)
			return nil
		}
		return &poolDisk{key: v.Key, size: 8 << 20}
	}
	var bDisks []*poolDisk
	for i := range 3 {
		if d := newDisk(fmt.Sprintf("B disk %d", i)); d != nil {
			bDisks = append(bDisks, d)
		}
	}
	// writeOn starts a VM on host h, writes seed, stops it.
	writeOn := func(h int, d *poolDisk, seed uint32, domain string) error {
		a, err := ps.On(h).VMStart(ctx, d.key, domain)
		if err != nil {
			return err
		}
		if h == 0 {
			err = directIO(a.Device, chunks, seed, false)
		} else {
			err = l.b.Pattern(a.Device, seed, chunks, false)
		}
		if serr := ps.On(h).VMShutdown(ctx, a); err == nil {
			err = serr
		}
		if err == nil {
			d.seed = seed
		}
		return err
	}
	start := time.Now()
	var aDisks []*poolDisk
	errs := make(chan error, 2)
	// An operation is one call xapi makes: a create, a resize, a destroy,
	// a scan, or one of a VM's four datapath calls (attach, activate,
	// deactivate, detach), as the issue counts them; writeOn is four.
	const vmCycle = 4
	var opsA, opsB int
	go func() { // host A: 50 operations
		var err error
		for i := 0; opsA < 50 && err == nil; i++ {
			opsA++
			switch {
			case i%5 == 4:
				_, err = ps.On(0).Scan(ctx)
			case len(aDisks) < 2 || i%5 == 0:
				d, verr := ps.Master().VDICreate(ctx, fmt.Sprintf("A disk %d", i), "", 8<<20, false)
				err = verr
				if err == nil {
					aDisks = append(aDisks, &poolDisk{key: d.Key, size: 8 << 20})
				}
			case i%5 == 1:
				d := aDisks[i%len(aDisks)]
				d.size += 4 << 20
				_, err = ps.Master().VDIResize(ctx, d.key, d.size)
			case i%5 == 2:
				opsA += vmCycle - 1
				err = writeOn(0, aDisks[i%len(aDisks)], uint32(1000+i), "10")
			case i%5 == 3 && len(aDisks) > 3:
				d := aDisks[0]
				aDisks = aDisks[1:]
				err = ps.Master().VDIDestroy(ctx, d.key)
			default:
				_, err = ps.On(0).Scan(ctx)
			}
			if err != nil {
				err = fmt.Errorf("A's operation %d: %w", i, err)
			}
		}
		errs <- err
	}()
	go func() { // host B: 50 operations
		var err error
		for i := 0; opsB < 50 && err == nil && len(bDisks) > 0; i++ {
			if i%3 == 2 {
				opsB++
				_, err = ps.On(1).Scan(ctx)
			} else {
				opsB += vmCycle
				err = writeOn(1, bDisks[i%len(bDisks)], uint32(2000+i), "20")
			}
			if err != nil {
				err = fmt.Errorf("B's operation %d: %w", i, err)
			}
		}
		errs <- err
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	took := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}

	vg := "VG_sanvol-" + ps.Master().UUID
	mustRun(t, "vgck", vg)
	lvsArgs := []string{"lvs", "--readonly", "--noheadings", "--units", "b", "-o", "lv_name,lv_size,lv_tags", "--sort", "lv_name", vg}
	onA := mustOutput(t, lvsArgs[0], lvsArgs[1:]...)
	onB, err := l.b.Exec(lvsArgs...)
	if err != nil {
		t.Fatal(err)
	}
	if onA != onB {
		t.Fatalf("lvs differs between the hosts:\nA:\n%s\nB:\n%s", onA, onB)
	}
	for _, d := range append(aDisks, bDisks...) {
		if d.seed == 0 {
			continue
		}
		a, err := ps.Master().VMStart(ctx, d.key, "30")
		if err != nil {
			t.Fatal(err)
		}
		if err := directIO(a.Device, chunks, d.seed, true); err != nil {
			t.Errorf("disk %s: %v", d.key, err)
		}
		if err := ps.Master().VMShutdown(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := ps.Master().VDIDestroy(ctx, d.key); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("pool-numbers interleaved: %d operations (%d on A, %d on B, at once) in %s", opsA+opsB, opsA, opsB, took.Round(time.Second))
	for _, d := range append(aDisks, bDisks...) {
		if d.seed == 0 {
			if err := ps.Master().VDIDestroy(ctx, d.key); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.destroy(ps)
}

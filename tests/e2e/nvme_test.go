//go:build lab

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/transport"
)

// These scenarios drive the NVMe/TCP transport directly against the
// guest kernel's nvmet target over two loopback portals: real nvme-cli,
// real sysfs, real native multipath.

func nvmeLab(t *testing.T) {
	t.Helper()
	if os.Getenv("SANVOL_LAB") == "" {
		t.Skip("lab only: run through tests/lab/run.sh")
	}
	if err := labtarget.EnsureLoopbackAddrs(context.Background()); err != nil {
		t.Fatal(err)
	}
}

type mapSecrets map[string]string

func (m mapSecrets) Secret(_ context.Context, uuid string) (string, error) {
	if v, ok := m[uuid]; ok {
		return v, nil
	}
	return "", fmt.Errorf("no secret %s", uuid)
}

func newNVMeTransport(t *testing.T, secrets host.SecretResolver) *nvme.Transport {
	return newNVMeTransportWith(t, secrets, nvme.Timeouts{})
}

// newNVMeTransportWith is the lab's transport with the given bounds (zero
// fields take the defaults).
func newNVMeTransportWith(t *testing.T, secrets host.SecretResolver, to nvme.Timeouts) *nvme.Transport {
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	root := host.NewRoot("/")
	return nvme.New(nvme.Deps{
		Runner:   host.NewExecRunner(log),
		Root:     root,
		Locker:   host.FileLocker{Root: root},
		Secrets:  secrets,
		Router:   nvme.NetlinkRouter{},
		Log:      log,
		Timeouts: to,
	})
}

func newNVMeTarget(t *testing.T, name string) *labtarget.NVMeTarget {
	t.Helper()
	tg, err := labtarget.NewNVMe(context.Background(), labtarget.NVMeOptions{Name: name, Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		disconnectNQN(t, tg.NQN)
		if err := tg.Close(); err != nil {
			t.Logf("target close: %v", err)
		}
	})
	return tg
}

// controllersOf lists the controllers of nqn in sysfs: name -> "traddr state".
func controllersOf(t *testing.T, nqn string) map[string]string {
	t.Helper()
	out := map[string]string{}
	m, _ := filepath.Glob("/sys/class/nvme/nvme*")
	for _, d := range m {
		if readSys(d+"/subsysnqn") != nqn {
			continue
		}
		out[filepath.Base(d)] = readSys(d+"/address") + " " + readSys(d+"/state")
	}
	return out
}

// disconnectNQN is the safety net of every scenario: nothing it connected
// may leak into the next one.
func disconnectNQN(t *testing.T, nqn string) {
	for name := range controllersOf(t, nqn) {
		if out, err := run("nvme", "disconnect", "--device="+name); err != nil {
			t.Logf("cleanup disconnect %s: %v %s", name, err, out)
		}
	}
}

func cfgFor(tg *labtarget.NVMeTarget, extra ...string) map[string]string {
	cfg := map[string]string{
		nvme.KeyTarget: strings.Join(tg.Addrs, ","),
		nvme.KeyNQN:    tg.NQN,
		// 2 s instead of 10 keeps the path-restore scenario short.
		nvme.KeyReconnectDelay: "2",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		cfg[extra[i]] = extra[i+1]
	}
	return cfg
}

func TestNVMeAttachTwoPaths(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "attach2")
	ns, _ := tg.Namespace(1)
	tr := newNVMeTransport(t, nil)
	ctx := context.Background()

	prep, err := tr.Prepare(ctx, cfgFor(tg, nvme.KeyNamespace, "1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "uuid." + ns.UUID; prep[nvme.KeyNamespace] != want {
		t.Fatalf("Prepare = %v, want namespace %s", prep, want)
	}
	if c := controllersOf(t, tg.NQN); len(c) != 0 {
		t.Fatalf("Prepare left controllers: %v", c)
	}

	cfg := cfgFor(tg, nvme.KeyNamespace, prep[nvme.KeyNamespace])
	start := time.Now()
	dev, err := tr.Attach(ctx, cfg)
	wall := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("METRIC nvme_attach_wall_2paths=%s", wall.Round(time.Millisecond))
	if dev.Path != "/dev/disk/by-id/nvme-uuid."+ns.UUID {
		t.Errorf("device path %s", dev.Path)
	}
	real, err := filepath.EvalSymlinks(dev.Path)
	if err != nil || !strings.HasPrefix(filepath.Base(real), "nvme") || strings.Contains(filepath.Base(real), "c") {
		t.Errorf("%s -> %s (%v), want a multipath head /dev/nvmeXnY", dev.Path, real, err)
	}
	if dev.Health.Live != 2 || dev.Health.Total != 2 {
		t.Errorf("health %+v", dev.Health)
	}
	ctrls := controllersOf(t, tg.NQN)
	if len(ctrls) != 2 {
		t.Fatalf("controllers %v, want 2", ctrls)
	}
	head := filepath.Base(real)
	sub := filepath.Base(filepath.Dir(mustGlob(t, "/sys/class/nvme-subsystem/*/"+head)))
	if p := readSys("/sys/class/nvme-subsystem/" + sub + "/iopolicy"); p != "round-robin" {
		t.Errorf("iopolicy %q", p)
	}
	for name := range ctrls {
		if v := readSys("/sys/class/nvme/" + name + "/ctrl_loss_tmo"); v != "1800" {
			t.Errorf("%s ctrl_loss_tmo = %s", name, v)
		}
		if v := readSys("/sys/class/nvme/" + name + "/reconnect_delay"); v != "2" {
			t.Errorf("%s reconnect_delay = %s", name, v)
		}
	}

	// Idempotent: a second attach connects nothing new.
	if _, err := tr.Attach(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if again := controllersOf(t, tg.NQN); len(again) != 2 {
		t.Fatalf("second attach: controllers %v", again)
	}
	d := tr.Diagnostics(ctx)
	t.Logf("diagnostics:\n%s", d)
	if !strings.Contains(d, tg.NQN) || !strings.Contains(d, "iopolicy=round-robin") || !strings.Contains(d, "nvme-cli: 2.") {
		t.Error("diagnostics miss the subsystem, iopolicy or nvme-cli version")
	}

	// Another SR on the same subsystem keeps the paths up.
	if err := tr.Detach(ctx, cfg, []map[string]string{{nvme.KeyNQN: tg.NQN, nvme.KeyTarget: labtarget.Addr1}}); err != nil {
		t.Fatal(err)
	}
	if c := controllersOf(t, tg.NQN); len(c) != 2 {
		t.Fatalf("detach with another user: controllers %v", c)
	}
	if err := tr.Detach(ctx, cfg, nil); err != nil {
		t.Fatal(err)
	}
	if c := controllersOf(t, tg.NQN); len(c) != 0 {
		t.Fatalf("detach left controllers %v", c)
	}
	if err := tr.Detach(ctx, cfg, nil); err != nil {
		t.Fatalf("second detach: %v", err)
	}
}

func mustGlob(t *testing.T, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) != 1 {
		t.Fatalf("%s matches %v", pattern, m)
	}
	return m[0]
}

// waitHealth polls the transport's health until ok holds.
func waitHealth(t *testing.T, tr *nvme.Transport, cfg map[string]string, what string, ok func(transport.Health) bool, limit time.Duration) transport.Health {
	t.Helper()
	var h transport.Health
	waitFor(t, "health "+what, limit, func() (bool, string) {
		var err error
		h, err = tr.Health(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return ok(h), h.Detail
	})
	return h
}

func TestNVMePortCutDuringWrites(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "portcut")
	tr := newNVMeTransport(t, nil)
	cfg := cfgFor(tg)
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Detach(context.Background(), cfg, nil) })

	load := StartIO(t, dev.Path, 64<<20)
	load.waitWrites(t, 16, 60*time.Second)

	if err := tg.UnlinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	h := waitHealth(t, tr, cfg, "degraded", func(h transport.Health) bool { return h.Live == 1 }, 60*time.Second)
	t.Logf("after unlink: %s", h.Detail)
	if !strings.Contains(h.Detail, labtarget.Addr2+":4420 connecting") && !strings.Contains(h.Detail, labtarget.Addr2+":4420 resetting") {
		t.Errorf("detail %q does not name the cut path as connecting", h.Detail)
	}
	// I/O must flow over the remaining path.
	load.waitWrites(t, 32, 60*time.Second)
	if err := tg.LinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	relink := time.Now()
	h = waitHealth(t, tr, cfg, "healthy", func(h transport.Health) bool { return h.Live == 2 }, 90*time.Second)
	t.Logf("path back %s after relink: %s", time.Since(relink).Round(time.Millisecond), h.Detail)
	load.waitWrites(t, 16, 60*time.Second)

	st := load.Stop()
	if len(st.Errors) > 0 {
		t.Fatalf("%d write errors, first: %v", len(st.Errors), st.Errors[0])
	}
	t.Logf("METRIC nvme_longest_write_stall_path_cut=%s over %d writes", st.MaxLatency.Round(time.Millisecond), st.Writes)
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestNVMeWrongNQN(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "wrongnqn")
	tr := newNVMeTransport(t, nil)
	cfg := cfgFor(tg)
	cfg[nvme.KeyNQN] = tg.NQN + "-typo"
	start := time.Now()
	_, err := tr.Attach(context.Background(), cfg)
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), "does not offer subsystem "+cfg[nvme.KeyNQN]) || !strings.Contains(err.Error(), tg.NQN) {
		t.Fatalf("err = %v, want NotFound naming the offered NQN", err)
	}
	if c := controllersOf(t, cfg[nvme.KeyNQN]); len(c) != 0 {
		t.Errorf("controllers %v", c)
	}
}

func TestNVMeOnePortalUnreachable(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "oneportal")
	tr := newNVMeTransport(t, nil)
	// Nothing listens on 127.0.0.3: that portal refuses at once.
	cfg := cfgFor(tg)
	cfg[nvme.KeyTarget] = labtarget.Addr1 + ",127.0.0.3"
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tr.Detach(context.Background(), cfg, nil) }()
	t.Logf("health: %s", dev.Health.Detail)
	if dev.Health.Live != 1 || dev.Health.Total != 2 || !strings.Contains(dev.Health.Detail, "127.0.0.3:4420 not connected") {
		t.Errorf("health %+v", dev.Health)
	}
}

// blackhole routes a test network into lo, where packets for addresses
// that are not local are dropped: connects time out as with a dead array.
func blackhole(t *testing.T) {
	t.Helper()
	if _, err := run("ip", "route", "replace", "192.0.2.0/24", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = run("ip", "route", "del", "192.0.2.0/24", "dev", "lo") })
}

func TestNVMeAllPortalsUnreachable(t *testing.T) {
	nvmeLab(t)
	blackhole(t)
	tr := newNVMeTransport(t, nil)
	cfg := map[string]string{nvme.KeyTarget: "192.0.2.1,192.0.2.2", nvme.KeyNQN: "nqn.2014-08.lab.sanvol:nowhere"}
	start := time.Now()
	_, err := tr.Attach(context.Background(), cfg)
	took := time.Since(start)
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, host.ErrUnreachable) || !strings.Contains(err.Error(), "192.0.2.1:4420") || !strings.Contains(err.Error(), "192.0.2.2:4420") {
		t.Fatalf("err = %v, want Unreachable naming both portals", err)
	}
	if took > 30*time.Second {
		t.Errorf("took %s, the stated deadline is 30 s", took)
	}
	t.Logf("METRIC nvme_attach_all_unreachable=%s", took.Round(time.Millisecond))
}

func TestNVMeParallelAttach(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "parallel")
	cfg := cfgFor(tg)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// One transport each, as separate plugin processes would be.
			_, errs[i] = newNVMeTransport(t, nil).Attach(context.Background(), cfg)
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("attach %d: %v", i, err)
		}
	}
	ctrls := controllersOf(t, tg.NQN)
	seen := map[string]int{}
	for _, v := range ctrls {
		seen[strings.SplitN(v, ",", 2)[0]]++
	}
	t.Logf("controllers: %v", ctrls)
	if len(ctrls) != 2 || seen["traddr="+labtarget.Addr1] != 1 || seen["traddr="+labtarget.Addr2] != 1 {
		t.Errorf("want each path exactly once, got %v", ctrls)
	}
	if err := newNVMeTransport(t, nil).Detach(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if c := controllersOf(t, tg.NQN); len(c) != 0 {
		t.Errorf("detach left %v", c)
	}
}

func TestNVMeProbe(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "probe")
	ns, _ := tg.Namespace(1)
	tr := newNVMeTransport(t, nil)
	var inspected []string
	// nvmet's discovery log lists only the port it is read from, so both
	// portals are probed to get both into the suggested target.
	cands, err := tr.Probe(context.Background(), map[string]string{nvme.KeyTarget: labtarget.Addr1 + "," + labtarget.Addr2}, func(_ context.Context, dev string) (*transport.FoundSR, error) {
		inspected = append(inspected, dev)
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var mine *transport.Candidate
	for i := range cands {
		t.Logf("candidate %v complete=%t extra=%v", cands[i].Configuration, cands[i].Complete, cands[i].Extra)
		if cands[i].Configuration[nvme.KeyNQN] == tg.NQN {
			mine = &cands[i]
		}
	}
	if mine == nil {
		t.Fatalf("probe did not list %s", tg.NQN)
	}
	if !mine.Complete || mine.Configuration[nvme.KeyNamespace] != "uuid."+ns.UUID || mine.Extra["size"] != fmt.Sprint(ns.Size) || mine.Extra["nguid"] != ns.NGUID {
		t.Errorf("candidate %+v (namespace %+v)", mine, ns)
	}
	if mine.Configuration[nvme.KeyTarget] != labtarget.Addr1+":4420,"+labtarget.Addr2+":4420" {
		t.Errorf("target %q, want both portals", mine.Configuration[nvme.KeyTarget])
	}
	if len(inspected) == 0 {
		t.Error("the inspector was not called")
	}
	if c := controllersOf(t, tg.NQN); len(c) != 0 {
		t.Errorf("probe left controllers %v", c)
	}
}

// seqWriteMBps writes n MiB sequentially with O_DIRECT and returns MB/s.
func seqWriteMBps(t *testing.T, dev string, n int) float64 {
	t.Helper()
	buf, err := syscall.Mmap(-1, 0, ioChunk, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(buf)
	fillChunk(buf, 7, 7)
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := f.WriteAt(buf, int64(i)*ioChunk); err != nil {
			t.Fatalf("write %s chunk %d: %v", dev, i, err)
		}
	}
	return float64(n) * ioChunk / 1e6 / time.Since(start).Seconds()
}

// TestNVMeThroughputLVvsRaw compares sequential O_DIRECT writes through a
// linear LV with the raw namespace, alternating to spread TCG noise.
func TestNVMeThroughputLVvsRaw(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "tput")
	tr := newNVMeTransport(t, nil)
	cfg := cfgFor(tg)
	dev, err := tr.Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Detach(context.Background(), cfg, nil) })
	mustRun(t, "pvcreate", "-ff", "-y", dev.Path)
	mustRun(t, "vgcreate", "sanvol-tput", dev.Path)
	t.Cleanup(func() {
		_, _ = run("vgremove", "-ff", "-y", "sanvol-tput")
		_, _ = run("pvremove", "-ff", "-y", dev.Path)
	})
	mustRun(t, "lvcreate", "-an", "-Zn", "-y", "-L", "96m", "-n", "lv", "sanvol-tput")
	mustRun(t, "lvchange", "-ay", "sanvol-tput/lv")
	t.Cleanup(func() { _, _ = run("lvchange", "-an", "sanvol-tput/lv") })
	const mib = 64
	var raw, lv float64
	for round := 0; round < 3; round++ {
		raw += seqWriteMBps(t, dev.Path, mib)
		lv += seqWriteMBps(t, "/dev/sanvol-tput/lv", mib)
	}
	ratio := lv / raw
	t.Logf("METRIC nvme_throughput_lv_over_raw=%.2f (raw %.0f MB/s, LV %.0f MB/s, TCG: noise about ±15%%)", ratio, raw/3, lv/3)
	if ratio < 0.5 {
		t.Errorf("LV throughput is %.2f of raw: far beyond TCG noise", ratio)
	}
}

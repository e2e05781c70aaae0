//go:build lab

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// The SR engine against real lvm2 on a real NVMe/TCP namespace (the
// guest's nvmet). The in-process scenarios hand the engine a namespace
// this test connected itself with nvme-cli (labTransport); the process
// scenarios (engine_proc_test.go) drive the installed binary.

// labTransport is a transport.Transport for tests only: the namespace is
// already connected, so Attach just names it. It never ships.
type labTransport struct {
	dev    string
	health transport.Health
}

func (l *labTransport) Type() string { return "nvmetcp" }
func (l *labTransport) ConfigKeys() map[string]string {
	return map[string]string{"device": "pre-connected namespace"}
}
func (l *labTransport) Prepare(context.Context, map[string]string) (map[string]string, error) {
	return map[string]string{"device": l.dev}, nil
}
func (l *labTransport) DeviceID(cfg map[string]string) (string, error) {
	return "device:" + cfg["device"], nil
}
func (l *labTransport) Attach(context.Context, map[string]string) (transport.Device, error) {
	return transport.Device{Path: l.dev, Health: l.health}, nil
}
func (l *labTransport) Detach(context.Context, map[string]string, []map[string]string) error {
	return nil
}
func (l *labTransport) Health(context.Context, map[string]string) (transport.Health, error) {
	return l.health, nil
}
func (l *labTransport) Probe(ctx context.Context, _ map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	sr, err := inspect(ctx, l.dev)
	if err != nil {
		return nil, err
	}
	return []transport.Candidate{{Configuration: map[string]string{"device": l.dev}, Complete: true, SR: sr}}, nil
}
func (l *labTransport) Diagnostics(context.Context) string { return "lab transport " + l.dev }

// countingRunner counts the processes an engine call starts.
type countingRunner struct {
	host.Runner
	mu  sync.Mutex
	n   map[string]int
	log []string
}

func (c *countingRunner) Run(ctx context.Context, cmd host.Cmd) (host.Result, error) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[cmd.Name]++
	if cmd.Name == "lvm" {
		c.log = append(c.log, cmd.Args[0])
	}
	c.mu.Unlock()
	return c.Runner.Run(ctx, cmd)
}

func (c *countingRunner) reset() (lvmCalls int, subs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lvmCalls, subs = c.n["lvm"], c.log
	c.n, c.log = nil, nil
	return lvmCalls, subs
}

// engineLab is one namespace connected over one portal, and an engine on it.
type engineLab struct {
	t      *testing.T
	tg     *labtarget.NVMeTarget
	dev    string // /dev/disk/by-id/nvme-uuid.<uuid>
	tr     *labTransport
	runner *countingRunner
	log    *zap.Logger
	root   host.Root
}

func newEngineLab(t *testing.T, name string, size int64) *engineLab {
	t.Helper()
	nvmeLab(t)
	ctx := context.Background()
	tg, err := labtarget.NewNVMe(ctx, labtarget.NVMeOptions{Name: name, Size: size, Addrs: []string{labtarget.Addr1}})
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := tg.Namespace(1)
	l := &engineLab{t: t, tg: tg, dev: "/dev/disk/by-id/nvme-uuid." + ns.UUID,
		log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), root: host.NewRoot("/")}
	l.runner = &countingRunner{Runner: host.NewExecRunner(l.log)}
	l.tr = &labTransport{dev: l.dev, health: transport.Health{Total: 1, Live: 1}}
	t.Cleanup(l.close)
	mustRun(t, "nvme", "connect", "-t", "tcp", "-a", tg.Addrs[0], "-s", tg.Svc, "-n", tg.NQN)
	waitFor(t, "udev link "+l.dev, 30*time.Second, func() (bool, string) {
		_, err := os.Stat(l.dev)
		return err == nil, fmt.Sprint(err)
	})
	return l
}

// close deactivates whatever the scenario left active on the namespace,
// disconnects it and removes the target, so the next scenario starts clean.
func (l *engineLab) close() {
	ctx := context.Background()
	if real, err := filepath.EvalSymlinks(l.dev); err == nil {
		cfg, _ := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3}, lvm.Scope{Devices: []string{l.dev, real}})
		if out, err := labtarget.Run(ctx, "vgchange", "--config", cfg, "-an"); err != nil {
			l.t.Logf("cleanup vgchange -an: %v %s", err, out)
		}
	}
	disconnectNQN(l.t, l.tg.NQN)
	if err := l.tg.Close(); err != nil {
		l.t.Logf("target close: %v", err)
	}
	for _, a := range mustList(l.t, l.root) {
		_ = os.Remove(filepath.Join(volume.StateDir, a.UUID+".json"))
	}
}

func mustList(t *testing.T, root host.Root) []volume.Attached {
	all, err := volume.ListAttached(root)
	if err != nil {
		t.Logf("list attached: %v", err)
	}
	return all
}

// engine is the plugin's engine: LV and LVs read the activation state
// from the kernel's device-mapper, as plugin.newLVM's client does.
func (l *engineLab) engine(role host.Role) *volume.Engine {
	return l.engineWith(role, lvm.New(l.runner, l.log).WithDMStatus(host.DMControl{Root: l.root}))
}

func (l *engineLab) engineWith(role host.Role, c *lvm.Client) *volume.Engine {
	e, err := volume.New(volume.Options{LVM: c, Transport: l.tr, Runner: l.runner, Locker: host.FileLocker{Root: l.root},
		Root: l.root, Role: role, Log: l.log, Version: "lab"})
	if err != nil {
		l.t.Fatal(err)
	}
	return e
}

func (l *engineLab) scope() lvm.Scope {
	real, _ := filepath.EvalSymlinks(l.dev)
	return lvm.Scope{Devices: []string{l.dev, real}}
}

const testSRUUID = "5a1e0c0d-7d3a-4e55-9a0b-3c4d5e6f7a8b"

func (l *engineLab) createSR(e *volume.Engine) string {
	l.t.Helper()
	ctx := context.Background()
	cfg, err := e.SRCreate(ctx, testSRUUID, map[string]string{"note": "lab"}, "lab SR", "made by engine_test")
	if err != nil {
		l.t.Fatal(err)
	}
	sr, err := e.SRAttach(ctx, cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	return sr
}

// readLV activates a volume, reads n bytes from it and deactivates it.
func (l *engineLab) readLV(c *lvm.Client, vg, lv string, n int) []byte {
	l.t.Helper()
	ctx := context.Background()
	if err := c.Activate(ctx, l.scope(), vg, lv); err != nil {
		l.t.Fatal(err)
	}
	defer func() { _ = c.Deactivate(ctx, l.scope(), vg, lv) }()
	f, err := os.Open(lvm.DevicePath(vg, lv))
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil {
		l.t.Fatal(err)
	}
	return buf
}

func (l *engineLab) writeLV(c *lvm.Client, vg, lv string, data []byte) {
	l.t.Helper()
	ctx := context.Background()
	if err := c.Activate(ctx, l.scope(), vg, lv); err != nil {
		l.t.Fatal(err)
	}
	defer func() { _ = c.Deactivate(ctx, l.scope(), vg, lv) }()
	f, err := os.OpenFile(lvm.DevicePath(vg, lv), os.O_WRONLY, 0)
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		l.t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		l.t.Fatal(err)
	}
	f.Close()
}

func TestEngineLifecycle(t *testing.T) {
	l := newEngineLab(t, "englife", 2<<30)
	ctx := context.Background()
	e := l.engine(host.Role{Master: true})

	// A device with a file system is refused without force.
	mustRun(t, "mkfs.ext4", "-q", "-F", l.dev)
	_, err := e.SRCreate(ctx, testSRUUID, map[string]string{}, "n", "d")
	if !errors.Is(err, host.ErrExists) || !strings.Contains(err.Error(), "ext4") {
		t.Fatalf("SR.create on ext4: %v", err)
	}
	cfg, err := e.SRCreate(ctx, testSRUUID, map[string]string{"force": "true"}, "lab SR", "d")
	if err != nil {
		t.Fatal(err)
	}
	if cfg["sr_uuid"] != testSRUUID || cfg["device"] != l.dev || cfg["force"] != "" {
		t.Fatalf("SR.create returned %v", cfg)
	}
	// Repeating the create on the same device succeeds and changes nothing.
	if _, err := e.SRCreate(ctx, testSRUUID, map[string]string{}, "lab SR", "d"); err != nil {
		t.Fatalf("repeated SR.create: %v", err)
	}
	sr, err := e.SRAttach(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := volume.LoadAttached(l.root, testSRUUID)
	if err != nil {
		t.Fatal(err)
	}
	c := lvm.New(l.runner, l.log)
	pvs, err := c.PVs(ctx, l.scope())
	if err != nil || len(pvs) != 1 || pvs[0].MDASize < volume.MetadataAreaMiB<<20 {
		t.Fatalf("PV = %+v, %v", pvs, err)
	}
	t.Logf("PV metadata area %d bytes, VG %s extent %d", pvs[0].MDASize, a.VG, a.ExtentSize)

	st, err := e.SRStat(ctx, sr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Health != volume.Healthy || st.Name != "lab SR" || st.TotalSpace < 1<<30 || st.FreeSpace != st.TotalSpace {
		t.Fatalf("SR.stat = %+v", st)
	}

	// Names with spaces, quotes, emoji; a 4 KiB description.
	name := `my "disk" with 'quotes' & spaces 🚀🙂`
	desc := strings.Repeat("ü€😀x", 4096/10)
	vol, err := e.VolumeCreate(ctx, sr, name, desc, 10<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if vol.VirtualSize != 12<<20 {
		t.Fatalf("size %d, want 12 MiB (10 MiB rounded up to 4 MiB extents)", vol.VirtualSize)
	}
	keys := map[string]string{"vdi-type": "user", "sm-config": `{"a": "b, c"}`, "emoji 🚀": strings.Repeat("€", 500)}
	for k, v := range keys {
		if err := e.VolumeSet(ctx, sr, vol.Key, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.VolumeUnset(ctx, sr, vol.Key, "never-set"); err != nil {
		t.Fatal(err)
	}
	got, err := e.VolumeStat(ctx, sr, vol.Key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != name || got.Description != desc || len(got.Keys) != len(keys) {
		t.Fatalf("Volume.stat = %+v", got)
	}
	for k, v := range keys {
		if got.Keys[k] != v {
			t.Fatalf("key %q = %q, want %q", k, got.Keys[k], v)
		}
	}
	lv, err := c.LV(ctx, l.scope(), a.VG, volume.LVName(vol.Key))
	if err != nil || lv.Active() {
		t.Fatalf("LV after create: %+v %v (a new volume rests inactive)", lv, err)
	}

	// Old data never shows through: fill a volume, destroy it, and the
	// next volume on the same extents reads zeroes.
	l.writeLV(c, a.VG, volume.LVName(vol.Key), bytes.Repeat([]byte{0xAB}, 12<<20))
	if err := e.VolumeDestroy(ctx, sr, vol.Key); err != nil {
		t.Fatal(err)
	}
	if err := e.VolumeDestroy(ctx, sr, vol.Key); err != nil {
		t.Fatalf("repeated destroy: %v", err)
	}
	vol2, err := e.VolumeCreate(ctx, sr, "second", "", 12<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if data := l.readLV(c, a.VG, volume.LVName(vol2.Key), 12<<20); !bytes.Equal(data, make([]byte, 12<<20)) {
		t.Fatal("a new volume shows the data of a destroyed one")
	}
	// The same for the part a resize adds.
	vol3, err := e.VolumeCreate(ctx, sr, "third", "", 4<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	l.writeLV(c, a.VG, volume.LVName(vol3.Key), bytes.Repeat([]byte{0xCD}, 4<<20))
	if err := e.VolumeDestroy(ctx, sr, vol2.Key); err != nil {
		t.Fatal(err)
	}
	if err := e.VolumeResize(ctx, sr, vol3.Key, 16<<20); err != nil {
		t.Fatal(err)
	}
	data := l.readLV(c, a.VG, volume.LVName(vol3.Key), 16<<20)
	if !bytes.Equal(data[:4<<20], bytes.Repeat([]byte{0xCD}, 4<<20)) || !bytes.Equal(data[4<<20:], make([]byte, 12<<20)) {
		t.Fatal("resize lost data or exposed old data")
	}
	if err := e.VolumeResize(ctx, sr, vol3.Key, 8<<20); !errors.Is(err, host.ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	got, _ = e.VolumeStat(ctx, sr, vol3.Key)
	if got.VirtualSize != 16<<20 || got.Incomplete != "" {
		t.Fatalf("after resize: %+v", got)
	}

	l.runner.reset()
	vols, err := e.SRLs(ctx, sr)
	if err != nil || len(vols) != 1 || vols[0].Key != vol3.Key {
		t.Fatalf("SR.ls = %+v, %v", vols, err)
	}
	if n, subs := l.runner.reset(); n != 1 {
		t.Fatalf("SR.ls ran %d LVM commands: %v", n, subs)
	}

	if err := e.SRSetName(ctx, sr, "renamed ✓"); err != nil {
		t.Fatal(err)
	}
	if err := e.SRSetDescription(ctx, sr, desc); err != nil {
		t.Fatal(err)
	}
	probe, err := e.SRProbe(ctx, map[string]string{})
	if err != nil || len(probe) != 1 || probe[0].SR == nil || probe[0].SR.Name != "renamed ✓" || probe[0].SR.Description != desc ||
		probe[0].Configuration["sr_uuid"] != testSRUUID {
		t.Fatalf("SR.probe = %+v, %v", probe, err)
	}

	// Detach refuses while a volume is active here.
	if err := c.Activate(ctx, l.scope(), a.VG, volume.LVName(vol3.Key)); err != nil {
		t.Fatal(err)
	}
	l.checkDMState(c, a.VG, volume.LVName(vol3.Key))
	if err := e.SRDetach(ctx, sr); !errors.Is(err, host.ErrBusy) {
		t.Fatalf("detach with an active volume: %v", err)
	}
	if err := c.Deactivate(ctx, l.scope(), a.VG, volume.LVName(vol3.Key)); err != nil {
		t.Fatal(err)
	}
	if err := e.SRDestroy(ctx, sr); !errors.Is(err, host.ErrBusy) {
		t.Fatalf("destroy of a non-empty SR: %v", err)
	}
	if err := e.VolumeDestroy(ctx, sr, vol3.Key); err != nil {
		t.Fatal(err)
	}
	if err := e.SRDestroy(ctx, sr); err != nil {
		t.Fatal(err)
	}
	if out, _ := run("blkid", "-p", l.dev); strings.Contains(out, "LVM2_member") {
		t.Fatalf("PV label left: %s", out)
	}
	if err := e.SRDetach(ctx, sr); err != nil {
		t.Fatalf("detach after destroy: %v", err)
	}
}

// checkDMState reads the state of an active, unopened LV from lv_attr
// and from the kernel's device-mapper (lvm.Client.WithDMStatus) while it
// is active, open, suspended and open, open, and inactive: both agree at
// each step, and the kernel's read is used (no fallback to lvs). The LV
// is active again at the end.
func (l *engineLab) checkDMState(c *lvm.Client, vg, lv string) {
	t, ctx := l.t, context.Background()
	t.Helper()
	dmc := lvm.New(l.runner, l.log).WithDMStatus(host.DMControl{Root: l.root})
	check := func(step string, active, open, live bool) {
		t.Helper()
		a, err := c.LV(ctx, l.scope(), vg, lv)
		if err != nil {
			t.Fatal(err)
		}
		b, err := dmc.LV(ctx, l.scope(), vg, lv)
		if err != nil {
			t.Fatal(err)
		}
		want := [3]bool{active, open, live}
		if got := [3]bool{a.Active(), a.Open(), a.Live()}; got != want {
			t.Fatalf("%s: lv_attr %q gives active, open, live %v, want %v", step, a.Attr, got, want)
		}
		if got := [3]bool{b.Active(), b.Open(), b.Live()}; got != want || b.DM == nil {
			t.Fatalf("%s: the kernel's state %+v gives active, open, live %v, want %v", step, b.DM, got, want)
		}
		t.Logf("%s: lv_attr %s, device-mapper %+v", step, a.Attr, *b.DM)
	}
	check("active", true, false, true)
	f, err := os.Open(lvm.DevicePath(vg, lv))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	check("open", true, true, true)
	name := lvm.DMName(vg, lv)
	mustRun(t, "dmsetup", "suspend", name)
	check("suspended", true, true, false)
	mustRun(t, "dmsetup", "resume", name)
	check("resumed", true, true, true)
	f.Close()
	if err := c.Deactivate(ctx, l.scope(), vg, lv); err != nil {
		t.Fatal(err)
	}
	check("inactive", false, false, false)
	if err := c.Activate(ctx, l.scope(), vg, lv); err != nil {
		t.Fatal(err)
	}
}

func TestEngineNonMaster(t *testing.T) {
	l := newEngineLab(t, "engslave", 1<<30)
	ctx := context.Background()
	master := l.engine(host.Role{Master: true})
	sr := l.createSR(master)
	vol, err := master.VolumeCreate(ctx, sr, "v", "", 4<<20, false)
	if err != nil {
		t.Fatal(err)
	}

	if err := os.MkdirAll("/etc/xensource", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host.PoolConf, []byte("slave:10.0.0.1"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(host.PoolConf)
	role, err := host.ReadRole(l.root)
	if err != nil || role.Master {
		t.Fatalf("role = %+v, %v", role, err)
	}
	member := l.engine(role)
	if _, err := member.SRStat(ctx, sr); err != nil {
		t.Fatalf("SR.stat on a member: %v", err)
	}
	if vols, err := member.SRLs(ctx, sr); err != nil || len(vols) != 1 {
		t.Fatalf("SR.ls on a member: %v %v", vols, err)
	}
	if _, err := member.VolumeStat(ctx, sr, vol.Key); err != nil {
		t.Fatalf("Volume.stat on a member: %v", err)
	}
	_, err = member.VolumeCreate(ctx, sr, "x", "", 4<<20, false)
	if !errors.Is(err, host.ErrNotMaster) || !strings.Contains(err.Error(), "10.0.0.1") {
		t.Fatalf("Volume.create on a member: %v", err)
	}
	// The LVM client refuses a metadata change in a member's scope...
	a, _ := volume.LoadAttached(l.root, testSRUUID)
	ro := l.scope()
	ro.ReadOnly = true
	err = lvm.New(l.runner, l.log).LVChangeTags(ctx, ro, a.VG, volume.LVName(vol.Key), nil, []string{"sv.X.0:x"})
	if !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("the LVM client ran a metadata change in a read-only scope: %v", err)
	}
	// ...because lvm2 itself may not: record what this lvm2 does with
	// metadata_read_only=1 (2.03.16 ignores it).
	cfg, _ := lvm.BuildConfig(lvm.Version{Major: 2, Minor: 3}, ro)
	out, err := run("lvm", "lvchange", "--config", cfg, "--addtag", "probe_read_only", a.VG+"/"+volume.LVName(vol.Key))
	t.Logf("lvm2 lvchange --addtag with metadata_read_only=1: err=%v %s", err, strings.TrimSpace(out))
}

package volume_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

const (
	testDev  = "/dev/disk/by-id/nvme-sanvol-test"
	srUUID   = "0b2f6c1e-7d3a-4e55-9a0b-3c4d5e6f7a8b"
	gib      = int64(1) << 30
	mib      = int64(1) << 20
	masterIP = "10.0.0.1"
	testHost = "3f1c9a52-0d1e-4b7a-9c11-5e2d7a6b8c90"
)

type fakeTransport struct {
	mu        sync.Mutex
	dev       string
	attaches  int
	detaches  int
	others    [][]map[string]string
	health    transport.Health
	healthErr error
	found     []string // devices Probe inspects
}

func (f *fakeTransport) Type() string                  { return "nvmetcp" }
func (f *fakeTransport) ConfigKeys() map[string]string { return map[string]string{"target": "portal"} }
func (f *fakeTransport) Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	return map[string]string{"nguid": "0011223344556677"}, nil
}
func (f *fakeTransport) DeviceID(cfg map[string]string) (string, error) {
	if cfg["nguid"] == "" {
		return "", errors.New("no nguid")
	}
	return "nguid:" + cfg["nguid"], nil
}
func (f *fakeTransport) Attach(ctx context.Context, cfg map[string]string) (transport.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attaches++
	return transport.Device{Path: f.dev, Health: transport.Health{Total: 2, Live: 2}}, nil
}
func (f *fakeTransport) Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detaches++
	f.others = append(f.others, others)
	return nil
}
func (f *fakeTransport) Health(ctx context.Context, cfg map[string]string) (transport.Health, error) {
	return f.health, f.healthErr
}
func (f *fakeTransport) Probe(ctx context.Context, cfg map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	var out []transport.Candidate
	for _, d := range f.found {
		sr, err := inspect(ctx, d)
		if err != nil {
			return nil, err
		}
		out = append(out, transport.Candidate{Configuration: map[string]string{"target": "t", "nguid": d, "sr_uuid": "stale"}, Complete: true, SR: sr, Extra: map[string]string{"size": "1"}})
	}
	return out, nil
}
func (f *fakeTransport) Diagnostics(ctx context.Context) string { return "" }

type env struct {
	t     *testing.T
	e     *volume.Engine
	sim   *lvmtest.Sim
	tr    *fakeTransport
	root  host.Root
	steps []string
	crash string // step at which the fault hook "kills" the call
	// reports gives the engines built from now on the LVM report cache
	// (the simulated device's metadata area header as the stamp).
	reports bool
	mu      sync.Mutex
}

type crashed struct{ step string }

func newEnv(t *testing.T, role host.Role) *env {
	t.Helper()
	v := &env{t: t, sim: lvmtest.NewSim(testDev, 100*gib), tr: &fakeTransport{dev: testDev, health: transport.Health{Total: 2, Live: 2}},
		root: host.NewRoot(t.TempDir())}
	v.e = v.engine(role)
	return v
}

func (v *env) engine(role host.Role) *volume.Engine {
	return v.engineOf(role, v.tr)
}

// engineWith is a master's engine on another transport (a wrapper of v.tr).
func (v *env) engineWith(tr transport.Transport) *volume.Engine {
	return v.engineOf(host.Role{Master: true}, tr)
}

func (v *env) engineOf(role host.Role, tr transport.Transport) *volume.Engine {
	lc := lvm.New(v.sim, nil)
	if v.reports {
		lc = lc.WithReportCache(v.root, v.sim)
	}
	e, err := volume.New(volume.Options{
		LVM: lc, Transport: tr, Runner: v.sim, Zeroer: v.sim, DevNum: v.sim.DevNum, SnapMagic: v.sim.SnapMagic, MergePoll: time.Millisecond, Locker: host.FileLocker{Root: v.root}, Root: v.root,
		Role: role, Version: "test-1.0", HostID: testHost,
		Fault: func(step string) {
			v.mu.Lock()
			v.steps = append(v.steps, step)
			c := v.crash
			v.mu.Unlock()
			if c == step {
				panic(crashed{step})
			}
		},
	})
	if err != nil {
		v.t.Fatal(err)
	}
	return e
}

// run calls f and turns a crash at the fault hook into a result, as if the
// process had been killed: deferred unlocks run, like the kernel releasing
// a dead process's flocks.
func (v *env) run(f func() error) (crashedAt string, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(crashed)
			if !ok {
				panic(r)
			}
			crashedAt = c.step
		}
	}()
	return "", f()
}

func (v *env) createSR() string {
	v.t.Helper()
	ctx := context.Background()
	cfg, err := v.e.SRCreate(ctx, srUUID, map[string]string{"target": "t"}, "my SR", "desc")
	if err != nil {
		v.t.Fatal(err)
	}
	sr, err := v.e.SRAttach(ctx, cfg)
	if err != nil {
		v.t.Fatal(err)
	}
	return sr
}

// reattach repeats SR.attach with the SR's recorded configuration, as
// xapi does at the next PBD plug.
func (v *env) reattach() {
	v.t.Helper()
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil {
		v.t.Fatal(err)
	}
	if _, err := v.e.SRAttach(context.Background(), a.Configuration); err != nil {
		v.t.Fatal(err)
	}
}

// consistent checks what a crash must never leave: every visible volume
// is fully zeroed (unless a resize mark says up to where), every tag set
// decodes, and what SR.ls shows matches the LVs.
func (v *env) consistent(sr string) []volume.Volume {
	v.t.Helper()
	vols, err := v.e.SRLs(context.Background(), sr)
	if err != nil {
		v.t.Fatalf("SR.ls after crash: %v", err)
	}
	lvs := v.sim.LVs()
	ext := v.sim.ExtentSize()
	for _, vol := range vols {
		l, ok := lvs["v-"+vol.Key]
		if !ok {
			v.t.Fatalf("SR.ls shows %s, which has no LV", vol.Key)
		}
		if vol.Incomplete == "" && !l.FullyZeroed(ext) {
			v.t.Fatalf("volume %s is visible but not fully zeroed", vol.Key)
		}
		if _, _, err := lvm.DecodeFields(l.Tags); err != nil {
			v.t.Fatalf("volume %s: %v", vol.Key, err)
		}
	}
	return vols
}

func TestSRCreateOnBlankDevice(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	cfg, err := v.e.SRCreate(context.Background(), srUUID, map[string]string{"target": "t", "force": "true"}, "name with spaces 🙂", "d")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"target": "t", "nguid": "0011223344556677", "sr_uuid": srUUID}
	if !maps.Equal(cfg, want) {
		t.Fatalf("config = %v, want %v", cfg, want)
	}
	if v.tr.attaches != 1 || v.tr.detaches != 1 {
		t.Fatalf("attach/detach = %d/%d: SR.create must release the device", v.tr.attaches, v.tr.detaches)
	}
	if v.sim.Ops["wipefs"] != 0 {
		t.Fatal("a blank device was wiped")
	}
	var vgcreate host.Cmd
	for _, c := range v.sim.Calls() {
		if c.Name == "lvm" && c.Args[0] == "pvcreate" && !slices.Contains(c.Args, fmt.Sprintf("%dm", volume.MetadataAreaMiB)) {
			t.Fatalf("pvcreate without the metadata area size: %v", c)
		}
		if c.Name == "lvm" && c.Args[0] == "vgcreate" {
			vgcreate = c
		}
	}
	f, _, err := lvm.DecodeFields(lvmtest.Values(vgcreate, "--addtag"))
	if err != nil {
		t.Fatal(err)
	}
	if f["U"] != srUUID || f["N"] != "name with spaces 🙂" || f["D"] != "d" || f["T"] != "nvmetcp" || f["V"] != "test-1.0" {
		t.Fatalf("VG tags = %v", f)
	}
}

func TestSRCreateRefusesData(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.sim.SetSignatures("PTTYPE=gpt")
	_, err := v.e.SRCreate(context.Background(), srUUID, map[string]string{}, "n", "d")
	if !errors.Is(err, host.ErrExists) || !strings.Contains(err.Error(), "PTTYPE=gpt") || !strings.Contains(err.Error(), "force=true") {
		t.Fatalf("err = %v", err)
	}
	if v.sim.HasPV() || v.sim.Ops["wipefs"] != 0 {
		t.Fatal("data was touched")
	}
	if v.tr.detaches != 1 {
		t.Fatal("a failed create left the device attached")
	}
	if _, err := v.e.SRCreate(context.Background(), srUUID, map[string]string{"force": "true"}, "n", "d"); err != nil {
		t.Fatal(err)
	}
	if v.sim.Ops["wipefs"] != 1 || !v.sim.HasVG() {
		t.Fatal("force did not wipe and create")
	}
}

func TestSRCreateRefusesAnotherSR(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	// Detached: the device is free, and SR.create finds the other SR on it
	// (attached, it is refused before anything: TestCreateRefusesAHeldDevice).
	must(t, v.e.SRDetach(context.Background(), sr))
	_, err := v.e.SRCreate(context.Background(), "11111111-2222-3333-4444-555555555555", map[string]string{}, "n", "d")
	if !errors.Is(err, host.ErrExists) {
		t.Fatalf("err = %v", err)
	}
}

func TestSRCreateRepeatedSucceeds(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	before := v.sim.Ops["lvm vgcreate"]
	if _, err := v.e.SRCreate(context.Background(), srUUID, map[string]string{"force": "true"}, "my SR", "desc"); err != nil {
		t.Fatal(err)
	}
	if v.sim.Ops["lvm vgcreate"] != before || v.sim.Ops["wipefs"] != 0 {
		t.Fatal("a repeated create touched the existing SR")
	}
}

func TestNonMaster(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	vol, err := v.e.VolumeCreate(context.Background(), sr, "n", "d", gib, false)
	if err != nil {
		t.Fatal(err)
	}
	member := v.engine(host.Role{MasterAddr: masterIP})
	ctx := context.Background()
	v.sim.Reset()
	if _, err := member.SRStat(ctx, sr); err != nil {
		t.Fatal(err)
	}
	if vols, err := member.SRLs(ctx, sr); err != nil || len(vols) != 1 {
		t.Fatalf("SR.ls on a member: %v %v", vols, err)
	}
	if _, err := member.VolumeStat(ctx, sr, vol.Key); err != nil {
		t.Fatal(err)
	}
	for _, c := range v.sim.Calls() {
		if c.Name == "lvm" && c.Args[0] != "version" && (!strings.Contains(c.Args[3], "metadata_read_only=1") || c.Args[4] != "--readonly") {
			t.Fatalf("a member ran LVM without metadata_read_only=1 and --readonly: %v", c)
		}
	}
	calls := len(v.sim.Calls())
	checks := map[string]func() error{
		"SR.create":        func() error { _, err := member.SRCreate(ctx, srUUID, nil, "", ""); return err },
		"SR.destroy":       func() error { return member.SRDestroy(ctx, sr) },
		"SR.set_name":      func() error { return member.SRSetName(ctx, sr, "x") },
		"Volume.create":    func() error { _, err := member.VolumeCreate(ctx, sr, "n", "", gib, false); return err },
		"Volume.destroy":   func() error { return member.VolumeDestroy(ctx, sr, vol.Key) },
		"Volume.resize":    func() error { return member.VolumeResize(ctx, sr, vol.Key, 2*gib) },
		"Volume.set":       func() error { return member.VolumeSet(ctx, sr, vol.Key, "k", "v") },
		"Volume.unset":     func() error { return member.VolumeUnset(ctx, sr, vol.Key, "k") },
		"Volume.set_name":  func() error { return member.VolumeSetName(ctx, sr, vol.Key, "x") },
		"Volume.set_descr": func() error { return member.VolumeSetDescription(ctx, sr, vol.Key, "x") },
	}
	for name, f := range checks {
		err := f()
		if !errors.Is(err, host.ErrNotMaster) || !strings.Contains(err.Error(), masterIP) {
			t.Errorf("%s on a member: %v", name, err)
		}
	}
	if len(v.sim.Calls()) != calls {
		t.Fatal("a refused call still ran commands")
	}
}

func TestAttachFindsTheVGByItsUUIDTag(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	if sr != "nvmetcp://"+srUUID {
		t.Fatalf("handle = %q", sr)
	}
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil {
		t.Fatal(err)
	}
	if a.Device != testDev || a.VG == "" || a.ExtentSize != 4*mib || a.Configuration["sr_uuid"] != srUUID {
		t.Fatalf("attach record = %+v", a)
	}
	// Repeated attach is fine.
	if _, err := v.e.SRAttach(context.Background(), a.Configuration); err != nil {
		t.Fatal(err)
	}
	cfg := maps.Clone(a.Configuration)
	cfg["sr_uuid"] = "11111111-2222-3333-4444-555555555555"
	// The device is the attached SR's: another SR's attach is refused
	// before the transport touches it (TestAttachRefusesAHeldDevice).
	must(t, v.e.SRDetach(context.Background(), sr))
	before := v.tr.detaches
	if _, err := v.e.SRAttach(context.Background(), cfg); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("attach of an SR that is not there: %v", err)
	}
	if v.tr.detaches != before+1 {
		t.Fatal("a failed attach left the device connected")
	}
	delete(cfg, "sr_uuid")
	if _, err := v.e.SRAttach(context.Background(), cfg); !errors.Is(err, host.ErrInvalid) {
		t.Fatalf("attach without sr_uuid: %v", err)
	}
}

func TestNotAttached(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	_, err := v.e.SRStat(context.Background(), "nvmetcp://"+srUUID)
	if !errors.Is(err, host.ErrNotAttached) || !strings.Contains(err.Error(), "pbd-plug") {
		t.Fatalf("err = %v", err)
	}
	if _, err := v.e.SRLs(context.Background(), "garbage"); !errors.Is(err, host.ErrInvalid) {
		t.Fatalf("bad handle: %v", err)
	}
}

func TestSRStatHealth(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	v.sim.Reset()
	st, err := v.e.SRStat(context.Background(), sr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Health != volume.Healthy || st.Name != "my SR" || st.Description != "desc" || st.UUID != srUUID || st.SR != sr {
		t.Fatalf("stat = %+v", st)
	}
	if st.TotalSpace <= 0 || st.FreeSpace != st.TotalSpace {
		t.Fatalf("space = %d/%d", st.FreeSpace, st.TotalSpace)
	}
	if n := v.sim.Count(lvmtest.LVM("")); n != 1 {
		t.Fatalf("SR.stat ran %d LVM commands", n)
	}
	// One path of two down: still Healthy (xapi scans only Healthy SRs),
	// with the detail and the counts for the PBD.
	v.tr.health = transport.Health{ID: "eui.1", Total: 2, Live: 1, Detail: "1 of 2 paths live: 127.0.0.2:4420 connecting"}
	st, err = v.e.SRStat(context.Background(), sr)
	if err != nil || st.Health != volume.Healthy || st.HealthDetail != v.tr.health.Detail || st.Paths != v.tr.health || st.TotalSpace <= 0 {
		t.Fatalf("degraded stat = %+v, %v", st, err)
	}
	// No path: Unreachable, and no LVM command that would wait on the
	// queued I/O.
	v.sim.Reset()
	v.tr.health = transport.Health{ID: "eui.1", Total: 2, Live: 0, Detail: "0 of 2 paths live"}
	st, err = v.e.SRStat(context.Background(), sr)
	if err != nil || st.Health != volume.Unreachable || st.HealthDetail != "0 of 2 paths live" || st.UUID != srUUID || st.SR != sr {
		t.Fatalf("stat without a path = %+v, %v", st, err)
	}
	if n := v.sim.Count(lvmtest.LVM("")); n != 0 {
		t.Fatalf("SR.stat without a path ran %d LVM commands", n)
	}
	// Path state unknown, but the VG answers: Healthy, saying so.
	v.tr.health, v.tr.healthErr = transport.Health{}, errors.New("sysfs gone")
	st, _ = v.e.SRStat(context.Background(), sr)
	if st.Health != volume.Healthy || !strings.Contains(st.HealthDetail, "sysfs gone") {
		t.Fatalf("unknown health = %+v", st)
	}
}

func TestVolumeLifecycle(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	name := `disk "quoted" with spaces, commas & emoji 🚀`
	desc := strings.Repeat("é", 2048) // 4 KiB of UTF-8
	v.sim.Reset()
	v.steps = nil
	vol, err := v.e.VolumeCreate(ctx, sr, name, desc, 5*mib, true)
	if err != nil {
		t.Fatal(err)
	}
	if vol.VirtualSize != 8*mib || vol.PhysicalUtilisation != 8*mib {
		t.Fatalf("size %d not rounded up to the 4 MiB extent", vol.VirtualSize)
	}
	if !volume.IsUUID(vol.Key) || vol.UUID != vol.Key || vol.URI[0] != "sanvol://"+srUUID+"/"+vol.Key || !vol.ReadWrite || !vol.Sharable {
		t.Fatalf("volume = %+v", vol)
	}
	if n := v.sim.Count(lvmtest.LVM("lvcreate")); n != 1 {
		t.Fatalf("%d lvcreate", n)
	}
	wantSteps := []string{volume.StepVolumeCreateLVCreate, volume.StepVolumeCreateZero, volume.StepVolumeCreateDeactivate, volume.StepVolumeCreateCommit}
	if !slices.Equal(v.steps, wantSteps) {
		t.Fatalf("steps = %v", v.steps)
	}
	l := v.sim.LVs()["v-"+vol.Key]
	if !l.FullyZeroed(4*mib) || l.Active {
		t.Fatalf("LV after create: zeroed=%v active=%v", l.FullyZeroed(4*mib), l.Active)
	}

	// Keys round-trip exactly, whatever they hold.
	keys := map[string]string{"vdi-type": "user", "is_a_snapshot": "false", "": "empty key", "k=v,x": "", "ünï": strings.Repeat("🚀", 300)}
	for k, val := range keys {
		if err := v.e.VolumeSet(ctx, sr, vol.Key, k, val); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.e.VolumeSet(ctx, sr, vol.Key, "vdi-type", "system"); err != nil {
		t.Fatal(err)
	}
	keys["vdi-type"] = "system"
	if err := v.e.VolumeUnset(ctx, sr, vol.Key, "absent"); err != nil {
		t.Fatal(err)
	}
	if err := v.e.VolumeUnset(ctx, sr, vol.Key, "is_a_snapshot"); err != nil {
		t.Fatal(err)
	}
	delete(keys, "is_a_snapshot")
	if err := v.e.VolumeSetName(ctx, sr, vol.Key, "renamed"); err != nil {
		t.Fatal(err)
	}
	if err := v.e.VolumeSetDescription(ctx, sr, vol.Key, ""); err != nil {
		t.Fatal(err)
	}
	v.sim.Reset()
	got, err := v.e.VolumeStat(ctx, sr, vol.Key)
	if err != nil {
		t.Fatal(err)
	}
	if n := v.sim.Count(lvmtest.LVM("")); n != 1 {
		t.Fatalf("Volume.stat ran %d LVM commands", n)
	}
	if !maps.Equal(got.Keys, keys) || got.Name != "renamed" || got.Description != "" || !got.Sharable {
		t.Fatalf("stat = %+v\nkeys want %v", got, keys)
	}
	vols, err := v.e.SRLs(ctx, sr)
	if err != nil || len(vols) != 1 || !maps.Equal(vols[0].Keys, keys) {
		t.Fatalf("SR.ls = %+v, %v", vols, err)
	}

	// Grow only.
	if err := v.e.VolumeResize(ctx, sr, vol.Key, 4*mib); !errors.Is(err, host.ErrInvalid) || !strings.Contains(err.Error(), "shrink") {
		t.Fatalf("shrink: %v", err)
	}
	if err := v.e.VolumeResize(ctx, sr, vol.Key, 8*mib); err != nil {
		t.Fatal(err)
	}
	if err := v.e.VolumeResize(ctx, sr, vol.Key, 20*mib+1); err != nil {
		t.Fatal(err)
	}
	got, _ = v.e.VolumeStat(ctx, sr, vol.Key)
	l = v.sim.LVs()["v-"+vol.Key]
	if got.VirtualSize != 24*mib || !l.FullyZeroed(4*mib) || l.Active || got.Incomplete != "" {
		t.Fatalf("after grow: size %d zeroed %v active %v incomplete %q", got.VirtualSize, l.FullyZeroed(4*mib), l.Active, got.Incomplete)
	}

	if err := v.e.VolumeDestroy(ctx, sr, vol.Key); err != nil {
		t.Fatal(err)
	}
	if err := v.e.VolumeDestroy(ctx, sr, vol.Key); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
	if _, err := v.e.VolumeStat(ctx, sr, vol.Key); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("stat after destroy: %v", err)
	}
}

func TestSetIsOneLVChange(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, _ := v.e.VolumeCreate(ctx, sr, "n", "", gib, false)
	_ = v.e.VolumeSet(ctx, sr, vol.Key, "k", strings.Repeat("a", 300))
	v.sim.Reset()
	if err := v.e.VolumeSet(ctx, sr, vol.Key, "k", strings.Repeat("b", 300)); err != nil {
		t.Fatal(err)
	}
	calls := v.sim.Calls()
	var changes []host.Cmd
	for _, c := range calls {
		if c.Name == "lvm" && c.Args[0] == "lvchange" {
			changes = append(changes, c)
		}
	}
	if len(changes) != 1 || len(lvmtest.Values(changes[0], "--deltag")) == 0 || len(lvmtest.Values(changes[0], "--addtag")) == 0 {
		t.Fatalf("Volume.set ran %v", changes)
	}
	v.sim.Reset()
	if err := v.e.VolumeSet(ctx, sr, vol.Key, "k", strings.Repeat("b", 300)); err != nil {
		t.Fatal(err)
	}
	if v.sim.Count(lvmtest.LVM("lvchange")) != 0 {
		t.Fatal("setting the same value changed metadata")
	}
}

func TestVolumeCreateNoSpace(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	_, err := v.e.VolumeCreate(context.Background(), sr, "n", "", 1000*gib, false)
	if !errors.Is(err, host.ErrNoSpace) {
		t.Fatalf("err = %v", err)
	}
}

func TestZeroFailureRemovesTheLV(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	v.sim.Once(lvmtest.Tool(lvmtest.ZeroOutCmd), lvmtest.Reply{Code: 1, Stderr: "zeroing /dev/vg/lv failed at offset 0 length 134217728: input/output error"})
	_, err := v.e.VolumeCreate(context.Background(), sr, "n", "", gib, false)
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("err = %v", err)
	}
	if len(v.sim.LVs()) != 0 {
		t.Fatal("the LV of a failed create was left behind")
	}
}

func TestDestroyBusyVolume(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	vol, _ := v.e.VolumeCreate(context.Background(), sr, "n", "", gib, false)
	v.sim.SetOpen("v-"+vol.Key, true)
	err := v.e.VolumeDestroy(context.Background(), sr, vol.Key)
	if !errors.Is(err, host.ErrBusy) {
		t.Fatalf("err = %v", err)
	}
}

func TestDetach(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	// Another SR attached on this host: its config goes to Detach.
	other := volume.Attached{Type: "nvmetcp", UUID: "11111111-2222-3333-4444-555555555555", Configuration: map[string]string{"nguid": "other"},
		Device: "/dev/x", VG: "vg"}
	writeJSON(t, v.root, "/run/sanvol/sr/"+other.UUID+".json", other)

	a, _ := volume.LoadAttached(v.root, srUUID)
	// An active LV of this VG in device-mapper refuses the detach.
	dm := v.root.Path("/sys/block/dm-3/dm")
	must(t, os.MkdirAll(dm, 0o755))
	must(t, os.WriteFile(filepath.Join(dm, "uuid"), []byte("LVM-"+strings.ReplaceAll(a.VGUUID, "-", "")+"abcdef\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dm, "name"), []byte("VG_sanvol--x-v--y\n"), 0o644))
	err := v.e.SRDetach(ctx, sr)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "VG_sanvol--x-v--y") {
		t.Fatalf("detach with an active LV: %v", err)
	}
	must(t, os.RemoveAll(v.root.Path("/sys/block/dm-3")))
	before := v.tr.detaches
	if err := v.e.SRDetach(ctx, sr); err != nil {
		t.Fatal(err)
	}
	if v.tr.detaches != before+1 || len(v.tr.others[len(v.tr.others)-1]) != 1 || v.tr.others[len(v.tr.others)-1][0]["nguid"] != "other" {
		t.Fatalf("Detach got others %v", v.tr.others)
	}
	if _, err := volume.LoadAttached(v.root, srUUID); !errors.Is(err, host.ErrNotAttached) {
		t.Fatal("attach record survived the detach")
	}
	if err := v.e.SRDetach(ctx, sr); err != nil {
		t.Fatalf("repeated detach: %v", err)
	}
	if v.tr.detaches != before+1 {
		t.Fatal("a repeated detach called the transport again")
	}
	list, err := volume.ListAttached(v.root)
	if err != nil || len(list) != 1 || list[0].UUID != other.UUID {
		t.Fatalf("ListAttached = %v, %v", list, err)
	}
}

func TestDestroy(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, _ := v.e.VolumeCreate(ctx, sr, "n", "", gib, false)
	if err := v.e.SRDestroy(ctx, sr); !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "vdi-destroy") {
		t.Fatalf("destroy of a non-empty SR: %v", err)
	}
	if !v.sim.HasVG() {
		t.Fatal("a refused destroy removed the VG")
	}
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))
	must(t, v.e.SRDestroy(ctx, sr))
	v.destroyed()
}

// destroyed checks that nothing of the SR is left: VG, PV label, attach.
func (v *env) destroyed() {
	v.t.Helper()
	if v.sim.HasVG() || v.sim.HasPV() {
		v.t.Fatal("VG or PV label left")
	}
	if _, err := volume.LoadAttached(v.root, srUUID); !errors.Is(err, host.ErrNotAttached) {
		v.t.Fatal("destroy did not undo the attach")
	}
}

func TestProbe(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	v.tr.found = []string{testDev, "/dev/disk/by-id/nvme-empty"}
	res, err := v.e.SRProbe(context.Background(), map[string]string{"target": "t"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("probe = %+v", res)
	}
	if res[0].SR == nil || res[0].SR.UUID != srUUID || res[0].SR.Name != "my SR" || res[0].Configuration["sr_uuid"] != srUUID || !res[0].Complete || res[0].SR.TotalSpace <= 0 {
		t.Fatalf("probe of the SR = %+v", res[0])
	}
	if res[1].SR != nil {
		t.Fatalf("probe of an empty device = %+v", res[1])
	}
	if _, ok := res[1].Configuration["sr_uuid"]; ok {
		t.Fatal("sr_uuid without an SR")
	}
}

func TestRenameSR(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	long := strings.Repeat("ß", 2048)
	must(t, v.e.SRSetName(ctx, sr, "new name"))
	must(t, v.e.SRSetDescription(ctx, sr, long))
	st, err := v.e.SRStat(ctx, sr)
	if err != nil || st.Name != "new name" || st.Description != long {
		t.Fatalf("stat = %+v %v", st, err)
	}
}

func TestFeaturesAndSteps(t *testing.T) {
	want := []string{"SR_PROBE", "SR_UPDATE", "VDI_ATTACH_OFFLINE", "VDI_CREATE", "VDI_DESTROY", "VDI_RESIZE", "VDI_UPDATE", "VDI_SNAPSHOT", "VDI_CLONE"}
	if !slices.Equal(volume.Features(), want) {
		t.Fatalf("features = %v", volume.Features())
	}
	seen := map[string]bool{}
	for _, s := range volume.FaultSteps() {
		if seen[s] {
			t.Fatalf("step %s twice", s)
		}
		seen[s] = true
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, root host.Root, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	must(t, root.WriteFileAtomic(path, b, 0o600))
}

// copyTree copies a captured sysfs tree, symlinks included, under root.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	must(t, filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, 0o644)
		}
	}))
}

// SR.detach finds active volumes in a real device-mapper sysfs tree
// (captured in the lab: dm-1 is LV vol-a of VG capnvme, dm-0 a multipath
// map, dm-2 an LV of another VG).
func TestDetachSeesCapturedActiveLV(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	copyTree(t, "../lvm/testdata/sysfs-6.1.0-50-amd64", v.root.Dir)
	a := volume.Attached{Type: "nvmetcp", UUID: srUUID, Configuration: map[string]string{}, Device: testDev,
		VG: "capnvme", VGUUID: "AOoyTd-jd5c-RE36-WNCC-Gcu8-rT6v-efLko2", ExtentSize: 4 * mib}
	writeJSON(t, v.root, "/run/sanvol/sr/"+srUUID+".json", a)
	err := v.e.SRDetach(context.Background(), a.Handle())
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "capnvme-vol--a") || strings.Contains(err.Error(), "capiscsi") {
		t.Fatalf("detach = %v", err)
	}
	a.VGUUID = "Q1w2E3-r4T5-y6U7-i8O9-p0A1-s2D3-f4G5h6" // a VG with nothing active
	writeJSON(t, v.root, "/run/sanvol/sr/"+srUUID+".json", a)
	if err := v.e.SRDetach(context.Background(), a.Handle()); err != nil {
		t.Fatalf("detach of an idle SR: %v", err)
	}
}

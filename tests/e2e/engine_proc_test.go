//go:build lab

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// The SR engine as xapi-storage-script drives it: every call is a process
// of the installed binary, with the real NVMe/TCP transport. Crashes are
// real SIGKILLs (plugin.CrashEnv).

type procLab struct {
	*engineLab
	dir string // the nvmetcp volume plugin directory
	cfg map[string]string
}

func newProcLab(t *testing.T, name string) *procLab {
	t.Helper()
	if SanvolBinary() == "" {
		t.Skip("no sanvol binary built for this run")
	}
	installSanvol(t)
	l := newEngineLab(t, name, 4<<30)
	// The transport connects both portals itself; the test's own
	// connection of engineLab is not needed.
	disconnectNQN(t, l.tg.NQN)
	return &procLab{engineLab: l, dir: plugin.ResolvePluginDir("/", "nvmetcp"),
		cfg: map[string]string{nvme.KeyTarget: strings.Join(l.tg.Addrs, ","), nvme.KeyNQN: l.tg.NQN, nvme.KeyNamespace: "1"}}
}

func (p *procLab) call(method string, args map[string]any, result any) error {
	args["dbg"] = "engine_proc_test"
	return plugin.Invoke(context.Background(), p.dir, method, args, result)
}

func (p *procLab) must(method string, args map[string]any, result any) {
	p.t.Helper()
	if err := p.call(method, args, result); err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
}

// crash runs a call that must die by SIGKILL at step.
func (p *procLab) crash(step, method string, args map[string]any) {
	p.t.Helper()
	os.Setenv(plugin.CrashEnv, step)
	err := p.call(method, args, nil)
	os.Unsetenv(plugin.CrashEnv)
	var ce *plugin.CallError
	if !errors.As(err, &ce) || ce.ExitCode != -1 {
		p.t.Fatalf("%s with %s=%s: want a SIGKILL, got %v", method, plugin.CrashEnv, step, err)
	}
}

func (p *procLab) createSR(uuid string, cfg map[string]string) string {
	p.t.Helper()
	var out map[string]string
	p.must("SR.create", map[string]any{"uuid": uuid, "configuration": cfg, "name": "proc SR", "description": ""}, &out)
	var sr string
	p.must("SR.attach", map[string]any{"configuration": out}, &sr)
	return sr
}

func (p *procLab) ls(sr string) []schema.Volume {
	p.t.Helper()
	var vols []schema.Volume
	p.must("SR.ls", map[string]any{"sr": sr}, &vols)
	return vols
}

// lvCount is how many LVs the SR's VG really holds.
func (p *procLab) lvCount(uuid string) int {
	p.t.Helper()
	a, err := volume.LoadAttached(p.root, uuid)
	if err != nil {
		p.t.Fatal(err)
	}
	lvs, err := lvm.New(p.runner, p.log).LVs(context.Background(), lvm.Scope{Devices: []string{a.Device}}, a.VG)
	if err != nil {
		p.t.Fatal(err)
	}
	return len(lvs)
}

// inproc is an engine in this process on the SR the binary attached, for
// checks the wire format does not carry (Volume.Incomplete).
func (p *procLab) inproc(uuid string) *volume.Engine {
	a, err := volume.LoadAttached(p.root, uuid)
	if err != nil {
		p.t.Fatal(err)
	}
	p.tr.dev = a.Device
	return p.engine(host.Role{Master: true})
}

func TestEngineConcurrentProcesses(t *testing.T) {
	p := newProcLab(t, "engconc")
	sr := p.createSR(testSRUUID, p.cfg)
	// Twelve processes: every create, set and destroy takes the SR lock in
	// turn, and under the lab's full load (six emulated guests on two
	// cores, each lvm command several times slower than alone) twenty
	// made the last ones wait past the engine's 5-minute lock bound.
	const n = 12
	keys := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v schema.Volume
			if errs[i] = p.call("Volume.create", map[string]any{"sr": sr, "name": fmt.Sprintf("vol %d", i), "description": "", "size": 4 << 20, "sharable": false}, &v); errs[i] != nil {
				return
			}
			keys[i] = v.Key
			if errs[i] = p.call("Volume.set", map[string]any{"sr": sr, "key": v.Key, "k": "vdi-type", "v": "user"}, nil); errs[i] != nil {
				return
			}
			if i%2 == 0 {
				errs[i] = p.call("Volume.destroy", map[string]any{"sr": sr, "key": v.Key}, nil)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("process %d: %v", i, err)
		}
	}
	vols := p.ls(sr)
	var got []string
	for _, v := range vols {
		got = append(got, v.Key)
		if v.Keys["vdi-type"] != "user" {
			t.Errorf("volume %s lost its vdi-type: %v", v.Key, v.Keys)
		}
	}
	slices.Sort(got)
	var want []string
	for i, k := range keys {
		if i%2 == 1 {
			want = append(want, k)
		}
	}
	slices.Sort(want)
	// got and want are sorted: equality rules out lost and duplicated keys.
	if !slices.Equal(got, want) {
		t.Fatalf("SR.ls after %d concurrent creates and %d destroys:\n got %v\nwant %v", n, n/2, got, want)
	}
	if c := p.lvCount(testSRUUID); c != n/2 {
		t.Fatalf("VG holds %d LVs, want %d", c, n/2)
	}
}

func TestEngineCrashVolumeSteps(t *testing.T) {
	p := newProcLab(t, "engcrashv")
	sr := p.createSR(testSRUUID, p.cfg)
	e := p.inproc(testSRUUID)
	ctx := context.Background()
	create := map[string]any{"sr": sr, "name": "crash", "description": "", "size": 4 << 20, "sharable": false}

	for _, step := range []string{volume.StepVolumeCreateLVCreate, volume.StepVolumeCreateZero, volume.StepVolumeCreateDeactivate, volume.StepVolumeCreateCommit} {
		before := len(p.ls(sr))
		p.crash(step, "Volume.create", create)
		after := p.ls(sr)
		want := before
		if step == volume.StepVolumeCreateCommit {
			want++
		}
		if len(after) != want {
			t.Fatalf("after a kill at %s SR.ls shows %d volumes, want %d", step, len(after), want)
		}
		// SR.ls is a read path: the dead create's LV stays until the
		// master's next SR.attach removes it.
		left := want
		if step != volume.StepVolumeCreateCommit {
			left++
		}
		if c := p.lvCount(testSRUUID); c != left {
			t.Fatalf("after a kill at %s and SR.ls the VG holds %d LVs, want %d", step, c, left)
		}
		a, err := volume.LoadAttached(p.root, testSRUUID)
		if err != nil {
			t.Fatal(err)
		}
		p.must("SR.attach", map[string]any{"configuration": a.Configuration}, nil)
		if c := p.lvCount(testSRUUID); c != want {
			t.Fatalf("after a kill at %s and SR.attach the VG holds %d LVs for %d volumes", step, c, want)
		}
		var v schema.Volume
		p.must("Volume.create", create, &v)
		t.Logf("kill at %s: consistent, repeat created %s", step, v.Key)
	}

	var v schema.Volume
	p.must("Volume.create", create, &v)
	size := int64(4 << 20)
	for _, step := range []string{volume.StepVolumeResizeMark, volume.StepVolumeResizeLVExtend, volume.StepVolumeResizeZero, volume.StepVolumeResizeDeactivate, volume.StepVolumeResizeCommit} {
		size += 8 << 20
		resize := map[string]any{"sr": sr, "key": v.Key, "new_size": size}
		p.crash(step, "Volume.resize", resize)
		p.ls(sr)
		p.must("Volume.resize", resize, nil)
		got, err := e.VolumeStat(ctx, sr, v.Key)
		if err != nil || got.VirtualSize != size || got.Incomplete != "" {
			t.Fatalf("after a kill at %s and a repeat: %+v %v", step, got, err)
		}
		t.Logf("kill at %s: repeat finished the resize to %d", step, size)
	}

	set := map[string]any{"sr": sr, "key": v.Key, "k": "vdi-type", "v": "user"}
	p.crash(volume.StepVolumeSetTags, "Volume.set", set)
	p.ls(sr)
	p.must("Volume.set", set, nil)
	var st schema.Volume
	p.must("Volume.stat", map[string]any{"sr": sr, "key": v.Key}, &st)
	if st.Keys["vdi-type"] != "user" {
		t.Fatalf("keys after repeat: %v", st.Keys)
	}

	destroy := map[string]any{"sr": sr, "key": v.Key}
	p.crash(volume.StepVolumeDestroyLVRemove, "Volume.destroy", destroy)
	p.ls(sr)
	p.must("Volume.destroy", destroy, nil)

	p.crash(volume.StepSRSetTags, "SR.set_name", map[string]any{"sr": sr, "new_name": "crashed rename"})
	p.must("SR.set_name", map[string]any{"sr": sr, "new_name": "crashed rename"}, nil)
	var sst schema.SRStat
	p.must("SR.stat", map[string]any{"sr": sr}, &sst)
	if sst.Name != "crashed rename" {
		t.Fatalf("SR.stat after repeated rename: %+v", sst)
	}
}

func TestEngineCrashSRSteps(t *testing.T) {
	p := newProcLab(t, "engcrashsr")
	args := func(cfg map[string]string) map[string]any {
		return map[string]any{"uuid": testSRUUID, "configuration": cfg, "name": "crash SR", "description": ""}
	}
	reset := func() {
		// Back to a blank namespace for the next create.
		for _, a := range mustList(t, p.root) {
			_ = p.call("SR.destroy", map[string]any{"sr": a.Handle()}, nil)
			_ = os.Remove(volume.StateDir + "/" + a.UUID + ".json")
		}
	}
	for _, step := range []string{volume.StepSRCreateAttach, volume.StepSRCreateWipe, volume.StepSRCreatePVCreate, volume.StepSRCreateVGCreate} {
		cfg := p.cfg
		if step == volume.StepSRCreateWipe {
			cfg = map[string]string{"force": "true"}
			for k, v := range p.cfg {
				cfg[k] = v
			}
			// The only way to the wipe step: data on the device.
			var out map[string]string
			p.must("SR.create", args(p.cfg), &out)
			var sr string
			p.must("SR.attach", map[string]any{"configuration": out}, &sr)
			p.must("SR.destroy", map[string]any{"sr": sr}, nil)
			dev := p.inprocDevice(out)
			mustRun(t, "mkfs.ext4", "-q", "-F", dev)
		}
		p.crash(step, "SR.create", args(cfg))
		var out map[string]string
		p.must("SR.create", args(cfg), &out)
		var sr string
		p.must("SR.attach", map[string]any{"configuration": out}, &sr)
		var st schema.SRStat
		p.must("SR.stat", map[string]any{"sr": sr}, &st)
		t.Logf("kill at %s: repeated SR.create and SR.attach work (%s)", step, st.Name)
		reset()
	}

	for _, step := range []string{volume.StepSRDestroyGC, volume.StepSRDestroyVGRemove, volume.StepSRDestroyPVRemove, volume.StepSRDestroyDetach} {
		sr := p.createSR(testSRUUID, p.cfg)
		p.crash(step, "SR.destroy", map[string]any{"sr": sr})
		// The daemon keeps the handle; the repeat finishes the job.
		p.must("SR.destroy", map[string]any{"sr": sr}, nil)
		if _, err := volume.LoadAttached(p.root, testSRUUID); !errors.Is(err, host.ErrNotAttached) {
			t.Fatalf("after a kill at %s and a repeat the SR is still attached: %v", step, err)
		}
		t.Logf("kill at %s: repeated SR.destroy finished", step)
	}

	sr := p.createSR(testSRUUID, p.cfg)
	p.crash(volume.StepSRDetachTransport, "SR.detach", map[string]any{"sr": sr})
	p.must("SR.detach", map[string]any{"sr": sr}, nil)
	p.must("SR.detach", map[string]any{"sr": sr}, nil)
}

// inprocDevice is the namespace's stable device path as the transport
// resolved it in a returned configuration.
func (p *procLab) inprocDevice(cfg map[string]string) string {
	p.t.Helper()
	ns := strings.TrimPrefix(cfg[nvme.KeyNamespace], "uuid.")
	dev := "/dev/disk/by-id/nvme-uuid." + ns
	if _, err := os.Stat(dev); err != nil {
		// The transport disconnected after create; connect to reach it.
		mustRun(p.t, "nvme", "connect", "-t", "tcp", "-a", p.tg.Addrs[0], "-s", p.tg.Svc, "-n", p.tg.NQN)
		waitFor(p.t, dev, 30*time.Second, func() (bool, string) { _, err := os.Stat(dev); return err == nil, "" })
	}
	return dev
}

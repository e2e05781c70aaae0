package volume_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// With every path down LVM says "Volume group not found" and "No device
// found": Volume.destroy and SR.destroy must fail as Unreachable and
// leave the SR attached and its data in place, not report success.
func TestDestroyOnInvisibleDeviceIsUnreachable(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "", gib, false)
	must(t, err)

	v.sim.SetOffline(true)
	err = v.e.VolumeDestroy(ctx, sr, vol.Key)
	if host.KindOf(err) != host.KindUnreachable || !strings.Contains(err.Error(), "sr-forget") {
		t.Fatalf("Volume.destroy with the device unreadable: %v", err)
	}
	if _, ok := v.sim.LVs()["v-"+vol.Key]; !ok {
		t.Fatal("the LV is gone")
	}
	v.sim.SetOffline(false)
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))
	if _, ok := v.sim.LVs()["v-"+vol.Key]; ok {
		t.Fatal("the LV survived the destroy")
	}
	// Repeating it once the LV is gone is success: LVM read the VG.
	must(t, v.e.VolumeDestroy(ctx, sr, vol.Key))

	v.sim.SetOffline(true)
	err = v.e.SRDestroy(ctx, sr)
	if host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("SR.destroy with the device unreadable: %v", err)
	}
	if !v.sim.HasVG() || !v.sim.HasPV() {
		t.Fatal("the VG or PV went")
	}
	if _, err := volume.LoadAttached(v.root, srUUID); err != nil {
		t.Fatalf("the attach record went: %v", err)
	}
	v.sim.SetOffline(false)
	must(t, v.e.SRDestroy(ctx, sr))
	v.destroyed()
}

// A destroy repeated after the VG (or the PV label) went is proven gone
// by reading the device: it succeeds.
func TestDestroyRepeatedAfterVGRemoveIsProven(t *testing.T) {
	for _, step := range []string{volume.StepSRDestroyVGRemove, volume.StepSRDestroyPVRemove} {
		t.Run(step, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			sr := v.createSR()
			v.crash = step
			if at, _ := v.run(func() error { return v.e.SRDestroy(context.Background(), sr) }); at != step {
				t.Fatalf("crashed at %q", at)
			}
			v.crash = ""
			must(t, v.e.SRDestroy(context.Background(), sr))
			v.destroyed()
			if v.sim.Ops["dd"] == 0 {
				t.Fatal("the device was not read before taking \"not found\" as gone")
			}
		})
	}
}

const otherUUID = "11111111-2222-3333-4444-555555555555"

func (v *env) transportCalls() (int, int) {
	v.tr.mu.Lock()
	defer v.tr.mu.Unlock()
	return v.tr.attaches, v.tr.detaches
}

// A mistyped SR.create naming the LUN of an SR attached here is refused
// before the transport connects, wipes or releases anything.
func TestCreateRefusesAHeldDevice(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	at, det := v.transportCalls()
	_, err := v.e.SRCreate(context.Background(), otherUUID, map[string]string{"target": "t", "force": "true"}, "n", "d")
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), srUUID) || !strings.Contains(err.Error(), "pbd-unplug") {
		t.Fatalf("SR.create on a held device: %v", err)
	}
	if a, d := v.transportCalls(); a != at || d != det || v.sim.Ops["wipefs"] != 0 {
		t.Fatalf("the refused create touched the device: attach %d→%d, detach %d→%d, wipefs %d", at, a, det, d, v.sim.Ops["wipefs"])
	}
	if _, err := v.e.SRStat(context.Background(), "nvmetcp://"+srUUID); err != nil {
		t.Fatalf("the attached SR: %v", err)
	}
}

func TestAttachRefusesAHeldDevice(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	a, err := volume.LoadAttached(v.root, srUUID)
	must(t, err)
	cfg := maps.Clone(a.Configuration)
	cfg["sr_uuid"] = otherUUID
	at, det := v.transportCalls()
	if _, err := v.e.SRAttach(context.Background(), cfg); !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), srUUID) {
		t.Fatalf("SR.attach on a held device: %v", err)
	}
	if a, d := v.transportCalls(); a != at || d != det {
		t.Fatalf("the refused attach touched the device: attach %d→%d, detach %d→%d", at, a, det, d)
	}
}

// SR.create repeated for the SR attached here succeeds and leaves its
// device connected.
func TestRepeatedCreateKeepsTheAttachedDevice(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	at, det := v.transportCalls()
	if _, err := v.e.SRCreate(context.Background(), srUUID, map[string]string{"target": "t"}, "my SR", "desc"); err != nil {
		t.Fatal(err)
	}
	if a, d := v.transportCalls(); a != at || d != det {
		t.Fatalf("attach %d→%d, detach %d→%d: the repeated create released the attached SR's device", at, a, det, d)
	}
}

// A repeated SR.attach of an attached SR that fails after the transport
// attached must not release the device its VMs use.
func TestFailedRepeatedAttachKeepsTheDevice(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	v.createSR()
	a, err := volume.LoadAttached(v.root, srUUID)
	must(t, err)
	v.sim.Once(lvmtest.LVM("vgs"), lvmtest.Reply{Code: 5, Stderr: "  Something odd."})
	_, det := v.transportCalls()
	if _, err := v.e.SRAttach(context.Background(), a.Configuration); err == nil {
		t.Fatal("the injected failure did not fail the attach")
	}
	if _, d := v.transportCalls(); d != det {
		t.Fatal("a failed repeated attach released the attached SR's device")
	}
}

// An attach record left by an older sanvol may name the same device as
// another: detaching one leaves the device to the other.
func TestDetachLeavesADeviceAnotherSRNames(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	a, err := volume.LoadAttached(v.root, srUUID)
	must(t, err)
	other := a
	other.UUID = otherUUID
	writeJSON(t, v.root, "/run/sanvol/sr/"+otherUUID+".json", other)
	_, det := v.transportCalls()
	must(t, v.e.SRDetach(context.Background(), sr))
	if _, d := v.transportCalls(); d != det {
		t.Fatal("SR.detach released a device another attached SR names")
	}
}

// resolvingTransport re-resolves recorded devices, like nvmetcp.
type resolvingTransport struct {
	*fakeTransport
	resolves int
}

func (r *resolvingTransport) ResolveDevice(ctx context.Context, cfg map[string]string, recorded string) (string, error) {
	r.resolves++
	return r.dev, nil
}

// A record holding a kernel name is checked before use and migrated to
// the transport's stable path; SR.detach works without it.
func TestAttachRecordIsResolvedBeforeUse(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	a, err := volume.LoadAttached(v.root, srUUID)
	must(t, err)
	a.Device = "/dev/nvme1n1"
	writeJSON(t, v.root, "/run/sanvol/sr/"+srUUID+".json", a)
	rt := &resolvingTransport{fakeTransport: v.tr}
	e, err := volume.New(volume.Options{LVM: lvm.New(v.sim, nil), Transport: rt, Runner: v.sim,
		Locker: host.FileLocker{Root: v.root}, Root: v.root, Role: host.Role{Master: true}})
	must(t, err)
	if _, err := e.SRStat(context.Background(), sr); err != nil {
		t.Fatal(err)
	}
	if a, _ := volume.LoadAttached(v.root, srUUID); a.Device != testDev || rt.resolves != 1 {
		t.Fatalf("record device %s after %d resolves", a.Device, rt.resolves)
	}
	must(t, e.SRDetach(context.Background(), sr))
	if rt.resolves != 1 {
		t.Fatal("SR.detach resolved the device")
	}
}

// reconnectTransport brings the simulated device back on Attach, unless
// the storage is really gone.
type reconnectTransport struct {
	*fakeTransport
	sim  *lvmtest.Sim
	gone bool
}

func (r *reconnectTransport) Attach(ctx context.Context, cfg map[string]string) (transport.Device, error) {
	if r.gone {
		return transport.Device{}, host.NewError(host.KindUnreachable, "attach", "no path", "", nil)
	}
	r.sim.SetOffline(false)
	return r.fakeTransport.Attach(ctx, cfg)
}

// SR.destroy killed after its own detach leaves the record with the
// device released: the repeat reconnects to prove the VG gone, and fails
// as Unreachable only if it cannot.
func TestDestroyRepeatedAfterDetachReconnects(t *testing.T) {
	for _, gone := range []bool{false, true} {
		v := newEnv(t, host.Role{Master: true})
		rt := &reconnectTransport{fakeTransport: v.tr, sim: v.sim}
		v.e = v.engineWith(rt)
		sr := v.createSR()
		rt.gone = gone
		v.crash = volume.StepSRDestroyDetach
		if at, _ := v.run(func() error { return v.e.SRDestroy(context.Background(), sr) }); at != volume.StepSRDestroyDetach {
			t.Fatalf("crashed at %q", at)
		}
		v.crash = ""
		v.sim.SetOffline(true) // what the transport's Detach did
		err := v.e.SRDestroy(context.Background(), sr)
		if gone {
			if host.KindOf(err) != host.KindUnreachable {
				t.Fatalf("storage gone: %v", err)
			}
			continue
		}
		must(t, err)
		v.destroyed()
	}
}

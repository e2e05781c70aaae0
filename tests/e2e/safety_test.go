//go:build lab

package e2e

// Issue 13's device safety rules on the real stacks, through the xapi
// simulator: an sr-create naming the LUN/namespace of an SR attached here
// is refused and the attached SR keeps doing I/O; with every path cut,
// vdi-destroy and SR.destroy fail as Unreachable instead of reporting the
// VG "already gone", and the data is there when the paths return.

import (
	"context"
	"errors"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// wantKind checks that a plugin call failed with the given kind and that
// the message names every one of words.
func wantKind(t *testing.T, what string, err error, kind host.Kind, words ...string) {
	t.Helper()
	var ce *plugin.CallError
	if !errors.As(err, &ce) || len(ce.Doc.Params) < 2 {
		t.Fatalf("%s: %v, want a %s error document", what, err, kind)
	}
	t.Logf("%s: %v", what, ce.Doc.Params)
	if ce.Doc.Params[0] != string(kind) {
		t.Errorf("%s: kind %s, want %s", what, ce.Doc.Params[0], kind)
	}
	for _, w := range words {
		if !strings.Contains(ce.Doc.Params[1], w) {
			t.Errorf("%s: the message does not name %q", what, w)
		}
	}
}

// duplicateCreate runs the duplicate sr-create case on a plugged SR whose
// VDI holds a pattern: check says, after the refusal, that the SR's paths
// are all still there.
func (l *dpLab) duplicateCreate(t *testing.T, srType string, dupConfig map[string]string, check func() (bool, string)) {
	v := l.vdiCreate(t, "kept disk", 16<<20)
	a := l.vmStart(t, v, "1")
	writePattern(t, a.Device, patternMiB, 13)

	_, err := l.sim.SRCreate(context.Background(), srType, "mistyped", t.Name(), dupConfig)
	wantKind(t, "sr-create on the attached SR's device", err, host.KindBusy, l.sr.UUID, "pbd-unplug")
	if ok, state := check(); !ok {
		t.Errorf("after the refused create, the attached SR's paths: %s", state)
	}
	// The attached SR does I/O as before, and its metadata answers.
	checkPattern(t, a.Device, patternMiB, 13)
	writePattern(t, a.Device, patternMiB, 14)
	checkPattern(t, a.Device, patternMiB, 14)
	if st, err := l.sr.Stat(context.Background()); err != nil || st.Health.State != "Healthy" {
		t.Errorf("SR.stat after the refused create: %+v %v", st.Health, err)
	}
	// A second plug of another SR on the same device is refused the same way.
	cfg := maps.Clone(l.sr.Config)
	cfg["sr_uuid"] = "5f1c2a9e-1111-4c3b-9c1e-2f0d3a4b5c6d"
	var handle string
	err = l.sr.Call(context.Background(), "SR.attach", schema.SRAttachArgs{Dbg: "e2e", Configuration: cfg}, &handle)
	wantKind(t, "SR.attach of another SR on the attached SR's device", err, host.KindBusy, l.sr.UUID)
	checkPattern(t, a.Device, patternMiB, 14)

	l.vmStop(t, a)
	if err := l.sr.VDIDestroy(context.Background(), v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(t)
}

func TestSafetyDuplicateCreateNVMe(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "dupnvme")
	if err := tg.GrowNamespace(1, srLUNSize); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"target": labtarget.Addr1 + "," + labtarget.Addr2, "nqn": tg.NQN}
	l := newDPLab(t, "nvmetcp", base)
	a, err := volume.LoadAttached(host.NewRoot("/"), l.sr.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Device, "/dev/disk/by-id/nvme-") {
		t.Errorf("the attach record names %s, not a by-id path", a.Device)
	}
	l.duplicateCreate(t, "nvmetcp", base, func() (bool, string) {
		n := liveCount(nvmeCtrls(tg.NQN))
		return n == 2, strings.Repeat("live ", n)
	})
}

func TestSafetyDuplicateCreateISCSI(t *testing.T) {
	tg := newISCSILUN(t, "dupiscsi", labtarget.Addr1, labtarget.Addr2)
	if err := tg.Grow(srLUNSize); err != nil {
		t.Fatal(err)
	}
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	l := newDPLab(t, "iscsi-ng", cfg)
	// The mistyped create names the LUN through one portal only.
	dup := iscsiConfig(tg, labtarget.Addr2)
	l.duplicateCreate(t, "iscsi-ng", dup, func() (bool, string) {
		ps := multipathPaths(tg.WWID())
		_, ok := mapSlaves(tg.WWID())
		return ok && activePaths(ps) == 2, strings.TrimSpace(strings.Repeat("path ", len(ps)))
	})
}

// readFails reports whether one direct read of dev fails (or dev is gone).
func readFails(dev string) bool {
	_, err := run("dd", "if="+dev, "of=/dev/null", "bs=4096", "count=1", "iflag=direct")
	return err != nil
}

// invisibleDevice cuts every path (cut), waits until the SR's device no
// longer reads, and checks that neither vdi-destroy nor SR.destroy takes
// LVM's "not found" for "gone"; restore brings the paths back, and the
// VG, the VDI and its data must be there.
func (l *dpLab) invisibleDevice(t *testing.T, cut, restore func()) {
	v := l.vdiCreate(t, "outage disk", 16<<20)
	a := l.vmStart(t, v, "1")
	writePattern(t, a.Device, patternMiB, 21)
	l.vmStop(t, a)
	rec, err := volume.LoadAttached(host.NewRoot("/"), l.sr.UUID)
	if err != nil {
		t.Fatal(err)
	}

	cut()
	waitFor(t, "the SR's device to stop reading", 3*time.Minute, func() (bool, string) {
		return readFails(rec.Device), rec.Device + " still reads"
	})
	err = l.sr.VDIDestroy(context.Background(), v.Key)
	if err != nil && strings.Contains(err.Error(), "Volume.stat") {
		// xapi stats first; the destroy itself is what is checked.
		err = l.sr.Call(context.Background(), "Volume.destroy", schema.VolumeArgs{Dbg: "e2e", SR: l.sr.Handle, Key: v.Key}, nil)
	}
	wantKind(t, "Volume.destroy with every path cut", err, host.KindUnreachable, "not reachable", "sr-forget")
	err = l.sr.Call(context.Background(), "SR.destroy", schema.SRArgs{Dbg: "e2e", SR: l.sr.Handle}, nil)
	wantKind(t, "SR.destroy with every path cut", err, host.KindUnreachable, "not reachable")
	if _, err := os.Stat("/run/sanvol/sr/" + l.sr.UUID + ".json"); err != nil {
		t.Errorf("the attach record went: %v", err)
	}

	restore()
	waitFor(t, "the SR's device to read again", 3*time.Minute, func() (bool, string) {
		return !readFails(rec.Device), rec.Device + " does not read"
	})
	vols, err := l.sr.Scan(context.Background())
	if err != nil || len(vols) != 1 || vols[0].Key != v.Key {
		t.Fatalf("sr-scan after the outage: %v %v", vols, err)
	}
	a = l.vmStart(t, v, "1")
	checkPattern(t, a.Device, patternMiB, 21)
	l.vmStop(t, a)
	if err := l.sr.VDIDestroy(context.Background(), v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(t)
}

func TestSafetyInvisibleDeviceNVMe(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "gonenvme")
	if err := tg.GrowNamespace(1, srLUNSize); err != nil {
		t.Fatal(err)
	}
	// A short ctrl-loss-tmo: the kernel gives the controllers up, and the
	// namespace head and its by-id link go, within seconds of the cut.
	l := newDPLab(t, "nvmetcp", map[string]string{"target": labtarget.Addr1 + "," + labtarget.Addr2, "nqn": tg.NQN,
		"ctrl-loss-tmo": "6", "reconnect-delay": "2"})
	l.invisibleDevice(t, func() {
		for _, a := range []string{labtarget.Addr1, labtarget.Addr2} {
			if err := tg.UnlinkPort(a); err != nil {
				t.Fatal(err)
			}
		}
	}, func() {
		for _, a := range []string{labtarget.Addr1, labtarget.Addr2} {
			if err := tg.LinkPort(a); err != nil {
				t.Fatal(err)
			}
		}
		// The kernel deleted the controllers: plugging the PBD again
		// reconnects, as xapi's pbd-unplug/pbd-plug would.
		if err := l.sr.Unplug(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := l.sr.Plug(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestSafetyInvisibleDeviceISCSI(t *testing.T) {
	tg := newISCSILUN(t, "goneiscsi", labtarget.Addr1, labtarget.Addr2)
	if err := tg.Grow(srLUNSize); err != nil {
		t.Fatal(err)
	}
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	cfg["path-loss-policy"] = "fail"
	cfg["replacement-timeout"] = "5"
	l := newDPLab(t, "iscsi-ng", cfg)
	l.invisibleDevice(t, func() {
		for _, a := range []string{labtarget.Addr1, labtarget.Addr2} {
			if err := tg.DisablePortal(a); err != nil {
				t.Fatal(err)
			}
		}
	}, func() {
		for _, a := range []string{labtarget.Addr1, labtarget.Addr2} {
			if err := tg.EnablePortal(a); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "multipath to reinstate both paths", 3*time.Minute, func() (bool, string) {
			n := activePaths(multipathPaths(tg.WWID()))
			return n == 2, strings.Repeat("active ", n)
		})
	})
}

package volume_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// cachedEnv is a master with the report cache, an SR and a 1 GiB volume.
func cachedEnv(t *testing.T) (*env, string, volume.Volume) {
	t.Helper()
	v := newEnv(t, host.Role{Master: true})
	v.reports = true
	v.e = v.engine(host.Role{Master: true})
	sr := v.createSR()
	vol, err := v.e.VolumeCreate(context.Background(), sr, "n", "d", gib, false)
	if err != nil {
		t.Fatal(err)
	}
	return v, sr, vol
}

// TestReadsFromTheReportCache: Volume.stat, SR.stat and SR.ls spawn no
// LVM process while the VG metadata is unchanged, on the master and on a
// member, ask LVM for no activation state, and see every change the
// master makes.
func TestReadsFromTheReportCache(t *testing.T) {
	v, sr, vol := cachedEnv(t)
	ctx := context.Background()
	member := v.engine(host.Role{MasterAddr: masterIP})
	for _, c := range []struct {
		name   string
		master bool
	}{{"master", true}, {"member", false}} {
		e := v.e
		if !c.master {
			e = member
		}
		v.sim.Reset()
		for i := 0; i < 3; i++ {
			got, err := e.VolumeStat(ctx, sr, vol.Key)
			if err != nil || got.VirtualSize != vol.VirtualSize {
				t.Fatalf("%s: Volume.stat %d: %+v %v", c.name, i, got, err)
			}
			if _, err := e.SRStat(ctx, sr); err != nil {
				t.Fatalf("%s: SR.stat: %v", c.name, err)
			}
			if vols, err := e.SRLs(ctx, sr); err != nil || len(vols) != 1 {
				t.Fatalf("%s: SR.ls: %v %v", c.name, vols, err)
			}
		}
		// One lvs of the volume, one of the VG, one vgs (the member's
		// scope is read-only: other command lines than the master's).
		reports := func(c host.Cmd) bool { return lvmtest.LVM("")(c) && c.Args[0] != "version" }
		if n := v.sim.Count(reports); n != 3 {
			t.Fatalf("%s: 3 rounds of Volume.stat, SR.stat and SR.ls ran %d lvm processes, want 3: %v", c.name, n, v.sim.Calls())
		}
		for _, cmd := range v.sim.Calls() {
			if cmd.Name == "lvm" && cmd.Args[0] == "lvs" && strings.Contains(lvmtest.Values(cmd, "-o")[0], "lv_attr") {
				t.Fatalf("%s: a read asked for this host's activation state: %v", c.name, cmd)
			}
		}
	}
	// The master resizes: the member sees the new size at once.
	if err := v.e.VolumeResize(ctx, sr, vol.Key, 2*gib); err != nil {
		t.Fatal(err)
	}
	got, err := member.VolumeStat(ctx, sr, vol.Key)
	if err != nil || got.VirtualSize != 2*gib {
		t.Fatalf("member's Volume.stat after a resize on the master: %+v %v", got, err)
	}
	st, err := member.SRStat(ctx, sr)
	if err != nil {
		t.Fatal(err)
	}
	vgs, err := lvm.New(v.sim, nil).VGs(ctx, lvm.Scope{Devices: []string{testDev}})
	if err != nil || len(vgs) != 1 || st.FreeSpace != vgs[0].Free {
		t.Fatalf("member's SR.stat free %d after a resize; the VG has %v %v", st.FreeSpace, vgs, err)
	}
	// A snapshot's Volume.stat reads its key's LV first, which is not
	// there: that answer is cached too.
	snap, err := v.e.Snapshot(ctx, sr, vol.Key, "s", "")
	if err != nil {
		t.Fatal(err)
	}
	v.sim.Reset()
	for i := 0; i < 3; i++ {
		if got, err := member.VolumeStat(ctx, sr, snap.Key); err != nil || got.VirtualSize != 2*gib || got.ReadWrite {
			t.Fatalf("member's Volume.stat of a snapshot: %+v %v", got, err)
		}
	}
	if n := v.sim.Count(lvmtest.LVM("lvs")); n != 3 {
		t.Fatalf("3 Volume.stat of a snapshot ran lvs %d times, want 3 (the missing LV, the COW, the base, once)", n)
	}
	if err := v.e.DestroySnapshot(ctx, sr, snap.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := member.VolumeStat(ctx, sr, snap.Key); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("member's Volume.stat of a destroyed snapshot: %v", err)
	}
	// The master destroys it: gone for the member too.
	if err := v.e.VolumeDestroy(ctx, sr, vol.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := member.VolumeStat(ctx, sr, vol.Key); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("member's Volume.stat of a destroyed volume: %v", err)
	}
	if vols, err := member.SRLs(ctx, sr); err != nil || len(vols) != 0 {
		t.Fatalf("member's SR.ls after a destroy: %v %v", vols, err)
	}
}

// TestReadsWithPathsDownRunLVM: with every path down (or their state
// unknown), the reads leave the PV's headers alone (a read(2) of a
// device that queues I/O cannot be interrupted) and run lvm as a child.
func TestReadsWithPathsDownRunLVM(t *testing.T) {
	v, sr, vol := cachedEnv(t)
	ctx := context.Background()
	v.tr.health = transport.Health{Total: 2, Live: 0}
	v.sim.Reset()
	for i := 0; i < 2; i++ {
		if _, err := v.e.VolumeStat(ctx, sr, vol.Key); err != nil {
			t.Fatal(err)
		}
		if _, err := v.e.SRLs(ctx, sr); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.sim.Count(lvmtest.LVM("lvs")); n != 4 {
		t.Fatalf("2 Volume.stat and 2 SR.ls with every path down ran lvs %d times, want 4", n)
	}
	v.tr.health = transport.Health{Total: 2, Live: 1}
	v.sim.Reset()
	for i := 0; i < 2; i++ {
		if _, err := v.e.VolumeStat(ctx, sr, vol.Key); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.sim.Count(lvmtest.LVM("lvs")); n != 1 {
		t.Fatalf("2 Volume.stat with a live path ran lvs %d times, want 1", n)
	}
}

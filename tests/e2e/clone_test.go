//go:build lab

package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// Issue 17's snapshots as xapi sees them, linked clones and reset-on-boot,
// on one host against the real kernel: the engine runs in this process
// and the volumes go through a datapath like the plugin's, as in
// TestSnapshotLive (the engine in process, so that each step can be
// checked between calls). The reset-on-boot steps are the daemon's (xapi-storage-script
// main.ml, vdi_epoch_begin_impl and vdi_epoch_end_impl).

func TestCloneLive(t *testing.T) {
	nvmeLab(t)
	cloneLive(t, newSnapLab(t, newEngineLab(t, "clonelive", snapLUNSize)))
}

func TestCloneLiveISCSI(t *testing.T) {
	nvmeLab(t) // the lab's portal addresses
	cloneLive(t, newSnapLab(t, newISCSIEngineLab(t, "clonelive", snapLUNSize)))
}

// use attaches and activates volume key through the datapath for domain
// and returns its device.
func (l *snapLab) use(t *testing.T, key, domain string) string {
	t.Helper()
	uri := datapath.URI(testSRUUID, key)
	b, err := l.dp.Attach(l.ctx, uri, domain)
	if err != nil {
		t.Fatalf("attach %s: %v", key, err)
	}
	if err := l.dp.Activate(l.ctx, uri, domain); err != nil {
		t.Fatalf("activate %s: %v", key, err)
	}
	return b.Device
}

func (l *snapLab) release(t *testing.T, key, domain string) {
	t.Helper()
	uri := datapath.URI(testSRUUID, key)
	if err := l.dp.Deactivate(l.ctx, uri, domain); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Detach(l.ctx, uri, domain); err != nil {
		t.Fatal(err)
	}
}

// listed returns SR.ls by key.
func (l *snapLab) listed(t *testing.T) map[string]volume.Volume {
	t.Helper()
	vols, err := l.e.SRLs(l.ctx, l.sr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]volume.Volume{}
	for _, v := range vols {
		out[v.Key] = v
	}
	return out
}

// lvNames lists the SR's LVs.
func (l *snapLab) lvNames(t *testing.T) []string {
	t.Helper()
	lvs, err := lvm.New(l.runner, l.log).LVs(l.ctx, l.scope(), l.vg)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, lv := range lvs {
		out = append(out, lv.Name)
	}
	slices.Sort(out)
	return out
}

func cloneLive(t *testing.T, l *snapLab) {
	const (
		size = 64 << 20
		mib  = size >> 20
	)
	ctx := l.ctx
	v, _, k := l.liveVolume(t, "k", size, "7")

	// 1. K with known content; a snapshot as xapi's VDI.snapshot makes
	// it (main.ml, vdi_snapshot_impl): SR.ls lists it read-only, K's
	// size, with the keys xapi set.
	writePattern(t, k, mib, 1)
	atS := imageSum(t, k, size)
	s, err := l.e.Snapshot(ctx, l.sr, v.Key, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{"snapshot_time", time.Now().UTC().Format("20060102T15:04:05Z")}, {"is_a_snapshot", "true"},
		{"snapshot_of", v.Key}, {"content_id", ""}, {"vdi-type", "user"}} {
		if err := l.e.VolumeSet(ctx, l.sr, s.Key, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	vols := l.listed(t)
	if got := vols[s.Key]; len(vols) != 2 || got.ReadWrite || got.VirtualSize != vols[v.Key].VirtualSize ||
		got.Keys["is_a_snapshot"] != "true" || got.Keys["snapshot_of"] != v.Key || !vols[v.Key].ReadWrite {
		t.Fatalf("SR.ls after the snapshot: %+v", vols)
	}
	t.Logf("SR.ls: K %+v", vols[v.Key])
	t.Logf("SR.ls: S %+v", vols[s.Key])
	// K runs on: a quarter rewritten.
	writePattern(t, k, mib/4, 2)
	atK := imageSum(t, k, size)

	// 2. A clone of S, attached and written (pattern, then O_DIRECT
	// writes under way while S is read): neither S nor K changes.
	c, err := l.e.VolumeClone(ctx, l.sr, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	cdev := l.use(t, c.Key, "8")
	if cdev != volume.DevPath(testSRUUID, c.Key) || blockSize(t, cdev) != size {
		t.Fatalf("clone device %s of %d bytes", cdev, blockSize(t, cdev))
	}
	if imageSum(t, cdev, size) != atS {
		t.Fatal("the clone does not start as the snapshot's content")
	}
	writePattern(t, cdev, mib/2, 3)
	checkPattern(t, cdev, mib/2, 3)
	io := StartPatternIO(t, cdev, 16<<20)
	io.waitWrites(t, 8, time.Minute)
	sdev := l.use(t, s.Key, "0") // the export's read-only attach
	if imageSum(t, sdev, size) != atS {
		t.Fatal("the snapshot changed under its clone's writes")
	}
	if imageSum(t, k, size) != atK {
		t.Fatal("K changed under its snapshot's clone's writes")
	}
	l.release(t, s.Key, "0")
	stopIO(t, io, "writes to the clone")
	atC := imageSum(t, cdev, size)

	// 3. Destroying S under its clone hides it; the clone reads on.
	for range 2 {
		if err := l.e.VolumeDestroy(ctx, l.sr, s.Key); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := l.listed(t)[s.Key]; ok {
		t.Fatal("a destroyed snapshot is still listed")
	}
	if imageSum(t, cdev, size) != atC || imageSum(t, k, size) != atK {
		t.Fatal("hiding the snapshot changed the clone or K")
	}

	// 4. The clone goes: its hidden parent merges into K, live.
	l.release(t, c.Key, "8")
	if err := l.e.VolumeDestroy(ctx, l.sr, c.Key); err != nil {
		t.Fatal(err)
	}
	if got, want := l.lvNames(t), []string{volume.LVName(v.Key)}; !slices.Equal(got, want) {
		t.Fatalf("LVs after the clone's destroy: %v, want %v", got, want)
	}
	if tab := l.kTable(t, v.Key); tab[0].Type != "linear" || imageSum(t, k, size) != atK {
		t.Fatalf("K after its hidden snapshot merged: %v", tab)
	}
	l.noneSuspended(t, "after the merge")

	// 5. Reset-on-boot: the VM halts; each start clones K and runs on the
	// clone, each shutdown destroys it.
	l.release(t, v.Key, "7")
	const cob = "clone-on-boot"
	boot := func(domain string) (string, string) {
		kv, err := l.e.VolumeStat(ctx, l.sr, v.Key)
		if err != nil {
			t.Fatal(err)
		}
		if old, ok := kv.Keys[cob]; ok {
			if err := l.e.VolumeDestroy(ctx, l.sr, old); err != nil {
				t.Fatal(err)
			}
		}
		tmp, err := l.e.VolumeClone(ctx, l.sr, v.Key)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.e.VolumeSet(ctx, l.sr, v.Key, cob, tmp.Key); err != nil {
			t.Fatal(err)
		}
		return tmp.Key, l.use(t, tmp.Key, domain)
	}
	halt := func(tmp, domain string) {
		l.release(t, tmp, domain)
		if err := l.e.VolumeDestroy(ctx, l.sr, tmp); err != nil {
			t.Fatal(err)
		}
		if err := l.e.VolumeUnset(ctx, l.sr, v.Key, cob); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 2 {
		start := time.Now()
		tmp, dev := boot("9")
		t.Logf("reset-on-boot start %d: clone of an idle 64 MiB volume in %s", round+1, time.Since(start))
		if imageSum(t, dev, size) != atK {
			t.Fatalf("start %d: the VM does not see K's content", round+1)
		}
		if vols := l.listed(t); len(vols) != 2 || !strings.Contains(vols[v.Key].Keys[cob], tmp) {
			t.Fatalf("start %d: SR.ls %+v", round+1, vols)
		}
		writePattern(t, dev, mib/2, uint32(10+round))
		checkPattern(t, dev, mib/2, uint32(10+round))
		start = time.Now()
		halt(tmp, "9")
		t.Logf("reset-on-boot shutdown %d: destroy and merge in %s", round+1, time.Since(start))
		if got, want := l.lvNames(t), []string{volume.LVName(v.Key)}; !slices.Equal(got, want) {
			t.Fatalf("LVs after shutdown %d: %v", round+1, got)
		}
	}
	k = l.use(t, v.Key, "7")
	if imageSum(t, k, size) != atK {
		t.Fatal("the writes of a reset-on-boot VM reached K")
	}
	l.release(t, v.Key, "7")
	l.noneSuspended(t, "at the end")
	if err := l.e.VolumeDestroy(ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
}

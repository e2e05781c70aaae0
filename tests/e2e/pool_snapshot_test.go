//go:build lab

package e2e

// Issue 17's control channel in the pool lab: a VM on B (the member)
// writes its disk; the master snapshots it and deletes the snapshot, and
// every device step runs on B through sanvol's XenAPI host plugin there
// (volume/remote.go, plugin/hostplugin.go), called with host.call_plugin
// through the simulated xapi. The snapshot is not a method file yet, so
// the master's engine runs in this process on A, built the way the
// plugin builds it (its Remote included).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/tests/xapisim"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

func TestPoolSnapshotNVMe(t *testing.T) {
	l := newPoolLab(t)
	l.snapshotScenario(plugin.TypeNVMeTCP, l.nvmeTarget("poolsnap"))
}

func TestPoolSnapshotISCSI(t *testing.T) {
	l := newPoolLab(t)
	l.snapshotScenario(plugin.TypeISCSI, l.iscsiTarget("poolsnap"))
}

const (
	poolSnapSize = 64 << 20
	poolSnapSpan = 48 << 20
)

// waitLoad waits until B's writer on dev made n more writes.
func (l *poolLab) waitLoad(dev string, n int) {
	t := l.t
	t.Helper()
	st, err := l.b.Load("writes", dev, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, fmt.Sprintf("%d more writes on B", n), 3*time.Minute, func() (bool, string) {
		now, err := l.b.Load("writes", dev, 0)
		if err != nil {
			t.Fatal(err)
		}
		return now.Writes >= st.Writes+n, fmt.Sprintf("%d writes", now.Writes-st.Writes)
	})
}

// stopLoad stops B's writer: 0 write errors, and every chunk reads back
// on B as last written. It returns the writer's numbers.
func (l *poolLab) stopLoad(dev, step string) loadResp {
	t := l.t
	t.Helper()
	st, err := l.b.Load("stop", dev, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Errors) > 0 {
		t.Fatalf("%s: %d write errors on B, first: %s", step, len(st.Errors), st.Errors[0])
	}
	if st.Verify != "" {
		t.Fatalf("%s: %s", step, st.Verify)
	}
	t.Logf("%s: %d writes on B, 0 errors, longest write %s, data verified", step, st.Writes, st.MaxLatency)
	return st
}

// patternCut reads the first chunks MiB of dev on A and checks they are
// the writer's pattern at one instant of its sequential writes: every
// 4 KiB block is one the writer wrote, blocks before the cut from pass p,
// blocks from the cut on from pass p-1. The cut may fall inside a chunk:
// a write in flight at the snapshot instant may reach the image in part
// (device-mapper maps a bio larger than a target's max_io_len, 8 KiB for
// a snapshot target, one piece at a time and resubmits the remainder:
// drivers/md/dm.c, dm_split_and_process_bio; a remainder resubmitted
// after the switch's suspend goes to the new table), as a power cut
// would leave it; a chunk torn any other way fails with its blocks'
// passes. It returns the pass, the
// chunk of the cut and the image's checksum, which must equal the
// checksum of that content as computed from the pattern.
func patternCut(t *testing.T, dev string, chunks int) (pass uint32, cut int, sum string) {
	t.Helper()
	const block = 4096
	var passes []uint32 // one per block
	got, want := sha256.New(), sha256.New()
	exp := make([]byte, block)
	readDirect(t, dev, int64(chunks)*ioChunk, func(off int64, buf []byte) {
		c := int(off / ioChunk)
		var bp []uint32
		for b := 0; b < len(buf); b += block {
			p := uint32(binary.LittleEndian.Uint64(buf[b:]) >> 40)
			// fillChunk's words for this block: pass, chunk, offset.
			seed := uint64(p)<<40 | uint64(c)<<20
			for i := 0; i < block; i += 8 {
				binary.LittleEndian.PutUint64(exp[i:], seed|uint64(b+i))
			}
			if p == 0 || !bytes.Equal(exp, buf[b:b+block]) {
				t.Fatalf("%s: chunk %d, block at %d: not one the writer wrote (first word %#x)", dev, c, b, binary.LittleEndian.Uint64(buf[b:]))
			}
			bp = append(bp, p)
			want.Write(exp)
		}
		passes = append(passes, bp...)
		got.Write(buf)
	})
	perChunk := ioChunk / block
	pass, cutBlock := passes[0], len(passes)
	for i, p := range passes {
		if p != pass {
			cutBlock = i
			break
		}
	}
	for i := cutBlock; i < len(passes); i++ {
		if passes[i] != pass-1 {
			c := i / perChunk
			t.Fatalf("%s: no single instant of the writes: block %d of chunk %d is from pass %d, the cut at block %d is pass %d then %d; chunk %d's blocks: %v",
				dev, i%perChunk, c, passes[i], cutBlock, pass, pass-1, c, passes[c*perChunk:(c+1)*perChunk])
		}
	}
	cut = cutBlock / perChunk
	if cutBlock%perChunk != 0 {
		t.Logf("%s: the write in flight at the snapshot instant reached the image in part: chunk %d, %d of %d KiB from pass %d",
			dev, cut, cutBlock%perChunk*block/1024, ioChunk/1024, pass)
	}
	if s, w := hex.EncodeToString(got.Sum(nil)), hex.EncodeToString(want.Sum(nil)); s != w {
		t.Fatalf("%s: checksum %s, the pattern at that instant %s", dev, s, w)
	}
	return pass, cut, hex.EncodeToString(got.Sum(nil))
}

// poolEngine is the master's engine, as plugin.Services builds it: its
// Remote reaches B through XenAPI (the simulator on A) and B's plugin.
func poolEngine(t *testing.T, srType string) *volume.Engine {
	t.Helper()
	deps := plugin.NewDeps("lab", os.Stderr)
	svc, err := deps.Services(srType)
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Engine()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// onA reads an LV of the SR on A with f, activated for the read only.
func (l *poolLab) onA(srUUID, lv string, f func(dev string)) {
	t := l.t
	t.Helper()
	a, err := volume.LoadAttached(host.NewRoot("/"), srUUID)
	if err != nil {
		t.Fatal(err)
	}
	log := zap.NewNop()
	lc := lvm.New(host.NewExecRunner(log), log)
	s := lvm.Scope{Devices: []string{a.Device}}
	if err := lc.Activate(l.ctx, s, a.VG, lv); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := lc.Deactivate(l.ctx, s, a.VG, lv); err != nil {
			t.Errorf("deactivate %s on A: %v", lv, err)
		}
	}()
	f(lvm.DevicePath(a.VG, lv))
}

// tableOnB is `dmsetup table` of a device on B.
func (l *poolLab) tableOnB(name string) string {
	out, err := l.b.Exec("dmsetup", "table", name)
	if err != nil {
		l.t.Fatalf("dmsetup table %s on B: %v", name, err)
	}
	return strings.TrimSpace(out)
}

// killB is B dying as far as the pool lab can make it: the plugin call
// in flight was SIGKILLed, then its device-mapper devices, SR
// attachments and /run go as in a reboot (the guest itself keeps
// running, since it serves the lab's agent), xapi finds it offline and
// the admin declares it dead, which resets its VMs.
func (l *poolLab) killB(ps *xapisim.PoolSR, srUUID, key string) {
	t := l.t
	t.Helper()
	l.pool.Down(1, true)
	dms, err := l.b.Exec("dmsetup", "ls")
	if err != nil {
		t.Fatal(err)
	}
	// K first: it holds the layers and LVs below it.
	ours := []string{volume.DevName(srUUID, key)}
	var lvs []string
	for _, line := range strings.Split(dms, "\n") {
		name, _, _ := strings.Cut(line, "\t")
		switch {
		case strings.HasPrefix(name, "sanvol-"+srUUID) && name != ours[0]:
			ours = append(ours, name)
		case strings.HasPrefix(name, "VG_sanvol--"):
			lvs = append(lvs, name)
		}
	}
	for _, name := range append(ours, lvs...) {
		if _, err := l.b.Exec("dmsetup", "remove", "--retry", name); err != nil {
			t.Fatalf("B's device %s: %v", name, err)
		}
	}
	for _, argv := range [][]string{{"nvme", "disconnect-all"}, {"iscsiadm", "-m", "node", "-u"}, {"multipath", "-F"}, {"rm", "-rf", "/run/sanvol"}} {
		_, _ = l.b.Exec(argv...)
	}
	l.pool.DeclareDead(1)
	ps.On(1).Handle = "" // its PBD went with it
}

// diskOnB is how the snapshot scenarios start: an SR of srType plugged
// on both hosts, the master's engine (as the plugin builds it), and a
// 64 MiB volume named name running on B as domain 5.
func (l *poolLab) diskOnB(srType string, cfg map[string]string, name string) (*xapisim.PoolSR, *volume.Engine, schema.Volume, *xapisim.Attachment) {
	t, ctx := l.t, l.ctx
	t.Helper()
	ps := l.create(srType, cfg)
	e := poolEngine(t, srType)
	v, err := ps.Master().VDICreate(ctx, name, "", poolSnapSize, false)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := ps.On(1).VMStart(ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	return ps, e, v, onB
}

// snapshotScenario: a VM on B under O_DIRECT writes. Round 1: the master
// snapshots its disk (B switches), reads the snapshot's image on A, and
// deletes the snapshot (B merges live). Round 2: B dies while it merges
// (its plugin killed mid-call, its devices gone); the VM restarts on A,
// where the merge resumes from the tags.
func (l *poolLab) snapshotScenario(srType string, cfg map[string]string) {
	t, ctx := l.t, l.ctx
	ps, e, v, onB := l.diskOnB(srType, cfg, "pool snap")
	sr := ps.Master().UUID
	k := onB.Device
	if k != volume.DevPath(sr, v.Key) {
		t.Fatalf("B attached %s, want sanvol's device", k)
	}
	chunks := int(poolSnapSpan / ioChunk)
	base := volume.LVName(v.Key)

	// Round 1. The writer covers its span once, then the snapshot.
	if _, err := l.b.Load("start", k, poolSnapSpan); err != nil {
		t.Fatal(err)
	}
	l.waitLoad(k, chunks+4)
	start := time.Now()
	s1, err := e.Snapshot(ctx, ps.Master().Handle, v.Key, "s1", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot of a 64 MiB volume running on B, from A: %s", time.Since(start))
	if tab := l.tableOnB(volume.DevName(sr, v.Key)); !strings.Contains(tab, " snapshot ") {
		t.Fatalf("K's table on B after the snapshot: %q", tab)
	}
	l.waitLoad(k, 8)
	// S1's image is the base, frozen: read on A, it is the writer's
	// data at one instant, by checksum, and stays so while B writes on.
	var sum string
	l.onA(sr, base, func(dev string) {
		pass, cut, s := patternCut(t, dev, chunks)
		sum = s
		t.Logf("S1's image on A: the writes up to pass %d chunk %d, sha256 %s", pass, cut, s)
	})
	l.waitLoad(k, 8)
	l.onA(sr, base, func(dev string) {
		if got := digest(t, dev, poolSnapSpan); got != sum {
			t.Fatalf("S1's image changed while B wrote: %s -> %s", sum, got)
		}
	})
	start = time.Now()
	if err := e.DeleteSnapshot(ctx, ps.Master().Handle, s1.Key); err != nil {
		t.Fatal(err)
	}
	t.Logf("delete (live merge on B through its host plugin): %s", time.Since(start))
	l.waitLoad(k, 8)
	l.stopLoad(k, "round 1: snapshot and merge on B")
	if tab := l.tableOnB(volume.DevName(sr, v.Key)); !strings.Contains(tab, " linear ") {
		t.Fatalf("K's table on B after the merge: %q", tab)
	}
	if lvs := lvNames(t, localHost{}, "VG_sanvol-"+sr); !slices.Equal(lvs, []string{base}) {
		t.Fatalf("LVs after the merge: %v, want the base only", lvs)
	}

	// Round 2: a snapshot with the writer on, then its delete; B dies
	// while the merge runs.
	if _, err := l.b.Load("start", k, poolSnapSpan); err != nil {
		t.Fatal(err)
	}
	l.waitLoad(k, 4)
	s2, err := e.Snapshot(ctx, ps.Master().Handle, v.Key, "s2", "")
	if err != nil {
		t.Fatal(err)
	}
	l.waitLoad(k, 2*chunks) // a COW full of changes: a merge that takes a while
	b := l.pool.Hosts[1]
	var killed bool
	b.HostPlugin = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
		if !killed && strings.Contains(call, "<methodName>"+plugin.HostFnWaitMerged+"</methodName>") {
			killed = true
			return l.b.PluginKilled(path, call, time.Second)
		}
		return l.b.Plugin(ctx, path, call)
	}
	err = e.DeleteSnapshot(ctx, ps.Master().Handle, s2.Key)
	if !killed || host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("delete with B's plugin killed mid-merge: %v (killed %t), want Unreachable", err, killed)
	}
	t.Logf("B's plugin killed in wait_merged: %v", err)
	status, _ := l.b.Exec("dmsetup", "status", volume.DevName(sr, v.Key))
	t.Logf("K's merge on B when B died: %s", strings.TrimSpace(status))
	// The VM dies with B: its writes so far are what K must hold.
	l.stopLoad(k, "round 2: writes on B until it died")
	atDeath := digestOnB(t, l.b, k, poolSnapSize)
	l.killB(ps, sr, v.Key)
	b.HostPlugin = l.b.Plugin
	tags := mustOutput(t, "lvs", "--readonly", "--noheadings", "-o", "lv_tags", "VG_sanvol-"+sr+"/"+base)
	t.Logf("the base's tags after B died: %s", strings.TrimSpace(tags))

	// The VM restarts on A: its attach builds K's stack from the tags,
	// merging; the retried delete finishes the merge there.
	onA, err := ps.Master().VMStart(ctx, v.Key, "9")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := e.DeleteSnapshot(ctx, ps.Master().Handle, s2.Key); err != nil {
		t.Fatalf("the retried delete on A: %v", err)
	}
	t.Logf("merge resumed and finished on A: %s", time.Since(start))
	if got := digest(t, onA.Device, poolSnapSize); got != atDeath {
		t.Fatalf("K on A after the merge %s, at B's death %s", got, atDeath)
	}
	tab, err := run("dmsetup", "table", volume.DevName(sr, v.Key))
	if err != nil || !strings.Contains(tab, " linear ") {
		t.Fatalf("K's table on A after the merge: %q %v", tab, err)
	}
	if lvs := lvNames(t, localHost{}, "VG_sanvol-"+sr); !slices.Equal(lvs, []string{base}) {
		t.Fatalf("LVs after the resumed merge: %v, want the base only", lvs)
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}

	// B holds nothing of the SR any more: its unplug is the daemon's
	// own success, and the SR can go.
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps)
}

// digestOnB hashes the first n bytes of dev on B, read with O_DIRECT.
func digestOnB(t *testing.T, b *member, dev string, n int64) string {
	t.Helper()
	out, err := b.Exec("sh", "-c", fmt.Sprintf("dd if=%s iflag=direct bs=1M count=%d status=none | sha256sum", dev, n>>20))
	if err != nil {
		t.Fatalf("checksum of %s on B: %v", dev, err)
	}
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("checksum of %s on B: %q", dev, out)
	}
	return f[0]
}

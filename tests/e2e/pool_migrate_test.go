//go:build lab

package e2e

// Issue 17's "a VM migrated while on an overlay and while merging", in
// the pool lab: a VM on B writes its disk, which has a snapshot overlay,
// and is live-migrated to A in xenopsd's order (xapisim's Migrate: attach
// on A, deactivate on B, activate on A, deactivate and detach on B; xen-api
// ocaml/xenopsd/lib/xenops_server.ml VM_receive_memory and VM_migrate).
// The VM on B keeps writing after A's attach, as the real one does until
// its domain is suspended: exceptions A must not miss. The master's
// engine runs in this process on A, built as the plugin builds it.

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/volume"
)

func TestPoolMigrateOverlayNVMe(t *testing.T) {
	l := newPoolLab(t)
	l.migrateScenario(plugin.TypeNVMeTCP, l.nvmeTarget("poolmig"), false)
}

func TestPoolMigrateMergingNVMe(t *testing.T) {
	l := newPoolLab(t)
	l.migrateScenario(plugin.TypeNVMeTCP, l.nvmeTarget("poolmigm"), true)
}

func TestPoolMigrateOverlayISCSI(t *testing.T) {
	l := newPoolLab(t)
	l.migrateScenario(plugin.TypeISCSI, l.iscsiTarget("poolmig"), false)
}

func TestPoolMigrateMergingISCSI(t *testing.T) {
	l := newPoolLab(t)
	l.migrateScenario(plugin.TypeISCSI, l.iscsiTarget("poolmigm"), true)
}

// throttleB sets dm-snapshot's kcopyd throttle on B (the percentage of
// time its copies may take, module parameter snapshot_copy_throttle of
// dm-snap.c): a low one keeps B's merge running long enough to migrate
// in the middle of it. A whole-chunk write needs no copy, so B's writer
// is not slowed.
func (l *poolLab) throttleB(pct string) {
	if _, err := l.b.Exec("sh", "-c", "echo "+pct+" > /sys/module/dm_snapshot/parameters/snapshot_copy_throttle"); err != nil {
		l.t.Logf("cannot throttle B's snapshot copies: %v", err)
	}
}

// migrateScenario: VM on B writing, a snapshot S; with merging, the
// delete of S starts (B merges) and the VM migrates mid-merge, else it
// migrates with S in place and S is deleted on A after. Checked: A's
// attach is a placeholder, K on A right after the migration is K on B
// when its domain stopped (sha256), S's image never changes, every write
// on A reads back, the merge completes once and no LV is left but the
// base.
func (l *poolLab) migrateScenario(srType string, cfg map[string]string, merging bool) {
	t, ctx := l.t, l.ctx
	ps, e, v, onB := l.diskOnB(srType, cfg, "pool migrate")
	sr := ps.Master().UUID
	k := onB.Device
	kName := volume.DevName(sr, v.Key)
	chunks := int(poolSnapSpan / ioChunk)
	base := volume.LVName(v.Key)
	if _, err := l.b.Load("start", k, poolSnapSpan); err != nil {
		t.Fatal(err)
	}
	l.waitLoad(k, chunks+4)
	s, err := e.Snapshot(ctx, ps.Master().Handle, v.Key, "s", "")
	if err != nil {
		t.Fatal(err)
	}
	l.waitLoad(k, 8)
	var sSum string
	l.onA(sr, base, func(dev string) {
		pass, cut, sum := patternCut(t, dev, chunks)
		sSum = sum
		t.Logf("S's image on A: the writes up to pass %d chunk %d, sha256 %s", pass, cut, sum)
	})

	// With merging: a COW full of changes, B's copies throttled, and the
	// delete started; the migration begins once B merges.
	var deleted chan error
	if merging {
		l.waitLoad(k, 2*chunks)
		l.throttleB("3")
		defer l.throttleB("100")
		deleted = make(chan error, 1)
		start := time.Now()
		go func() { deleted <- e.DeleteSnapshot(ctx, ps.Master().Handle, s.Key) }()
		defer func() { t.Logf("delete of S, started while B merged: %s", time.Since(start)) }()
		waitFor(t, "B merging S", 2*time.Minute, func() (bool, string) {
			tab := l.tableOnB(kName)
			return strings.Contains(tab, " snapshot-merge "), tab
		})
		status, _ := l.b.Exec("dmsetup", "status", kName)
		t.Logf("B merges: %s", strings.TrimSpace(status))
	}

	// xenopsd's order, with the VM's side of it: B keeps writing after
	// A's attach; its domain stops (the writer, checked) right before
	// B's deactivate.
	a, b := l.pool.Hosts[0], l.pool.Hosts[1]
	var atSuspend, bAfter string
	var attached bool
	a.Exec = func(ctx context.Context, script string, stdin []byte) (plugin.Outcome, error) {
		out, err := plugin.Run(ctx, script, stdin)
		if filepath.Base(script) == "Datapath.attach" && err == nil && !attached {
			attached = true
			tab := mustOutput(t, "dmsetup", "table", kName)
			if !strings.Contains(tab, " error") {
				t.Errorf("K's table on A after its attach: %q, want the placeholder", tab)
			}
			t.Logf("A attached K: %s", strings.TrimSpace(tab))
			l.waitLoad(k, chunks/2) // new exceptions on B after A's attach
		}
		return out, err
	}
	var deactivates int
	b.Exec = func(ctx context.Context, script string, stdin []byte) (plugin.Outcome, error) {
		if filepath.Base(script) != "Datapath.deactivate" {
			return l.b.Invoke(ctx, script, stdin)
		}
		deactivates++
		if deactivates == 1 {
			l.stopLoad(k, "on B until its domain stopped")
			atSuspend = digestOnB(t, l.b, k, poolSnapSize)
		}
		out, err := l.b.Invoke(ctx, script, stdin)
		if deactivates == 1 {
			bAfter = l.tableOnB(kName)
			status, _ := l.b.Exec("dmsetup", "status", kName)
			t.Logf("K on B after its deactivate: %s (%s)", bAfter, strings.TrimSpace(status))
		}
		return out, err
	}
	onA, tm, err := ps.Migrate(ctx, onB, 1, 0, "6")
	a.Exec, b.Exec = nil, l.b.Invoke
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migrated B to A; datapath share of the downtime %s", tm.Activated.Sub(tm.Suspended).Round(time.Millisecond))
	if !attached || deactivates < 2 {
		t.Fatalf("the migration attached on A %t, deactivated on B %d times", attached, deactivates)
	}
	if merging && strings.Contains(bAfter, "snapshot-merge") {
		t.Fatalf("B still merges after its deactivate: %q", bAfter)
	}
	if merging && !strings.Contains(bAfter, " snapshot ") {
		t.Fatalf("B's merge was over before the migration (K on B %q): nothing migrated mid-merge", bAfter)
	}
	if got := digest(t, onA.Device, poolSnapSize); got != atSuspend {
		t.Fatalf("K on A after the migration %s, on B when its domain stopped %s", got, atSuspend)
	}
	t.Logf("K on A after the migration = K on B when its domain stopped: %s", atSuspend)
	if out, _ := l.b.Exec("dmsetup", "ls"); strings.Contains(out, "sanvol-"+sr) {
		t.Fatalf("B still has devices of the SR after the migration: %s", out)
	}

	// The VM writes on A, over the whole span.
	load := StartPatternIO(t, onA.Device, poolSnapSpan)
	load.waitWrites(t, chunks+4, 3*time.Minute)
	if !merging {
		if got := digest(t, lvm.DevicePath("VG_sanvol-"+sr, base), poolSnapSpan); got != sSum {
			t.Fatalf("S's image after the migration %s, at the snapshot %s", got, sSum)
		}
		tab := mustOutput(t, "dmsetup", "table", kName)
		if !strings.Contains(tab, " snapshot ") {
			t.Fatalf("K's table on A with S: %q", tab)
		}
		start := time.Now()
		if err := e.DeleteSnapshot(ctx, ps.Master().Handle, s.Key); err != nil {
			t.Fatal(err)
		}
		t.Logf("delete of S (live merge on A): %s", time.Since(start))
	} else {
		select {
		case err := <-deleted:
			if err != nil {
				t.Fatalf("the delete started while K merged on B: %v", err)
			}
		case <-time.After(5 * time.Minute):
			t.Fatal("the delete started on B did not end")
		}
	}
	load.waitWrites(t, 8, time.Minute)
	stopIO(t, load, "on A, every chunk rewritten, through the merge")
	if tab := mustOutput(t, "dmsetup", "table", kName); !strings.Contains(tab, " linear ") {
		t.Fatalf("K's table on A after the merge: %q", tab)
	}
	if lvs := lvNames(t, localHost{}, "VG_sanvol-"+sr); !slices.Equal(lvs, []string{base}) {
		t.Fatalf("LVs after the merge: %v, want the base only", lvs)
	}
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps)
}

//go:build lab

package e2e

// Xen Orchestra's backup pattern on the pool (issue 17, "Must show"): the
// VM runs on B (the member) and writes its disk without a pause; ten
// times in a row the master snapshots the disk, the snapshot is exported
// from A (XO reads the snapshot VM's disk from the host its HTTP request
// reaches, usually the master: a dom0 attach of the snapshot there), and
// the previous round's snapshot is deleted (a live merge on B). Every
// exported image must be the disk's content at one instant, the base must
// hold that content once the previous snapshot merged into it, no LV may
// be left behind, and the writer must see no error.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/volume"
)

func TestPoolXOBackupNVMe(t *testing.T) {
	l := newPoolLab(t)
	l.xoScenario(plugin.TypeNVMeTCP, l.nvmeTarget("poolxo"))
}

func TestPoolXOBackupISCSI(t *testing.T) {
	l := newPoolLab(t)
	l.xoScenario(plugin.TypeISCSI, l.iscsiTarget("poolxo"))
}

func (l *poolLab) xoScenario(srType string, cfg map[string]string) {
	const rounds = 10
	t, ctx := l.t, l.ctx
	ps, e, v, onB := l.diskOnB(srType, cfg, "pool xo")
	sr := ps.Master().UUID
	k := onB.Device
	chunks := int(poolSnapSpan / ioChunk)
	base := volume.LVName(v.Key)
	if _, err := l.b.Load("start", k, poolSnapSpan); err != nil {
		t.Fatal(err)
	}
	// One whole pass first, so that every chunk of an image is the
	// writer's.
	l.waitLoad(k, chunks+4)

	var prev string
	var snapTimes, exportTimes, delTimes []time.Duration
	for r := 1; r <= rounds; r++ {
		start := time.Now()
		s, err := e.Snapshot(ctx, ps.Master().Handle, v.Key, fmt.Sprintf("xo-%d", r), "")
		if err != nil {
			t.Fatalf("round %d: snapshot: %v", r, err)
		}
		snapTimes = append(snapTimes, time.Since(start))
		l.waitLoad(k, 4)

		// The export, on A: the snapshot attached to dom0 and read whole.
		start = time.Now()
		exp, err := ps.Master().VMStart(ctx, s.Key, "u0_xo_export")
		if err != nil {
			t.Fatalf("round %d: attaching the snapshot on A: %v", r, err)
		}
		pass, cut, sum := patternCut(t, exp.Device, chunks)
		if err := ps.Master().VMShutdown(ctx, exp); err != nil {
			t.Fatalf("round %d: detaching the snapshot on A: %v", r, err)
		}
		exportTimes = append(exportTimes, time.Since(start))
		l.waitLoad(k, 4)

		if prev != "" {
			start = time.Now()
			if err := e.DeleteSnapshot(ctx, ps.Master().Handle, prev); err != nil {
				t.Fatalf("round %d: delete of the previous snapshot: %v", r, err)
			}
			delTimes = append(delTimes, time.Since(start))
			// The previous snapshot's changes are in the base now: it
			// reads as the image just exported.
			l.onA(sr, base, func(dev string) {
				if got := digest(t, dev, poolSnapSpan); got != sum {
					t.Fatalf("round %d: the base after the merge is not the exported image", r)
				}
			})
		}
		want := []string{base, "s-" + s.Key}
		slices.Sort(want)
		if got := lvNames(t, localHost{}, "VG_sanvol-"+sr); !slices.Equal(got, want) {
			t.Fatalf("round %d: LVs %v, want %v", r, got, want)
		}
		if tab := l.tableOnB(volume.DevName(sr, v.Key)); !strings.Contains(tab, " snapshot ") {
			t.Fatalf("round %d: K's table on B: %q", r, tab)
		}
		t.Logf("round %d: snapshot %s exported from A: the writes up to pass %d chunk %d, sha256 %.12s", r, s.Key, pass, cut, sum)
		prev = s.Key
	}

	start := time.Now()
	if err := e.DeleteSnapshot(ctx, ps.Master().Handle, prev); err != nil {
		t.Fatal(err)
	}
	delTimes = append(delTimes, time.Since(start))
	l.waitLoad(k, 4)
	l.stopLoad(k, fmt.Sprintf("%d backup rounds", rounds))
	if tab := l.tableOnB(volume.DevName(sr, v.Key)); !strings.Contains(tab, " linear ") {
		t.Fatalf("K's table on B after the last merge: %q", tab)
	}
	if got := lvNames(t, localHost{}, "VG_sanvol-"+sr); !slices.Equal(got, []string{base}) {
		t.Fatalf("LVs at the end: %v, want the base only", got)
	}
	slices.Sort(snapTimes)
	slices.Sort(exportTimes)
	slices.Sort(delTimes)
	t.Logf("%d rounds with the VM on B: snapshot median %s, export on A median %s, delete median %s",
		rounds, snapTimes[rounds/2], exportTimes[rounds/2], delTimes[len(delTimes)/2])
	if err := ps.On(1).VMShutdown(ctx, onB); err != nil {
		t.Fatal(err)
	}
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps)
}

//go:build lab

package e2e

// TestDemoPool is the second half of `make demo` (tests/lab/run.sh demo): a
// two-host pool told as the xe commands an admin would type, each line
// marked with the host it runs on. A shared nvmetcp SR is created on the
// master A and plugged on both hosts, a VM starts on the member B and
// writes, is live-migrated to A, and A reads what it wrote. It reuses the
// pool scenarios' lab (pool_test.go); in a one-guest run it skips.

import (
	"strings"
	"testing"
	"time"
)

func TestDemoPool(t *testing.T) {
	l := newPoolLab(t)
	d := &demo{t: t, start: time.Now()}
	ctx := l.ctx

	d.chapter("Two hosts, one array: A (pool master, 10.99.0.1) serves an NVMe/TCP subsystem; B (member, 10.99.0.20)")
	cfg := l.nvmeTarget("demo")
	d.say("subsystem %s on portals %s", cfg["nqn"], strings.ReplaceAll(cfg["target"], ",", " and "))
	d.shell("cat", "/etc/xensource/pool.conf")
	role, err := l.b.Exec("cat", "/etc/xensource/pool.conf")
	if err != nil {
		t.Fatal(err)
	}
	d.say("[B] $ cat /etc/xensource/pool.conf\n  %s", strings.TrimSpace(role))

	d.chapter("xe sr-create shared=true on A: xapi plugs a PBD on each host")
	ps := l.create("nvmetcp", cfg)

	d.chapter("A VDI, made on the master; B sees it at its next scan")
	v, err := ps.Master().VDICreate(ctx, "demo disk", "", 64<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	l.scanFor(ps, 1, v.Key)

	d.chapter("A VM starts on the member B and writes 16 MiB (O_DIRECT pattern)")
	onB, err := ps.On(1).VMStart(ctx, v.Key, "5")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.b.Pattern(onB.Device, 1, 16, false); err != nil {
		t.Fatal(err)
	}
	d.say("[B] wrote pattern 1 to %s", onB.Device)

	d.chapter("xe vm-migrate live=true: B to A, in xenopsd's order")
	onA, tm, err := ps.Migrate(ctx, onB, 1, 0, "6")
	if err != nil {
		t.Fatal(err)
	}
	if err := directIO(onA.Device, 16, 1, true); err != nil {
		t.Fatalf("A reads what the VM wrote on B: %v", err)
	}
	d.say("[A] read back 16 MiB from %s: the pattern written on B, intact", onA.Device)
	d.say("the datapath's share of the downtime: %s (deactivate on B, then activate on A)",
		tm.Activated.Sub(tm.Suspended).Round(time.Millisecond))

	d.chapter("Clean up: vm-shutdown on A, vdi-destroy, pbd-unplug on B then A, sr-destroy")
	if err := ps.Master().VMShutdown(ctx, onA); err != nil {
		t.Fatal(err)
	}
	if err := ps.Master().VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	l.destroy(ps)
	d.chapter("Done")
}

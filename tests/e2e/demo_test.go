//go:build lab

package e2e

// TestDemo is `make demo`: a whole nvmetcp SR lifecycle, then an iscsi-ng
// one, driven through the xapi simulator, told as the xe commands an admin
// would type, each with a path cut and restored under a running writer. Without a sanvol binary it shows
// what the lab itself proves.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/tests/xapisim"
)

type demo struct {
	t     *testing.T
	start time.Time
}

func (d *demo) chapter(title string) {
	fmt.Printf("\n== %s  (t+%s)\n", title, time.Since(d.start).Round(time.Second))
}

func (d *demo) say(format string, a ...any) { fmt.Printf(format+"\n", a...) }

// shell shows a command and its output, as on an admin's terminal.
func (d *demo) shell(name string, args ...string) {
	d.say("$ %s %s", name, strings.Join(args, " "))
	out, err := run(name, args...)
	if strings.TrimSpace(out) == "" {
		out = "(nothing)"
	}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("  %s", l)
	}
	if err != nil {
		d.t.Fatal(err)
	}
}

func TestDemo(t *testing.T) {
	d := &demo{t: t, start: time.Now()}
	ctx := context.Background()

	d.chapter("The storage array: an NVMe/TCP subsystem with two portals")
	tgt, err := labtarget.NewNVMe(ctx, labtarget.NVMeOptions{Name: "demo", Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tgt.Close() })
	ns, _ := tgt.Namespace(1)
	d.say("subsystem %s, namespace 1 (1 GiB, NGUID %s)", tgt.NQN, ns.NGUID)
	d.say("portals %s:%s and %s:%s", labtarget.Addr1, tgt.Svc, labtarget.Addr2, tgt.Svc)

	if SanvolBinary() == "" {
		d.say("\n(no sanvol binary was built for this run: showing the lab with the system tools)")
		demoSystemTools(d, tgt)
		return
	}

	d.chapter("Install sanvol on the host")
	d.shell(SanvolBinary(), "install", "--root", "/")

	sim := xapisim.New(xapisim.DefaultRoot, os.Stdout)
	serveXapi(t, sim)
	sim.Register(ctx)

	d.chapter("Create the shared SR (xapi then plugs it on the host)")
	sr, err := sim.SRCreate(ctx, "nvmetcp", "Lab NVMe SR", "demo", map[string]string{
		"target": labtarget.Addr1 + "," + labtarget.Addr2,
		"nqn":    tgt.NQN,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.shell("nvme", "list-subsys")

	d.chapter("Create a virtual disk")
	v, err := sr.VDICreate(ctx, "demo disk", "", 256<<20, false)
	if err != nil {
		t.Fatal(err)
	}

	d.chapter("Start a VM using it (domain 7)")
	a, err := sr.VMStart(ctx, v.Key, "7")
	if err != nil {
		t.Fatal(err)
	}

	d.chapter("Cut one path while the VM writes")
	load := StartIO(t, a.Device, 64<<20)
	load.waitWrites(t, 8, time.Minute)
	d.say("# the VM writes %d KiB O_DIRECT chunks to %s; the array drops portal %s", flowChunk>>10, a.Device, labtarget.Addr2)
	if err := tgt.UnlinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the path through 127.0.0.2 to leave live", time.Minute, func() (bool, string) {
		c := nvmeCtrls(tgt.NQN)
		return liveCount(c) == 1, fmt.Sprint(c)
	})
	load.waitWrites(t, 16, 2*time.Minute)
	nsID := sr.Config["namespace"]
	d.say("# one path of two: the SR stays Healthy, so the scan keeps working, and the PBD tells XO and xe the path count")
	scanKeepsPassing(t, ctx, sr, nsID, "[1, 2]")
	d.say("# the array brings the portal back")
	if err := tgt.LinkPort(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	back := waitFor(t, "both paths live again", 2*time.Minute, func() (bool, string) {
		c := nvmeCtrls(tgt.NQN)
		return liveCount(c) == 2, fmt.Sprint(c)
	})
	load.waitWrites(t, 16, 2*time.Minute)
	st := load.Stop()
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
	d.say("# path back after %s; %d writes, %d failed, worst latency %s; data read back intact",
		back.Round(100*time.Millisecond), st.Writes, len(st.Errors), st.MaxLatency.Round(time.Millisecond))
	if len(st.Errors) > 0 {
		t.Fatalf("writes failed during the cut: %v", st.Errors[0])
	}
	scanKeepsPassing(t, ctx, sr, nsID, "[2, 2]")

	d.chapter("Shut the VM down, grow and delete the disk")
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := sr.VDIResize(ctx, v.Key, 512<<20); err != nil {
		t.Fatal(err)
	}
	if err := sr.VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := sr.Scan(ctx); err != nil {
		t.Fatal(err)
	}

	d.chapter("Unplug and destroy the SR")
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	wantNoPathKeys(t, sr, nsID)
	if err := sr.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	d.shell("nvme", "list-subsys")

	demoISCSI(d, ctx, sim)
	d.chapter("Done")
}

// demoSystemTools shows two-path NVMe/TCP and a path cut with nothing but
// nvme-cli, for trees without a sanvol binary.
func demoSystemTools(d *demo, tgt *labtarget.NVMeTarget) {
	t := d.t
	d.chapter("Connect both portals with nvme-cli")
	dev := connectNVMe(t, tgt)
	d.shell("nvme", "list-subsys")
	d.chapter("Cut one path while writing")
	cutWithIO(t, dev,
		func() error { d.say("# unlink portal %s", labtarget.Addr2); return tgt.UnlinkPort(labtarget.Addr2) },
		func() error { d.say("# relink portal %s", labtarget.Addr2); return tgt.LinkPort(labtarget.Addr2) },
		func() (bool, string) { c := nvmeCtrls(tgt.NQN); return liveCount(c) == 1, fmt.Sprint(c) },
		func() (bool, string) { c := nvmeCtrls(tgt.NQN); return liveCount(c) == 2, fmt.Sprint(c) })
	d.shell("nvme", "list-subsys")
	d.chapter("Done")
}

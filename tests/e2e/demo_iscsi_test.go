//go:build lab

package e2e

import (
	"context"
	"strings"
	"time"

	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/tests/xapisim"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// demoISCSI is the demo's second half: the same lifecycle on an iSCSI
// array with two portals and dm-multipath, found with sr-probe-ext, with
// one portal lost under a running writer and SR.stat telling so.
func demoISCSI(d *demo, ctx context.Context, sim *xapisim.Sim) {
	t := d.t
	d.chapter("The second array: an iSCSI LUN on two portals (two target portal groups)")
	tg := newISCSILUN(t, "demo", labtarget.Addr1, labtarget.Addr2)
	if err := tg.Grow(srLUNSize); err != nil {
		t.Fatal(err)
	}
	portals := labtarget.Addr1 + "," + labtarget.Addr2
	d.say("target %s, LUN 0 (%d MiB, WWID %s), portals %s:3260", tg.IQN, srLUNSize>>20, tg.WWID(), portals)

	d.chapter("Discover it as an admin would: sr-probe-ext lists targets, then LUNs")
	res, err := sim.Probe(ctx, "iscsi-ng", map[string]string{"target": portals})
	if err != nil {
		t.Fatal(err)
	}
	iqn := ""
	for _, r := range res {
		if r.Configuration["targetIQN"] != "" && r.Configuration["targetIQN"] != "*" {
			iqn = r.Configuration["targetIQN"]
		}
	}
	if iqn != tg.IQN {
		t.Fatalf("probe found target %q, want %s", iqn, tg.IQN)
	}
	res, err = sim.Probe(ctx, "iscsi-ng", map[string]string{"target": portals, "targetIQN": iqn})
	if err != nil {
		t.Fatal(err)
	}
	scsiID := ""
	for _, r := range res {
		if id := r.Configuration["SCSIid"]; id != "" && r.Complete {
			scsiID = id
			d.say("# LUN %s: %v", id, r.ExtraInfo)
		}
	}
	if scsiID != tg.WWID() {
		t.Fatalf("probe found LUN %q, want %s", scsiID, tg.WWID())
	}

	d.chapter("Create the shared iSCSI SR")
	sr, err := sim.SRCreate(ctx, "iscsi-ng", "Lab iSCSI SR", "demo", map[string]string{
		"target": portals, "targetIQN": iqn, "SCSIid": scsiID,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.shell("multipath", "-ll", scsiID)

	d.chapter("A disk, a VM, and a portal lost while it writes")
	v, err := sr.VDICreate(ctx, "iscsi demo disk", "", 64<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := sr.VMStart(ctx, v.Key, "8")
	if err != nil {
		t.Fatal(err)
	}
	load := StartIO(t, a.Device, 32<<20)
	load.waitWrites(t, 8, time.Minute)
	d.say("# the array disables portal %s:3260", labtarget.Addr2)
	if err := tg.DisablePortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SR.stat to report the lost path", 90*time.Second, func() (bool, string) {
		st, err := sr.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Still Healthy: I/O flows over the other portal, and xapi
		// scans only Healthy SRs.
		return st.Health.State == schema.Healthy && strings.HasPrefix(st.Health.Message, "1 of 2 paths down"), st.Health.Message
	})
	d.say("# the scan keeps working, and the PBD tells XO and xe the path count")
	scanKeepsPassing(t, ctx, sr, scsiID, "[1, 2]")
	load.waitWrites(t, 16, 2*time.Minute)
	d.say("# the array enables the portal again")
	if err := tg.EnablePortal(labtarget.Addr2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SR.stat to report both paths", 2*time.Minute, func() (bool, string) {
		st, err := sr.Stat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Health.State == schema.Healthy && strings.HasPrefix(st.Health.Message, "2 of 2 paths live"), st.Health.Message
	})
	scanKeepsPassing(t, ctx, sr, scsiID, "[2, 2]")
	load.waitWrites(t, 8, time.Minute)
	st := load.Stop()
	if err := load.Verify(); err != nil {
		t.Fatal(err)
	}
	d.say("# %d writes, %d failed, worst latency %s; data read back intact", st.Writes, len(st.Errors), st.MaxLatency.Round(time.Millisecond))
	if len(st.Errors) > 0 {
		t.Fatalf("writes failed while the portal was down: %v", st.Errors[0])
	}

	d.chapter("Shut down, delete the disk, unplug and destroy the iSCSI SR")
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := sr.VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	wantNoPathKeys(t, sr, scsiID)
	if err := sr.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	// iscsiadm exits 21 when there is no session, which is the point here.
	out, _ := run("iscsiadm", "-m", "session")
	d.say("$ iscsiadm -m session\n  %s", strings.TrimSpace(out))
	if !strings.Contains(out, "No active sessions") {
		t.Fatalf("sessions left after sr-destroy:\n%s", out)
	}
}

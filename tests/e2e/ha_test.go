//go:build lab

package e2e

// HA on a sanvol SR (issue 12 §3): `xe pool-ha-enable` puts the statefile
// and the redo log on it through static-vdis, and at the next boot
// attach-static-vdis attaches both before xapi runs, through the
// installed method files in their positional form, with no XenAPI socket.
// For iscsi-ng the CHAP password then comes from the root-only copy kept
// when HA was enabled.

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/tests/xapisim"
)

// haLUNSize holds the metadata area, the statefile and the lab's redo log.
const haLUNSize = (256 + 128) << 20

// haRedoLogSize stands in for xapi's 3.7 GiB redo log (xapisim.RedoLogSize):
// the lab's LUNs live in the guest's RAM (tmpfs, pitfall 3/4), and a
// volume is zeroed when created, which the guest's CPU pays for: twice
// the 4 MiB the scenario writes into it is enough. The statefile keeps
// xapi's size.
const haRedoLogSize = 8 << 20

func TestHAStatefileISCSICHAP(t *testing.T) {
	nvmeLab(t)
	tg := newISCSILUN(t, "ha", labtarget.Addr1, labtarget.Addr2)
	if err := tg.Grow(haLUNSize); err != nil { // before any login
		t.Fatal(err)
	}
	chap := labtarget.CHAP{User: "sanvolha", Password: "hachapsecret42"}
	if err := tg.AllowInitiator(initiatorIQN(t), &chap); err != nil {
		t.Fatal(err)
	}
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	cfg["chapuser"] = chap.User
	cfg["chappassword"] = chap.Password
	haScenario(t, "iscsi-ng", cfg, chap.Password)
	assertClean(t, tg)
}

func TestHAStatefileNVMe(t *testing.T) {
	nvmeLab(t)
	tg := newNVMeTarget(t, "hanvme")
	if err := tg.GrowNamespace(1, haLUNSize); err != nil {
		t.Fatal(err)
	}
	haScenario(t, "nvmetcp", map[string]string{"target": labtarget.Addr1 + "," + labtarget.Addr2, "nqn": tg.NQN}, "")
}

func haScenario(t *testing.T, srType string, deviceConfig map[string]string, password string) {
	installSanvol(t)
	ctx := context.Background()
	sim := xapisim.New(xapisim.DefaultRoot, os.Stdout)
	stopXapi, err := sim.ServeXenAPI(host.XapiSocket)
	if err != nil {
		t.Fatal(err)
	}
	xapiUp := true
	t.Cleanup(func() {
		if xapiUp {
			_ = stopXapi()
		}
	})
	sim.Register(ctx)
	sv := &xapisim.StaticVDIs{Dir: host.StaticVDIsDir, ScriptRoot: xapisim.DefaultRoot, MultipathFlag: "/var/run/nonpersistent/multipath_enabled"}
	t.Cleanup(func() {
		_ = sv.HADisable(context.Background())
		_ = os.RemoveAll(host.StaticVDIsDir)
		_ = os.RemoveAll(host.BootSecretDir)
	})
	sr, err := sim.SRCreate(ctx, srType, "HA "+srType, t.Name(), deviceConfig)
	if sr != nil {
		t.Cleanup(func() { releaseSR(t, sr) })
	}
	if err != nil {
		t.Fatal(err)
	}

	// xe pool-ha-enable heartbeat-sr-uuids=<sr>: this host's PBD
	// device-config is what SR.create returned (one host here).
	sf, redo, err := sr.HAEnable(ctx, sv, sr.Config, xapisim.HAOptions{RedoLogSize: haRedoLogSize})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []xapisim.HAVDI{sf, redo} {
		dev := mustEval(t, v.Disk)
		if !strings.HasPrefix(dev, "/dev/dm-") {
			t.Fatalf("%s: static-vdis' disk link resolves to %s, want an LV", v.Key, dev)
		}
		t.Logf("%s: %s -> %s (%d bytes)", v.Key, v.Disk, dev, blockSize(t, dev))
	}
	if got := blockSize(t, mustEval(t, sf.Disk)); got < xapisim.StatefileSize {
		t.Fatalf("statefile %d bytes, xapi asked %d", got, xapisim.StatefileSize)
	}
	writePattern(t, sf.Disk, 1, 12)
	writePattern(t, redo.Disk, 4, 13)

	secretUUID := sr.Config["chappassword_secret"]
	if password != "" {
		kept := filepath.Join(host.BootSecretDir, secretUUID)
		for p, mode := range map[string]fs.FileMode{host.BootSecretDir: 0o700, kept: 0o600} {
			st, err := os.Stat(p)
			if err != nil || st.Mode().Perm() != mode {
				t.Fatalf("%s: %v %v, want mode %v", p, st, err, mode)
			}
		}
		if b, _ := os.ReadFile(kept); string(b) != password {
			t.Fatal("the copy kept for boot is not the CHAP password")
		}
		// static-vdis' own files (world-readable) never hold it.
		_ = filepath.WalkDir(host.StaticVDIsDir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Type()&fs.ModeSymlink == 0 {
				if b, _ := os.ReadFile(p); strings.Contains(string(b), password) {
					t.Errorf("%s holds the CHAP password", p)
				}
			}
			return nil
		})
	}

	// The host goes down: the static VDIs are detached (attach-static-vdis
	// stop), the PBD unplugged, xapi stops, and /run is lost with the
	// sessions and maps.
	for _, v := range []xapisim.HAVDI{sf, redo} {
		if err := sv.Detach(ctx, v.UUID); err != nil {
			t.Fatal(err)
		}
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := stopXapi(); err != nil {
		t.Fatal(err)
	}
	xapiUp = false
	if _, err := host.NewXenAPI(host.NewRoot("/")).Login(ctx); !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("XenAPI still answers: %v", err)
	}

	// Boot: attach-static-vdis, before xapi.
	disks, err := sv.Boot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if disks[sf.UUID] == "" || disks[redo.UUID] == "" {
		t.Fatalf("boot attached %v", disks)
	}
	for _, c := range sv.Calls {
		if strings.Contains(c, "--json") || (password != "" && strings.Contains(c, password)) {
			t.Errorf("static-vdis call %q", c)
		}
	}
	checkPattern(t, disks[sf.UUID], 1, 12)
	checkPattern(t, disks[redo.UUID], 4, 13)
	t.Logf("after the boot without xapi: statefile %s, redo log %s", mustEval(t, disks[sf.UUID]), mustEval(t, disks[redo.UUID]))

	// xapi starts and plugs the PBD again (an SR already attached by
	// static-vdis); then HA is disabled and everything removed.
	if stopXapi, err = sim.ServeXenAPI(host.XapiSocket); err != nil {
		t.Fatal(err)
	}
	xapiUp = true
	if err := sr.Plug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sv.HADisable(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range []xapisim.HAVDI{sf, redo} {
		if err := sr.VDIDestroy(ctx, v.Key); err != nil {
			t.Fatal(err)
		}
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sr.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

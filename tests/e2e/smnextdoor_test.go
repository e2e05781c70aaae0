//go:build lab

package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/tests/labtarget"
	"github.com/sanvol/sanvol/tests/xapisim"
)

// TestISCSISMNextDoor runs sm's own iscsiadm commands (xcp-ng/sm
// drivers/iscsilib.py), as an lvmoiscsi or iscsi SR on the same target IQN
// would, against an attached iscsi-ng SR, and shows what sanvol does
// (docs/iscsi-ng.md, "SMAPIv1 next door"):
//   - set_replacement_tmo (sm's login, multipathed): rewrites
//     replacement_timeout in every node record of the IQN, sanvol's too;
//     live sessions keep their recovery_tmo, and sanvol's next login
//     writes its own value back;
//   - logout with all=True (BaseISCSI.detach_and_delete, sm's last SR on
//     the IQN detaching from the host): logs out every session to the
//     IQN, sanvol's included; the SR has no path left until it is plugged
//     again (Attach), which logs in again with sanvol's own records;
//   - delete (then, for a raw iscsi SR, RawISCSISR.detach ->
//     detach_and_delete): deletes every node record of the IQN, which
//     sanvol's next login writes again;
//   - SR.create (Prepare) refuses the IQN while sm's reference file on
//     this host, or a PBD of the pool through XenAPI, names an SMAPIv1 SR
//     on it.
func TestISCSISMNextDoor(t *testing.T) {
	tg := newISCSILUN(t, "smnextdoor", labtarget.Addr1, labtarget.Addr2)
	tr := newISCSITransport(t, nil)
	ctx := context.Background()
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	const tmoKey = "node.session.timeo.replacement_timeout"

	// timeouts lists replacement_timeout of every node record of the IQN.
	timeouts := func() []string {
		out, err := run("iscsiadm", "-m", "node", "-T", tg.IQN, "-o", "show")
		if err != nil {
			return nil
		}
		var v []string
		for _, l := range strings.Split(out, "\n") {
			if val, ok := strings.CutPrefix(strings.TrimSpace(l), tmoKey+" = "); ok {
				v = append(v, val)
			}
		}
		return v
	}
	live := func() (bool, string) {
		h, err := tr.Health(ctx, cfg)
		if err != nil {
			return false, err.Error()
		}
		return h.Live == 2 && h.Total == 2, h.Detail
	}

	attachISCSI(t, tr, cfg)
	ours := timeouts()
	if len(ours) < 2 {
		t.Fatalf("node records of %s after attach: replacement_timeout %v, want one per portal", tg.IQN, ours)
	}
	sessTmo := map[string]string{}
	for _, s := range sessionsOf(tg.IQN) {
		sessTmo[s.sid] = s.recoveryTmo
	}
	t.Logf("sanvol's records: replacement_timeout %v; sessions' recovery_tmo %v", ours, sessTmo)

	// set_replacement_tmo with mpath: no -p, no -I, _REPLACEMENT_TMO_MPATH.
	mustRun(t, "iscsiadm", "-m", "node", "-T", tg.IQN, "--op", "update", "-n", tmoKey, "-v", "15")
	for _, v := range timeouts() {
		if v != "15" {
			t.Errorf("after sm's set_replacement_tmo a record has replacement_timeout %s, want sm's 15 in all: sm's update reaches every record of the IQN", v)
		}
	}
	for _, s := range sessionsOf(tg.IQN) {
		if s.recoveryTmo != sessTmo[s.sid] {
			t.Errorf("session %s recovery_tmo %s, was %s: a record change must not reach a live session", s.sid, s.recoveryTmo, sessTmo[s.sid])
		}
	}
	if ok, st := live(); !ok {
		t.Errorf("after sm's set_replacement_tmo: %s, want 2 of 2 paths", st)
	}

	// logout all=True: every session to the IQN goes, sanvol's too.
	mustRun(t, "iscsiadm", "-m", "node", "-T", tg.IQN, "-u")
	waitFor(t, "sm's logout to end sanvol's sessions", 30*time.Second, func() (bool, string) {
		s := sessionsOf(tg.IQN)
		return len(s) == 0, "sessions left"
	})
	h, err := tr.Health(ctx, cfg)
	t.Logf("SR.stat's health after sm's logout: %+v, %v", h, err)
	if err == nil && h.Live != 0 {
		t.Errorf("health after sm's logout: %d live paths, want none", h.Live)
	}

	// delete, right after that logout for a raw iscsi SR: every node
	// record of the IQN goes.
	mustRun(t, "iscsiadm", "-m", "node", "-o", "delete", "-T", tg.IQN)
	if v := timeouts(); len(v) != 0 {
		t.Errorf("node records left after sm's delete: %v", v)
	}

	// xe pbd-plug again: Attach logs in on both portals with sanvol's own
	// records (the node records are gone, sm's delete took them).
	attachISCSI(t, tr, cfg)
	waitFor(t, "both paths back after re-attach", 60*time.Second, live)
	if v := timeouts(); len(v) != len(ours) || v[0] != ours[0] {
		t.Errorf("replacement_timeout after re-attach %v, want sanvol's %v again", v, ours)
	}
	detachISCSI(t, tr, cfg)
	assertClean(t, tg)

	// SR.create next to sm: refused before any login, from sm's
	// reference file on this host, then from the pool's PBDs (XenAPI).
	const smSR = "5b6c7d8e-0000-4a2b-9c3d-4e5f60718293"
	ref := filepath.Join(iscsi.SMRefDir, tg.IQN)
	if err := os.MkdirAll(iscsi.SMRefDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ref, []byte(smSR+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = tr.Prepare(ctx, cfg)
	_ = os.Remove(ref)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), smSR) {
		t.Errorf("SR.create with sm's reference file for the IQN: %v, want a busy error naming %s", err, smSR)
	}
	sim := xapisim.New(t.TempDir(), nil)
	poolSR := sim.AddSMAPIv1SR("lvmoiscsi", "sm LVM next door", map[string]string{"target": labtarget.Addr1, "targetIQN": tg.IQN, "SCSIid": tg.WWID()}, 3)
	serveXapi(t, sim)
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	root := host.NewRoot("/")
	pooled := iscsi.New(iscsi.Deps{Runner: host.NewExecRunner(log), Root: root, Locker: host.FileLocker{Root: root}, Log: log,
		SMAPIv1: host.NewXenAPI(root)})
	_, err = pooled.Prepare(ctx, cfg)
	t.Logf("SR.create with an lvmoiscsi SR of the pool on the IQN: %v", err)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), poolSR) {
		t.Errorf("SR.create with a pool lvmoiscsi SR on the IQN: %v, want a busy error naming %s", err, poolSR)
	}
	if n := len(sessionsOf(tg.IQN)); n != 0 {
		t.Errorf("%d sessions after the refused SR.create, want none", n)
	}
}

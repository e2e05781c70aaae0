//go:build lab

package e2e

import (
	"context"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/xapisim"
)

// serveXapi stands the simulator in for xapi on its local socket, with an
// inventory naming the simulated host, so that the plugin finds its PBD
// and publishes the path counts there (as on XCP-ng).
func serveXapi(t *testing.T, sim *xapisim.Sim) {
	t.Helper()
	stop, err := sim.ServeXenAPI(host.XapiSocket)
	if err != nil {
		t.Fatal(err)
	}
	restore, err := sim.WriteInventory("/")
	if err != nil {
		_ = stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stop()
		if err := restore(); err != nil {
			t.Logf("cleanup: restore %s: %v", host.InventoryPath, err)
		}
	})
}

// scanKeepsPassing replays `xe sr-scan` (SR.stat as the health gate, then
// SR.ls): it must pass whatever the paths do as long as one serves I/O,
// and leave the PBD's keys as sm's mpathcount.py would: multipathed=true
// and mpath-<id> = "[active, total]".
func scanKeepsPassing(t *testing.T, ctx context.Context, sr *xapisim.SR, id, want string) {
	t.Helper()
	if _, err := sr.Scan(ctx); err != nil {
		t.Fatalf("xe sr-scan with paths %s: %v", want, err)
	}
	if v, ok := sr.PBDParamGet("mpath-" + id); !ok || v != want {
		t.Errorf("PBD other-config mpath-%s = %q (present %t), want %q", id, v, ok, want)
	}
	if v := sr.PBDOtherConfig()["multipathed"]; v != "true" {
		t.Errorf("PBD other-config multipathed = %q, want true", v)
	}
}

// wantNoPathKeys checks that pbd-unplug took the keys away.
func wantNoPathKeys(t *testing.T, sr *xapisim.SR, id string) {
	t.Helper()
	oc := sr.PBDOtherConfig()
	if _, ok := oc["mpath-"+id]; ok {
		t.Errorf("PBD other-config after unplug still has mpath-%s: %v", id, oc)
	}
	if _, ok := oc["multipathed"]; ok {
		t.Errorf("PBD other-config after unplug still has multipathed: %v", oc)
	}
}

package host_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/xapisim"
)

// The pool's lvmoiscsi and iscsi SRs are found by their PBDs'
// device-config:targetIQN, whatever the case of the name, on any host;
// other IQNs, targetIQN=* and other SR types are not.
func TestSMAPIv1ISCSISRsOn(t *testing.T) {
	const iqn = "iqn.2003-01.org.linux-iscsi.lab:shared"
	root := t.TempDir()
	sim := xapisim.New(root, nil)
	lvm := sim.AddSMAPIv1SR("lvmoiscsi", "sm LVM", map[string]string{"target": "192.0.2.1", "targetIQN": iqn, "SCSIid": "36001405aa"}, 3)
	raw := sim.AddSMAPIv1SR("iscsi", "sm raw", map[string]string{"target": "192.0.2.1", "targetIQN": "IQN.2003-01.ORG.LINUX-ISCSI.LAB:SHARED"}, 1)
	sim.AddSMAPIv1SR("lvmoiscsi", "other IQN", map[string]string{"targetIQN": "iqn.2003-01.org.linux-iscsi.lab:other"}, 2)
	sim.AddSMAPIv1SR("lvmoiscsi", "every IQN", map[string]string{"targetIQN": "*"}, 2)
	sim.AddSMAPIv1SR("lvmohba", "HBA", map[string]string{"targetIQN": iqn}, 1)
	xroot := filepath.Join(root, "xapi-root")
	stop, err := sim.ServeXenAPI(filepath.Join(xroot, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	got, err := host.NewXenAPI(host.NewRoot(xroot)).SMAPIv1ISCSISRsOn(context.Background(), iqn)
	if err != nil {
		t.Fatal(err)
	}
	want := []host.SMAPIv1SR{
		{UUID: lvm, Name: "sm LVM", Type: "lvmoiscsi", PBDs: 3},
		{UUID: raw, Name: "sm raw", Type: "iscsi", PBDs: 1},
	}
	if lvm > raw {
		want[0], want[1] = want[1], want[0]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SRs (-want +got):\n%s", diff)
	}
	if got, err := host.NewXenAPI(host.NewRoot(xroot)).SMAPIv1ISCSISRsOn(context.Background(), "iqn.2003-01.org.linux-iscsi.lab:none"); err != nil || len(got) != 0 {
		t.Errorf("unused IQN: %v, %v", got, err)
	}
}

// Without xapi the lookup fails as unreachable, so callers can tell it
// from "no such SR".
func TestSMAPIv1ISCSISRsOnWithoutXapi(t *testing.T) {
	_, err := host.NewXenAPI(host.NewRoot(t.TempDir())).SMAPIv1ISCSISRsOn(context.Background(), "iqn.x")
	if !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("got %v, want an unreachable error", err)
	}
}

package xapisim

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

// xapiHost serves the simulator's XenAPI under a host tree whose
// inventory names the simulated host, and returns sanvol's client for it.
func xapiHost(t *testing.T, sim *Sim) *host.XenAPI {
	t.Helper()
	root := filepath.Join(t.TempDir(), "host")
	stop, err := sim.ServeXenAPI(filepath.Join(root, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	if _, err := sim.WriteInventory(root); err != nil {
		t.Fatal(err)
	}
	return host.NewXenAPI(host.NewRoot(root))
}

func TestXenAPIPBDOtherConfig(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	x := xapiHost(t, sim)

	set := func(v string) {
		t.Helper()
		if err := x.UpdatePBDOtherConfig(ctx, sr.UUID, map[string]string{"multipathed": "true", "mpath-36001405aa": v}, nil); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]string{"multipathed": "true", "mpath-36001405aa": v}, sr.PBDOtherConfig()); diff != "" {
			t.Fatalf("other-config (-want +got):\n%s", diff)
		}
	}
	set("[2, 2]")
	set("[1, 2]") // an existing key changes: remove, then add
	set("[1, 2]") // nothing to change
	if v, ok := sr.PBDParamGet("mpath-36001405aa"); !ok || v != "[1, 2]" {
		t.Fatalf("pbd-param-get: %q %t", v, ok)
	}
	if err := x.UpdatePBDOtherConfig(ctx, sr.UUID, nil, []string{"multipathed", "mpath-36001405aa", "never-there"}); err != nil {
		t.Fatal(err)
	}
	if got := sr.PBDOtherConfig(); len(got) != 0 {
		t.Fatalf("other-config after removal: %v", got)
	}

	// xapi's own answers: add_to_other_config of an existing key fails,
	// remove of an absent one does not, bad references and uuids fail.
	s, err := x.Login(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Logout(ctx)
	ref := pbdRefPrefix + sr.PBD
	if _, err := s.Call(ctx, "PBD.add_to_other_config", ref, "k", "1"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1", "2"} {
		_, err := s.Call(ctx, "PBD.add_to_other_config", ref, "k", v)
		var xe *host.XenAPIError
		if !errors.As(err, &xe) || xe.Code != "MAP_DUPLICATE_KEY" || fmt.Sprint(xe.Params) != fmt.Sprint([]string{"PBD", "other_config", ref, "k"}) {
			t.Fatalf("add of an existing key (value %s): %v", v, err)
		}
	}
	if _, err := s.Call(ctx, "PBD.remove_from_other_config", ref, "absent"); err != nil {
		t.Fatalf("remove of an absent key: %v", err)
	}
	for method, params := range map[string][]any{
		"PBD.add_to_other_config": {"OpaqueRef:nope", "k", "v"},
		"SR.get_by_uuid":          {"no-such-sr"},
		"host.get_by_uuid":        {"no-such-host"},
	} {
		var xe *host.XenAPIError
		if _, err := s.Call(ctx, method, params...); !errors.As(err, &xe) || (xe.Code != "HANDLE_INVALID" && xe.Code != "UUID_INVALID") {
			t.Errorf("%s %v: %v", method, params, err)
		}
	}
	if err := x.UpdatePBDOtherConfig(ctx, "no-such-sr", map[string]string{"a": "b"}, nil); !errors.Is(err, host.ErrNotFound) {
		t.Errorf("unknown SR: %v", err)
	}

	// sr-destroy forgets the SR and its PBDs.
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sr.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if sr.PBDOtherConfig() != nil {
		t.Fatal("the PBD outlived sr-destroy")
	}
}

func TestXenAPIOtherHostAndVersion(t *testing.T) {
	root := fakeRoot(t)
	master := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, master)
	member := New(root, nil)
	member.OldDaemon = true
	msr := member.Introduce(sr)
	x := xapiHost(t, member)
	if err := x.UpdatePBDOtherConfig(ctx, sr.UUID, map[string]string{"multipathed": "true"}, nil); err != nil {
		t.Fatal(err)
	}
	if msr.PBDOtherConfig()["multipathed"] != "true" || len(sr.PBDOtherConfig()) != 0 {
		t.Fatalf("member's PBD %v, master's %v: the write went to the wrong PBD", msr.PBDOtherConfig(), sr.PBDOtherConfig())
	}
	if major, minor, err := x.XapiVersion(ctx); err != nil || major != 1 || minor != 249 {
		t.Fatalf("old daemon's xapi version %d.%d, %v", major, minor, err)
	}
	if major, minor, err := xapiHost(t, master).XapiVersion(ctx); err != nil || major != 26 || minor != 1 {
		t.Fatalf("new daemon's xapi version %d.%d, %v", major, minor, err)
	}
	// Without an inventory the client cannot know which host it is on.
	if err := host.NewXenAPI(host.NewRoot(t.TempDir())).UpdatePBDOtherConfig(ctx, sr.UUID, nil, nil); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("no inventory: %v", err)
	}
}

func TestParseWhere(t *testing.T) {
	m, err := parseWhere(`field "host" = "OpaqueRef:a" and field "SR" = "OpaqueRef:b"`)
	if err != nil {
		t.Fatal(err)
	}
	if !m(map[string]string{"host": "OpaqueRef:a", "SR": "OpaqueRef:b"}) || m(map[string]string{"host": "OpaqueRef:a", "SR": "OpaqueRef:c"}) {
		t.Fatal("conjunction misjudged")
	}
	for _, bad := range []string{`field "a" = "b" or field "c" = "d"`, `field "a" = b`, `field "a" = "b`, `not true`} {
		if _, err := parseWhere(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

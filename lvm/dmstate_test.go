package lvm_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
)

// dmEnv is cacheEnv with a kernel: e.lv's device-mapper device is dm's
// entry under its LVM name, and the fake lvs prints the lv_attr of the
// same state.
type dmEnv struct {
	*cacheEnv
	dm *lvmtest.DM
}

func newDMEnv(t *testing.T) *dmEnv {
	e := &dmEnv{cacheEnv: newCacheEnv(t), dm: &lvmtest.DM{}}
	e.lv.UUID = "Ab3dEf-gH1j-kL2m-nO3p-qR4s-tU5v-wX6yZ7"
	return e
}

// set gives the LV its state in the kernel and in lvs (nil: no device).
func (e *dmEnv) set(info *host.DMInfo) {
	name := lvm.DMName(e.lv.VG, e.lv.Name)
	if info == nil {
		e.dm.Remove(name)
		e.lv.Attr = lvmtest.Attr(host.DMInfo{})
		return
	}
	i := *info
	i.Exists = true
	if i.UUID == "" {
		i.UUID = lvmtest.LVDMUUID("vgUUID-with-dashes", e.lv.UUID)
	}
	e.dm.Set(name, i)
	e.lv.Attr = lvmtest.Attr(i)
}

func (e *dmEnv) dmClient() *lvm.Client { return e.client().WithDMStatus(e.dm) }

// lvsWithAttr counts the lvs runs that asked for lv_attr: the state read
// from lvs rather than from the kernel.
func (e *dmEnv) lvsWithAttr() int {
	return e.run.Count(lvmtest.And(lvmtest.LVM("lvs"), func(c host.Cmd) bool {
		return lvmtest.Values(c, "-o")[0] == lvm.LVFields
	}))
}

type lvState struct{ active, open, live bool }

func stateOf(l lvm.LV) lvState { return lvState{l.Active(), l.Open(), l.Live()} }

// Every state the kernel can give an LV reads the same from lv_attr and
// from the kernel: Active, Open and Live (lv_attr's 'a') agree.
func TestLVStateFromDMMatchesLVAttr(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		info *host.DMInfo
		want lvState
	}{
		{"inactive", nil, lvState{}},
		{"active", &host.DMInfo{LiveTable: true}, lvState{active: true, live: true}},
		{"open", &host.DMInfo{LiveTable: true, OpenCount: 2}, lvState{active: true, open: true, live: true}},
		{"suspended", &host.DMInfo{LiveTable: true, Suspended: true}, lvState{active: true}},
		{"suspended and open", &host.DMInfo{LiveTable: true, Suspended: true, OpenCount: 1}, lvState{active: true, open: true}},
		{"inactive table only", &host.DMInfo{InactiveTable: true}, lvState{active: true}},
		{"no table", &host.DMInfo{}, lvState{active: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDMEnv(t)
			e.set(tc.info)
			old, err := e.client().LV(ctx, cacheScope, e.lv.VG, e.lv.Name)
			if err != nil {
				t.Fatal(err)
			}
			l, err := e.dmClient().LV(ctx, cacheScope, e.lv.VG, e.lv.Name)
			if err != nil {
				t.Fatal(err)
			}
			if got := stateOf(old); got != tc.want {
				t.Fatalf("from lv_attr %q: %+v, want %+v", old.Attr, got, tc.want)
			}
			if got := stateOf(l); got != tc.want || l.DM == nil || l.Attr != "" {
				t.Fatalf("from the kernel: %+v (%+v), want %+v", got, l, tc.want)
			}
			if l.Name != e.lv.Name || l.UUID != e.lv.UUID || l.Size != e.lv.Size || fmt.Sprint(l.Tags) != fmt.Sprint(e.lv.Tags) {
				t.Fatalf("metadata: %+v, want %+v", l, e.lv)
			}
			lvs, err := e.dmClient().LVs(ctx, cacheScope, e.lv.VG)
			if err != nil || len(lvs) != 1 || stateOf(lvs[0]) != tc.want {
				t.Fatalf("LVs: %+v %v", lvs, err)
			}
			// One lvs with lv_attr (the old path's), none from the
			// kernel's.
			if n := e.lvsWithAttr(); n != 1 {
				t.Fatalf("%d lvs with lv_attr, want 1", n)
			}
		})
	}
}

// With the metadata unchanged, LV and LVs start no process at all: the
// metadata from the report cache, the state from the kernel, read again
// at each call.
func TestLVFromCacheAndDMRunsNoLVS(t *testing.T) {
	e := newDMEnv(t)
	ctx := context.Background()
	e.set(&host.DMInfo{LiveTable: true})
	if _, err := e.dmClient().LV(ctx, cacheScope, e.lv.VG, e.lv.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dmClient().LVs(ctx, cacheScope, e.lv.VG); err != nil {
		t.Fatal(err)
	}
	e.run.Reset()
	for _, info := range []*host.DMInfo{{LiveTable: true, OpenCount: 1}, nil, {LiveTable: true, Suspended: true}} {
		e.set(info)
		l, err := e.dmClient().LV(ctx, cacheScope, e.lv.VG, e.lv.Name)
		if err != nil {
			t.Fatal(err)
		}
		lvs, err := e.dmClient().LVs(ctx, cacheScope, e.lv.VG)
		if err != nil || len(lvs) != 1 {
			t.Fatalf("LVs: %v %v", lvs, err)
		}
		want := lvState{active: info != nil, open: info != nil && info.OpenCount > 0, live: info != nil && !info.Suspended}
		if stateOf(l) != want || stateOf(lvs[0]) != want {
			t.Fatalf("state %+v: LV %+v LVs %+v, want %+v", info, stateOf(l), stateOf(lvs[0]), want)
		}
	}
	// (This root has no lvm binary for the version cache to key on, so
	// each client asks `lvm version`, which a plugin process does not.)
	for _, c := range e.run.Calls() {
		if !lvmtest.LVM("version")(c) {
			t.Fatalf("LV and LVs with the metadata unchanged ran %v", c)
		}
	}
}

// A missing LV is host.ErrNotFound, from the cache too, and asks the
// kernel nothing.
func TestMissingLVWithDM(t *testing.T) {
	e := newDMEnv(t)
	ctx := context.Background()
	e.lvsFail = &lvmtest.Reply{Code: 5, Stderr: `  Failed to find logical volume "VG_sanvol-x/v-2"`}
	for i := 0; i < 2; i++ {
		if _, err := e.dmClient().LV(ctx, cacheScope, e.lv.VG, "v-2"); !errors.Is(err, host.ErrNotFound) {
			t.Fatalf("LV of a missing LV: %v", err)
		}
	}
	if n := e.reports("lvs"); n != 1 {
		t.Fatalf("lvs ran %d times, want 1 (then the cache)", n)
	}
	if n := e.dm.Reads(); n != 0 {
		t.Fatalf("the kernel was asked %d times about a missing LV", n)
	}
	// lvm2 2.02 can exit 0 with an empty report for a missing LV.
	e.lvsFail = &lvmtest.Reply{Stdout: lvmtest.LVsOf(lvm.LVMetaFields).Stdout}
	if _, err := e.dmClient().WithReportCache(e.root, &disk{err: errors.New("no stamp")}).LV(ctx, cacheScope, e.lv.VG, "v-3"); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("LV from an empty report: %v", err)
	}
}

// Without device-mapper (or with a device of the LV's name that is not
// the LV's), LV and LVs run lvs with lv_attr, as without the option.
func TestLVFallsBackToLVSWithoutDM(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(e *dmEnv)
	}{
		{"no device-mapper", func(e *dmEnv) { e.dm.Err = lvmtest.ErrNoDM }},
		{"another uuid", func(e *dmEnv) {
			e.set(&host.DMInfo{LiveTable: true, UUID: lvmtest.LVDMUUID("vg", "some-other-lv")})
			e.lv.Attr = "-wi-------" // lvs finds the LV's device by uuid
		}},
		{"not an LVM device", func(e *dmEnv) {
			e.set(&host.DMInfo{LiveTable: true, UUID: "CRYPT-x"})
			e.lv.Attr = "-wi-------"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDMEnv(t)
			e.set(&host.DMInfo{LiveTable: true, OpenCount: 1})
			tc.setup(e)
			l, err := e.dmClient().LV(ctx, cacheScope, e.lv.VG, e.lv.Name)
			if err != nil {
				t.Fatal(err)
			}
			if l.DM != nil || l.Attr != e.lv.Attr {
				t.Fatalf("LV: %+v, want lv_attr %q", l, e.lv.Attr)
			}
			lvs, err := e.dmClient().LVs(ctx, cacheScope, e.lv.VG)
			if err != nil || len(lvs) != 1 || lvs[0].DM != nil || lvs[0].Attr != e.lv.Attr {
				t.Fatalf("LVs: %+v %v", lvs, err)
			}
			if n := e.lvsWithAttr(); n != 2 {
				t.Fatalf("%d lvs with lv_attr, want 2", n)
			}
		})
	}
}

// The sim's lvs and its kernel agree through every step of an LV's
// life on a host: created (active), opened, held by a table, closed,
// deactivated.
func TestSimDMStatusMatchesLVS(t *testing.T) {
	ctx := context.Background()
	sim := lvmtest.NewSim("/dev/sdx", 1<<30)
	sim.On(lvmtest.LVM("version"), lvmtest.Version("2.03.16"))
	s := lvm.Scope{Devices: []string{"/dev/sdx"}}
	old := lvm.New(sim, nil)
	withDM := lvm.New(sim, nil).WithDMStatus(sim)
	if err := old.PVCreate(ctx, s, "/dev/sdx", 4); err != nil {
		t.Fatal(err)
	}
	const vg = "VG_sanvol-a-b"
	if err := old.VGCreate(ctx, s, vg, "/dev/sdx", 4, nil); err != nil {
		t.Fatal(err)
	}
	for _, lv := range []string{"v-1", "v-2"} {
		if err := old.LVCreate(ctx, s, vg, lv, 2, nil); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string) {
		t.Helper()
		for _, lv := range []string{"v-1", "v-2"} {
			a, err := old.LV(ctx, s, vg, lv)
			if err != nil {
				t.Fatal(err)
			}
			b, err := withDM.LV(ctx, s, vg, lv)
			if err != nil {
				t.Fatal(err)
			}
			if b.DM == nil || stateOf(a) != stateOf(b) {
				t.Fatalf("%s, %s: lv_attr %q gives %+v, the kernel %+v (%+v)", step, lv, a.Attr, stateOf(a), stateOf(b), b.DM)
			}
		}
		all, err := withDM.LVs(ctx, s, vg)
		if err != nil || len(all) != 2 || all[0].DM == nil {
			t.Fatalf("%s: LVs %+v %v", step, all, err)
		}
	}
	check("created")
	sim.SetOpen("v-1", true)
	check("v-1 open")
	if _, err := sim.Run(ctx, host.Cmd{Name: "dmsetup", Args: []string{"create", "over", "--table", "0 8192 linear " + lvm.DevicePath(vg, "v-2") + " 0"}}); err != nil {
		t.Fatal(err)
	}
	check("v-2 mapped")
	sim.SetOpen("v-1", false)
	if err := old.Deactivate(ctx, s, vg, "v-1"); err != nil {
		t.Fatal(err)
	}
	check("v-1 inactive")
	lvsBefore := sim.Ops["lvm lvs"]
	if _, err := withDM.LVs(ctx, s, vg); err != nil {
		t.Fatal(err)
	}
	if sim.Ops["dm status"] == 0 || sim.Ops["lvm lvs"] != lvsBefore+1 {
		t.Fatalf("ops %v", sim.Ops)
	}
}

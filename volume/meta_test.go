package volume_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/volume"
)

// Tags are data: anyone who can write the LUN can write them. These tests
// put foreign or damaged tags on LVs and check that sanvol neither
// destroys nor zeroes anything on their word.

func (v *env) vg() string {
	v.t.Helper()
	a, err := volume.LoadAttached(v.root, srUUID)
	if err != nil {
		v.t.Fatal(err)
	}
	return a.VG
}

func (v *env) scope() lvm.Scope { return lvm.Scope{Devices: []string{testDev}} }

// rawLV makes an LV of one extent with the given tags, as another tool or
// a damaged metadata copy would.
func (v *env) rawLV(name string, tags []string) {
	v.t.Helper()
	must(v.t, lvm.New(v.sim, nil).LVCreate(context.Background(), v.scope(), v.vg(), name, 1, tags))
}

func (v *env) hasLV(name string) bool {
	_, ok := v.sim.LVs()[name]
	return ok
}

func initMark(at time.Time, hostID string) string {
	return strconv.FormatInt(at.Unix(), 10) + " " + hostID
}

// SR.ls, SR.stat and Volume.stat, on the master as on a member, leave the
// leftover of a dead create alone; the master's SR.attach removes it.
func TestReadPathsRemoveNothing(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	v.crashAt(volume.StepVolumeCreateZero, func() error { _, err := v.e.VolumeCreate(ctx, sr, "n", "", 8*mib, false); return err })
	var lv string
	for name := range v.sim.LVs() {
		lv = name
	}
	key := strings.TrimPrefix(lv, "v-")
	member := v.engine(host.Role{MasterAddr: masterIP})
	for _, e := range []*volume.Engine{v.e, member} {
		if vols, err := e.SRLs(ctx, sr); err != nil || len(vols) != 0 {
			t.Fatalf("SR.ls = %v, %v", vols, err)
		}
		if _, err := e.SRStat(ctx, sr); err != nil {
			t.Fatal(err)
		}
		if _, err := e.VolumeStat(ctx, sr, key); !errors.Is(err, host.ErrNotFound) {
			t.Fatalf("Volume.stat of an unfinished create: %v", err)
		}
	}
	if !v.hasLV(lv) || v.sim.Ops["lvm lvremove"] != 0 {
		t.Fatal("a read path removed an LV")
	}
	v.reattach()
	if v.hasLV(lv) {
		t.Fatal("the master's SR.attach left the dead create's LV")
	}
}

// The collector removes an LV only when its name, its key tag, its create
// mark and its creator's lease all say it is a dead sanvol create.
func TestCollectorChecksMoreThanOneTag(t *testing.T) {
	now := time.Now()
	key := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	cases := []struct {
		name    string
		lv      string
		fields  map[string]string
		holdKey bool // a live create on this host holds its volinit lock
		removed bool
	}{
		{"dead create of this host", "v-" + key(1), map[string]string{"K": key(1), "I": initMark(now.Add(-time.Minute), testHost)}, false, true},
		{"live create of this host", "v-" + key(2), map[string]string{"K": key(2), "I": initMark(now.Add(-time.Minute), testHost)}, true, false},
		{"foreign LV name", "data", map[string]string{"K": key(3), "I": initMark(now.Add(-48*time.Hour), "other")}, false, false},
		{"no key tag", "v-" + key(4), map[string]string{"I": initMark(now.Add(-48*time.Hour), testHost)}, false, false},
		{"key tag of another volume", "v-" + key(5), map[string]string{"K": key(6), "I": initMark(now.Add(-48*time.Hour), testHost)}, false, false},
		{"another host's create within its lease", "v-" + key(7), map[string]string{"K": key(7), "I": initMark(now.Add(-time.Hour), "other")}, false, false},
		{"another host's create past its lease", "v-" + key(8), map[string]string{"K": key(8), "I": initMark(now.Add(-volume.InitLease-time.Hour), "other")}, false, true},
		{"mark dated in the future", "v-" + key(9), map[string]string{"K": key(9), "I": initMark(now.Add(time.Hour), testHost)}, false, false},
		{"mark without time and host", "v-" + key(10), map[string]string{"K": key(10), "I": "1"}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := newEnv(t, host.Role{Master: true})
			v.createSR()
			v.rawLV(c.lv, lvm.EncodeFields(c.fields))
			if c.holdKey {
				unlock, err := host.FileLocker{Root: v.root}.Lock(context.Background(), "volinit-"+strings.TrimPrefix(c.lv, "v-"))
				must(t, err)
				defer unlock()
			}
			v.reattach()
			if removed := !v.hasLV(c.lv); removed != c.removed {
				t.Fatalf("removed = %v, want %v", removed, c.removed)
			}
		})
	}
}

// SR.destroy removes only LVs that are sanvol's dead creates: an LV of
// another tool carrying a create mark stops it.
func TestSRDestroyChecksTheLVIsOurs(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	v.rawLV("data", lvm.EncodeFields(map[string]string{"I": initMark(time.Now().Add(-48*time.Hour), testHost)}))
	err := v.e.SRDestroy(context.Background(), sr)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "data") {
		t.Fatalf("SR.destroy = %v", err)
	}
	if !v.hasLV("data") || !v.sim.HasVG() {
		t.Fatal("SR.destroy removed an LV that is not sanvol's")
	}
}

// A damaged tag costs only its own field of its own LV: the SR attaches
// and lists, the other volumes are intact, the damaged one keeps what
// does decode and says what does not.
func TestDamagedTagsStayLocal(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	good, err := v.e.VolumeCreate(ctx, sr, "good", "", 4*mib, false)
	must(t, err)
	bad, err := v.e.VolumeCreate(ctx, sr, "bad", "", 4*mib, false)
	must(t, err)
	must(t, v.e.VolumeSet(ctx, sr, bad.Key, "vdi-type", "user"))
	must(t, v.e.VolumeSet(ctx, sr, good.Key, "vdi-type", "user"))
	c := lvm.New(v.sim, nil)
	// A description chunk without chunk 0, a key record of a foreign
	// shape, and a stray chunk on the VG's name.
	must(t, c.LVChangeTags(ctx, v.scope(), v.vg(), "v-"+bad.Key, nil, []string{"sv.D.3:x", "sv.k00.0:junk"}))
	must(t, c.VGChangeTags(ctx, v.scope(), v.vg(), nil, []string{"sv.N.7:x"}))
	v.reattach()
	vols, err := v.e.SRLs(ctx, sr)
	if err != nil || len(vols) != 2 {
		t.Fatalf("SR.ls = %v, %v", vols, err)
	}
	for _, vol := range vols {
		switch vol.Key {
		case good.Key:
			if vol.Name != "good" || vol.Keys["vdi-type"] != "user" || vol.Description != "" {
				t.Fatalf("the intact volume changed: %+v", vol)
			}
		case bad.Key:
			if vol.Name != "bad" || vol.Keys["vdi-type"] != "user" || !strings.Contains(vol.Description, "cannot decode") {
				t.Fatalf("the damaged volume: %+v", vol)
			}
		}
	}
	if st, err := v.e.SRStat(ctx, sr); err != nil || st.Description != "desc" {
		t.Fatalf("SR.stat = %+v, %v", st, err)
	}
	if p := volume.Problem(v.lvmLV(bad.Key)); !strings.Contains(p, "damaged tags") {
		t.Fatalf("Problem = %q", p)
	}
	if p := volume.Problem(v.lvmLV(good.Key)); p != "" {
		t.Fatalf("Problem of a healthy volume = %q", p)
	}
}

func (v *env) lvmLV(key string) lvm.LV {
	v.t.Helper()
	l, err := lvm.New(v.sim, nil).LV(context.Background(), v.scope(), v.vg(), "v-"+key)
	if err != nil {
		v.t.Fatal(err)
	}
	return l
}

// A resize mark that sanvol did not write for this LV at this size makes
// resize refuse without zeroing anything: it would erase what the guest
// wrote.
func TestForeignGrowMarkZeroesNothing(t *testing.T) {
	for _, mark := range []func(l lvm.LV) string{
		func(l lvm.LV) string { return "0" },                                              // the old format: "zeroed up to 0"
		func(l lvm.LV) string { return fmt.Sprintf("0:%d:%s", l.Size, l.UUID) },           // from 0
		func(l lvm.LV) string { return fmt.Sprintf("%d:%d:other-uuid", 4*mib, l.Size) },   // another LV's
		func(l lvm.LV) string { return fmt.Sprintf("%d:%d:%s", 4*mib, 12*mib, l.UUID) },   // neither size
		func(l lvm.LV) string { return fmt.Sprintf("%d:%d:%s", 4*mib+1, l.Size, l.UUID) }, // not extent-aligned
		func(l lvm.LV) string { return fmt.Sprintf("%d:%d:%s", l.Size, 4*mib, l.UUID) },   // backwards
	} {
		v := newEnv(t, host.Role{Master: true})
		sr := v.createSR()
		ctx := context.Background()
		vol, err := v.e.VolumeCreate(ctx, sr, "n", "", 8*mib, false)
		must(t, err)
		l := v.lvmLV(vol.Key)
		m := mark(l)
		must(t, lvm.New(v.sim, nil).LVChangeTags(ctx, v.scope(), v.vg(), l.Name, nil, lvm.EncodeField("G", m)))
		zeroes := v.sim.Ops[lvmtest.ZeroOutCmd]
		err = v.e.VolumeResize(ctx, sr, vol.Key, 16*mib)
		if err == nil || !strings.Contains(err.Error(), "cannot trust") {
			t.Fatalf("mark %q: resize = %v", m, err)
		}
		if v.sim.Ops[lvmtest.ZeroOutCmd] != zeroes {
			t.Fatalf("mark %q: resize zeroed on a foreign mark's word", m)
		}
		if got := v.lvmLV(vol.Key); got.Size != l.Size {
			t.Fatalf("mark %q: the LV was resized to %d", m, got.Size)
		}
		if p := volume.Problem(v.lvmLV(vol.Key)); !strings.Contains(p, "resize") {
			t.Fatalf("mark %q: Problem = %q", m, p)
		}
	}
}

// blockingZeroer holds the zeroing of one device until released, so a
// test can act while a resize zeroes.
type blockingZeroer struct {
	sim      *lvmtest.Sim
	dev      string
	started  chan struct{}
	release  chan struct{}
	startOne sync.Once
}

func (b *blockingZeroer) ZeroOut(ctx context.Context, dev string, off, length int64) error {
	if dev == b.dev {
		b.startOne.Do(func() { close(b.started) })
		<-b.release
	}
	return b.sim.ZeroOut(ctx, dev, off, length)
}

// A resize zeroes outside the SR lock: other calls on the SR go on, while
// a second resize or a destroy of the same volume is kept off until the
// zeroing is done.
func TestResizeZeroesOutsideTheSRLock(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "", 8*mib, false)
	must(t, err)
	br := &blockingZeroer{sim: v.sim, dev: "/dev/" + v.vg() + "/v-" + vol.Key, started: make(chan struct{}), release: make(chan struct{})}
	engine := func(z volume.Zeroer) *volume.Engine {
		e, err := volume.New(volume.Options{LVM: lvm.New(v.sim, nil), Transport: v.tr, Runner: v.sim, Zeroer: z, Locker: host.FileLocker{Root: v.root},
			Root: v.root, Role: host.Role{Master: true}, HostID: testHost, LockWait: 300 * time.Millisecond})
		must(t, err)
		return e
	}
	done := make(chan error, 1)
	go func() { done <- engine(br).VolumeResize(ctx, sr, vol.Key, 64*mib) }()
	<-br.started
	other := engine(v.sim)
	must(t, other.SRSetName(ctx, sr, "renamed"))
	if _, err := other.VolumeCreate(ctx, sr, "another", "", 4*mib, false); err != nil {
		t.Fatalf("Volume.create during a resize's zeroing: %v", err)
	}
	if got, err := other.VolumeStat(ctx, sr, vol.Key); err != nil || got.Incomplete == "" {
		t.Fatalf("Volume.stat during the zeroing = %+v, %v", got, err)
	}
	if err := other.VolumeResize(ctx, sr, vol.Key, 128*mib); !errors.Is(err, host.ErrBusy) {
		t.Fatalf("a second resize during the zeroing = %v", err)
	}
	if err := other.VolumeDestroy(ctx, sr, vol.Key); !errors.Is(err, host.ErrBusy) {
		t.Fatalf("a destroy during the zeroing = %v", err)
	}
	close(br.release)
	must(t, <-done)
	l := v.sim.LVs()["v-"+vol.Key]
	got, err := other.VolumeStat(ctx, sr, vol.Key)
	must(t, err)
	if got.VirtualSize != 64*mib || got.Incomplete != "" || !l.FullyZeroed(v.sim.ExtentSize()) || l.Active {
		t.Fatalf("after the resize: %+v zeroed=%v active=%v", got, l.FullyZeroed(v.sim.ExtentSize()), l.Active)
	}
	must(t, other.VolumeDestroy(ctx, sr, vol.Key))
}

// A lock that cannot be taken at all is reported as what it is, not as
// another call holding it.
func TestLockFailureIsNotContention(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	dir := v.root.Path(host.LockDir)
	must(t, os.RemoveAll(dir))
	must(t, os.WriteFile(dir, nil, 0o600))
	err := v.e.SRSetName(context.Background(), sr, "x")
	if err == nil || errors.Is(err, host.ErrBusy) || strings.Contains(err.Error(), "another sanvol call") || !strings.Contains(err.Error(), host.LockDir) {
		t.Fatalf("SR.set_name with a broken lock directory = %v", err)
	}
	if err := v.e.VolumeDestroy(context.Background(), sr, "00000000-0000-4000-8000-000000000001"); err == nil || strings.Contains(err.Error(), "zeroing") {
		t.Fatalf("Volume.destroy with a broken lock directory = %v", err)
	}
}

// A repeat that asks for more than the crashed resize zeroes from the old
// size to the new target in one go.
func TestResizeRepeatAsksForMore(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	sr := v.createSR()
	ctx := context.Background()
	vol, err := v.e.VolumeCreate(ctx, sr, "n", "", 8*mib, false)
	must(t, err)
	v.crashAt(volume.StepVolumeResizeLVExtend, func() error { return v.e.VolumeResize(ctx, sr, vol.Key, 40*mib) })
	must(t, v.e.VolumeResize(ctx, sr, vol.Key, 60*mib))
	got, err := v.e.VolumeStat(ctx, sr, vol.Key)
	must(t, err)
	l := v.sim.LVs()["v-"+vol.Key]
	if got.VirtualSize != 60*mib || got.Incomplete != "" || !l.FullyZeroed(v.sim.ExtentSize()) {
		t.Fatalf("after the larger repeat: %+v zeroed=%v", got, l.FullyZeroed(v.sim.ExtentSize()))
	}
	if f, _, _ := lvm.DecodeFields(l.Tags); f["G"] != "" {
		t.Fatalf("resize mark left: %v", l.Tags)
	}
}

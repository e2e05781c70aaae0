//go:build lab

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// Issue 17's "SIGKILL at every step (rebuild from tags)", on one host
// against the real kernel: every step of the snapshot, delete (merge),
// clone and clone-destroy operations is killed by SIGKILL in a helper
// process (TestSnapshotHelperProcess) while volume K is active here and
// written with O_DIRECT, and the next call, made the way xapi makes it,
// rebuilds from the LVM tags. After each kill and its next call:
//
//   - the writer saw no write error, and K holds exactly what it wrote
//     (the writer is halted and K read whole against its model);
//   - the chain in K's base LV tags has no intent, and the live dm stack
//     (dmsetup table of K and of the middle device) is what it says;
//   - every snapshot that survived reads as K did at one instant within
//     its call (seqWriter.match), and the older ones are unchanged;
//   - the case ends with K's LV alone in the SR.
//
// One SR and one volume serve every step. The unit tests
// (volume/*_test.go, crashThenRepair) kill the same steps against fakes;
// this proves the repair against device-mapper and LVM themselves.

// killLUNSize holds the 32 MiB volume and four COW-sized LVs (a finished
// clone of K killed at its commit, repeated: two hidden snapshots and two
// clones) next to the metadata.
const killLUNSize = (volume.MetadataAreaMiB + 256) << 20

// killLab is the scenario's state: K active under the writer w.
type killLab struct {
	*snapLab
	key, k  string // K's key and device
	size    int64
	rdev    string // K's device number: blkback holds it
	w       *seqWriter
	n       int64             // writes done when w was last halted
	sums    map[string]string // imageSum of each snapshot's image when taken
	helpers int
	// top is the scenario's own test: the writer outlives each step's
	// subtest (a subtest's cleanup would halt it).
	top *testing.T
}

func TestSnapshotKillEveryStep(t *testing.T) {
	nvmeLab(t)
	const size = 32 << 20
	l := newSnapLab(t, newEngineLab(t, "snapkill", killLUNSize))
	v, uri, k := l.liveVolume(t, "k", size, "7")
	// The plugin's engine knows this host's id (plugin/services.go), and
	// so does the helper's: a clone whose create died here is removed by
	// the next call at once, not after volume.InitLease.
	e, err := volume.New(volume.Options{LVM: lvm.New(l.runner, l.log), Transport: l.tr, Runner: l.runner,
		Locker: host.FileLocker{Root: l.root}, Root: l.root, Role: host.Role{Master: true}, Log: l.log, Version: "lab",
		HostID: host.ID(l.root)})
	if err != nil {
		t.Fatal(err)
	}
	l.e = e
	kl := &killLab{snapLab: l, key: v.Key, k: k, size: size, rdev: devNumber(t, k), sums: map[string]string{}, top: t}
	kl.w = startSeqWriter(t, k, size)
	// One full pass first: from then on the model covers every chunk.
	kl.w.wait(t, int64(kl.w.chunks)+4)
	kl.checkK(t, "first pass")

	cases := map[string]func(*testing.T, string){}
	for _, s := range volume.SnapshotSteps() {
		if strings.HasPrefix(s, "snapshot:") {
			cases[s] = kl.killSnapshot
		} else {
			cases[s] = kl.killMerge
		}
	}
	for _, s := range []string{volume.StepCloneLVCreate, volume.StepCloneZero, volume.StepCloneDeactivate, volume.StepCloneCommit} {
		cases[s] = kl.killClone
	}
	cases[volume.StepCloneDestroyed] = kl.killCloneDestroy
	cases[volume.StepSnapshotHide] = kl.killHide
	steps := slices.Concat(volume.SnapshotSteps(), volume.CloneSteps())
	start := time.Now()
	for _, step := range steps {
		run := cases[step]
		if run == nil {
			t.Fatalf("step %s has no kill case here: add one", step)
		}
		began := time.Now()
		if !t.Run(strings.ReplaceAll(step, ":", "_"), func(t *testing.T) {
			run(t, step)
			kl.clean(t, step)
		}) {
			break
		}
		t.Logf("%s: killed and repaired in %s", step, time.Since(began).Round(time.Second))
	}
	t.Logf("%d steps, %d helper processes killed, in %s; the writer made %d writes, 0 errors",
		len(steps), kl.helpers, time.Since(start).Round(time.Second), kl.w.completed.Load())
	if t.Failed() {
		return
	}

	// K's data after the last merge: exactly what the writer wrote.
	n := kl.halt(t, "the end")
	if tab := l.kTable(t, v.Key); tab[0].Type != "linear" {
		t.Fatalf("K at the end: %v", tab)
	}
	base := lvm.DevicePath(l.vg, volume.LVName(v.Key))
	if _, got := kl.w.match(t, base, n, n); got != n {
		t.Fatalf("the base holds the content after write %d, want %d", got, n)
	}
	if err := l.dp.Deactivate(l.ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Detach(l.ctx, uri, "7"); err != nil {
		t.Fatal(err)
	}
	if err := l.e.VolumeDestroy(l.ctx, l.sr, v.Key); err != nil {
		t.Fatal(err)
	}
	if got := l.lvNames(t); len(got) != 0 {
		t.Fatalf("LVs left at the end: %v", got)
	}
}

// halt stops the writer and checks its errors and K's content.
func (kl *killLab) halt(t *testing.T, what string) int64 {
	t.Helper()
	n := kl.w.halt()
	kl.w.mu.Lock()
	errs := kl.w.errs
	kl.w.mu.Unlock()
	if len(errs) != 0 {
		t.Fatalf("%s: %d write errors, first: %v", what, len(errs), errs[0])
	}
	if _, got := kl.w.match(t, kl.k, n, n); got != n {
		t.Fatalf("%s: K holds the content after write %d, want %d", what, got, n)
	}
	kl.n = n
	return n
}

// checkK proves K lost nothing so far (halt) and resumes the writer.
func (kl *killLab) checkK(t *testing.T, what string) {
	t.Helper()
	kl.halt(t, what)
	kl.w = startSeqWriterAt(kl.top, kl.k, kl.size, kl.n)
	kl.w.wait(t, 2)
}

// chain reads K's chain from its base LV's tags (volume/chain.go: field
// C lists the snapshots oldest first, field X is the step under way).
func (kl *killLab) chain(t *testing.T) (snaps []string, intent string) {
	t.Helper()
	l, err := lvm.New(kl.runner, kl.log).LV(kl.ctx, kl.scope(), kl.vg, volume.LVName(kl.key))
	if err != nil {
		t.Fatal(err)
	}
	f, bad, _ := lvm.DecodeEachField(l.Tags)
	if len(bad) != 0 {
		t.Fatalf("K's tags %v: %v", l.Tags, bad)
	}
	return strings.Fields(f["C"]), f["X"]
}

// agree checks that the chain in the tags has no step left under way and
// that the live stack is what it says (volume/stack.go, layout), and
// returns the chain.
func (kl *killLab) agree(t *testing.T, what string) []string {
	t.Helper()
	snaps, intent := kl.chain(t)
	if intent != "" {
		t.Fatalf("%s: K's tags still record a step under way: %q (chain %v)", what, intent, snaps)
	}
	kl.noneSuspended(t, what)
	if got := devNumber(t, kl.k); got != kl.rdev {
		t.Fatalf("%s: K's device number changed from %s to %s", what, kl.rdev, got)
	}
	num := func(lv string) string { return devNumber(t, lvm.DevicePath(kl.vg, lv)) }
	base := num(volume.LVName(kl.key))
	type dev struct{ name, typ, args string }
	var want []dev
	kname := volume.DevName(testSRUUID, kl.key)
	switch len(snaps) {
	case 0:
		want = []dev{{kname, "linear", base + " 0"}}
	case 1:
		want = []dev{{kname, "snapshot", base + " " + num("s-"+snaps[0]) + " P 16"}}
	case 2:
		m := volume.DevName(testSRUUID, snaps[1])
		want = []dev{{m, "snapshot", base + " " + num("s-"+snaps[0]) + " P 16"},
			{kname, "snapshot", devNumber(t, volume.DevPath(testSRUUID, snaps[1])) + " " + num("s-"+snaps[1]) + " P 16"}}
	default:
		t.Fatalf("%s: chain %v is deeper than sanvol builds", what, snaps)
	}
	var names []string
	for _, d := range want {
		tab, err := kl.dm.Table(kl.ctx, d.name)
		if err != nil || len(tab) != 1 || tab[0].Type != d.typ || tab[0].Args != d.args {
			t.Fatalf("%s: chain %v in the tags, but %s's table is %v (%v); want %s %s", what, snaps, d.name, tab, err, d.typ, d.args)
		}
		names = append(names, d.name)
	}
	slices.Sort(names)
	if got := sanvolDevs(); !slices.Equal(got, names) {
		t.Fatalf("%s: sanvol devices %v, want %v for chain %v", what, got, names, snaps)
	}
	if got := kl.cows(t); !slices.Equal(got, slices.Sorted(slices.Values(snaps))) {
		t.Fatalf("%s: COW LVs %v, chain %v", what, got, snaps)
	}
	return snaps
}

// image is snapshot snap's image device for chain snaps: the base for
// the oldest, the read-only middle device for the newer.
func (kl *killLab) image(t *testing.T, snaps []string, snap string) string {
	t.Helper()
	switch slices.Index(snaps, snap) {
	case 0:
		return lvm.DevicePath(kl.vg, volume.LVName(kl.key))
	case 1:
		return volume.DevPath(testSRUUID, snap)
	}
	t.Fatalf("snapshot %s is not in the chain %v", snap, snaps)
	return ""
}

// frozen checks that snap's image is K's content at one instant between
// writes lo and hi, and records its checksum.
func (kl *killLab) frozen(t *testing.T, snaps []string, snap string, lo, hi int64) {
	t.Helper()
	sum, n := kl.w.match(t, kl.image(t, snaps, snap), lo, hi)
	kl.sums[snap] = sum
	t.Logf("snapshot %.8s: K after write %d (of %d..%d)", snap, n, lo, hi)
}

// unchanged checks that the images of the chain's snapshots are what
// they were when taken.
func (kl *killLab) unchanged(t *testing.T, snaps []string, what string) {
	t.Helper()
	for _, s := range snaps {
		want, ok := kl.sums[s]
		if !ok {
			t.Fatalf("%s: snapshot %s was never checked", what, s)
		}
		if got := imageSum(t, kl.image(t, snaps, s), kl.size); got != want {
			t.Fatalf("%s: the image of snapshot %s changed", what, s)
		}
	}
}

// snapshot takes a snapshot with the in-process engine and checks its
// image.
func (kl *killLab) snapshot(t *testing.T) string {
	t.Helper()
	lo := kl.w.completed.Load()
	s, err := kl.e.Snapshot(kl.ctx, kl.sr, kl.key, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	snaps := kl.agree(t, "snapshot")
	kl.frozen(t, snaps, s.Key, lo, kl.w.started.Load())
	return s.Key
}

// kill runs op on key in the helper, killed at step; writes go on after
// it (K is not left suspended).
func (kl *killLab) kill(t *testing.T, op, key, step string) {
	t.Helper()
	kl.w.wait(t, 2)
	kl.killAt(t, snapHelperArgs{Op: op, Key: key, Crash: step})
	kl.helpers++
	kl.w.wait(t, 4)
}

func (kl *killLab) destroy(t *testing.T, key string) {
	t.Helper()
	if err := kl.e.VolumeDestroy(kl.ctx, kl.sr, key); err != nil {
		t.Fatalf("Volume.destroy %s: %v", key, err)
	}
}

// clones lists the SR's volume LVs other than K's.
func (kl *killLab) clones(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, n := range kl.lvNames(t) {
		if k, ok := strings.CutPrefix(n, "v-"); ok && k != kl.key {
			out = append(out, k)
		}
	}
	return out
}

// clean brings the SR back to K alone (clones destroyed, snapshots
// deleted oldest first, as xapi's Volume.destroy does), checking the
// remaining images on the way; then only K's LV is left.
func (kl *killLab) clean(t *testing.T, what string) {
	t.Helper()
	for _, c := range kl.clones(t) {
		kl.destroy(t, c)
	}
	for range volume.MaxDepth + 1 {
		snaps := kl.agree(t, what+", cleaning")
		if len(snaps) == 0 {
			break
		}
		kl.destroy(t, snaps[0])
		kl.unchanged(t, kl.agree(t, what+", cleaning"), what+", after a merge")
	}
	if snaps := kl.agree(t, what+", clean"); len(snaps) != 0 {
		t.Fatalf("%s: chain %v left after cleaning", what, snaps)
	}
	if got, want := kl.lvNames(t), []string{volume.LVName(kl.key)}; !slices.Equal(got, want) {
		t.Fatalf("%s: LVs %v left, want K's only", what, got)
	}
	kl.checkK(t, what+", clean")
}

// killSnapshot kills Volume.snapshot of K at step; the next call is
// xapi's retry of VDI.snapshot, which repairs first: rolled back before
// the switch (the COW goes), forward from it (K may have written into
// the COW: the killed snapshot stays, a volume xapi's SR.scan lists).
func (kl *killLab) killSnapshot(t *testing.T, step string) {
	lo := kl.w.completed.Load()
	kl.kill(t, "snapshot", kl.key, step)
	hiKill := kl.w.started.Load()
	kl.checkK(t, "after the kill")
	lo2 := kl.w.completed.Load()
	s, err := kl.e.Snapshot(kl.ctx, kl.sr, kl.key, "k", "")
	if err != nil {
		t.Fatalf("the repeated snapshot: %v", err)
	}
	hi := kl.w.started.Load()
	snaps := kl.agree(t, "repeated snapshot")
	forward := step == volume.StepSnapshotSwitch || step == volume.StepSnapshotCommit
	want := 1
	if forward {
		want = 2
	}
	if len(snaps) != want || snaps[len(snaps)-1] != s.Key {
		t.Fatalf("chain %v after the repeated snapshot %s; the killed one rolled forward: %t", snaps, s.Key, forward)
	}
	if forward {
		kl.frozen(t, snaps, snaps[0], lo, hiKill)
	}
	kl.frozen(t, snaps, s.Key, lo2, hi)
	kl.checkK(t, "after the repeated snapshot")
}

// killMerge kills Volume.destroy of the older of two snapshots at step
// (Xen Orchestra's pattern: the merge under the newer one), then of the
// last one (the merge into K's base); the next call each time is xapi's
// repeat of the destroy, which finishes the merge from the tags.
func (kl *killLab) killMerge(t *testing.T, step string) {
	p := kl.snapshot(t)
	n := kl.snapshot(t)
	for i, s := range []string{p, n} {
		kl.kill(t, "destroy", s, step)
		kl.destroy(t, s)
		snaps := kl.agree(t, "repeated destroy")
		if want := []string{p, n}[i+1:]; !slices.Equal(snaps, want) {
			t.Fatalf("chain %v after the repeated destroy of %s, want %v", snaps, s, want)
		}
		kl.unchanged(t, snaps, "after the repeated destroy")
		kl.checkK(t, fmt.Sprintf("merge of snapshot %d of 2 killed at %s", i+1, step))
	}
}

// killClone kills Volume.clone of K (what reset-on-boot does at every VM
// start) at step; the next call is the next VM start's clone, whose
// repair removes a clone whose create died, and merges its hidden
// snapshot. A clone killed after its commit is finished: it stays.
func (kl *killLab) killClone(t *testing.T, step string) {
	lo := kl.w.completed.Load()
	kl.kill(t, "clone", kl.key, step)
	hiKill := kl.w.started.Load()
	lo2 := kl.w.completed.Load()
	c, err := kl.e.VolumeClone(kl.ctx, kl.sr, kl.key)
	if err != nil {
		t.Fatalf("the repeated clone: %v", err)
	}
	hi := kl.w.started.Load()
	kept := step == volume.StepCloneCommit
	snaps := kl.agree(t, "repeated clone")
	clones := kl.clones(t)
	want := 1
	if kept {
		want = 2
	}
	if len(snaps) != want || len(clones) != want || !slices.Contains(clones, c.Key) {
		t.Fatalf("chain %v and clones %v after the repeated clone %s; the killed one was finished: %t", snaps, clones, c.Key, kept)
	}
	if listed := kl.listed(t); len(listed) != 1+len(clones) {
		t.Fatalf("SR.ls after the repeated clone lists %d volumes, want K and %v", len(listed), clones)
	}
	// Each clone starts as K was when its hidden snapshot froze it.
	for _, cl := range clones {
		a, b := lo2, hi
		if cl != c.Key {
			a, b = lo, hiKill
		}
		dev := kl.use(t, cl, "8")
		_, at := kl.w.match(t, dev, a, b)
		kl.release(t, cl, "8")
		t.Logf("clone %.8s: K after write %d (of %d..%d)", cl, at, a, b)
	}
	kl.checkK(t, "after the repeated clone")
	// The clones go (reset-on-boot's shutdown); a hidden snapshot is
	// merged once no clone needs it or the newer one's image.
	for _, cl := range clones {
		kl.destroy(t, cl)
	}
	if snaps := kl.agree(t, "clones destroyed"); len(snaps) != 0 {
		t.Fatalf("hidden snapshots %v left after their clones went", snaps)
	}
}

// killCloneDestroy kills Volume.destroy of a clone of K after its LV
// went, before its hidden snapshot is merged; xapi's repeat finds the
// clone gone, and the next chain call on K merges the snapshot.
func (kl *killLab) killCloneDestroy(t *testing.T, step string) {
	c, err := kl.e.VolumeClone(kl.ctx, kl.sr, kl.key)
	if err != nil {
		t.Fatal(err)
	}
	snaps := kl.agree(t, "clone")
	if len(snaps) != 1 {
		t.Fatalf("chain %v after a clone of K", snaps)
	}
	kl.kill(t, "destroy", c.Key, step)
	kl.destroy(t, c.Key)
	if got := kl.clones(t); len(got) != 0 {
		t.Fatalf("clones %v after the repeated destroy", got)
	}
	if err := kl.e.RepairChain(kl.ctx, kl.sr, kl.key); err != nil {
		t.Fatal(err)
	}
	if snaps := kl.agree(t, "next chain call"); len(snaps) != 0 {
		t.Fatalf("the hidden snapshot of a destroyed clone stays: %v", snaps)
	}
	kl.checkK(t, "after the repeated clone destroy")
}

// killHide kills Volume.destroy of a snapshot a clone uses after it hid
// the snapshot; xapi's repeat succeeds, the image stays under the clone,
// and the clone's destroy merges it.
func (kl *killLab) killHide(t *testing.T, step string) {
	s := kl.snapshot(t)
	c, err := kl.e.VolumeClone(kl.ctx, kl.sr, s)
	if err != nil {
		t.Fatal(err)
	}
	kl.kill(t, "destroy", s, step)
	kl.destroy(t, s)
	snaps := kl.agree(t, "repeated destroy")
	if !slices.Equal(snaps, []string{s}) {
		t.Fatalf("chain %v after hiding %s", snaps, s)
	}
	if _, ok := kl.listed(t)[s]; ok {
		t.Fatal("a destroyed snapshot is still listed")
	}
	kl.unchanged(t, snaps, "hidden")
	dev := kl.use(t, c.Key, "8")
	if imageSum(t, dev, kl.size) != kl.sums[s] {
		t.Fatal("the clone does not read its hidden parent's image")
	}
	kl.release(t, c.Key, "8")
	kl.checkK(t, "after the repeated hide")
	kl.destroy(t, c.Key)
	if snaps := kl.agree(t, "clone destroyed"); len(snaps) != 0 {
		t.Fatalf("the hidden snapshot stays after its clone went: %v", snaps)
	}
}

package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// DevName is the device-mapper name of volume key's device on a host
// where it is attached: what Datapath.attach hands to blkback. It maps
// the LV linearly until the volume has a snapshot, and then the overlay
// stack; its major:minor never changes while it exists, because every
// step reloads its table instead of replacing it.
func DevName(sr, key string) string { return "sanvol-" + sr + "-" + key }

// DevPath is DevName's device node.
func DevPath(sr, key string) string { return "/dev/mapper/" + DevName(sr, key) }

// DatapathLock is the per-volume lock the datapath holds around attach,
// activate, deactivate and detach on a host; the snapshot steps hold it
// too, so a table switch never races an attach or a detach here.
func DatapathLock(sr, key string) string { return "dp-" + sr + "-" + key }

// StackLVM is the part of the lvm client the stack uses.
type StackLVM interface {
	LV(ctx context.Context, s lvm.Scope, vg, lv string) (lvm.LV, error)
	LVs(ctx context.Context, s lvm.Scope, vg string) ([]lvm.LV, error)
	Activate(ctx context.Context, s lvm.Scope, vg, lv string) error
	Deactivate(ctx context.Context, s lvm.Scope, vg, lv string) error
}

// Stack builds, switches and takes down the device-mapper devices of a
// volume on this host, from its chain (chain.go).
type Stack struct {
	DM  *blockdev.DM
	LVM StackLVM
	// DevNum returns a device node's "major:minor", the way `dmsetup
	// table` names the devices a live table maps; nil stats the node
	// under Root.
	DevNum func(path string) (string, error)
	Root   host.Root
	Log    *zap.Logger
	// MergePoll is how often a merge's progress is read; 0 means from
	// 250 ms, doubling up to 2 s (mergePollFirst, mergePollMost).
	MergePoll time.Duration
	// Inactive reports whether this host's datapath holds volume key
	// attached for no active domain (datapath.Inactive): between an
	// attach and its activate, or after a deactivate. nil: a device
	// here always counts as in use here.
	Inactive func(sr, key string) (bool, error)
	// Unlocked runs f with this host's datapath lock on the volume let
	// go and takes the lock again after: the host plugin holds it around
	// a call, and MergeHere's wait does not need it. nil runs f as it
	// is.
	Unlocked func(ctx context.Context, f func(context.Context) error) error
	// MemoryWarnOnly turns the refusal of a snapshot whose overlay could
	// outgrow dom0's memory into a warning (the host's sanvol.conf,
	// snapshot-memory-check=warn): for an admin who knows the VDI
	// changes little while its snapshot lives.
	MemoryWarnOnly bool
}

func (st *Stack) unlocked(ctx context.Context, f func(context.Context) error) error {
	if st.Unlocked == nil {
		return f(ctx)
	}
	return st.Unlocked(ctx, f)
}

func (st *Stack) log() *zap.Logger {
	if st.Log == nil {
		return zap.NewNop()
	}
	return st.Log
}

func (st *Stack) devNum(path string) (string, error) {
	if st.DevNum != nil {
		return st.DevNum(path)
	}
	fi, err := st.Root.Stat(path)
	if err != nil {
		return "", err
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode()&os.ModeDevice == 0 {
		return "", fmt.Errorf("%s is not a device node", path)
	}
	rdev := uint64(sys.Rdev)
	major := (rdev >> 8 & 0xfff) | (rdev >> 32 & ^uint64(0xfff))
	minor := (rdev & 0xff) | (rdev >> 12 & ^uint64(0xff))
	return fmt.Sprintf("%d:%d", major, minor), nil
}

// dmDev is one device of a stack as it must be.
type dmDev struct {
	name     string
	table    blockdev.Table
	readOnly bool
}

// where names a volume's SR for the stack.
type where struct {
	sr, vg string
	scope  lvm.Scope
}

// layout is the stack K's chain asks for, bottom-up; the last device is
// K's own (research/dm-snapshot-lab.md has the sequences it comes from):
//
//	no snapshot:  K = linear(base)
//	one:          K = snapshot(base, cow0)       (snapshot-merge while S0 merges)
//	two:          M = snapshot(base, cow0), read-only: S1's image
//	              K = snapshot(M, cow1)          (M is snapshot-merge while S0 merges)
func layout(w where, c Chain, sectors uint64) ([]dmDev, error) {
	snaps, merging := c.Live()
	if merging != "" && (len(snaps) == 0 || snaps[0] != merging) {
		return nil, fmt.Errorf("volume %s merges %s, which is not its oldest snapshot", c.Key, merging)
	}
	base := lvm.DevicePath(w.vg, lvName(c.Key))
	cow := func(i int) string { return lvm.DevicePath(w.vg, cowName(snaps[i])) }
	over := func(origin string, i int) blockdev.Table {
		if i == 0 && merging != "" {
			return blockdev.SnapshotMerge(origin, cow(i), sectors)
		}
		return blockdev.Snapshot(origin, cow(i), sectors)
	}
	k := DevName(w.sr, c.Key)
	switch len(snaps) {
	case 0:
		return []dmDev{{name: k, table: blockdev.Linear(base, sectors)}}, nil
	case 1:
		return []dmDev{{name: k, table: over(base, 0)}}, nil
	case 2:
		m := DevName(w.sr, snaps[1])
		// snapshot-merge writes its origin: only while merging is M
		// writable.
		return []dmDev{{name: m, table: over(base, 0), readOnly: merging == ""},
			{name: k, table: blockdev.Snapshot("/dev/mapper/"+m, cow(1), sectors)}}, nil
	}
	return nil, fmt.Errorf("volume %s has %d snapshots; sanvol builds at most %d", c.Key, len(snaps), MaxDepth)
}

// numbered is t with device paths replaced by "major:minor", as the
// kernel prints a live table.
func (st *Stack) numbered(t blockdev.Table) (blockdev.Table, error) {
	out := make(blockdev.Table, len(t))
	for i, tg := range t {
		f := strings.Fields(tg.Args)
		for j := range f {
			if strings.HasPrefix(f[j], "/dev/") {
				n, err := st.devNum(f[j])
				if err != nil {
					return nil, err
				}
				f[j] = n
			}
		}
		tg.Args = strings.Join(f, " ")
		out[i] = tg
	}
	return out, nil
}

// state is how far a device is from what it must be.
type state struct {
	info blockdev.DevInfo
	same bool // exists, and its live table is the wanted one
}

func (st *Stack) state(ctx context.Context, d dmDev) (state, error) {
	info, err := st.DM.Info(ctx, d.name)
	if err != nil || !info.Exists {
		return state{info: info}, err
	}
	live, err := st.DM.Table(ctx, d.name)
	if err != nil {
		return state{}, err
	}
	want, err := st.numbered(d.table)
	if err != nil {
		// A device the wanted table maps is missing: it cannot be the
		// live table.
		return state{info: info}, nil
	}
	return state{info: info, same: live.String() == want.String()}, nil
}

func (s state) settled() bool { return s.same && !s.info.Suspended && !s.info.Inactive }

// ensure makes one device what it must be, K suspended above it if K
// exists: created, or reloaded, or resumed after a process died with it
// suspended.
func (st *Stack) ensure(ctx context.Context, d dmDev) error {
	s, err := st.state(ctx, d)
	if err != nil {
		return err
	}
	switch {
	case !s.info.Exists:
		if err := st.DM.Create(ctx, d.name, d.table, d.readOnly); err != nil {
			// A device whose first resume failed hangs its openers
			// (udev too): it goes.
			rctx, cancel := host.RollbackContext(ctx, time.Minute)
			defer cancel()
			if rerr := st.DM.Remove(rctx, d.name); rerr != nil {
				st.log().Error("a device whose create failed is still there", zap.String("device", d.name), zap.Error(rerr))
			}
			return err
		}
	case !s.same || s.info.Inactive:
		return st.DM.Suspended(ctx, []string{d.name}, func(ctx context.Context) error { return st.DM.Load(ctx, d.name, d.table) })
	case s.info.Suspended:
		return st.DM.Resume(ctx, d.name)
	}
	return nil
}

// converge makes the devices of K's stack on this host what devs (from
// layout) says, and removes extras, the devices of layers that are gone.
// With K absent the stack is built bottom-up. With K present every change
// happens under K suspended, so blkback sees one pause and K keeps its
// major:minor. Extras are suspended as well before K resumes: an extra
// may hold a COW that K's new table takes over, and the kernel hands a
// COW over only from a suspended holder (else the resume fails, -EINVAL).
// It also repairs what a killed process left: devices suspended, a
// loaded table never resumed, a K whose COW was handed over.
func (st *Stack) converge(ctx context.Context, devs []dmDev, extras []string) error {
	top := devs[len(devs)-1]
	lower := devs[:len(devs)-1]
	ks, err := st.state(ctx, top)
	if err != nil {
		return err
	}
	if !ks.info.Exists {
		for _, d := range devs {
			if err := st.ensure(ctx, d); err != nil {
				return err
			}
		}
		return st.removeExtras(ctx, extras)
	}
	var present []string
	for _, x := range extras {
		info, err := st.DM.Info(ctx, x)
		if err != nil {
			return err
		}
		if info.Exists {
			present = append(present, x)
		}
	}
	change := !ks.settled() || len(present) > 0
	for _, d := range lower {
		s, err := st.state(ctx, d)
		if err != nil {
			return err
		}
		change = change || !s.settled()
	}
	if !change {
		return nil
	}
	// K is suspended first and resumed last; the extras are suspended
	// after K and stay so until they are removed.
	held := false
	err = st.DM.Suspended(ctx, []string{top.name}, func(ctx context.Context) error {
		for _, x := range present {
			if err := st.DM.Suspend(ctx, x); err != nil {
				return err
			}
			held = true
		}
		for _, d := range lower {
			if err := st.ensure(ctx, d); err != nil {
				return err
			}
		}
		return st.DM.Load(ctx, top.name, top.table)
	})
	if err != nil {
		if held {
			// Nothing may stay suspended: an extra resumed with its COW
			// handed over fails its I/O, but nothing maps it any more.
			for _, x := range present {
				if rerr := st.DM.Resume(ctx, x); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
		}
		return err
	}
	return st.removeExtras(ctx, present)
}

func (st *Stack) removeExtras(ctx context.Context, extras []string) error {
	var errs []error
	for _, x := range extras {
		info, err := st.DM.Info(ctx, x)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !info.Exists {
			continue
		}
		if err := st.DM.Remove(ctx, x); err != nil {
			errs = append(errs, err)
			if info.Suspended {
				_ = st.DM.Resume(ctx, x)
			}
		}
	}
	return errors.Join(errs...)
}

// names returns the device names a chain may have on a host: K's and one
// per snapshot, the intent's included (a middle layer is named after the
// snapshot whose image it is).
func names(sr string, c Chain) []string {
	out := []string{DevName(sr, c.Key)}
	for _, s := range append(slices.Clone(c.Snaps), intentSnap(c)...) {
		n := DevName(sr, s)
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func intentSnap(c Chain) []string {
	if c.Intent == nil {
		return nil
	}
	return []string{c.Intent.Snap}
}

// extrasOf returns the names among all that devs does not build.
func extrasOf(all []string, devs []dmDev) []string {
	var out []string
	for _, n := range all {
		keep := false
		for _, d := range devs {
			keep = keep || d.name == n
		}
		if !keep {
			out = append(out, n)
		}
	}
	return out
}

// Live reports whether volume key has its device on this host.
func (st *Stack) Live(ctx context.Context, sr, key string) (bool, error) {
	info, err := st.DM.Info(ctx, DevName(sr, key))
	return info.Exists, err
}

// chainOf reads K's base LV and its chain.
func (st *Stack) chainOf(ctx context.Context, w where, key string) (lvm.LV, Chain, error) {
	l, err := st.LVM.LV(ctx, w.scope, w.vg, lvName(key))
	if err != nil {
		return l, Chain{}, err
	}
	c, err := chainFrom(w, key, l)
	return l, c, err
}

// chainFrom reads K's chain from its base LV's tags.
func chainFrom(w where, key string, l lvm.LV) (Chain, error) {
	if _, _, isClone, _ := cloneOf(l.Tags); isClone {
		// A clone's LV is a COW, not a base a chain can grow over.
		return Chain{Key: key}, host.NewError(host.KindUnsupported, "snapshot chain", fmt.Sprintf("volume %s is a linked clone: sanvol cannot snapshot or clone it", key),
			"copy it to a new volume (xe vdi-copy) first, or snapshot the volume it was cloned from", nil)
	}
	c, err := parseChain(key, l.Tags)
	if err != nil {
		return c, host.NewError(host.KindInternal, "snapshot chain", fmt.Sprintf("LV %s carries a snapshot chain sanvol cannot read", l.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", w.vg, l.Name), err)
	}
	return c, nil
}

// activateChain activates the COW LVs K's stack maps (the base is the
// caller's: the datapath activates it, or refreshes it after a resize).
func (st *Stack) activateChain(ctx context.Context, w where, c Chain) error {
	snaps, _ := c.Live()
	for _, s := range snaps {
		l, err := st.LVM.LV(ctx, w.scope, w.vg, cowName(s))
		if err != nil {
			return err
		}
		if !l.Active() {
			if err := st.LVM.Activate(ctx, w.scope, w.vg, cowName(s)); err != nil {
				return err
			}
		}
	}
	return nil
}

// assemble builds or repairs K's stack from its tags; it returns K's base
// LV and chain as read. The base LV must be active.
func (st *Stack) assemble(ctx context.Context, w where, key string) (lvm.LV, Chain, error) {
	l, c, err := st.chainOf(ctx, w, key)
	if err != nil {
		return l, c, err
	}
	return l, c, st.build(ctx, w, l, c)
}

// build makes K's devices on this host what chain c over base LV l says.
func (st *Stack) build(ctx context.Context, w where, l lvm.LV, c Chain) error {
	if err := st.activateChain(ctx, w, c); err != nil {
		return err
	}
	devs, err := layout(w, c, uint64(l.Size/512))
	if err != nil {
		return err
	}
	return st.converge(ctx, devs, extrasOf(names(w.sr, c), devs))
}

// Assemble builds volume key's device on this host from its chain, or
// brings an existing one up to date (after a resize, or a process killed
// mid-step), and returns its path. The base LV must be active here.
//
// A snapshot's image is built read-only, and a clone over its parent's
// image (image.go); for a snapshot the caller activates its volume's base
// (LVOf).
func (st *Stack) Assemble(ctx context.Context, s lvm.Scope, sr, vg, key string) (string, error) {
	w := where{sr: sr, vg: vg, scope: s}
	l, parent, snapshot, err := st.source(ctx, w, key)
	switch {
	case err != nil:
		return "", err
	case snapshot:
		return st.assembleSnapshot(ctx, w, key)
	case parent != "":
		return st.assembleClone(ctx, w, key, l, parent)
	}
	if _, _, err := st.assemble(ctx, w, key); err != nil {
		return "", err
	}
	return DevPath(sr, key), nil
}

// AssembleLV is Assemble for a caller that has just read K's base LV (the
// datapath, before activating it): its tags and size are the chain and
// the size, so the call costs no second lvs.
//
// For a snapshot, base is its volume's LV (LVOf) and the snapshot's image
// is built; for a clone, base is the clone's own LV. Before it loads K's
// overlays on this host it warns if dom0 could not hold their worst case
// (warnOverlayMemory): Datapath.activate never fails on that.
func (st *Stack) AssembleLV(ctx context.Context, s lvm.Scope, sr, vg, key string, base lvm.LV) (string, error) {
	w := where{sr: sr, vg: vg, scope: s}
	if base.Name != lvName(key) {
		return st.assembleSnapshot(ctx, w, key)
	}
	parent, _, isClone, err := cloneOf(base.Tags)
	switch {
	case err != nil:
		return "", host.NewError(host.KindInternal, "clone", fmt.Sprintf("LV %s carries clone tags sanvol cannot read", base.Name),
			fmt.Sprintf("inspect it with lvs -o+tags %s/%s", vg, base.Name), err)
	case isClone:
		return st.assembleClone(ctx, w, key, base, parent)
	}
	c, err := chainFrom(w, key, base)
	if err != nil {
		return "", err
	}
	snaps, _ := c.Live()
	st.warnOverlayMemory(ctx, sr, key, len(snaps), base.Size, cowBytes(base.Size))
	if err := st.build(ctx, w, base, c); err != nil {
		return "", err
	}
	return DevPath(sr, key), nil
}

// Disassemble removes volume key's devices on this host, top-down, and
// deactivates its COW LVs; the base LV is left to the caller. K's own
// device goes even when the chain cannot be read.
func (st *Stack) Disassemble(ctx context.Context, s lvm.Scope, sr, vg, key string) error {
	w := where{sr: sr, vg: vg, scope: s}
	var errs []error
	if _, parent, snapshot, err := st.source(ctx, w, key); err == nil && (snapshot || parent != "") {
		return st.disassembleImage(ctx, w, key, parent, snapshot)
	}
	// The COWs K's live stack maps, read before it goes: the tags may
	// have moved on since it was built (a merge another host finished
	// after this host's VM migrated away), and their LVs must not stay
	// active here.
	live := st.liveCOWs(ctx, DevName(sr, key))
	if err := st.removeExtras(ctx, []string{DevName(sr, key)}); err != nil {
		return err
	}
	_, c, err := st.chainOf(ctx, w, key)
	if err != nil {
		return err
	}
	// A middle layer is also its snapshot's image, which a clone running
	// here may use (image.go): it stays, and so do the LVs it maps.
	middle, err := st.notUnderClones(ctx, w, names(sr, c)[1:])
	if err != nil {
		return err
	}
	if err := st.removeExtras(ctx, middle); err != nil {
		return err
	}
	chained := map[string]bool{}
	for _, snap := range append(append([]string{}, c.Snaps...), intentSnap(c)...) {
		chained[lvm.DMName(vg, cowName(snap))] = true
		if err := st.releaseCOW(ctx, s, vg, cowName(snap)); err != nil && !errors.Is(err, host.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	for _, name := range live {
		if chained[name] {
			continue
		}
		if err := st.releaseStaleCOW(ctx, s, vg, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// heldByDevice reports whether a device-mapper device maps the LV (a
// clone's middle layer keeps its COWs): true too when this cannot be told
// (no device node of the LV under that name).
func (st *Stack) heldByDevice(ctx context.Context, vg, lv string) bool {
	info, err := st.DM.Info(ctx, lvm.DMName(vg, lv))
	if err != nil || !info.Exists || info.Dev == "" {
		return true
	}
	holders, err := st.Root.ReadDir("/sys/dev/block/" + info.Dev + "/holders")
	return err != nil || len(holders) > 0
}

// releaseCOW deactivates a COW LV on this host unless a device still maps
// it (a clone's middle layer keeps its COWs). A process holding it open
// (udev's probe after the removal of the device above it) lets go in
// moments and is waited for; one that does not is logged and the LV stays
// active. A missing LV is host.ErrNotFound.
func (st *Stack) releaseCOW(ctx context.Context, s lvm.Scope, vg, lv string) error {
	l, err := st.LVM.LV(ctx, s, vg, lv)
	if err == nil && l.Open() && !st.heldByDevice(ctx, vg, lv) {
		l, err = st.waitClosed(ctx, s, vg, lv)
	}
	if err != nil || l.Open() || !l.Active() {
		return err
	}
	return st.LVM.Deactivate(ctx, s, vg, lv)
}

// openWait bounds how long a detach waits for a process to close a COW.
const openWait = 10 * time.Second

// waitClosed rereads the LV until nothing has it open, for openWait at
// most; it returns the last read.
func (st *Stack) waitClosed(ctx context.Context, s lvm.Scope, vg, lv string) (lvm.LV, error) {
	ctx, cancel := context.WithTimeout(ctx, openWait)
	defer cancel()
	var l lvm.LV
	err := host.Poll(ctx, 250*time.Millisecond, func(ctx context.Context) (bool, error) {
		var err error
		l, err = st.LVM.LV(ctx, s, vg, lv)
		return err != nil || !l.Open(), err
	})
	if err != nil && ctx.Err() != nil && l.Name != "" {
		st.log().Warn("a COW LV stays open on this host after its volume's device went; it stays active", zap.String("lv", lv))
		return l, nil
	}
	return l, err
}

// liveCOWs returns the device-mapper names of the COW devices that the
// snapshot targets of dev and of the sanvol layers under it map, from
// their live tables. A device that is not there maps nothing.
func (st *Stack) liveCOWs(ctx context.Context, dev string) []string {
	var out []string
	for seen := 0; dev != "" && seen < MaxDepth+1; seen++ {
		info, err := st.DM.Info(ctx, dev)
		if err != nil || !info.Exists {
			break
		}
		t, err := st.DM.Table(ctx, dev)
		if err != nil || len(t) != 1 || (t[0].Type != "snapshot" && t[0].Type != "snapshot-merge") {
			break
		}
		f := strings.Fields(t[0].Args)
		if len(f) < 2 {
			break
		}
		if cow, err := st.nameOf(f[1]); err == nil {
			out = append(out, cow)
		}
		dev = ""
		if origin, err := st.nameOf(f[0]); err == nil && strings.HasPrefix(origin, "sanvol-") {
			dev = origin
		}
	}
	return out
}

// nameOf is the device-mapper name of the device major:minor.
func (st *Stack) nameOf(majMin string) (string, error) {
	b, err := st.Root.ReadFile("/sys/dev/block/" + majMin + "/dm/name")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// releaseStaleCOW takes down a COW device K's stack used here that its
// chain no longer names: deactivated through LVM while its LV exists,
// removed as a bare device once the master removed the LV (LVM no longer
// knows it, so only device-mapper can). A device still open stays (its
// removal fails) and is reported.
func (st *Stack) releaseStaleCOW(ctx context.Context, s lvm.Scope, vg, name string) error {
	prefix := lvm.DMName(vg, "s-")
	if !strings.HasPrefix(name, prefix) {
		return nil
	}
	lv := cowName(strings.ReplaceAll(strings.TrimPrefix(name, prefix), "--", "-"))
	if err := st.releaseCOW(ctx, s, vg, lv); !errors.Is(err, host.ErrNotFound) {
		return err
	}
	info, err := st.DM.Info(ctx, name)
	if err != nil || !info.Exists {
		return err
	}
	st.log().Info("removing the device of a COW LV the master removed", zap.String("device", name))
	return st.DM.Remove(ctx, name)
}

// A merge's progress is read with a `dmsetup status` each time: a process
// that costs a few milliseconds on a host and about 0.1 s of CPU in the
// emulated lab guests, where a 500 ms poll took a tenth of a CPU for as
// long as a merge ran. A small COW merges within the first polls; a big
// one takes minutes, for which a reading every 2 s is as good: the merge
// runs with the SR lock released, and nothing waits on its last second.
const (
	mergePollFirst = 250 * time.Millisecond
	mergePollMost  = 2 * time.Second
)

// waitMerged polls name's snapshot-merge target until every exception is
// back in its origin. A target that stops (Merge failed, Invalid) is an
// error: the intent stays for the next call to look at.
func (st *Stack) waitMerged(ctx context.Context, name string) error {
	first, most := st.MergePoll, st.MergePoll
	if first == 0 {
		first, most = mergePollFirst, mergePollMost
	}
	start := time.Now()
	err := host.PollBackoff(ctx, first, most, func(ctx context.Context) (bool, error) {
		line, err := st.DM.Status(ctx, name)
		if err != nil {
			return false, err
		}
		s, err := blockdev.ParseSnapStatus(line)
		if err != nil {
			return false, err
		}
		if f := strings.Fields(line); f[2] != "snapshot-merge" {
			// Datapath.deactivate here reloaded the layer as a plain
			// snapshot (StopMerge): K's VM is migrating away.
			return false, host.NewError(host.KindBusy, "snapshot merge", fmt.Sprintf("the merge on %s stopped: its volume was deactivated on this host", name),
				"retry: the merge goes on where the volume is activated next", nil)
		}
		if s.State != "" {
			return false, host.NewError(host.KindInternal, "snapshot merge", fmt.Sprintf("the merge on %s stopped: %s", name, s.State),
				"check the kernel log (dmesg) for I/O errors on the SR; the merge resumes at the next call", nil)
		}
		return s.Merged(), nil
	})
	st.log().Info("merge done", zap.String("device", name), zap.Duration("elapsed", time.Since(start)), zap.Error(err))
	return err
}

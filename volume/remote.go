package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// The control channel (docs/design.md "The control channel: a XenAPI
// host plugin"): the master writes every LVM commit and intent tag, and
// when K is active on another host of the pool it has that host make the
// device steps, through sanvol's XenAPI host plugin there. The host
// plugin gets K's chain in its arguments and never reads or writes LVM
// metadata; its steps are idempotent, so the master may repeat any of
// them.

// Remote reaches the other hosts of the pool. plugin/ wires the real one
// (XenAPI host.call_plugin); nil means a master alone, which treats a
// volume whose device is not here as idle.
type Remote interface {
	// ActiveHost returns the XenAPI uuid of the host where volume key of
	// SR sr is attached to a running VM, when that is another host than
	// this one; "" when it is this host or none.
	ActiveHost(ctx context.Context, sr, key string) (string, error)
	// Converge has host h make K's stack what rc says, if K's device is
	// there; live reports whether it was.
	Converge(ctx context.Context, h string, rc RemoteChain) (live bool, err error)
	// WaitMerged has host h wait until the merge rc's intent names is
	// done and switch the merging layer to the base: K's data never
	// moves while the COW drains. It returns once that host says so.
	WaitMerged(ctx context.Context, h string, rc RemoteChain) error
}

// RemoteChain is K's chain as the master hands it to the host where K is
// active: the base's tags and its size, and the snapshots whose devices
// and COW activations must go there.
type RemoteChain struct {
	SR, Key string
	Snaps   []string
	// Intent is the base's intent tag ("snap S", "merge S") or "".
	Intent string
	// Drop are snapshots no longer in the chain: their layers go and
	// their COWs are deactivated on that host, before the master removes
	// the COW LVs.
	Drop    []string
	Sectors uint64
	// CheckMemory asks the host to refuse, before it touches anything,
	// a switch to the new overlay of a "snap S" intent that its dom0
	// cannot hold in the worst case (memguard.go). Only a new snapshot
	// asks: a repair rolling a used COW forward must not be refused.
	CheckMemory bool
}

// The host plugin's argument names (a XenAPI call_plugin args map).
const (
	argSR      = "sr"
	argKey     = "key"
	argSnaps   = "snaps"
	argIntent  = "intent"
	argDrop    = "drop"
	argSectors = "sectors"
	// argCheckMemory is "1" when RemoteChain.CheckMemory is set; a host
	// plugin of an older sanvol ignores it.
	argCheckMemory = "check_memory"
)

// Args is rc as host plugin arguments.
func (rc RemoteChain) Args() map[string]string {
	a := map[string]string{argSR: rc.SR, argKey: rc.Key, argSnaps: strings.Join(rc.Snaps, " "),
		argIntent: rc.Intent, argDrop: strings.Join(rc.Drop, " "), argSectors: strconv.FormatUint(rc.Sectors, 10)}
	if rc.CheckMemory {
		a[argCheckMemory] = "1"
	}
	return a
}

// ParseRemoteChain reads a host plugin's arguments; it refuses anything
// it could not build a stack from, rather than guess over a VM's data.
func ParseRemoteChain(args map[string]string) (RemoteChain, error) {
	rc := RemoteChain{SR: args[argSR], Key: args[argKey], Snaps: strings.Fields(args[argSnaps]),
		Intent: args[argIntent], Drop: strings.Fields(args[argDrop]), CheckMemory: args[argCheckMemory] == "1"}
	bad := func(why string) (RemoteChain, error) {
		return rc, host.NewError(host.KindInvalid, "host plugin arguments", why, "", nil)
	}
	if !IsUUID(rc.SR) || !IsUUID(rc.Key) {
		return bad(fmt.Sprintf("sr %q and key %q must be uuids", rc.SR, rc.Key))
	}
	for _, s := range append(slices.Clone(rc.Snaps), rc.Drop...) {
		if !IsUUID(s) {
			return bad(fmt.Sprintf("snapshot %q is not a key", s))
		}
	}
	if len(rc.Snaps) > MaxDepth {
		return bad(fmt.Sprintf("%d snapshots; sanvol builds at most %d", len(rc.Snaps), MaxDepth))
	}
	n, err := strconv.ParseUint(args[argSectors], 10, 64)
	if err != nil || n == 0 {
		return bad(fmt.Sprintf("sectors %q is not a size", args[argSectors]))
	}
	rc.Sectors = n
	if _, err := rc.chain(); err != nil {
		return bad(err.Error())
	}
	return rc, nil
}

func (rc RemoteChain) chain() (Chain, error) {
	c := Chain{Key: rc.Key, Snaps: rc.Snaps}
	if rc.Intent != "" {
		in, err := parseIntent(rc.Intent)
		if err != nil {
			return c, err
		}
		c.Intent = &in
	}
	return c, nil
}

func remoteChain(sr string, c Chain, drop []string, sectors uint64) RemoteChain {
	rc := RemoteChain{SR: sr, Key: c.Key, Snaps: c.Snaps, Drop: drop, Sectors: sectors}
	if c.Intent != nil {
		rc.Intent = c.Intent.String()
	}
	return rc
}

// ConvergeHere is the host plugin's "converge" on this host: if K's
// device is here, its stack becomes what rc says (the COWs it maps
// activated, the dropped layers removed and their COWs deactivated).
// live is false, and nothing is touched, when K's device is not here: a
// host never builds a stack for a volume it does not run. The base LV is
// active wherever K's device is (the datapath activated it).
//
// A device that is here but parked (Parked: attached and not activated
// yet, or deactivated by a live migration's source) counts as absent:
// the volume runs, or is about to run, on another host, whose activate
// builds the stack from the tags.
//
// With rc.CheckMemory, a switch to the new overlay of a "snap S" intent
// is first checked against this host's dom0 memory (memguard.go) and
// refused, as NoSpace, before anything here is touched.
func (st *Stack) ConvergeHere(ctx context.Context, s lvm.Scope, vg string, rc RemoteChain) (live bool, err error) {
	live, err = st.inUse(ctx, rc.SR, rc.Key)
	if err != nil || !live {
		return live, err
	}
	c, err := rc.chain()
	if err != nil {
		return true, err
	}
	w := where{sr: rc.SR, vg: vg, scope: s}
	if rc.CheckMemory {
		if err := st.guardNewOverlay(ctx, w, c, rc.Sectors); err != nil {
			return true, err
		}
	}
	if err := st.activateChain(ctx, w, c); err != nil {
		return true, err
	}
	devs, err := layout(w, c, rc.Sectors)
	if err != nil {
		return true, err
	}
	all := names(rc.SR, c)
	for _, d := range rc.Drop {
		all = append(all, DevName(rc.SR, d))
	}
	if err := st.converge(ctx, devs, extrasOf(all, devs)); err != nil {
		return true, err
	}
	var errs []error
	for _, d := range rc.Drop {
		if err := st.LVM.Deactivate(ctx, s, vg, cowName(d)); err != nil && !errors.Is(err, host.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return true, errors.Join(errs...)
}

// MergeState is what the host plugin's "wait_merged" reports.
type MergeState string

// The states of a merge on the host where K is active.
const (
	MergeAbsent  MergeState = "absent"  // K's device is not on this host
	MergeRunning MergeState = "merging" // the kernel is still copying
	MergeDone    MergeState = "merged"  // merged, and the layer maps the base
)

// MergeHere is the host plugin's "wait_merged" on this host: it waits up
// to wait for the merge rc's intent names and, once the kernel reports
// it done, switches the merging layer to linear(base). Repeated after
// the switch, it reports done at once; on a stack that is not merging
// yet (rebuilt since), it converges first. A parked device (ConvergeHere)
// is absent: the source of a live migration stopped its merge at its
// deactivate (StopMerge), and the destination merges.
func (st *Stack) MergeHere(ctx context.Context, s lvm.Scope, vg string, rc RemoteChain, wait time.Duration) (MergeState, error) {
	c, err := rc.chain()
	if err != nil {
		return "", err
	}
	if c.Intent == nil || c.Intent.Op != IntentMerge || len(c.Snaps) == 0 || c.Snaps[0] != c.Intent.Snap {
		return "", host.NewError(host.KindInvalid, "wait for a merge", fmt.Sprintf("chain %v %q merges nothing sanvol can", rc.Snaps, rc.Intent), "", nil)
	}
	live, err := st.inUse(ctx, rc.SR, rc.Key)
	if err != nil || !live {
		return MergeAbsent, err
	}
	merging := mergingLayer(rc.SR, c)
	base := blockdev.Linear(lvm.DevicePath(vg, lvName(rc.Key)), rc.Sectors)
	done, err := st.state(ctx, dmDev{name: merging, table: base})
	if err != nil {
		return "", err
	}
	if done.settled() {
		return MergeDone, nil
	}
	if _, err := st.ConvergeHere(ctx, s, vg, rc); err != nil {
		return "", err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// The wait runs without this host's datapath lock (Unlocked): a
	// live migration's deactivate here must not wait for it, since the
	// VM is suspended meanwhile. K may be deactivated or detached here
	// during the wait, so it is looked at again, under the lock, before
	// the switch.
	err = st.unlocked(ctx, func(context.Context) error { return st.waitMerged(wctx, merging) })
	if in, ierr := st.inUse(ctx, rc.SR, rc.Key); ierr == nil && !in {
		return MergeAbsent, nil
	}
	if err != nil && wctx.Err() != nil && ctx.Err() == nil {
		// The wait's time is up: between two polls (Poll's
		// TimeoutError) or during one, a `dmsetup status` cut short
		// by the deadline (a loaded host, seen in the pool lab).
		return MergeRunning, nil
	}
	if err != nil {
		return "", err
	}
	if err := st.DM.Switch(ctx, merging, base); err != nil {
		return "", err
	}
	return MergeDone, nil
}

// mergingLayer is the device whose table merges the oldest COW: K's own
// with one snapshot, the middle layer with two.
func mergingLayer(sr string, c Chain) string {
	if len(c.Snaps) == 2 {
		return DevName(sr, c.Snaps[1])
	}
	return DevName(sr, c.Key)
}

// activeAt is where K's device is: here, on another host, or nowhere.
type activeAt struct {
	local bool
	host  string
}

// activeAt finds where K is active: here if its device is, else the
// host XenAPI says runs a VM with K attached (Remote.ActiveHost).
//
// A device here that is parked (Stack.Parked: attached and not activated,
// or deactivated) is not "here": the VM starts here, or migrates in or
// out. Then the host xapi names is K's, if another; with none (or xapi
// naming this host) the step is refused as Busy, since neither a stack
// switched here (the VM is not running on it) nor an idle merge's stack
// (it would take down the datapath's device) is right.
func (e *Engine) activeAt(ctx context.Context, sc *snapCtx) (activeAt, error) {
	live, err := e.stack.Live(ctx, sc.a.UUID, sc.key)
	if err != nil {
		return activeAt{}, err
	}
	parked := false
	if live {
		if parked, err = e.stack.Parked(ctx, sc.a.UUID, sc.key); err != nil || !parked {
			return activeAt{local: true}, err
		}
	}
	if e.remote == nil && !parked {
		return activeAt{}, nil
	}
	h := ""
	if e.remote != nil {
		if h, err = e.remote.ActiveHost(ctx, sc.a.UUID, sc.key); err != nil {
			return activeAt{}, err
		}
	}
	if h == "" && parked {
		return activeAt{}, host.NewError(host.KindBusy, "find where volume "+sc.key+" is active",
			fmt.Sprintf("volume %s is attached on this host but not activated: a VM is starting or migrating here, or has just left", sc.key),
			"retry in a few seconds, once the VM runs", nil)
	}
	return activeAt{host: h}, nil
}

// convergeOn has host h make K's stack what c says, and refuses to go
// on if K's device has left h (a migration or a shutdown between the
// lookup and the call): the intent stays, and the next call on K looks
// again.
func (e *Engine) convergeOn(ctx context.Context, op string, sc *snapCtx, h string, c Chain, drop []string, sectors uint64) error {
	return e.convergeRC(ctx, op, sc, h, remoteChain(sc.a.UUID, c, drop, sectors))
}

// convergeRC is convergeOn with the chain as the host plugin gets it.
func (e *Engine) convergeRC(ctx context.Context, op string, sc *snapCtx, h string, rc RemoteChain) error {
	live, err := e.remote.Converge(ctx, h, rc)
	if err != nil {
		return err
	}
	if !live {
		return host.NewError(host.KindBusy, op, fmt.Sprintf("volume %s is no longer active on host %s", sc.key, h),
			"retry: the VM moved or stopped meanwhile, and the next call switches its stack where it runs now", nil)
	}
	return nil
}

// finishMergeOn runs a committed merge on host h, where K is active: the
// same steps and commits as finishMerge, with every device step made
// there. The SR lock is let go while the kernel copies, as on the master.
// If h stops answering, the intent stays and the merge resumes from the
// tags at the next call on K, wherever K is active then (an attach on any
// host builds the merging stack: Stack.Assemble).
func (e *Engine) finishMergeOn(ctx context.Context, op string, sc *snapCtx, h string, c Chain) error {
	l, err := e.lvm.LV(ctx, sc.w.scope, sc.w.vg, lvName(sc.key))
	if err != nil {
		return err
	}
	sectors := uint64(l.Size / 512)
	snap := c.Intent.Snap
	if err := e.convergeOn(ctx, op, sc, h, c, nil, sectors); err != nil {
		return err
	}
	e.step(StepMergeStart)
	// Neither lock is needed while h merges; this host's datapath lock
	// must be free for a migration of K to this host (its attach and
	// activate here).
	e.unlockChain(sc)
	werr := e.remote.WaitMerged(ctx, h, remoteChain(sc.a.UUID, c, nil, sectors))
	if err := e.relock(ctx, op, sc); err != nil {
		return errors.Join(werr, err)
	}
	if werr != nil {
		return werr
	}
	e.step(StepMergeDone)
	c, err = e.commitChain(ctx, sc, c, c.Snaps[1:], nil)
	if err != nil {
		return err
	}
	e.step(StepMergeCommit)
	if err := e.convergeOn(ctx, op, sc, h, c, []string{snap}, sectors); err != nil {
		return err
	}
	e.step(StepMergeStack)
	e.log.Info("merged on the host where the volume is active", zap.String("host", h), zap.String("key", sc.key), zap.String("snapshot", snap))
	return e.removeMergedCOW(ctx, sc, snap, false)
}

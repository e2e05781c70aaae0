package volume

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sanvol/sanvol/lvm"
)

// Snapshots are device-mapper overlays over plain linear LVs, and their
// metadata is LVM tags (docs/design.md "Snapshots"):
//
//   - K's own LV v-<K> is the base. Once K has a snapshot, the base is
//     never written again: it is the image of K's oldest snapshot.
//   - Each snapshot S of K has a COW LV s-<S> that holds what K wrote
//     after S was taken (and before the next snapshot). Its tags say whose
//     overlay it is (field O) and carry S's key (field K).
//   - The base LV lists K's snapshots, oldest first (field C), and the one
//     step under way (field X, the intent). Every step changes one of
//     them with one lvchange: one LVM commit.
//
// From the base's tags alone any host rebuilds K's device-mapper stack
// (layout), so a VM can start, or move, between and during steps.
const (
	// volFieldChain is the base LV's list of its snapshots' keys, oldest
	// first, separated by spaces; absent when it has none.
	volFieldChain = "C"
	// volFieldIntent is the step under way on the base LV's chain:
	// "snap <S>" or "merge <S>" (Intent).
	volFieldIntent = "X"
	// volFieldOverlayOf is, on a COW LV, the key of the volume whose
	// overlay it is.
	volFieldOverlayOf = "O"
)

// MaxDepth is how many snapshots a volume may have at once. Xen
// Orchestra keeps one and briefly two (it takes the next snapshot before
// it deletes the previous one); each level adds a device-mapper layer
// that every read of an unchanged chunk passes through.
const MaxDepth = 2

// IntentOp names a chain step.
type IntentOp string

// The chain steps an intent records.
const (
	// IntentSnap: snapshot S's COW exists and is zeroed; K's stack may
	// already write into it. Repair rolls forward if the COW carries an
	// exception store header (a snapshot target was built on it), else
	// back.
	IntentSnap IntentOp = "snap"
	// IntentMerge: S's COW is being merged into the layer below it. Repair
	// always rolls forward: merging is idempotent.
	IntentMerge IntentOp = "merge"
)

// Intent is a step under way.
type Intent struct {
	Op   IntentOp
	Snap string
}

func (i Intent) String() string { return string(i.Op) + " " + i.Snap }

func parseIntent(s string) (Intent, error) {
	op, snap, ok := strings.Cut(s, " ")
	if !ok || (IntentOp(op) != IntentSnap && IntentOp(op) != IntentMerge) || !IsUUID(snap) {
		return Intent{}, fmt.Errorf("chain intent %q is not \"snap|merge <key>\"", s)
	}
	return Intent{Op: IntentOp(op), Snap: snap}, nil
}

// Chain is a volume's snapshots as its base LV's tags record them.
type Chain struct {
	// Key is the volume K; its base LV is v-<Key>.
	Key string
	// Snaps are the snapshots' keys, oldest first. Snapshot Snaps[i]'s
	// image is the base with the COWs of Snaps[0..i-1] over it; K's data
	// is the base with every COW over it.
	Snaps []string
	// Intent is the step under way, if any.
	Intent *Intent
	// tags are the base LV's chain tags as read, for the next commit's
	// --deltag.
	tags []string
}

// cowName is the COW LV of snapshot snap.
func cowName(snap string) string { return "s-" + snap }

// snapOfCOW returns the snapshot key of a COW LV name.
func snapOfCOW(name string) (string, bool) {
	k, ok := strings.CutPrefix(name, "s-")
	return k, ok && IsUUID(k)
}

// parseChain reads K's chain from its base LV's tags. A chain sanvol
// cannot read is an error: guessing would build a wrong stack over a
// running VM's data.
func parseChain(key string, tags []string) (Chain, error) {
	c := Chain{Key: key}
	f, bad, _ := lvm.DecodeEachField(tags)
	for _, field := range []string{volFieldChain, volFieldIntent} {
		if bad[field] != nil {
			return c, bad[field]
		}
		c.tags = append(c.tags, lvm.FieldTags(tags, field)...)
	}
	if v, ok := f[volFieldChain]; ok {
		c.Snaps = strings.Fields(v)
		for _, s := range c.Snaps {
			if !IsUUID(s) {
				return c, fmt.Errorf("chain %q of volume %s names %q, not a key", v, key, s)
			}
		}
		if len(c.Snaps) > MaxDepth {
			return c, fmt.Errorf("chain of volume %s is %d snapshots deep; sanvol builds at most %d", key, len(c.Snaps), MaxDepth)
		}
	}
	if v, ok := f[volFieldIntent]; ok {
		in, err := parseIntent(v)
		if err != nil {
			return c, err
		}
		c.Intent = &in
	}
	return c, nil
}

// with returns the chain's tags for snaps and intent: what the next
// commit adds.
func chainTags(snaps []string, in *Intent) []string {
	var tags []string
	if len(snaps) > 0 {
		tags = append(tags, lvm.EncodeField(volFieldChain, strings.Join(snaps, " "))...)
	}
	if in != nil {
		tags = append(tags, lvm.EncodeField(volFieldIntent, in.String())...)
	}
	return tags
}

// Live is the chain as K's stack must be built now: a snapshot intent
// counts its snapshot in (roll forward; repair decides before anyone
// builds), and merging says which COW is merging.
func (c Chain) Live() (snaps []string, merging string) {
	snaps = slices.Clone(c.Snaps)
	if c.Intent != nil {
		switch c.Intent.Op {
		case IntentSnap:
			if !slices.Contains(snaps, c.Intent.Snap) {
				snaps = append(snaps, c.Intent.Snap)
			}
		case IntentMerge:
			merging = c.Intent.Snap
		}
	}
	return snaps, merging
}

// Holds reports whether the chain (snapshots or intent) refers to snap.
func (c Chain) Holds(snap string) bool {
	return slices.Contains(c.Snaps, snap) || (c.Intent != nil && c.Intent.Snap == snap)
}

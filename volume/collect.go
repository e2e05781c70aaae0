package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// InitLease is how long a create started by another host (an earlier pool
// master) may take before the collector treats it as dead. This host's own
// creates are judged by their volinit lock instead, which the kernel
// releases when the creating process dies. A create's zeroing runs at 20
// MiB/s at worst (zeroTimeout): a day covers 1.6 TiB at that rate.
const InitLease = 24 * time.Hour

// clockSkew is how far in the future a create mark may be dated and still
// be believed: pool hosts' clocks differ by this much at most under NTP.
const clockSkew = 5 * time.Minute

// collectable says whether the LV l is the leftover of a create that died,
// and so may be removed. Tags are data anyone who can write the LUN may
// have written, so one tag never decides: the LV must carry a sanvol
// volume name, its own key tag, a create mark sanvol writes, must not be
// open here, and its creator must be gone (this host: its volinit lock is
// free; another host: the mark is older than InitLease). If ok, unlock
// releases the volinit lock taken for the check. why says what held it
// back, for logs and `sanvol status`.
func (e *Engine) collectable(ctx context.Context, l lvm.LV) (unlock func(), ok bool, why string) {
	key, isVol := keyOfLV(l.Name)
	m, _ := decodeVolumeTags(l.Tags)
	switch {
	case !isVol:
		return nil, false, "not a sanvol volume name"
	case !m.Initializing:
		return nil, false, "not an unfinished create"
	case m.InitErr != nil:
		return nil, false, m.InitErr.Error()
	case m.Key != key:
		return nil, false, fmt.Sprintf("its key tag %q does not match its name", m.Key)
	case l.Open():
		return nil, false, "it is open on this host"
	}
	age := e.now().Sub(m.Init.Time)
	if age < -clockSkew {
		return nil, false, "its create mark is dated in the future (" + m.Init.Time.UTC().Format(time.RFC3339) + ")"
	}
	if (e.hostID == "" || m.Init.Host != e.hostID) && age < InitLease {
		return nil, false, fmt.Sprintf("started by host %q %s ago; left alone until it is %s old", m.Init.Host, age.Round(time.Second), InitLease)
	}
	// Past its lease or not, a create of this host that still runs holds
	// its volinit lock.
	unlock, held, err := e.tryLock(ctx, initLock(key))
	switch {
	case err != nil:
		return nil, false, "cannot tell whether its create still runs: " + err.Error()
	case held:
		return nil, false, "its create is still running on this host"
	}
	return unlock, true, ""
}

// collect removes the leftovers of creates that died (collectable). It
// runs only on the master under the SR lock, from SR.attach and
// SR.destroy: read paths never remove anything. It reads the LVs itself,
// under the lock, so that no create can finish between the list and the
// removal. It returns the unfinished creates it left alone.
func (e *Engine) collect(ctx context.Context, a Attached, s lvm.Scope) ([]lvm.LV, error) {
	lvs, err := e.lvm.LVs(ctx, s, a.VG)
	if err != nil {
		return nil, err
	}
	var kept []lvm.LV
	for _, l := range lvs {
		if m, _ := decodeVolumeTags(l.Tags); !m.Initializing {
			continue
		}
		unlock, ok, why := e.collectable(ctx, l)
		if !ok {
			e.log.Info("unfinished create left alone", zap.String("sr", a.UUID), zap.String("lv", l.Name), zap.String("why", why))
			kept = append(kept, l)
			continue
		}
		err := e.lvm.LVRemove(ctx, s, a.VG, l.Name)
		unlock()
		if err != nil && !errors.Is(err, host.ErrNotFound) {
			return nil, err
		}
		e.log.Info("removed a volume whose create did not finish", zap.String("sr", a.UUID), zap.String("lv", l.Name))
	}
	return kept, nil
}

// Problem describes what is wrong with an LV of an SR's VG, for `sanvol
// status`; "" when it is a healthy sanvol volume. It judges the LV alone,
// without locks or the clock, so it is safe on any host.
func Problem(l lvm.LV) string {
	key, isVol := keyOfLV(l.Name)
	if snap, isCOW := snapOfCOW(l.Name); isCOW {
		f, _, _ := lvm.DecodeEachField(l.Tags)
		if f[volFieldKey] != snap || !IsUUID(f[volFieldOverlayOf]) {
			return "named like a snapshot COW (s-<uuid>) but its tags do not say whose; sanvol leaves it alone: check it with lvs -o+tags"
		}
		return ""
	}
	if isVol {
		if c, err := parseChain(key, l.Tags); err != nil {
			return "unreadable snapshot chain (" + err.Error() + "); snapshots of it and its attach refuse: check it with lvs -o+tags"
		} else if c.Intent != nil {
			return "snapshot step under way or interrupted (" + c.Intent.String() + "); the next snapshot or delete of this volume finishes or undoes it"
		}
	}
	if !isVol {
		return "not a sanvol volume (its name is not v-<uuid>); sanvol leaves it alone, and SR.destroy refuses while it exists"
	}
	m, err := decodeVolumeTags(l.Tags)
	switch {
	case m.Initializing && m.InitErr != nil:
		return "unfinished create with an unreadable mark (" + m.InitErr.Error() + "); sanvol never removes it: check it with lvs -o+tags and remove it by hand (lvremove) if it is no disk"
	case m.Initializing && m.Key != key:
		return fmt.Sprintf("unfinished create whose key tag %q does not match its name; sanvol never removes it: check it with lvs -o+tags", m.Key)
	case m.Initializing:
		return fmt.Sprintf("unfinished create started %s by host %q: not a volume yet; the pool master removes it at the next SR attach once its creator is gone",
			m.Init.Time.UTC().Format(time.RFC3339), m.Init.Host)
	case m.Grow && m.GrowErr != nil:
		return "unreadable resize mark (" + m.GrowErr.Error() + "): VMs cannot use it and resize refuses it; check it with lvs -o+tags"
	case m.Grow:
		return fmt.Sprintf("resize not finished: zeroed up to byte %d of %d; VMs cannot use it until the resize is repeated (xe vdi-resize)", m.GrowFrom, m.GrowTo)
	case err != nil:
		return "damaged tags (" + err.Error() + "); the rest of its metadata is shown"
	}
	return ""
}

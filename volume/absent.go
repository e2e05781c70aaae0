package volume

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// provenGone decides whether an LVM "not found" (notFound, from the
// command that was to remove it) may count as "already gone" for a
// destroy. LVM says "Volume group not found" or "No device found" both
// when the VG or label is really gone and when it cannot read the device
// (all paths down, I/O errors, a missing map): taking the second for the
// first makes xapi forget an SR or VDI whose data is intact on the LUN.
// So "gone" must be proven: a missing LV is (LVM read the VG that lacks
// it); anything else only when the device reads and LVM, reading it,
// does not find the SR's VG on it. It returns nil when proven, an
// Unreachable error when the device cannot be read, and another error
// when LVM contradicts itself.
func (e *Engine) provenGone(ctx context.Context, op string, a Attached, s lvm.Scope, notFound error) error {
	missing := lvm.MissingOf(notFound)
	if missing == lvm.MissingLV {
		return nil
	}
	unreachable := func(why string, cause error) error {
		return host.NewError(host.KindUnreachable, op,
			fmt.Sprintf("the device of SR %s is not reachable from this host (%s), so LVM's report of its %s missing proves nothing; nothing was removed, and the data may be intact on the LUN/namespace", a.UUID, why, missing),
			"check from this host that the SR's storage is reachable (iscsi-ng: iscsiadm -m session, multipath -ll; nvmetcp: nvme list-subsys; dmesg for I/O errors), "+
				"then retry; to drop the SR from xapi while keeping the data, use xe sr-forget instead", cause)
	}
	if !e.readable(ctx, a.Device) {
		// A call repeated after a crash in SR.destroy's own detach finds
		// the device released by sanvol itself: connect it again (as xapi
		// does with SR.attach before SR.destroy) before judging.
		if _, err := e.t.Attach(ctx, a.Configuration); err != nil {
			return unreachable(a.Device+" does not read and cannot be connected", err)
		}
		if !e.readable(ctx, a.Device) {
			return unreachable(a.Device+" does not read", notFound)
		}
	}
	pvs, err := e.lvm.PVs(ctx, s)
	if err != nil {
		return unreachable("LVM cannot list the PVs of "+a.Device, err)
	}
	for _, pv := range pvs {
		if !slices.Contains(s.Devices, pv.Name) {
			continue
		}
		if pv.VG == a.VG {
			return host.NewError(host.KindInternal, op,
				fmt.Sprintf("LVM reported the %s of SR %s missing, yet lists VG %s on %s", missing, a.UUID, a.VG, pv.Name),
				"retry; if it persists, send the sanvol log and `pvs; vgs` to support", notFound)
		}
		e.log.Info("proven gone: the device reads and its PV holds no VG of this SR", zap.String("sr", a.UUID), zap.String("device", pv.Name), zap.String("vg", pv.VG))
		return nil
	}
	// No PV in LVM's view of a readable device: gone only if the device
	// carries no LVM label either (blkid reads it without LVM's filter).
	sigs, err := blockdev.Signatures(ctx, e.run, op, a.Device)
	if err != nil {
		return unreachable(a.Device+" cannot be probed", err)
	}
	if slices.Contains(sigs, "TYPE=LVM2_member") {
		return unreachable(a.Device+" carries an LVM label that LVM does not read", notFound)
	}
	e.log.Info("proven gone: the device reads and carries no LVM label", zap.String("sr", a.UUID), zap.String("device", a.Device))
	return nil
}

// readable reports whether the first block of dev reads, bypassing the
// page cache, within a bounded time.
func (e *Engine) readable(ctx context.Context, dev string) bool {
	_, err := e.run.Run(ctx, host.Cmd{Name: "dd", Timeout: 30 * time.Second,
		Args: []string{"if=" + dev, "of=/dev/null", "bs=4096", "count=1", "iflag=direct"}})
	if err != nil {
		e.log.Warn("the SR's device does not read", zap.String("device", dev), zap.Error(err))
	}
	return err == nil
}

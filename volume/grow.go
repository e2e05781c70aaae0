package volume

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
)

// followGrowth lets the SR's size follow its LUN: every host rescans its
// own paths, and the master, which alone may write metadata, grows the PV
// whenever the device is larger than the VG (vg is the report SR.stat just
// made). Comparing sizes rather than trusting the rescan's "grew" means a
// pvresize that failed once is done at the next SR.stat. It never fails
// the caller: the SR works at its old size until growth succeeds. It
// reports whether the PV grew, so the caller reads the VG again.
func (e *Engine) followGrowth(ctx context.Context, a Attached, vg lvm.VG) bool {
	log := e.log.With(zap.String("sr", a.UUID), zap.String("device", a.Device))
	if r, ok := e.t.(transport.Rescanner); ok {
		grew, err := r.Rescan(ctx, a.Configuration)
		if err != nil {
			log.Warn("LUN rescan failed; the SR keeps its size until the next SR.stat", zap.Error(err))
		} else if grew {
			log.Info("the LUN grew on the array")
		}
	}
	if !e.role.Master {
		return false
	}
	devSize, err := e.deviceSize(a.Device)
	if err != nil {
		log.Debug("device size unknown", zap.Error(err))
		return false
	}
	// The VG is the device less its metadata area, alignment (1 MiB) and
	// less than one extent of rounding; more than that left over means
	// the LUN grew.
	if gap := devSize - vg.Size - vg.MDASize; gap <= vg.ExtentSize+(1<<20) {
		return false
	}
	unlock, err := e.lock(ctx, "SR.stat", srLock(a.UUID))
	if err != nil {
		return false
	}
	defer unlock()
	if err := e.lvm.PVResize(ctx, e.scope(a.Device), a.Device); err != nil {
		log.Warn("pvresize after LUN growth failed; retried at the next SR.stat", zap.Error(err))
		return false
	}
	log.Info("PV grown to the LUN's new size", zap.Int64("device_bytes", devSize), zap.Int64("old_vg_bytes", vg.Size))
	return true
}

// deviceSize reads a block device's size from sysfs, through the stable
// path's target (/dev/dm-3 -> /sys/class/block/dm-3/size, in 512-byte
// sectors whatever the logical block size).
func (e *Engine) deviceSize(dev string) (int64, error) {
	real, err := e.root.EvalSymlinks(dev)
	if err != nil {
		return 0, err
	}
	s, err := e.root.ReadString(path.Join("/sys/class/block", path.Base(real), "size"))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, host.NewError(host.KindInternal, "device size", fmt.Sprintf("size of %s is %q", real, s), "", err)
	}
	return n * 512, nil
}

package volume

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"sanvol/host"
	"sanvol/lvm"
)

// Rescanner is a transport that can notice its LUN grew on the array: it
// re-reads the size on every path and grows the multipath device. The
// iSCSI transport is one.
type Rescanner interface {
	Rescan(ctx context.Context, cfg map[string]string) (grew bool, err error)
}

// RescanInterval is the least time between two rescans of one SR's LUN
// by SR.stat on one host. SR.stat runs at every sr-scan and sr-update and
// every 30 s for auto-scan SRs (Xapi_sr.scan_all; docs/design.md "When
// SR.stat runs"), and a rescan costs a sysfs write per path plus a
// `udevadm settle`, which waits for the whole udev queue, while a LUN grows
// on the array a few times a year. SR.stat cannot tell an admin's sr-scan
// from the periodic one, so the interval is short: five minutes bounds how
// long a grown LUN goes unnoticed, at a tenth of the work for auto-scan.
const RescanInterval = 5 * time.Minute

// RescanDir holds, per SR, when this host last rescanned its LUN. It is
// under /run: after a reboot the first SR.stat rescans.
const RescanDir = "/run/sanvol/rescan"

// rescanDue reports whether this host's last rescan of the SR is older than
// RescanInterval (or unknown, or in the future: the clock went back).
func (e *Engine) rescanDue(uuid string) bool {
	b, err := e.root.ReadFile(path.Join(RescanDir, uuid))
	if err != nil {
		return true
	}
	last, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return true
	}
	age := e.now().Sub(last)
	return age < 0 || age >= RescanInterval
}

// rescanned records a rescan; losing the record only costs one more rescan.
func (e *Engine) rescanned(uuid string) {
	stamp := e.now().UTC().Format(time.RFC3339Nano) + "\n"
	if err := e.root.WriteFileAtomic(path.Join(RescanDir, uuid), []byte(stamp), 0o644); err != nil {
		e.log.Debug("cannot record the rescan time", zap.String("sr", uuid), zap.Error(err))
	}
}

// followGrowth lets the SR's size follow its LUN: every host rescans its
// own paths (at most once per RescanInterval), and the master, which alone
// may write metadata, grows the PV whenever the device is larger than the
// VG (vg is the report SR.stat just made). The size comparison is one
// sysfs read and runs at every SR.stat, so a pvresize that failed once, or
// growth another host's rescan made visible, is done at the next SR.stat.
// It never fails the caller: the SR works at its old size until growth
// succeeds. It reports whether the PV grew, so the caller reads the VG
// again.
func (e *Engine) followGrowth(ctx context.Context, a Attached, vg lvm.VG) bool {
	log := e.log.With(zap.String("sr", a.UUID), zap.String("device", a.Device))
	if r, ok := e.t.(Rescanner); ok && e.rescanDue(a.UUID) {
		grew, err := r.Rescan(ctx, a.Configuration)
		if err != nil {
			// Not recorded: the next SR.stat tries again.
			log.Warn("LUN rescan failed; the SR keeps its size until the next SR.stat", zap.Error(err))
		} else {
			e.rescanned(a.UUID)
			if grew {
				log.Info("the LUN grew on the array")
			}
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
		return 0, host.Errorf(host.KindInternal, "device size", fmt.Sprintf("size of %s is %q", real, s), "", err)
	}
	return n * 512, nil
}

package volume

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

const mib = 1 << 20

// Zeroing policy. A new volume, and the part a resize adds, must never
// show a guest what an older volume left on those extents. sanvol zeroes
// them with the BLKZEROOUT ioctl (package blockdev) before the volume
// becomes visible. The kernel sends WRITE ZEROES (NVMe) / WRITE SAME (SCSI)
// when the device offers it, which the array does without moving data, and
// falls back to writing zero pages otherwise, so the result is zeroes in
// every case. Plain discard is not used: whether discarded blocks read
// back as zeroes is up to the array, and newer kernels no longer report it
// (queue/discard_zeroes_data is always 0). The ioctl needs no tool:
// util-linux before 2.28 (XCP-ng 8.x dom0 has 2.23) has no
// `blkdiscard --zeroout`, and dd would write every byte over the network.

// Zeroer zeroes a byte range of a block device (blockdev.Zeroer).
type Zeroer interface {
	ZeroOut(ctx context.Context, dev string, off, length int64) error
}

// zeroFloorRate is the slowest zeroing speed the deadline allows for.
const zeroFloorRate = 20 * mib // bytes per second

func zeroTimeout(length int64) time.Duration {
	return time.Minute + time.Duration(length/zeroFloorRate)*time.Second
}

// zero writes zeroes over [off, off+length) of dev. off and length are
// multiples of the extent size.
func (e *Engine) zero(ctx context.Context, op, dev string, off, length int64) error {
	if length <= 0 {
		return nil
	}
	start := e.now()
	ctx, cancel := context.WithTimeout(ctx, zeroTimeout(length))
	defer cancel()
	if err := e.zeroer.ZeroOut(ctx, dev, off, length); err != nil {
		return host.NewError(host.KindOf(err), op, "could not zero "+dev,
			"check the SR's paths and the kernel log (dmesg) for I/O errors, then retry", err)
	}
	e.log.Info("zeroed", zap.String("device", dev), zap.Int64("offset", off), zap.Int64("length", length),
		zap.Duration("elapsed", e.now().Sub(start)))
	return nil
}

// signatures lists what blkid's low-level probe finds on dev: file
// systems, RAID or LVM labels, partition tables ("TYPE=xfs",
// "PTTYPE=gpt", "TYPE=LVM2_member"). Empty means blank.
func (e *Engine) signatures(ctx context.Context, op, dev string) ([]string, error) {
	res, err := e.run.Run(ctx, host.Cmd{Name: "blkid", Args: []string{"-p", "-o", "export", dev}, Timeout: 30 * time.Second})
	var ee *host.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Code == 2: // nothing found
		return nil, nil
	case errors.As(err, &ee) && ee.Code == 8: // several signatures at once
		return []string{"ambivalent (several signatures): " + strings.TrimSpace(ee.Stderr)}, nil
	default:
		return nil, host.NewError(host.KindOf(err), op, "cannot probe "+dev+" for existing data", "check that the device is readable (dmesg)", err)
	}
	var sigs []string
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		if strings.HasPrefix(line, "TYPE=") || strings.HasPrefix(line, "PTTYPE=") {
			sigs = append(sigs, strings.TrimSpace(line))
		}
	}
	return sigs, nil
}

// wipe erases every signature blkid knows of (only with force=true).
func (e *Engine) wipe(ctx context.Context, op, dev string) error {
	if _, err := e.run.Run(ctx, host.Cmd{Name: "wipefs", Args: []string{"--all", dev}, Timeout: 60 * time.Second}); err != nil {
		return host.NewError(host.KindOf(err), op, "could not erase the signatures on "+dev,
			"make sure nothing on this host uses the device (mounted, active LVs: dmsetup ls), then retry", err)
	}
	return nil
}

// activeLVs lists the device-mapper devices of a VG active on this host,
// from sysfs: it works even when the SR's storage no longer answers.
func (e *Engine) activeLVs(vgUUID string) ([]string, error) {
	if vgUUID == "" {
		return nil, nil
	}
	prefix := "LVM-" + strings.ReplaceAll(vgUUID, "-", "")
	paths, err := e.root.Glob("/sys/block/dm-*/dm/uuid")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range paths {
		u, err := e.root.ReadString(p)
		if err != nil || !strings.HasPrefix(u, prefix) {
			continue
		}
		name, err := e.root.ReadString(strings.TrimSuffix(p, "uuid") + "name")
		if err != nil {
			name = strings.TrimSuffix(strings.TrimPrefix(p, "/sys/block/"), "/dm/uuid")
		}
		names = append(names, name)
	}
	return names, nil
}

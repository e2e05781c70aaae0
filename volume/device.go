package volume

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
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

// activeLVs lists the device-mapper devices of a VG active on this host,
// from sysfs: it works even when the SR's storage no longer answers.
func (e *Engine) activeLVs(vgUUID string) ([]string, error) {
	if vgUUID == "" {
		return nil, nil
	}
	prefix := "LVM-" + strings.ReplaceAll(vgUUID, "-", "")
	devs, err := blockdev.DMDevices(e.root)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range devs {
		if !strings.HasPrefix(d.UUID, prefix) {
			continue
		}
		name := d.Name
		if name == "" {
			name = d.Dev
		}
		names = append(names, name)
	}
	return names, nil
}

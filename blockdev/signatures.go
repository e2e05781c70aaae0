package blockdev

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// Signatures lists what blkid's low-level probe finds on dev: file
// systems, RAID or LVM labels, partition tables ("TYPE=xfs",
// "PTTYPE=gpt", "TYPE=LVM2_member"). Empty means blank. blkid -p reads
// the device itself rather than udev's cache, which may predate what
// another host wrote to a shared LUN.
func Signatures(ctx context.Context, run host.Runner, op, dev string) ([]string, error) {
	res, err := run.Run(ctx, host.Cmd{Name: "blkid", Args: []string{"-p", "-o", "export", dev}, Timeout: 30 * time.Second})
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

// Wipe erases every signature blkid knows of on dev (wipefs --all). The
// caller decides whether the data may go: SR.create does only when
// asked with force=true.
func Wipe(ctx context.Context, run host.Runner, op, dev string) error {
	if _, err := run.Run(ctx, host.Cmd{Name: "wipefs", Args: []string{"--all", dev}, Timeout: 60 * time.Second}); err != nil {
		return host.NewError(host.KindOf(err), op, "could not erase the signatures on "+dev,
			"make sure nothing on this host uses the device (mounted, active LVs: dmsetup ls), then retry", err)
	}
	return nil
}

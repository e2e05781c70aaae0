package iscsi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// waitDisks scans the sessions of the paths and waits until every logged-in
// one shows the LUN, or the deadline passes with at least one that does.
func (t *Transport) waitDisks(ctx context.Context, op string, c *Config, paths []path) ([]session, []disk, error) {
	start := time.Now()
	scans := map[int]int{}
	var sessions []session
	var disks []disk
	var others []lun
	var waiting int
	wctx, cancel := context.WithTimeout(ctx, t.to.DeviceWait)
	defer cancel()
	err := host.Poll(wctx, t.to.Poll, func(context.Context) (bool, error) {
		var err error
		sessions, err = t.sys.sessions()
		if err != nil {
			return false, host.NewError(host.KindInternal, op, "cannot read iSCSI sessions from sysfs", sysfsFix, err)
		}
		disks, others, waiting = nil, nil, 0
		for _, s := range ourSessions(sessions, paths) {
			ds := lunDisks(s, c.WWID)
			if len(ds) > 0 {
				disks = append(disks, ds...)
				continue
			}
			for _, d := range s.disks {
				others = append(others, lun{wwid: d.wwid, lun: d.lun, vendor: d.vendor, model: d.model, size: d.size})
			}
			if s.state != sessionLoggedIn {
				continue
			}
			waiting++
			// One scan at once, one more halfway: sd may still be
			// attaching what the first one found.
			if scans[s.sid] == 0 || scans[s.sid] == 1 && time.Since(start) > t.to.DeviceWait/2 {
				scans[s.sid]++
				t.scanHost(ctx, s.host)
			}
		}
		return waiting == 0 && len(disks) > 0, nil
	})
	var te *host.TimeoutError
	switch {
	case err == nil:
		return sessions, disks, nil
	case !errors.As(err, &te):
		return nil, nil, err
	case len(disks) > 0:
		t.log.Warn("the LUN did not appear on every session in time", zap.Int("sessions_without_it", waiting))
		return sessions, disks, nil
	}
	return nil, nil, host.NewError(host.KindNotFound, op, fmt.Sprintf("LUN %s did not appear within %s on target %s; the sessions show: %s",
		c.WWID, t.to.DeviceWait, c.TargetIQN, noneIfEmpty(describeLUNs(dedupeLUNs(others)))),
		"check device-config:SCSIid (xe sr-probe-ext lists the LUNs) and the LUN mapping for this host's initiator on the array", nil)
}

// scanHost asks a session's SCSI host for its LUNs, bounded: a scan on a
// session that fails under it can block in the kernel.
func (t *Transport) scanHost(ctx context.Context, hostNo int) {
	if err := within(ctx, t.to.Command, func() error { return t.sys.scanHost(hostNo) }); err != nil {
		t.log.Warn("SCSI host scan failed", zap.Int("host", hostNo), zap.Error(err))
	}
}

// devicePath waits for the map's device node and returns its stable name:
// /dev/mapper/<wwid> (the alias sanvol gives the map), or the by-id link
// when the host named the map otherwise.
func (t *Transport) devicePath(ctx context.Context, op string, c *Config, m *dmMap) (string, error) {
	dev := "/dev/mapper/" + m.name
	if m.name != c.WWID {
		dev = "/dev/disk/by-id/dm-uuid-mpath-" + m.wwid
		t.log.Warn("the map kept a host-specific name; using its by-id link", zap.String("map", m.name))
	}
	wctx, cancel := context.WithTimeout(ctx, t.to.MapWait)
	defer cancel()
	if err := host.Poll(wctx, t.to.Poll, func(context.Context) (bool, error) { return t.root.Exists(dev), nil }); err != nil {
		return "", host.NewError(host.KindTimeout, op, "multipath map "+m.name+" has no device node "+dev,
			"check that udev runs (udevadm settle; ls -l /dev/mapper /dev/disk/by-id)", nil)
	}
	return dev, nil
}

// settle waits for udev to process queued events, so that multipathd has
// seen new disks before a device is picked for inspection.
func (t *Transport) settle(ctx context.Context) {
	if _, err := t.run.Run(ctx, host.Cmd{Name: "udevadm", Args: []string{"settle", "--timeout=10"}, Timeout: 15 * time.Second}); err != nil {
		t.log.Debug("udevadm settle failed", zap.Error(err))
	}
}

// within runs a blocking sysfs write with a deadline. The kernel may block
// such a write (a scan or delete on a failing session); the call then
// returns and the goroutine finishes whenever the kernel lets it.
func within(ctx context.Context, d time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("%w after %s", host.ErrTimeout, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

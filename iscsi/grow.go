package iscsi

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// Rescan notices a LUN that grew on the array and grows the multipath map
// to match, so that the engine can then pvresize. It reports whether the
// map grew. SR.stat calls it every time (xapi's periodic scan as well as
// an admin's `xe sr-scan`, which it cannot tell apart), so it first asks
// cheaply (grown) and rescans only a LUN that is larger than its map:
// then it re-reads the size on every path, lets udev settle and resizes
// the map. Every path must agree on the new size: a down path that still
// reports the old one makes it fail with a Busy error, to be retried.
func (t *Transport) Rescan(ctx context.Context, cfg map[string]string) (bool, error) {
	const op = "SR.stat: iscsi-ng: rescan"
	c, err := t.parseConfig(ctx, op, cfg, parseNeeds{iqn: true, wwid: true})
	if err != nil {
		return false, err
	}
	v, err := t.view(op, c)
	if err != nil {
		return false, err
	}
	m := v.m
	if m == nil {
		return false, host.NewError(host.KindNotAttached, op, "LUN "+c.WWID+" has no multipath map on this host", "plug the SR on this host first", nil)
	}
	if !t.grown(ctx, v, c.WWID) {
		return false, nil
	}
	for _, s := range v.ours {
		for _, d := range lunDisks(s, c.WWID) {
			if s.state == sessionLoggedIn && d.state == "running" {
				if err := within(ctx, t.to.Command, func() error { return t.sys.rescanDisk(d.name) }); err != nil {
					t.log.Warn("cannot rescan disk", zap.String("disk", d.name), zap.Error(err))
				}
			}
		}
	}
	// multipathd reads the new size from the udev database, which the
	// rescans' change events update.
	t.settle(ctx)
	sizes := map[string]int64{}
	var newSize int64
	for _, name := range m.slaves {
		if d, err := t.sys.disk(name, ""); err == nil {
			sizes[name] = d.size
			newSize = max(newSize, d.size)
		}
	}
	if newSize <= m.size {
		return false, nil
	}
	var stale []string
	for name, sz := range sizes {
		if sz < newSize {
			stale = append(stale, name)
		}
	}
	if len(stale) > 0 {
		sort.Strings(stale)
		return false, host.NewError(host.KindBusy, op, fmt.Sprintf("the LUN grew to %d bytes but paths %s still report the old size", newSize, strings.Join(stale, ", ")),
			"wait for every path to be up (SR health) and retry", nil)
	}
	if _, err := t.multipathd(ctx, "resize map "+m.name); err != nil {
		if e := multipathdError(op, err); e != nil {
			return false, e
		}
		return false, host.NewError(host.KindInternal, op, "multipathd could not resize map "+m.name, "run multipathd -k\"resize map "+m.name+"\" and read its log", err)
	}
	wctx, cancel := context.WithTimeout(ctx, t.to.Command)
	defer cancel()
	grew := func(context.Context) (bool, error) {
		after, err := t.sys.findMap(c.WWID, nil)
		if err == nil && after != nil && after.size >= newSize {
			t.log.Info("multipath map grew", zap.String("map", m.name), zap.Int64("from", m.size), zap.Int64("to", after.size))
			return true, nil
		}
		return false, nil
	}
	if err := host.Poll(wctx, t.to.Poll, grew); err != nil {
		return false, host.NewError(host.KindTimeout, op, "map "+m.name+" did not take the new size", "run multipathd -k\"resize map "+m.name+"\" by hand", nil)
	}
	return true, nil
}

// grown tells, without a rescan, whether the LUN may be larger than its
// map: yes when a path's disk already shows more (someone rescanned, or
// an earlier resize failed), else the array's own answer to READ
// CAPACITY on the first running path that gives one. When no path
// answers, it says yes, and the full rescan decides as it always did.
func (t *Transport) grown(ctx context.Context, v lunView, wwid string) bool {
	for _, d := range v.disks {
		if d.wwid == wwid && d.size > v.m.size {
			return true
		}
	}
	for _, s := range v.ours {
		if s.state != sessionLoggedIn {
			continue
		}
		for _, d := range lunDisks(s, wwid) {
			if d.state != "running" {
				continue
			}
			var size atomic.Int64
			err := within(ctx, t.to.Command, func() error {
				n, err := t.capacity("/dev/" + d.name)
				size.Store(n)
				return err
			})
			if err != nil {
				t.log.Debug("cannot read the LUN's capacity", zap.String("disk", d.name), zap.Error(err))
				continue
			}
			return size.Load() > v.m.size
		}
	}
	return true
}

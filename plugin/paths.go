package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// Where the plugin keeps, per boot, what it last saw and published.
const (
	// PathStateDir holds one JSON record per attached SR: its path counts
	// as last seen, the value last written to the PBD and the last sizes.
	PathStateDir = "/run/sanvol/paths"
	// XapiVersionFile caches xapi's "<major>.<minor>" for the boot.
	XapiVersionFile = "/run/sanvol/xapi-version"
)

// The PBD other-config keys sm's mpathcount.py writes for multipathed
// SMAPIv1 SRs (xcp-ng/sm drivers/mpathcount.py update_config): XO's host
// Advanced tab lists the PBDs with "multipathed" and reads the counts
// from "mpath-<device_config.SCSIid>" as JSON (xen-orchestra
// packages/xo-web/src/common/utils.js getIscsiPaths).
const (
	keyMultipathed = "multipathed"
	keyMpathPrefix = "mpath-"
)

// unreachableSince is the first xapi whose daemon decodes the health
// constructor Unreachable: xen-api v24.18.0 added it to the IDL
// (ocaml/xapi-storage/generator/lib/control.ml, commit 2a018d785c). An
// older daemon's rpclib client fails to unmarshal it and the whole call
// becomes SCRIPT_FAILED "Unexpected exception" (main.ml return_rpc).
var unreachableSince = [2]int{24, 18}

// xenAPITimeout bounds every best-effort XenAPI exchange: a busy or
// restarting xapi must not hold up a storage call.
const xenAPITimeout = 10 * time.Second

// pathRecord is what PathStateDir holds for one SR.
type pathRecord struct {
	ID    string `json:"id"`
	Live  int    `json:"live"`
	Total int    `json:"total"`
	// Published is the mpath-<ID> value xapi is known to hold; "" when
	// not written (or the write failed).
	Published   string `json:"published,omitempty"`
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
	TotalSpace  int64  `json:"total_space,omitempty"`
	FreeSpace   int64  `json:"free_space,omitempty"`
}

// pathKeys publishes an SR's path counts where XCP-ng admins look, logs
// every change of them once, and turns the engine's health into what the
// running daemon can decode.
type pathKeys struct {
	root host.Root
	xapi host.PBDRecords // nil: no XenAPI, nothing published
	log  *zap.Logger
}

func (c *Call) pathKeys() *pathKeys {
	return &pathKeys{root: c.Deps.Root, xapi: c.Deps.XenAPI, log: c.Log}
}

func pathFile(uuid string) string { return PathStateDir + "/" + uuid + ".json" }

// lock serialises the SR's record and XenAPI writes: the newer daemon
// runs calls in parallel, and two SR.stat each doing remove-then-add of
// the same key would collide in MAP_DUPLICATE_KEY.
func (p *pathKeys) lock(ctx context.Context, uuid string) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, 2*xenAPITimeout)
	defer cancel()
	return host.FileLocker{Root: p.root}.Lock(lctx, "paths-"+uuid)
}

func (p *pathKeys) load(uuid string) (pathRecord, bool) {
	var r pathRecord
	b, err := p.root.ReadFile(pathFile(uuid))
	if err != nil {
		return r, false
	}
	if err := json.Unmarshal(b, &r); err != nil {
		p.log.Warn("ignoring an unreadable path record", zap.String("file", pathFile(uuid)), zap.Error(err))
		return pathRecord{}, false
	}
	return r, true
}

func (p *pathKeys) save(uuid string, r pathRecord) {
	b, _ := json.Marshal(r)
	if err := p.root.WriteFileAtomic(pathFile(uuid), b, 0o644); err != nil {
		p.log.Warn("cannot record the SR's path state", zap.String("sr", uuid), zap.Error(err))
	}
}

// mpathValue is the value format of mpath-<id>: Python's str() of
// [active, total], e.g. "[1, 2]" (mpathcount.py update_config).
func mpathValue(h transport.Health) string { return fmt.Sprintf("[%d, %d]", h.Live, h.Total) }

// publish records the SR's path counts, logs a change of them, and
// writes them to this host's PBD when they differ from what xapi holds
// (always when force, i.e. at SR.attach). It never fails: the storage
// call goes on whatever XenAPI answers.
func (p *pathKeys) publish(ctx context.Context, uuid string, h transport.Health, force bool) pathRecord {
	if h.Total == 0 {
		// No path view (the transport could not read it): nothing to
		// publish or compare.
		rec, _ := p.load(uuid)
		return rec
	}
	unlock, err := p.lock(ctx, uuid)
	if err != nil {
		p.log.Warn("path counts not published this time", zap.String("sr", uuid), zap.Error(err))
		rec, _ := p.load(uuid)
		return rec
	}
	defer unlock()
	old, had := p.load(uuid)
	rec := old
	rec.ID, rec.Live, rec.Total = h.ID, h.Live, h.Total
	if had && (old.Live != h.Live || old.Total != h.Total) {
		msg := fmt.Sprintf("SR %s: paths changed from %d of %d to %d of %d live", uuid, old.Live, old.Total, h.Live, h.Total)
		fields := []zap.Field{zap.String("sr", uuid), zap.Int("live", h.Live), zap.Int("total", h.Total), zap.String("detail", h.Detail)}
		if h.Live < old.Live {
			p.log.Warn(msg, fields...)
		} else {
			p.log.Info(msg, fields...)
		}
	}
	value := mpathValue(h)
	if h.ID != "" && p.xapi != nil && (force || old.Published != value || old.ID != h.ID) {
		set := map[string]string{keyMultipathed: "true", keyMpathPrefix + h.ID: value}
		var remove []string
		if old.ID != "" && old.ID != h.ID {
			remove = append(remove, keyMpathPrefix+old.ID)
		}
		xctx, cancel := context.WithTimeout(ctx, xenAPITimeout)
		err := p.xapi.UpdatePBDOtherConfig(xctx, uuid, set, remove)
		cancel()
		if err != nil {
			p.log.Warn("cannot publish the path counts in the PBD's other-config; the storage call goes on",
				zap.String("sr", uuid), zap.String("key", keyMpathPrefix+h.ID), zap.String("value", value), zap.Error(err))
			rec.Published = ""
		} else {
			rec.Published = value
		}
	}
	if !had || rec != old {
		p.save(uuid, rec)
	}
	return rec
}

// unpublish removes the keys from this host's PBD and forgets the SR.
func (p *pathKeys) unpublish(ctx context.Context, uuid string) {
	unlock, err := p.lock(ctx, uuid)
	if err != nil {
		p.log.Warn("path counts not removed from the PBD", zap.String("sr", uuid), zap.Error(err))
		return
	}
	defer unlock()
	rec, had := p.load(uuid)
	if had && rec.ID != "" && p.xapi != nil {
		xctx, cancel := context.WithTimeout(ctx, xenAPITimeout)
		err := p.xapi.UpdatePBDOtherConfig(xctx, uuid, nil, []string{keyMultipathed, keyMpathPrefix + rec.ID})
		cancel()
		if err != nil {
			p.log.Warn("cannot remove the path counts from the PBD's other-config", zap.String("sr", uuid), zap.Error(err))
		}
	}
	if err := p.root.Remove(pathFile(uuid)); err != nil {
		p.log.Warn("cannot remove the SR's path record", zap.String("sr", uuid), zap.Error(err))
	}
}

// rememberSizes keeps the last sizes for an SR.stat that cannot read them.
func (p *pathKeys) rememberSizes(ctx context.Context, st volume.SRStat) {
	unlock, err := p.lock(ctx, st.UUID)
	if err != nil {
		return
	}
	defer unlock()
	rec, _ := p.load(st.UUID)
	rec.Name, rec.Description, rec.TotalSpace, rec.FreeSpace = st.Name, st.Description, st.TotalSpace, st.FreeSpace
	p.save(st.UUID, rec)
}

// publishPaths writes the path counts of a freshly attached SR.
func (c *Call) publishPaths(ctx context.Context, e *volume.Engine, sr string) {
	_, uuid, err := volume.ParseHandle(sr)
	if err != nil {
		return
	}
	h, err := e.Paths(ctx, sr)
	if err != nil {
		c.Log.Warn("cannot read the paths of the attached SR; the PBD's path counts wait for SR.stat", zap.String("sr", uuid), zap.Error(err))
		return
	}
	c.pathKeys().publish(ctx, uuid, h, true)
}

// unpublishPaths removes the path counts of a detached SR.
func (c *Call) unpublishPaths(ctx context.Context, sr string) {
	if _, uuid, err := volume.ParseHandle(sr); err == nil {
		c.pathKeys().unpublish(ctx, uuid)
	}
}

// daemonDecodesUnreachable reports whether this host's xapi-storage-script
// decodes the health constructor Unreachable, from xapi's version read
// once per boot. When it cannot tell, it answers false: an error document
// is understood by every daemon.
func (p *pathKeys) daemonDecodesUnreachable(ctx context.Context) bool {
	v, err := p.root.ReadString(XapiVersionFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.log.Warn("cannot read the cached xapi version", zap.Error(err))
	}
	if v == "" && p.xapi != nil {
		xctx, cancel := context.WithTimeout(ctx, xenAPITimeout)
		major, minor, err := p.xapi.XapiVersion(xctx)
		cancel()
		if err != nil {
			p.log.Warn("cannot tell which xapi runs; answering SR.stat with an error rather than Unreachable", zap.Error(err))
			return false
		}
		v = fmt.Sprintf("%d.%d", major, minor)
		if err := p.root.WriteFileAtomic(XapiVersionFile, []byte(v+"\n"), 0o644); err != nil {
			p.log.Warn("cannot cache the xapi version", zap.Error(err))
		}
	}
	major, minor, err := host.ParseXapiVersion(v)
	if err != nil {
		return false
	}
	return major > unreachableSince[0] || major == unreachableSince[0] && minor >= unreachableSince[1]
}

// srStat turns the engine's SR.stat into the answer for xapi, publishing
// the path counts on the way. A degraded SR is Healthy: xapi scans only
// Healthy SRs (main.ml sr_scan2_impl stat_with_retry fails every other
// value but Unreachable with SR_UNHEALTHY). With no path serving I/O the
// answer is Unreachable, which the daemon retries three times a second
// apart, with the sizes last seen; a daemon that cannot decode it gets an
// error document instead.
func (p *pathKeys) srStat(ctx context.Context, st volume.SRStat) (schema.SRStat, error) {
	rec := p.publish(ctx, st.UUID, st.Paths, false)
	if st.Health != volume.Unreachable {
		if rec.Name != st.Name || rec.Description != st.Description || rec.TotalSpace != st.TotalSpace || rec.FreeSpace != st.FreeSpace {
			p.rememberSizes(ctx, st)
		}
		return toSRStat(st), nil
	}
	if !p.daemonDecodesUnreachable(ctx) {
		return schema.SRStat{}, host.NewError(host.KindUnreachable, "SR.stat",
			fmt.Sprintf("no path to SR %s serves I/O (%s)", st.UUID, st.HealthDetail),
			"check the array and the storage network; `sanvol status` shows every path. The SR recovers by itself when a path returns", nil)
	}
	st.Name, st.Description, st.TotalSpace, st.FreeSpace = rec.Name, rec.Description, rec.TotalSpace, rec.FreeSpace
	out := toSRStat(st)
	out.Health = schema.Health{State: schema.Unreachable, Message: st.HealthDetail}
	return out, nil
}

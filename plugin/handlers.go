package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// Deps are the real or fake dependencies a call is served with. main
// builds the real ones (wire.go); tests build fakes.
type Deps struct {
	Version string
	Log     *zap.Logger
	Root    host.Root
	Runner  host.Runner
	// Services builds what serves an SR type. Built lazily: Plugin.Query
	// must not pay for reading the pool role or probing the kernel.
	Services func(srType string) (Services, error)
	// Datapath builds the datapath plugin's implementation.
	Datapath func() (*datapath.Datapath, error)
	// StaticVDIs is set for a call in static-vdis' positional form: the
	// secrets it resolves are then kept for the boots to come, when it
	// runs before xapi (host.BootSecrets).
	StaticVDIs bool
	// XenAPI is where SR.attach, SR.stat and SR.detach publish the path
	// counts (PBD other-config) and learn xapi's version; nil for none.
	XenAPI host.PBDRecords
	// SMAPIv1 lists the pool's SMAPIv1 iSCSI SRs, which iscsi-ng's
	// SR.create refuses to share a target IQN with; nil checks only this
	// host's sm reference files.
	SMAPIv1 host.SMAPIv1SRs
	// Pool is how a member forwards a call to the master (forward.go);
	// nil uses the local xapi.
	Pool PoolPlugins
	// Forwarded is set for a call a member forwarded to this host's
	// host plugin: it runs here or is refused, never forwarded again.
	Forwarded bool
}

// Services is what the SR and Volume methods of one SR type are served by.
type Services interface {
	// Describe says what the SR type is and which device-config keys it
	// takes, for Plugin.query.
	Describe() Description
	// Diagnostics dumps the transport's state on this host.
	Diagnostics(ctx context.Context) string
	// Engine builds the SR engine.
	Engine() (*volume.Engine, error)
}

// Description is the per-SR-type part of Plugin.query.
type Description struct {
	Name          string
	Description   string
	Features      []string
	Configuration map[string]string
}

const (
	vendor    = "sanvol"
	copyright = "Copyright the sanvol authors; licensed under the Apache License 2.0"
)

func pluginQuery(ctx context.Context, c *Call) (any, error) {
	q := schema.QueryResult{
		Vendor:               vendor,
		Copyright:            copyright,
		Version:              c.Deps.Version,
		RequiredAPIVersion:   "5.0",
		Features:             []string{},
		Configuration:        map[string]string{},
		RequiredClusterStack: []string{},
	}
	if c.Target.Kind == DatapathPlugin {
		q.Plugin = DatapathScheme
		q.Name = "sanvol datapath"
		q.Description = "Hands sanvol volumes (LVM logical volumes on a shared LUN or namespace) to guests through kernel blkback."
		return q, nil
	}
	q.Plugin = c.Target.SRType
	svc, err := c.Deps.Services(c.Target.SRType)
	if err != nil {
		return nil, err
	}
	d := svc.Describe()
	q.Name, q.Description = d.Name, d.Description
	q.Features = append(q.Features, d.Features...)
	for k, v := range d.Configuration {
		q.Configuration[k] = v
	}
	return q, nil
}

func pluginDiagnostics(ctx context.Context, c *Call) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "sanvol %s (%s, %s/%s)\n", c.Deps.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	hn, _ := os.Hostname()
	fmt.Fprintf(&b, "host: %s\n", hn)
	if role, err := host.ReadRole(c.Deps.Root); err == nil {
		fmt.Fprintf(&b, "pool role: %s\n\n", role)
	} else {
		fmt.Fprintf(&b, "pool role: unknown (%v)\n\n", err)
	}
	// The same view as `sanvol status`, with each transport's dump, so
	// that xe host-get-sm-diagnostics and bug reports carry it.
	rep, err := hostStatus(ctx, c.Deps, true)
	if err != nil {
		fmt.Fprintf(&b, "status unavailable: %v\n", err)
	} else if err := rep.Text(&b); err != nil {
		fmt.Fprintf(&b, "status unavailable: %v\n", err)
	}
	return b.String(), nil
}

// withEngine runs f with the engine of the call's SR type.
func withEngine[T any](c *Call, f func(e *volume.Engine) (T, error)) (any, error) {
	svc, err := c.Deps.Services(c.Target.SRType)
	if err != nil {
		return nil, err
	}
	e, err := svc.Engine()
	if err != nil {
		return nil, err
	}
	return f(e)
}

// unit wraps a method that returns nothing: the contract wants null.
func unit(err error) (any, error) { return nil, err }

func toVolume(v volume.Volume) schema.Volume {
	return schema.Volume{
		Key: v.Key, UUID: v.UUID, Name: v.Name, Description: v.Description,
		ReadWrite: v.ReadWrite, Sharable: v.Sharable,
		VirtualSize: v.VirtualSize, PhysicalUtilisation: v.PhysicalUtilisation,
		URI: v.URI, Keys: v.Keys,
	}
}

// toSRStat encodes a Healthy SR (pathKeys.srStat handles Unreachable).
func toSRStat(s volume.SRStat) schema.SRStat {
	h := schema.Health{State: schema.Healthy, Message: s.HealthDetail}
	return schema.SRStat{
		SR: s.SR, Name: s.Name, UUID: s.UUID, Description: s.Description,
		FreeSpace: s.FreeSpace, TotalSpace: s.TotalSpace,
		Datasources: []string{}, Clustered: false, Health: h,
	}
}

func srProbe(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) ([]schema.ProbeResult, error) {
		res, err := e.SRProbe(ctx, c.Args.Dict("configuration"))
		if err != nil {
			return nil, err
		}
		out := make([]schema.ProbeResult, 0, len(res))
		for _, r := range res {
			p := schema.ProbeResult{Configuration: r.Configuration, Complete: r.Complete, ExtraInfo: r.ExtraInfo}
			if r.SR != nil {
				st := toSRStat(*r.SR)
				p.SR = &st
			}
			// The daemon turns a whole probe into SCRIPT_FAILED if one
			// result breaks its rules; refuse to print such a result.
			if err := p.Check(); err != nil {
				return nil, host.NewError(host.KindInternal, "SR.probe", err.Error(), "report this as a sanvol bug", nil)
			}
			out = append(out, p)
		}
		return out, nil
	})
}

func srCreate(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (map[string]string, error) {
		return e.SRCreate(ctx, c.Args.Str("uuid"), c.Args.Dict("configuration"), c.Args.Str("name"), c.Args.Str("description"))
	})
}

func srAttach(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (string, error) {
		cfg := c.Args.Dict("configuration")
		sr, err := e.SRAttach(ctx, cfg)
		if err == nil {
			separateSecrets(ctx, c, cfg)
			c.publishPaths(ctx, e, sr)
		}
		return sr, err
	})
}

// separateSecrets gives every PBD of the SR its own CHAP secret (see
// host.XenAPI.SeparatePBDSecrets for why). The pool master does it, at
// each attach, best effort: the plug itself already succeeded, and with
// xapi down (static-vdis at boot) or no XenAPI wired there is nothing to
// do.
func separateSecrets(ctx context.Context, c *Call, cfg map[string]string) {
	shared := false
	for k := range cfg {
		shared = shared || strings.HasSuffix(k, "password_secret")
	}
	if c.Deps.XenAPI == nil {
		return
	}
	if role, err := host.ReadRole(c.Deps.Root); !shared || err != nil || !role.Master {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sr := strings.ToLower(cfg["sr_uuid"])
	changed, err := c.Deps.XenAPI.SeparatePBDSecrets(ctx, sr)
	switch {
	case err != nil && errors.Is(err, host.ErrUnreachable):
		c.Log.Debug("xapi not reachable; PBD secrets left as they are", zap.String("sr", sr))
	case err != nil:
		c.Log.Warn("could not give each PBD its own secret; removing a host from the pool may break the other hosts' next plug of this SR",
			zap.String("sr", sr), zap.Error(err))
	case len(changed) > 0:
		c.Log.Info("gave PBDs their own copy of a shared secret", zap.String("sr", sr), zap.Strings("pbds", changed))
	}
}

func srDetach(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		err := e.SRDetach(ctx, c.Args.Str("sr"))
		if err == nil {
			c.unpublishPaths(ctx, c.Args.Str("sr"))
		}
		return unit(err)
	})
}

func srDestroy(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		err := e.SRDestroy(ctx, c.Args.Str("sr"))
		if err == nil {
			c.unpublishPaths(ctx, c.Args.Str("sr"))
		}
		return unit(err)
	})
}

func srStat(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (schema.SRStat, error) {
		s, err := e.SRStat(ctx, c.Args.Str("sr"))
		if err != nil {
			return schema.SRStat{}, err
		}
		return c.pathKeys().srStat(ctx, s)
	})
}

func srLs(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) ([]schema.Volume, error) {
		vs, err := e.SRLs(ctx, c.Args.Str("sr"))
		if err != nil {
			return nil, err
		}
		out := make([]schema.Volume, 0, len(vs))
		for _, v := range vs {
			out = append(out, toVolume(v))
		}
		return out, nil
	})
}

func srSetName(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.SRSetName(ctx, c.Args.Str("sr"), c.Args.Str("new_name")))
	})
}

func srSetDescription(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.SRSetDescription(ctx, c.Args.Str("sr"), c.Args.Str("new_description")))
	})
}

func volumeResult(v volume.Volume, err error) (schema.Volume, error) { return toVolume(v), err }

func volumeCreate(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (schema.Volume, error) {
		return volumeResult(e.VolumeCreate(ctx, c.Args.Str("sr"), c.Args.Str("name"), c.Args.Str("description"), c.Args.Int("size"), c.Args.Bool("sharable")))
	})
}

func volumeStat(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (schema.Volume, error) {
		return volumeResult(e.VolumeStat(ctx, c.Args.Str("sr"), c.Args.Str("key")))
	})
}

// volumeSnapshot is Volume.snapshot: the snapshot takes K's name and
// description (the call has none); xapi then sets its keys
// (xapi-storage-script main.ml, vdi_snapshot_impl: snapshot_time,
// is_a_snapshot, snapshot_of, content_id, vdi-type).
func volumeSnapshot(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (schema.Volume, error) {
		sr, key := c.Args.Str("sr"), c.Args.Str("key")
		k, err := e.VolumeStat(ctx, sr, key)
		if err != nil {
			return schema.Volume{}, err
		}
		return volumeResult(e.Snapshot(ctx, sr, key, k.Name, k.Description))
	})
}

// volumeClone is Volume.clone: of a snapshot, or of a volume (what the
// daemon's reset-on-boot calls at VM start, main.ml vdi_epoch_begin_impl).
func volumeClone(ctx context.Context, c *Call) (any, error) {
	if ok, res, err := c.forwarded(ctx); ok {
		return res, err
	}
	return withEngine(c, func(e *volume.Engine) (schema.Volume, error) {
		return volumeResult(e.VolumeClone(ctx, c.Args.Str("sr"), c.Args.Str("key")))
	})
}

func volumeDestroy(ctx context.Context, c *Call) (any, error) {
	if ok, res, err := c.forwarded(ctx); ok {
		return res, err
	}
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeDestroy(ctx, c.Args.Str("sr"), c.Args.Str("key")))
	})
}

func volumeResize(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeResize(ctx, c.Args.Str("sr"), c.Args.Str("key"), c.Args.Int("new_size")))
	})
}

func volumeSet(ctx context.Context, c *Call) (any, error) {
	if ok, res, err := c.forwarded(ctx); ok {
		return res, err
	}
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeSet(ctx, c.Args.Str("sr"), c.Args.Str("key"), c.Args.Str("k"), c.Args.Str("v")))
	})
}

func volumeUnset(ctx context.Context, c *Call) (any, error) {
	if ok, res, err := c.forwarded(ctx); ok {
		return res, err
	}
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeUnset(ctx, c.Args.Str("sr"), c.Args.Str("key"), c.Args.Str("k")))
	})
}

func volumeSetName(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeSetName(ctx, c.Args.Str("sr"), c.Args.Str("key"), c.Args.Str("new_name")))
	})
}

func volumeSetDescription(ctx context.Context, c *Call) (any, error) {
	return withEngine(c, func(e *volume.Engine) (any, error) {
		return unit(e.VolumeSetDescription(ctx, c.Args.Str("sr"), c.Args.Str("key"), c.Args.Str("new_description")))
	})
}

// withDatapath runs f with the datapath implementation.
func withDatapath(c *Call, f func(p *datapath.Datapath) (any, error)) (any, error) {
	p, err := c.Deps.Datapath()
	if err != nil {
		return nil, err
	}
	return f(p)
}

// Datapath.open and close are only called for datapaths that declare
// NONPERSISTENT, which sanvol does not: nothing to do.
func datapathOpen(ctx context.Context, c *Call) (any, error)  { return nil, nil }
func datapathClose(ctx context.Context, c *Call) (any, error) { return nil, nil }

func datapathAttach(ctx context.Context, c *Call) (any, error) {
	return withDatapath(c, func(p *datapath.Datapath) (any, error) {
		b, err := p.Attach(ctx, c.Args.Str("uri"), c.Args.Str("domain"))
		if err != nil {
			return nil, err
		}
		// blkback for guests needs the XenDisk; dom0 users take the
		// BlockDevice path. Both name the same stable device.
		return schema.Backend{Implementations: []schema.Implementation{
			{XenDisk: &schema.XenDisk{Params: b.Device, Extra: map[string]string{}, BackendType: "vbd"}},
			{BlockDevice: b.Device},
		}}, nil
	})
}

func datapathActivate(ctx context.Context, c *Call) (any, error) {
	return withDatapath(c, func(p *datapath.Datapath) (any, error) {
		return unit(p.Activate(ctx, c.Args.Str("uri"), c.Args.Str("domain")))
	})
}

func datapathDeactivate(ctx context.Context, c *Call) (any, error) {
	return withDatapath(c, func(p *datapath.Datapath) (any, error) {
		return unit(p.Deactivate(ctx, c.Args.Str("uri"), c.Args.Str("domain")))
	})
}

func datapathDetach(ctx context.Context, c *Call) (any, error) {
	p, err := c.Deps.Datapath()
	if err != nil {
		// Detach must never fail; without a datapath there is nothing
		// this host could release.
		c.Log.Error("datapath unavailable for detach; nothing released", zap.Error(err))
		return nil, nil
	}
	return unit(p.Detach(ctx, c.Args.Str("uri"), c.Args.Str("domain")))
}

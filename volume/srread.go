package volume

// The SR methods that only read: stat, path health, the volume list and
// probe. None takes the SR lock or writes LVM metadata.

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
)

// SRStat reports the SR's size, free space and health. It works on every
// host: one LVM report, read-only off the master, and none while the VG
// metadata is unchanged (lvm.Client.VGs is answered from the report cache). The paths are looked at
// first: when none serves I/O, LVM would wait on the queued I/O (for the
// iscsi-ng path-loss-policy, or the NVMe ctrl-loss-tmo), so the answer is
// Unreachable without sizes, which the caller fills from what it knew.
func (e *Engine) SRStat(ctx context.Context, sr string) (SRStat, error) {
	a, err := e.attached(ctx, sr)
	if err != nil {
		return SRStat{}, err
	}
	h, herr := e.t.Health(ctx, a.Configuration)
	if herr == nil && h.Down() {
		return SRStat{SR: a.Handle(), UUID: a.UUID, Health: Unreachable, HealthDetail: h.Detail, Paths: h}, nil
	}
	s := e.scope(a.Device)
	// Paths of unknown state: no header read in this process (readScope).
	s.Uncached = herr != nil
	vgs, err := e.lvm.VGs(ctx, s, a.VG)
	if err == nil && len(vgs) == 1 && e.followGrowth(ctx, a, vgs[0]) {
		vgs, err = e.lvm.VGs(ctx, s, a.VG)
	}
	if err != nil {
		return SRStat{}, err
	}
	if len(vgs) != 1 {
		return SRStat{}, host.NewError(host.KindNotFound, "SR.stat", fmt.Sprintf("VG %s of SR %s not found on %s", a.VG, a.UUID, a.Device), "unplug and plug the PBD", nil)
	}
	m, _ := decodeSRTags(vgs[0].Tags)
	st := SRStat{SR: a.Handle(), UUID: a.UUID, Name: m.Name, Description: m.Description,
		TotalSpace: vgs[0].Size, FreeSpace: vgs[0].Free, Health: Healthy}
	if herr != nil {
		// The VG answered, so I/O works; only the path view is missing.
		st.HealthDetail = "path state unknown: " + herr.Error()
		return st, nil
	}
	st.HealthDetail, st.Paths = h.Detail, h
	return st, nil
}

// Paths reports the state of the attached SR's paths on this host, from
// sysfs only (no I/O).
func (e *Engine) Paths(ctx context.Context, sr string) (transport.Health, error) {
	a, err := e.attached(ctx, sr)
	if err != nil {
		return transport.Health{}, err
	}
	return e.t.Health(ctx, a.Configuration)
}

// SRLs lists every volume of the SR in one LVM report (none while the VG
// metadata is unchanged: the records are metadata only, lvm.Client.LVsMeta).
// It is a read path and changes nothing: leftovers of dead creates are
// skipped, and removed by the master's SR.attach (collect).
func (e *Engine) SRLs(ctx context.Context, sr string) ([]Volume, error) {
	a, err := e.attached(ctx, sr)
	if err != nil {
		return nil, err
	}
	lvs, err := e.lvm.LVsMeta(ctx, e.readScope(ctx, a), a.VG)
	if err != nil {
		return nil, err
	}
	vols := make([]Volume, 0, len(lvs))
	byName := make(map[string]lvm.LV, len(lvs))
	for _, l := range lvs {
		byName[l.Name] = l
	}
	for _, l := range lvs {
		if cm, isCOW := cowMetaOf(l); isCOW {
			// A snapshot is a volume of its own (clone.go), read-only;
			// its record is its COW's tags and its volume's size.
			if v, ok := e.snapshotVolume(a, l, byName[lvName(cm.of)]); ok {
				vols = append(vols, v)
			}
			continue
		}
		v, m, ok := e.volumeOf(a, l)
		if !ok || m.Initializing {
			// Not a volume (yet): `sanvol status` shows it with its
			// problem; removing it is the master's SR.attach's job.
			continue
		}
		vols = append(vols, v)
	}
	return vols, nil
}

// SRProbe reports what the configuration reaches and which sanvol SRs are
// on it, without attaching.
func (e *Engine) SRProbe(ctx context.Context, cfg map[string]string) ([]ProbeResult, error) {
	cands, err := e.t.Probe(ctx, cfg, e.inspect)
	if err != nil {
		return nil, err
	}
	out := make([]ProbeResult, 0, len(cands))
	for _, c := range cands {
		r := ProbeResult{Configuration: maps.Clone(c.Configuration), Complete: c.Complete, ExtraInfo: maps.Clone(c.Extra)}
		if r.Configuration == nil {
			r.Configuration = map[string]string{}
		}
		if r.ExtraInfo == nil {
			r.ExtraInfo = map[string]string{}
		}
		dropSecrets(r.Configuration)
		dropSecrets(r.ExtraInfo)
		if c.SR != nil {
			r.Configuration[configSRUUID] = c.SR.UUID
			r.Complete = true
			r.SR = &SRStat{SR: MakeHandle(e.t.Type(), c.SR.UUID), UUID: c.SR.UUID, Name: c.SR.Name, Description: c.SR.Description,
				TotalSpace: c.SR.TotalSpace, FreeSpace: c.SR.FreeSpace, Health: Healthy}
		} else {
			// sr_uuid would claim an SR that is not there, and force
			// complete=true (the daemon's rule 1).
			delete(r.Configuration, configSRUUID)
		}
		out = append(out, r)
	}
	return out, nil
}

// dropSecrets removes every key that holds a secret or names one: xapi
// turns each device-config key ending in "password" into a XenAPI secret
// and passes "<key>_secret" (xapi_secret.ml, duplicate_passwds). A probe
// result is printed by xe and XO and may be copied into the PBDs of every
// host by SR.create, so neither a password nor a secret reference travels
// in it: the admin gives the password again on sr-create, and xapi makes
// each PBD its own secret from it.
func dropSecrets(m map[string]string) {
	for k := range m {
		if IsSecretKey(k) {
			delete(m, k)
		}
	}
}

// IsSecretKey reports whether a device-config key holds a password or the
// uuid of a XenAPI secret.
func IsSecretKey(k string) bool {
	k = strings.ToLower(k)
	return strings.HasSuffix(k, "password") || strings.HasSuffix(k, "secret")
}

// inspect is the Inspector given to Transport.Probe.
func (e *Engine) inspect(ctx context.Context, dev string) (*transport.FoundSR, error) {
	vgs, err := e.lvm.VGs(ctx, e.scope(dev))
	if err != nil {
		return nil, err
	}
	for _, vg := range vgs {
		if m, ok := decodeSRTags(vg.Tags); ok {
			return &transport.FoundSR{UUID: m.UUID, Name: m.Name, Description: m.Description, TotalSpace: vg.Size, FreeSpace: vg.Free}, nil
		}
	}
	return nil, nil
}

package xapisim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sanvol/sanvol/plugin"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// SR is an SR as this host's xapi knows it: the device-config every PBD
// carries (what SR.create returned) and, while plugged here, the handle
// SR.attach returned.
type SR struct {
	Type   string
	UUID   string
	Name   string
	PBD    string
	Config map[string]string
	Handle string
	Query  schema.QueryResult
	// Features is what xapi records as the SM's capabilities: the
	// daemon's derivation (see deriveFeatures), refreshed at every bind.
	Features []string

	sim  *Sim
	vdis map[string]*vdiState // by key, under sim.mu
}

// vdiState is the little of a VDI record xapi's operation checks read.
type vdiState struct {
	sharable bool
	attached int // VBDs currently attached (VMStart without VMShutdown)
}

// Attachment is a volume attached and activated for a domain by VMStart.
type Attachment struct {
	Key      string
	URI      string
	Domain   string
	Datapath *Datapath
	Backend  schema.Backend
	// Device is the first BlockDevice (or File) path of the backend, what
	// blkback would be given.
	Device string
	// vbd is the VBD record of its VM in the pool's database.
	vbd string
}

// SRCreate replays `xe sr-create type=<t> shared=true` (spec §8.1): on the
// chosen host Plugin.Query then SR.create; xapi keeps the returned
// configuration as every PBD's device-config and plugs the PBD.
func (s *Sim) SRCreate(ctx context.Context, srType, name, description string, deviceConfig map[string]string) (*SR, error) {
	sr := &SR{Type: srType, UUID: newUUID(), Name: name, PBD: newUUID(), sim: s}
	o := s.begin(fmt.Sprintf("xe sr-create type=%s shared=true name-label=%s%s", srType, quote(name), xeConfig(deviceConfig)))
	defer o.end()
	config := s.hideSecrets(deviceConfig)
	dir := s.VolumeDir(srType)
	if err := sr.bind(ctx, o); err != nil {
		return nil, err
	}
	var ret map[string]string
	if err := o.call(ctx, dir, "SR.create", schema.SRCreateArgs{
		Dbg: o.dbg, UUID: sr.UUID, Configuration: config, Name: name, Description: description,
	}, &ret); err != nil {
		return nil, err
	}
	sr.Config = ret
	s.recordSR(sr)
	if err := sr.plug(ctx, o); err != nil {
		return sr, err
	}
	o.say("  = %s", sr.UUID)
	return sr, nil
}

// Introduce gives the simulator an SR created elsewhere (another Sim
// standing for the master), so this host can plug it.
func (s *Sim) Introduce(other *SR) *SR {
	sr := &SR{Type: other.Type, UUID: other.UUID, Name: other.Name, PBD: newUUID(), Config: other.Config, sim: s}
	s.recordSR(sr)
	return sr
}

// Plug replays `xe pbd-plug` on this host (spec §8.2).
func (sr *SR) Plug(ctx context.Context) error {
	o := sr.sim.begin("xe pbd-plug uuid=" + sr.PBD)
	defer o.end()
	return sr.plug(ctx, o)
}

// plug is Xapi_pbd.plug (xen-api ocaml/xapi/xapi_pbd.ml, plug): bind
// (Plugin.Query), the daemon's SR.attach (SR.attach and its own SR.stat),
// then, on the SR master only, Xapi_sr_operations.sr_health_check's
// SR.stat. The PBD counts as attached once the daemon's attach returned,
// so a failing health check leaves it plugged (SR.detach at unplug).
func (sr *SR) plug(ctx context.Context, o *op) error {
	if err := sr.bind(ctx, o); err != nil {
		return err
	}
	handle, err := sr.attach(ctx, o)
	if err != nil {
		return err
	}
	sr.Handle = handle
	if !sr.sim.Member {
		if _, err := sr.stat(ctx, o, handle); err != nil {
			return err
		}
	}
	return nil
}

// bind is Storage_access.bind: the daemon's Query.query, i.e. Plugin.Query
// and the feature derivation, which xapi records as the SM's features.
func (sr *SR) bind(ctx context.Context, o *op) error {
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, &sr.Query); err != nil {
		return err
	}
	sr.Features = deriveFeatures(dir, sr.Query.Features)
	return nil
}

// attach is the daemon's SR.attach (main.ml, SRImpl.sr_attach_impl):
// SR.attach, then SR.stat of the handle it returned to register the
// datasources; only when both succeed does the daemon record the SR as
// attached. A failed SR.stat therefore fails the attach and leaves the
// plugin's attach unrecorded: no SR.detach will ever be sent for it
// (sr_detach_impl answers success for an SR it has no record of), so the
// next SR.attach must cope with an SR that is still attached.
func (sr *SR) attach(ctx context.Context, o *op) (string, error) {
	dir := sr.sim.VolumeDir(sr.Type)
	var handle string
	if err := o.call(ctx, dir, "SR.attach", schema.SRAttachArgs{Dbg: o.dbg, Configuration: sr.Config}, &handle); err != nil {
		return "", err
	}
	if _, err := sr.stat(ctx, o, handle); err != nil {
		o.say("    (the daemon records no attach: no SR.detach will follow)")
		return "", err
	}
	return handle, nil
}

func (sr *SR) stat(ctx context.Context, o *op, handle string) (schema.SRStat, error) {
	var st schema.SRStat
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "SR.stat", schema.SRArgs{Dbg: o.dbg, SR: handle}, &st)
	return st, err
}

func (sr *SR) mustBePlugged(cmd string) error {
	if sr.Handle == "" {
		return fmt.Errorf("%s: the PBD of SR %s is not plugged on this host (xapi would refuse)", cmd, sr.UUID)
	}
	return nil
}

// Stat replays `xe sr-update` (SR.stat on the master).
func (sr *SR) Stat(ctx context.Context) (schema.SRStat, error) {
	o := sr.sim.begin("xe sr-update uuid=" + sr.UUID)
	defer o.end()
	if err := sr.mustBePlugged("sr-update"); err != nil {
		return schema.SRStat{}, err
	}
	return sr.stat(ctx, o, sr.Handle)
}

// scanRetries and the wait between them are stat_with_retry's.
const scanRetries = 3

// Scan replays `xe sr-scan` (and xapi's periodic scans), which is
// Xapi_sr.scan calling the daemon's SR.scan2 (main.ml,
// SRImpl.sr_scan2_impl, stat_with_retry): SR.stat first; Healthy goes on
// to SR.ls; Unreachable is retried 3 times, 1 s apart; anything else
// (Recovering, Unavailable, Unreachable after the retries) fails the scan
// with SR_UNHEALTHY [sr, health, advice] (storage_utils.ml
// transform_storage_exn) and SR.ls is not called. The 2020 daemon
// (OldDaemon) has no scan2: SR.ls alone. Clone-on-boot temporaries are
// left out of the result, as both filter them.
func (sr *SR) Scan(ctx context.Context) ([]schema.Volume, error) {
	o := sr.sim.begin("xe sr-scan uuid=" + sr.UUID)
	defer o.end()
	if err := sr.mustBePlugged("sr-scan"); err != nil {
		return nil, err
	}
	if !sr.sim.OldDaemon {
		for retries := scanRetries; ; retries-- {
			st, err := sr.stat(ctx, o, sr.Handle)
			if err != nil {
				return nil, err
			}
			if st.Health.State == schema.Healthy {
				break
			}
			if st.Health.State == "Unreachable" && retries > 0 {
				o.say("    (Unreachable: the daemon retries in 1 s, %d retries left)", retries)
				select {
				case <-time.After(sr.sim.retryWait()):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				continue
			}
			advice := map[schema.HealthState]string{"Unavailable": "try reboot", "Unreachable": "try again later"}[st.Health.State]
			return nil, o.refuse("SR_UNHEALTHY", sr.UUID, string(st.Health.State), advice)
		}
	}
	var vols []schema.Volume
	if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "SR.ls", schema.SRArgs{Dbg: o.dbg, SR: sr.Handle}, &vols); err != nil {
		return nil, err
	}
	return withoutTransients(vols), nil
}

// withoutTransients drops the volumes another volume names in its
// clone-on-boot key (main.ml, sr_scan_impl and sr_scan2_impl).
func withoutTransients(vols []schema.Volume) []schema.Volume {
	transient := map[string]bool{}
	for _, v := range vols {
		if t, ok := v.Keys[cloneOnBoot]; ok {
			transient[t] = true
		}
	}
	out := vols[:0:0]
	for _, v := range vols {
		if !transient[v.Key] {
			out = append(out, v)
		}
	}
	return out
}

// Unplug replays `xe pbd-unplug` (spec §8.3). The daemon answers success
// itself when it holds no attach record for the SR.
func (sr *SR) Unplug(ctx context.Context) error {
	o := sr.sim.begin("xe pbd-unplug uuid=" + sr.PBD)
	defer o.end()
	if sr.Handle == "" {
		o.say("    (no SR.attach recorded on this host: the daemon answers success itself)")
		return nil
	}
	if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "SR.detach", schema.SRArgs{Dbg: o.dbg, SR: sr.Handle}, nil); err != nil {
		return err
	}
	sr.Handle = ""
	return nil
}

// Destroy replays `xe sr-destroy` with every PBD unplugged
// (Storage_access.destroy_sr, storage_access.ml): bind, the daemon's
// SR.attach (SR.attach and SR.stat), SR.destroy; SR.detach only if
// SR.destroy failed. A failed SR.stat fails the attach: no SR.destroy,
// and no SR.detach either.
func (sr *SR) Destroy(ctx context.Context) error {
	o := sr.sim.begin("xe sr-destroy uuid=" + sr.UUID)
	defer o.end()
	if sr.Handle != "" {
		return fmt.Errorf("sr-destroy: SR %s still has a plugged PBD on this host (xapi would refuse)", sr.UUID)
	}
	if err := sr.bind(ctx, o); err != nil {
		return err
	}
	handle, err := sr.attach(ctx, o)
	if err != nil {
		return err
	}
	dir := sr.sim.VolumeDir(sr.Type)
	err = o.call(ctx, dir, "SR.destroy", schema.SRArgs{Dbg: o.dbg, SR: handle}, nil)
	if err != nil {
		if derr := o.call(ctx, dir, "SR.detach", schema.SRArgs{Dbg: o.dbg, SR: handle}, nil); derr != nil {
			return errors.Join(err, derr)
		}
		return err
	}
	sr.sim.forgetSR(sr.UUID)
	return nil
}

// vdi returns the VDI record of key, making it on first sight (a VDI
// found by a scan, or created by another host's simulator).
func (sr *SR) vdi(key string) *vdiState {
	sr.sim.mu.Lock()
	defer sr.sim.mu.Unlock()
	if sr.vdis == nil {
		sr.vdis = map[string]*vdiState{}
	}
	v, ok := sr.vdis[key]
	if !ok {
		v = &vdiState{}
		sr.vdis[key] = v
	}
	return v
}

func (sr *SR) setAttached(key string, delta int) {
	v := sr.vdi(key)
	sr.sim.mu.Lock()
	defer sr.sim.mu.Unlock()
	if v.attached += delta; v.attached < 0 {
		v.attached = 0
	}
}

// checkVDIOp is the part of xapi's VDI operation checks that depends on
// the plugin (xen-api ocaml/xapi/xapi_vdi.ml, check_operation_error):
// an operation that cannot run live is refused with VDI_IN_USE while a
// VBD of the VDI is attached (only snapshot, clone, resize_online and a
// few others run live); then check_sm_feature_error refuses an operation
// whose feature (feature_of_op) the SM lacks with
// SR_OPERATION_NOT_SUPPORTED; a sharable VDI cannot be snapshot.
func (sr *SR) checkVDIOp(o *op, key, op string) error {
	v := sr.vdi(key)
	sr.sim.mu.Lock()
	attached, sharable := v.attached > 0, v.sharable
	sr.sim.mu.Unlock()
	live := map[string]bool{"snapshot": true, "resize_online": true, "clone": true}
	if attached && !live[op] {
		return o.refuse("VDI_IN_USE", key, op)
	}
	feature := map[string]string{
		"snapshot": "VDI_SNAPSHOT", "destroy": "VDI_DELETE", "resize": "VDI_RESIZE",
		"resize_online": "VDI_RESIZE_ONLINE", "clone": "VDI_CLONE", "set_on_boot": "VDI_RESET_ON_BOOT",
	}[op]
	if feature != "" && !HasFeature(sr.Features, feature) {
		return o.refuse("SR_OPERATION_NOT_SUPPORTED", sr.UUID)
	}
	if op == "snapshot" && sharable {
		return o.refuse("VDI_IS_SHARABLE", key)
	}
	return nil
}

// Call runs a single method of the SR's volume plugin, narrated, for
// tests of one call's contract (idempotence, errors).
func (sr *SR) Call(ctx context.Context, method string, args, result any) error {
	o := sr.sim.begin("# " + method)
	defer o.end()
	return o.call(ctx, sr.sim.VolumeDir(sr.Type), method, args, result)
}

// CallDatapath runs a single datapath method on the plugin the URI's
// scheme selects.
func (s *Sim) CallDatapath(ctx context.Context, uri, method string, args, result any) error {
	o := s.begin("# " + method + " " + uri)
	defer o.end()
	dp, _, err := s.ChooseDatapath(ctx, []string{uri})
	if err != nil {
		return err
	}
	return o.call(ctx, dp.Dir, method, args, result)
}

// Probe replays `xe sr-probe-ext type=<t> device-config:…` (spec §8.5):
// SR.probe on this host without any attach, passwords hidden as secrets.
// Results breaking the daemon's consistency rules fail as the daemon
// fails them.
func (s *Sim) Probe(ctx context.Context, srType string, deviceConfig map[string]string) ([]schema.ProbeResult, error) {
	o := s.begin(fmt.Sprintf("xe sr-probe-ext type=%s%s", srType, xeConfig(deviceConfig)))
	defer o.end()
	var res []schema.ProbeResult
	if err := o.call(ctx, s.VolumeDir(srType), "SR.probe", schema.SRProbeArgs{Dbg: o.dbg, Configuration: s.hideSecrets(deviceConfig)}, &res); err != nil {
		return nil, err
	}
	for _, r := range res {
		if err := r.Check(); err != nil {
			return res, &plugin.CallError{Doc: schema.ErrorDoc{Code: "SCRIPT_FAILED", Params: []string{"SR.probe", err.Error()}}}
		}
	}
	return res, nil
}

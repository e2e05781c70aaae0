package xapisim

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// VDICreate replays `xe vdi-create` (spec §8.6): Volume.create, then the
// daemon's Volume.set of vdi-type. The volume returned carries that key,
// as the VDI record xapi builds does.
func (sr *SR) VDICreate(ctx context.Context, name, description string, size int64, sharable bool) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-create sr-uuid=%s name-label=%s virtual-size=%d type=user sharable=%t", sr.UUID, quote(name), size, sharable))
	defer o.end()
	var v schema.Volume
	if err := sr.mustBePlugged("vdi-create"); err != nil {
		return v, err
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Volume.create", schema.VolumeCreateArgs{
		Dbg: o.dbg, SR: sr.Handle, Name: name, Description: description, Size: size, Sharable: sharable,
	}, &v); err != nil {
		return v, err
	}
	if err := o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: v.Key, K: "vdi-type", V: "user"}, nil); err != nil {
		return v, err
	}
	if v.Keys == nil {
		v.Keys = map[string]string{}
	}
	v.Keys["vdi-type"] = "user"
	rec := sr.vdi(v.Key)
	sr.sim.mu.Lock()
	rec.sharable = sharable
	sr.sim.mu.Unlock()
	o.say("  = %s", v.Key)
	return v, nil
}

// volumeStat is the Volume.stat that precedes every datapath call.
func (sr *SR) volumeStat(ctx context.Context, o *op, key string) (schema.Volume, error) {
	var v schema.Volume
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.stat", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &v)
	return v, err
}

// cloneOnBoot is the key in which the daemon keeps the temporary clone
// of a reset-on-boot volume (main.ml, _clone_on_boot_key).
const cloneOnBoot = "clone-on-boot"

// statAndChoose is the Volume.stat before every attach, activate,
// deactivate and detach, followed by a Volume.stat of the clone-on-boot
// temporary when the volume has one (main.ml, vdi_attach_common,
// vdi_activate_common, vdi_deactivate_impl, vdi_detach_impl,
// dp_destroy2), and the daemon's choice of datapath plugin from the URIs.
func (sr *SR) statAndChoose(ctx context.Context, o *op, key string) (*Datapath, string, error) {
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return nil, "", err
	}
	if t, ok := v.Keys[cloneOnBoot]; ok {
		if v, err = sr.volumeStat(ctx, o, t); err != nil {
			return nil, "", err
		}
	}
	return sr.choose(ctx, o, v.URI, true)
}

func (sr *SR) choose(ctx context.Context, o *op, uris []string, persistent bool) (*Datapath, string, error) {
	dp, uri, err := sr.sim.chooseDatapath(ctx, uris, persistent)
	if err != nil {
		o.say("    %-22s %7s  FAILED: %s", "(choose datapath)", "", describeErr(err))
	}
	return dp, uri, err
}

// DomainOf is the domain string the daemon gives datapath plugins
// (main.ml, domain_of): a guest's domid as xapi passed it, and for dom0
// users (vm "0": vdi-copy, export, storage migration, static VDIs)
// "u0-" and the datapath name, with '/' and '-' made '_', so that every
// dom0 user of a volume has its own token (e.g. dp "vbd/0/xvdb" gives
// "u0_vbd_0_xvdb").
func DomainOf(dp, vm string) string {
	if vm != "0" {
		return vm
	}
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '-' {
			return '_'
		}
		return r
	}, "u0-"+dp)
}

// validDomain refuses a domain string domain_of never produces, so a
// test cannot hand the plugin something a real host would not. On
// teardown "" is possible: xenopsd passes it when the domain has already
// gone from xenstore (ocaml/xenopsd/lib/storage.ml, vm_of_domid). The
// 2020 daemon had no domain_of and sent "0" for every dom0 user.
func validDomain(domain string, teardown, oldDaemon bool) error {
	switch {
	case domain == "" && teardown:
		return nil
	case domain == "0" && oldDaemon:
		return nil
	case domain != "" && domain != "0" && strings.Trim(domain, "0123456789") == "":
		return nil
	case strings.HasPrefix(domain, "u0_") && !strings.ContainsAny(domain, "/-"):
		return nil
	}
	return fmt.Errorf("domain %q: the daemon sends a guest's domid or u0_<datapath> for dom0 (DomainOf), never this", domain)
}

// VMStart replays what a VM start does for one VBD on this host (spec
// §8.10): epoch_begin with persistent=true, attach (Volume.stat,
// Datapath.attach) and activate (Volume.stat, Datapath.activate).
// domain is a guest's domid, or DomainOf(dp, "0") for a dom0 user.
func (sr *SR) VMStart(ctx context.Context, key, domain string) (*Attachment, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vm-start vm=<VM with VDI %s>   # VBD plug as domain %s", key, domain))
	defer o.end()
	return sr.vmStart(ctx, o, key, domain, true)
}

// VMStartResetOnBoot replays a VM start whose VDI has on-boot=reset:
// `xe vdi-param-set on-boot=reset` first (the set_on_boot operation,
// refused without VDI_RESET_ON_BOOT), then the VBD plug with
// epoch_begin persistent=false (xapi_xenops.ml, the VBD's persistent
// field is on_boot = `persist).
func (sr *SR) VMStartResetOnBoot(ctx context.Context, key, domain string) (*Attachment, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-param-set uuid=%s on-boot=reset; xe vm-start vm=<VM with VDI %s>   # domain %s", key, key, domain))
	defer o.end()
	if err := sr.checkVDIOp(o, key, "set_on_boot"); err != nil {
		return nil, err
	}
	return sr.vmStart(ctx, o, key, domain, false)
}

func (sr *SR) vmStart(ctx context.Context, o *op, key, domain string, persistent bool) (*Attachment, error) {
	if err := sr.mustBePlugged("vm-start"); err != nil {
		return nil, err
	}
	if err := validDomain(domain, false, sr.sim.OldDaemon); err != nil {
		return nil, err
	}
	if err := sr.epochBegin(ctx, o, key, persistent); err != nil {
		return nil, err
	}
	a, err := sr.attachStep(ctx, o, key, domain)
	if err != nil {
		return nil, err
	}
	if err := sr.activateStep(ctx, o, a); err != nil {
		return a, err
	}
	o.say("  = %s", a.Device)
	return a, nil
}

// attachStep is xenopsd's VBD_attach on this host: Volume.stat, the
// datapath's choice, Datapath.attach.
func (sr *SR) attachStep(ctx context.Context, o *op, key, domain string) (*Attachment, error) {
	a := &Attachment{Key: key, Domain: domain}
	var err error
	if a.Datapath, a.URI, err = sr.statAndChoose(ctx, o, key); err != nil {
		return nil, err
	}
	if err := o.call(ctx, a.Datapath.Dir, "Datapath.attach", schema.DatapathArgs{Dbg: o.dbg, URI: a.URI, Domain: domain}, &a.Backend); err != nil {
		return nil, err
	}
	sr.setAttached(key, 1)
	for _, i := range a.Backend.Implementations {
		if a.Device == "" && i.BlockDevice != "" {
			a.Device = i.BlockDevice
		}
		if a.Device == "" && i.File != "" {
			a.Device = i.File
		}
	}
	return a, nil
}

// activateStep is xenopsd's VBD_activate on this host: Volume.stat, the
// datapath's choice, Datapath.activate.
func (sr *SR) activateStep(ctx context.Context, o *op, a *Attachment) error {
	dp, uri, err := sr.statAndChoose(ctx, o, a.Key)
	if err != nil {
		return err
	}
	return o.call(ctx, dp.Dir, "Datapath.activate", schema.DatapathArgs{Dbg: o.dbg, URI: uri, Domain: a.Domain}, nil)
}

// deactivateStep is the daemon's VDI.deactivate on this host: Volume.stat,
// the datapath's choice, Datapath.deactivate.
func (sr *SR) deactivateStep(ctx context.Context, o *op, a *Attachment) error {
	dp, uri, err := sr.statAndChoose(ctx, o, a.Key)
	if err != nil {
		return err
	}
	return o.call(ctx, dp.Dir, "Datapath.deactivate", schema.DatapathArgs{Dbg: o.dbg, URI: uri, Domain: a.Domain}, nil)
}

// epochBegin is the daemon's VDI.epoch_begin (main.ml,
// vdi_epoch_begin_impl): Volume.stat, the datapath chosen preferring
// NONPERSISTENT ones when persistent is false; a NONPERSISTENT datapath
// gets Datapath.open; otherwise, for persistent=false, the daemon makes
// the disk non-persistent itself: Volume.destroy of a leftover temporary,
// Volume.clone, and Volume.set clone-on-boot=<the clone's key>, so that
// attach and activate use the clone. A plugin without Volume.clone fails
// the VM start here.
func (sr *SR) epochBegin(ctx context.Context, o *op, key string, persistent bool) error {
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return err
	}
	dp, uri, err := sr.choose(ctx, o, v.URI, persistent)
	if err != nil {
		return err
	}
	if dp.NonPersistent() {
		return o.call(ctx, dp.Dir, "Datapath.open", schema.DatapathOpenArgs{Dbg: o.dbg, URI: uri, Persistent: persistent}, nil)
	}
	if persistent {
		return nil
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if t, ok := v.Keys[cloneOnBoot]; ok {
		if err := o.call(ctx, dir, "Volume.destroy", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: t}, nil); err != nil {
			return err
		}
	}
	var clone schema.Volume
	if err := o.call(ctx, dir, "Volume.clone", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &clone); err != nil {
		return err
	}
	return o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: key, K: cloneOnBoot, V: clone.Key}, nil)
}

// VMShutdown replays the VBD teardown of a VM shutdown (spec §8.11):
// deactivate (Volume.stat, Datapath.deactivate); datapath destroy
// (Volume.stat, Datapath.deactivate again — once only with OldDaemon —
// then Datapath.detach); epoch_end (Volume.stat; Datapath.close for
// NONPERSISTENT plugins, else Volume.destroy of the clone-on-boot
// temporary and Volume.unset of the key, main.ml vdi_epoch_end_impl).
func (sr *SR) VMShutdown(ctx context.Context, a *Attachment) error {
	o := sr.sim.begin(fmt.Sprintf("xe vm-shutdown vm=<VM with VDI %s>   # VBD unplug of domain %s", a.Key, a.Domain))
	defer o.end()
	if err := validDomain(a.Domain, true, sr.sim.OldDaemon); err != nil {
		return err
	}
	args := func(uri string) schema.DatapathArgs {
		return schema.DatapathArgs{Dbg: o.dbg, URI: uri, Domain: a.Domain}
	}
	if err := sr.deactivateStep(ctx, o, a); err != nil {
		return err
	}
	dp, uri, err := sr.statAndChoose(ctx, o, a.Key)
	if err != nil {
		return err
	}
	if !sr.sim.OldDaemon {
		if err := o.call(ctx, dp.Dir, "Datapath.deactivate", args(uri), nil); err != nil {
			return err
		}
	}
	if err := o.call(ctx, dp.Dir, "Datapath.detach", args(uri), nil); err != nil {
		return err
	}
	sr.setAttached(a.Key, -1)
	v, err := sr.volumeStat(ctx, o, a.Key)
	if err != nil {
		return err
	}
	if dp, uri, err = sr.choose(ctx, o, v.URI, true); err != nil {
		return err
	}
	if dp.NonPersistent() {
		return o.call(ctx, dp.Dir, "Datapath.close", schema.DatapathCloseArgs{Dbg: o.dbg, URI: uri}, nil)
	}
	t, ok := v.Keys[cloneOnBoot]
	if !ok {
		return nil
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Volume.destroy", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: t}, nil); err != nil {
		return err
	}
	return o.call(ctx, dir, "Volume.unset", schema.VolumeUnsetArgs{Dbg: o.dbg, SR: sr.Handle, Key: a.Key, K: cloneOnBoot}, nil)
}

// VDIResize replays `xe vdi-resize` (spec §8.7), the `resize` operation:
// refused with VDI_IN_USE while the VDI is attached, and without
// VDI_RESIZE; then Volume.resize and the Volume.stat whose virtual_size
// xapi records (main.ml, vdi_resize_impl).
func (sr *SR) VDIResize(ctx context.Context, key string, newSize int64) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-resize uuid=%s disk-size=%d", key, newSize))
	defer o.end()
	return sr.resize(ctx, o, key, newSize, "resize")
}

// VDIResizeOnline replays `xe vdi-resize online=true`, the resize_online
// operation: allowed on an attached VDI, but only when the SM has
// VDI_RESIZE_ONLINE (xapi_vdi.ml, resize_online is resize).
func (sr *SR) VDIResizeOnline(ctx context.Context, key string, newSize int64) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-resize uuid=%s disk-size=%d online=true", key, newSize))
	defer o.end()
	return sr.resize(ctx, o, key, newSize, "resize_online")
}

func (sr *SR) resize(ctx context.Context, o *op, key string, newSize int64, op string) (schema.Volume, error) {
	if err := sr.mustBePlugged("vdi-resize"); err != nil {
		return schema.Volume{}, err
	}
	if err := sr.checkVDIOp(o, key, op); err != nil {
		return schema.Volume{}, err
	}
	if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.resize", schema.VolumeResizeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key, NewSize: newSize}, nil); err != nil {
		return schema.Volume{}, err
	}
	return sr.volumeStat(ctx, o, key)
}

// VDISnapshot replays `xe vdi-snapshot`: refused without VDI_SNAPSHOT
// and for a sharable VDI; then the daemon's Volume.snapshot and the five
// Volume.set of the snapshot's keys (main.ml, vdi_snapshot_impl).
func (sr *SR) VDISnapshot(ctx context.Context, key string) (schema.Volume, error) {
	o := sr.sim.begin("xe vdi-snapshot uuid=" + key)
	defer o.end()
	var snap schema.Volume
	if err := sr.mustBePlugged("vdi-snapshot"); err != nil {
		return snap, err
	}
	if err := sr.checkVDIOp(o, key, "snapshot"); err != nil {
		return snap, err
	}
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Volume.snapshot", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &snap); err != nil {
		return snap, err
	}
	for _, kv := range [][2]string{
		{"snapshot_time", time.Now().UTC().Format(time.RFC3339)}, {"is_a_snapshot", "true"},
		{"snapshot_of", key}, {"content_id", ""}, {"vdi-type", "user"},
	} {
		if err := o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: snap.Key, K: kv[0], V: kv[1]}, nil); err != nil {
			return snap, err
		}
	}
	return snap, nil
}

// VDIClone replays `xe vdi-clone`: refused without VDI_CLONE; then the
// daemon's Volume.clone (main.ml, vdi_clone_impl).
func (sr *SR) VDIClone(ctx context.Context, key string) (schema.Volume, error) {
	o := sr.sim.begin("xe vdi-clone uuid=" + key)
	defer o.end()
	var clone schema.Volume
	if err := sr.mustBePlugged("vdi-clone"); err != nil {
		return clone, err
	}
	if err := sr.checkVDIOp(o, key, "clone"); err != nil {
		return clone, err
	}
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.clone", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &clone)
	return clone, err
}

// VDIDestroy replays `xe vdi-destroy` (spec §8.8): refused while
// attached and without VDI_DELETE; Volume.stat, then Volume.destroy —
// twice when the volume has a clone-on-boot key, as the daemon does
// (main.ml, vdi_destroy_impl destroys the volume itself twice, not its
// temporary).
func (sr *SR) VDIDestroy(ctx context.Context, key string) error {
	o := sr.sim.begin("xe vdi-destroy uuid=" + key)
	defer o.end()
	if err := sr.mustBePlugged("vdi-destroy"); err != nil {
		return err
	}
	if err := sr.checkVDIOp(o, key, "destroy"); err != nil {
		return err
	}
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return err
	}
	args := schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}
	if _, ok := v.Keys[cloneOnBoot]; ok {
		if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.destroy", args, nil); err != nil {
			return err
		}
	}
	return o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.destroy", args, nil)
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

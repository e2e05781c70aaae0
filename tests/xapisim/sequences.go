package xapisim

import (
	"context"
	"errors"
	"fmt"

	"sanvol/plugin"
	schema "sanvol/xapi-storage-schema"
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

	sim *Sim
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
	if err := o.call(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, &sr.Query); err != nil {
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

// plug: Plugin.Query, SR.attach, the daemon's own SR.stat, and on the SR
// master xapi's health check, a second SR.stat.
func (sr *SR) plug(ctx context.Context, o *op) error {
	handle, err := sr.queryAndAttach(ctx, o)
	if err != nil {
		return err
	}
	sr.Handle = handle
	if _, err := sr.stat(ctx, o); err != nil {
		return err
	}
	if !sr.sim.Member {
		if _, err := sr.stat(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

// queryAndAttach is xapi's "bind" (Plugin.Query) and SR.attach, which
// both pbd-plug and sr-destroy start with.
func (sr *SR) queryAndAttach(ctx context.Context, o *op) (string, error) {
	dir := sr.sim.VolumeDir(sr.Type)
	if err := o.call(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, &sr.Query); err != nil {
		return "", err
	}
	var handle string
	err := o.call(ctx, dir, "SR.attach", schema.SRAttachArgs{Dbg: o.dbg, Configuration: sr.Config}, &handle)
	return handle, err
}

func (sr *SR) stat(ctx context.Context, o *op) (schema.SRStat, error) {
	var st schema.SRStat
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "SR.stat", schema.SRArgs{Dbg: o.dbg, SR: sr.Handle}, &st)
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
	return sr.stat(ctx, o)
}

// Scan replays `xe sr-scan` as newer xapi does it (≥ 24.28, spec §8.4):
// SR.stat as a health gate, then SR.ls.
func (sr *SR) Scan(ctx context.Context) ([]schema.Volume, error) {
	o := sr.sim.begin("xe sr-scan uuid=" + sr.UUID)
	defer o.end()
	if err := sr.mustBePlugged("sr-scan"); err != nil {
		return nil, err
	}
	if _, err := sr.stat(ctx, o); err != nil {
		return nil, err
	}
	var vols []schema.Volume
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "SR.ls", schema.SRArgs{Dbg: o.dbg, SR: sr.Handle}, &vols)
	return vols, err
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

// Destroy replays `xe sr-destroy` (spec §8.14) with every PBD unplugged:
// Plugin.Query, SR.attach, SR.destroy; SR.detach only if destroy failed.
func (sr *SR) Destroy(ctx context.Context) error {
	o := sr.sim.begin("xe sr-destroy uuid=" + sr.UUID)
	defer o.end()
	if sr.Handle != "" {
		return fmt.Errorf("sr-destroy: SR %s still has a plugged PBD on this host (xapi would refuse)", sr.UUID)
	}
	handle, err := sr.queryAndAttach(ctx, o)
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
	o.say("  = %s", v.Key)
	return v, nil
}

// volumeStat is the Volume.stat that precedes every datapath call.
func (sr *SR) volumeStat(ctx context.Context, o *op, key string) (schema.Volume, error) {
	var v schema.Volume
	err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.stat", schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}, &v)
	return v, err
}

// statAndChoose is the Volume.stat before every datapath call, and the
// daemon's choice of datapath plugin from the URIs it returned.
func (sr *SR) statAndChoose(ctx context.Context, o *op, key string) (*Datapath, string, error) {
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return nil, "", err
	}
	dp, uri, err := sr.sim.ChooseDatapath(ctx, v.URI)
	if err != nil {
		o.say("    %-22s %7s  FAILED: %s", "(choose datapath)", "", describeErr(err))
	}
	return dp, uri, err
}

// VMStart replays what a VM start does for one VBD on this host (spec
// §8.10): epoch_begin (Volume.stat; Datapath.open only for NONPERSISTENT
// plugins), attach (Volume.stat, Datapath.attach) and activate
// (Volume.stat, Datapath.activate).
func (sr *SR) VMStart(ctx context.Context, key, domain string) (*Attachment, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vm-start vm=<VM with VDI %s>   # VBD plug as domain %s", key, domain))
	defer o.end()
	if err := sr.mustBePlugged("vm-start"); err != nil {
		return nil, err
	}
	dp, uri, err := sr.statAndChoose(ctx, o, key)
	if err != nil {
		return nil, err
	}
	if dp.NonPersistent() {
		if err := o.call(ctx, dp.Dir, "Datapath.open", schema.DatapathOpenArgs{Dbg: o.dbg, URI: uri, Persistent: true}, nil); err != nil {
			return nil, err
		}
	}
	a := &Attachment{Key: key, Domain: domain}
	if a.Datapath, a.URI, err = sr.statAndChoose(ctx, o, key); err != nil {
		return nil, err
	}
	if err := o.call(ctx, a.Datapath.Dir, "Datapath.attach", schema.DatapathArgs{Dbg: o.dbg, URI: a.URI, Domain: domain}, &a.Backend); err != nil {
		return nil, err
	}
	for _, i := range a.Backend.Implementations {
		if a.Device == "" && i.BlockDevice != "" {
			a.Device = i.BlockDevice
		}
		if a.Device == "" && i.File != "" {
			a.Device = i.File
		}
	}
	if dp, uri, err = sr.statAndChoose(ctx, o, key); err != nil {
		return a, err
	}
	if err := o.call(ctx, dp.Dir, "Datapath.activate", schema.DatapathArgs{Dbg: o.dbg, URI: uri, Domain: domain}, nil); err != nil {
		return a, err
	}
	o.say("  = %s", a.Device)
	return a, nil
}

// VMShutdown replays the VBD teardown of a VM shutdown (spec §8.11):
// deactivate (Volume.stat, Datapath.deactivate); datapath destroy
// (Volume.stat, Datapath.deactivate again — once only with OldDaemon —
// then Datapath.detach); epoch_end (Volume.stat; Datapath.close only for
// NONPERSISTENT plugins).
func (sr *SR) VMShutdown(ctx context.Context, a *Attachment) error {
	o := sr.sim.begin(fmt.Sprintf("xe vm-shutdown vm=<VM with VDI %s>   # VBD unplug of domain %s", a.Key, a.Domain))
	defer o.end()
	args := func(uri string) schema.DatapathArgs {
		return schema.DatapathArgs{Dbg: o.dbg, URI: uri, Domain: a.Domain}
	}
	dp, uri, err := sr.statAndChoose(ctx, o, a.Key)
	if err != nil {
		return err
	}
	if err := o.call(ctx, dp.Dir, "Datapath.deactivate", args(uri), nil); err != nil {
		return err
	}
	if dp, uri, err = sr.statAndChoose(ctx, o, a.Key); err != nil {
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
	if dp, uri, err = sr.statAndChoose(ctx, o, a.Key); err != nil {
		return err
	}
	if dp.NonPersistent() {
		return o.call(ctx, dp.Dir, "Datapath.close", schema.DatapathCloseArgs{Dbg: o.dbg, URI: uri}, nil)
	}
	return nil
}

// VDIResize replays `xe vdi-resize` (spec §8.7): Volume.resize, then
// Volume.stat whose virtual_size xapi records.
func (sr *SR) VDIResize(ctx context.Context, key string, newSize int64) (schema.Volume, error) {
	o := sr.sim.begin(fmt.Sprintf("xe vdi-resize uuid=%s disk-size=%d", key, newSize))
	defer o.end()
	if err := sr.mustBePlugged("vdi-resize"); err != nil {
		return schema.Volume{}, err
	}
	if err := o.call(ctx, sr.sim.VolumeDir(sr.Type), "Volume.resize", schema.VolumeResizeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key, NewSize: newSize}, nil); err != nil {
		return schema.Volume{}, err
	}
	return sr.volumeStat(ctx, o, key)
}

// VDIDestroy replays `xe vdi-destroy` (spec §8.8): Volume.stat, then
// Volume.destroy — twice when the volume has a clone-on-boot key, as both
// daemon generations do.
func (sr *SR) VDIDestroy(ctx context.Context, key string) error {
	o := sr.sim.begin("xe vdi-destroy uuid=" + key)
	defer o.end()
	if err := sr.mustBePlugged("vdi-destroy"); err != nil {
		return err
	}
	v, err := sr.volumeStat(ctx, o, key)
	if err != nil {
		return err
	}
	args := schema.VolumeArgs{Dbg: o.dbg, SR: sr.Handle, Key: key}
	if _, ok := v.Keys["clone-on-boot"]; ok {
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

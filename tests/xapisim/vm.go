package xapisim

// What a VM start and shutdown do to each VBD on this host: the
// datapath plugin's attach, activate, deactivate and detach, and the
// reset-on-boot epoch.

import (
	"context"
	"fmt"
	"strings"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

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
	sr.recordVM(a)
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
	sr.forgetVM(a)
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

package xapisim

import (
	"context"
	"fmt"
	"time"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// PoolSim is a pool of hosts, each its own daemon (a Sim, whose Exec may
// run the method files on another machine), sharing one xapi database:
// the hosts, SRs and PBDs every host's plugin reads and writes through
// XenAPI (serve the master Sim's ServeXenAPI where every host's plugin can
// reach it). It routes each xe command where xapi runs it:
//   - SR and VDI operations (sr-create, vdi-create, vdi-resize,
//     vdi-destroy) on the pool master: xen-api ocaml/xapi/
//     message_forwarding.ml, forward_vdi_op goes through forward_sr_op to
//     the host of the first PBD choose_pbd_for_sr lists, and for a shared
//     SR that is the master's ("Operation run on shared SRs depend on the
//     first pbd of the list to be on the master");
//   - PBD plug and unplug on the PBD's host (message_forwarding.ml,
//     PBD.plug);
//   - the VBD's datapath calls, and the Volume.stat the daemon makes
//     before each, on the host running the VM (xenopsd on that host calls
//     its own storage daemon: xenops_server_xen.ml, attach_and_activate);
//   - host.call_plugin on the host it names, and pool.get_master names
//     Hosts[0] (or the host SetMaster made master): a member's
//     reset-on-boot Volume calls reach the master's host plugin that way
//     (plugin/forward.go).
//
// A member's SR master check (its PBD.plug skips the master's second
// SR.stat) follows Sim.Member, which NewPoolSim sets.
type PoolSim struct {
	// Hosts are the pool's daemons; Hosts[0] is the pool master.
	Hosts []*Sim
}

// NewPoolSim makes a pool of master and members: the members share the
// master's database (and so its XenAPI view) and are marked Member.
func NewPoolSim(master *Sim, members ...*Sim) *PoolSim {
	p := &PoolSim{Hosts: []*Sim{master}}
	master.xapi.mu.Lock()
	master.xapi.master = master.hostLocked()
	master.xapi.mu.Unlock()
	for _, m := range members {
		m.xapi = master.xapi
		m.Member = true
		m.HostUUID()
		p.Hosts = append(p.Hosts, m)
	}
	return p
}

// Master is the pool master's daemon.
func (p *PoolSim) Master() *Sim { return p.Hosts[0] }

// SetMaster makes host i the master XenAPI names (pool.get_master), as
// `xe pool-designate-new-master` does once its xapi restarts
// (xapi_pool.ml designate_new_master). The hosts' pool.conf, which
// sanvol reads for its role, is the caller's to rewrite.
func (p *PoolSim) SetMaster(i int) {
	db := p.Master().xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	db.master = p.Hosts[i].hostLocked()
}

// PoolSR is a shared SR as every host of the pool knows it: SRs[i] is
// host i's view (its PBD and, while plugged, its SR.attach handle).
type PoolSR struct {
	SRs []*SR
	// DuringMigration, if set, runs inside Migrate once the VM is marked
	// migrating, before the destination attaches.
	DuringMigration func()
}

// SRCreate replays `xe sr-create shared=true` on the master: SR.create
// there, then one PBD per host (xapi_sr.ml, create), each plugged on its
// host, master first.
func (p *PoolSim) SRCreate(ctx context.Context, srType, name, description string, deviceConfig map[string]string) (*PoolSR, error) {
	sr, err := p.Master().SRCreate(ctx, srType, name, description, deviceConfig)
	if err != nil {
		return nil, err
	}
	ps := &PoolSR{SRs: []*SR{sr}}
	for _, m := range p.Hosts[1:] {
		ps.SRs = append(ps.SRs, m.Introduce(sr))
	}
	for i, s := range ps.SRs[1:] {
		if err := s.Plug(ctx); err != nil {
			return ps, fmt.Errorf("pbd-plug on host %d: %w", i+1, err)
		}
	}
	return ps, nil
}

// Master is the pool master's view of the SR, where SR and VDI
// operations run.
func (ps *PoolSR) Master() *SR { return ps.SRs[0] }

// On is host i's view of the SR.
func (ps *PoolSR) On(i int) *SR { return ps.SRs[i] }

// Migrate replays the VBD steps of `xe vm-migrate live=true` of a VM
// whose disk a is attached and active on host from, to host to where the
// VM gets domain domainTo, in xenopsd's order (xen-api
// ocaml/xenopsd/lib/xenops_server.ml):
//  1. the destination attaches early, before the memory arrives
//     (VM_receive_memory, "VBDs.set_active_and_attach": VBD_attach when
//     the SM can attach early, which an SMAPIv3 SR can);
//  2. the source suspends the domain, flushes the disk backends and
//     deactivates each VDI (xenops_server_xen.ml, VM.save:
//     Storage.deactivate), inside VM_save, before its final handshake;
//  3. only after that all-clear the destination activates
//     (VM_receive_memory, "Receive the all-clear to unpause", then
//     VM_restore_devices with migration=true: VBD_activate);
//  4. the source destroys its temporary domain (VM_migrate's cleanup,
//     VM_shutdown: vbd_unplug, i.e. VBD_deactivate, a no-op now, and
//     VBD_detach).
//
// The destination's epoch_begin comes with its attach. It returns the
// destination's attachment and when steps 2 and 3 happened: the datapath's
// share of the migration downtime is Activated - Suspended.
func (ps *PoolSR) Migrate(ctx context.Context, a *Attachment, from, to int, domainTo string) (*Attachment, MigrationTiming, error) {
	src, dst := ps.SRs[from], ps.SRs[to]
	var tm MigrationTiming
	od := dst.sim.begin(fmt.Sprintf("xe vm-migrate vm=<VM with VDI %s> live=true   # destination, domain %s", a.Key, domainTo))
	defer od.end()
	osrc := src.sim.begin(fmt.Sprintf("# vm-migrate source side, domain %s", a.Domain))
	defer osrc.end()
	if err := dst.mustBePlugged("vm-migrate"); err != nil {
		return nil, tm, err
	}
	if err := validDomain(domainTo, false, dst.sim.OldDaemon); err != nil {
		return nil, tm, err
	}
	ps.migrating(a, true)
	defer ps.migrating(a, false)
	if ps.DuringMigration != nil {
		ps.DuringMigration()
	}
	if err := dst.epochBegin(ctx, od, a.Key, true); err != nil {
		return nil, tm, err
	}
	b, err := dst.attachStep(ctx, od, a.Key, domainTo)
	if err != nil {
		return nil, tm, err
	}
	tm.Suspended = time.Now()
	if err := src.deactivateStep(ctx, osrc, a); err != nil {
		return b, tm, fmt.Errorf("source deactivate: %w", err)
	}
	tm.Deactivated = time.Now()
	if err := dst.activateStep(ctx, od, b); err != nil {
		return b, tm, fmt.Errorf("destination activate: %w", err)
	}
	tm.Activated = time.Now()
	if err := src.deactivateStep(ctx, osrc, a); err != nil {
		return b, tm, fmt.Errorf("source teardown deactivate: %w", err)
	}
	dp, uri, err := src.statAndChoose(ctx, osrc, a.Key)
	if err != nil {
		return b, tm, err
	}
	if err := osrc.call(ctx, dp.Dir, "Datapath.detach", schema.DatapathArgs{Dbg: osrc.dbg, URI: uri, Domain: a.Domain}, nil); err != nil {
		return b, tm, fmt.Errorf("source detach: %w", err)
	}
	src.setAttached(a.Key, -1)
	ps.migrated(a, b, to)
	od.say("  = %s on the destination", b.Device)
	return b, tm, nil
}

// MigrationTiming is when Migrate's source deactivate began (the domain
// is suspended from here on) and ended, and when the destination's
// activate returned.
type MigrationTiming struct {
	Suspended, Deactivated, Activated time.Time
}

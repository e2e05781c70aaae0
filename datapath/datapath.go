// Package datapath implements the Datapath.* methods: it turns a volume
// URI into an active LV on this host and hands its device to blkback. It
// counts references per (uri, domain), because xapi attaches a volume
// once per datapath (a VM disk and a dom0 copy of the same volume are two)
// and a live migration attaches on the destination while the source is
// still active.
package datapath

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Scheme is the URI scheme and the datapath directory's name.
const Scheme = "sanvol"

// StateDir keeps the reference counts. /run is right: a reboot ends
// every attachment along with the reference counts.
const StateDir = "/run/sanvol/dp"

// SR is what the datapath needs of an SR attached on this host.
type SR struct {
	UUID   string
	VG     string
	Device string
}

// LVM is the part of the lvm client the datapath uses.
type LVM interface {
	LV(ctx context.Context, s lvm.Scope, vg, lv string) (lvm.LV, error)
	Activate(ctx context.Context, s lvm.Scope, vg, lv string) error
	Deactivate(ctx context.Context, s lvm.Scope, vg, lv string) error
	Refresh(ctx context.Context, s lvm.Scope, vg, lv string) error
}

// Deps are the datapath's dependencies.
type Deps struct {
	LVM    LVM
	Root   host.Root
	Locker host.Locker
	Log    *zap.Logger
	// Lookup finds an SR attached on this host by uuid; it fails with
	// host.KindNotAttached when the PBD is not plugged here.
	Lookup func(uuid string) (SR, error)
	// LVName maps a volume key to its LV name (the engine's naming).
	LVName func(key string) string
	// Usable refuses an LV the engine has not finished with (a create
	// still zeroing, a resize that died before zeroing what it added).
	Usable func(lvm.LV) error
	// Role is this host's pool role: LVM runs read-only off the master.
	Role host.Role
	// Stack builds the volume's device-mapper device over its LV (and its
	// snapshot overlays, from the LV's tags) and takes it down: the
	// engine's volume.Stack. Nil hands out the LV itself.
	Stack Stack
}

// Stack is the part of volume.Stack the datapath uses.
type Stack interface {
	// AssembleLV builds the device from base, K's LV as ensureActive read
	// it (its tags say the chain).
	AssembleLV(ctx context.Context, s lvm.Scope, sr, vg, key string, base lvm.LV) (string, error)
	// AttachLV is the device for an attach with no domain active here:
	// as AssembleLV for a plain volume, and for one whose device maps a
	// COW its final device with a placeholder table, built for real by
	// the activate (docs/design.md "Live migration of a volume with an
	// overlay").
	AttachLV(ctx context.Context, s lvm.Scope, sr, vg, key string, base lvm.LV) (string, error)
	// StopMerge turns a merging layer of the device back into a plain
	// snapshot: the deactivate of the last active domain here.
	StopMerge(ctx context.Context, s lvm.Scope, sr, vg, key string) error
	Disassemble(ctx context.Context, s lvm.Scope, sr, vg, key string) error
}

// LVResolver is implemented by a Stack that serves volumes with no LV of
// their own: a snapshot's image maps its volume's base LV (volume.Stack,
// LVOf). The Stack's Disassemble releases such an LV itself; detach's
// deactivation of the volume's own LV then finds none.
type LVResolver interface {
	LVOf(ctx context.Context, s lvm.Scope, sr, vg, key string) (string, error)
}

// Datapath serves the Datapath.* methods.
type Datapath struct{ d Deps }

// New returns a Datapath.
func New(d Deps) *Datapath {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	return &Datapath{d: d}
}

// Backend is what attach hands to xapi: the device for blkback and for
// dom0 users, the same stable path in both.
type Backend struct {
	Device string
}

// Target is a parsed volume URI: sanvol://<sr-uuid>/<key>.
type Target struct {
	SR  string
	Key string
}

var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ParseURI parses a volume URI. The URI is self-contained because the
// datapath is given nothing else about the volume.
func ParseURI(op, uri string) (Target, error) {
	u, err := url.Parse(uri)
	bad := func(why string) (Target, error) {
		return Target{}, host.NewError(host.KindInvalid, op, fmt.Sprintf("volume URI %q %s", uri, why),
			"sanvol URIs look like sanvol://<sr-uuid>/<key>; rescan the SR (xe sr-scan) so that the VDI carries a current URI", nil)
	}
	if err != nil {
		return bad("does not parse: " + err.Error())
	}
	if !strings.EqualFold(u.Scheme, Scheme) {
		return bad("is not a " + Scheme + ":// URI")
	}
	key := strings.TrimPrefix(u.Path, "/")
	if !uuidRe.MatchString(u.Host) {
		return bad("does not name an SR uuid")
	}
	if key == "" || strings.Contains(key, "/") || !lvm.IsLVMName(key) {
		return bad("does not name a volume key")
	}
	return Target{SR: strings.ToLower(u.Host), Key: key}, nil
}

// URI builds the URI of a volume.
func URI(srUUID, key string) string { return Scheme + "://" + srUUID + "/" + key }

// refs is the per-volume reference record: domain -> active.
type refs struct {
	Domains map[string]bool `json:"domains"`
}

func statePath(t Target) string { return StateDir + "/" + t.SR + "/" + t.Key + ".json" }

func (p *Datapath) load(t Target) (refs, error) {
	r := refs{Domains: map[string]bool{}}
	b, err := p.d.Root.ReadFile(statePath(t))
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return refs{Domains: map[string]bool{}}, fmt.Errorf("reference counts %s are corrupt: %w", statePath(t), err)
	}
	if r.Domains == nil {
		r.Domains = map[string]bool{}
	}
	return r, nil
}

func (p *Datapath) save(t Target, r refs) error {
	if len(r.Domains) == 0 {
		return p.d.Root.Remove(statePath(t))
	}
	b, _ := json.Marshal(r)
	return p.d.Root.WriteFileAtomic(statePath(t), b, 0o600)
}

// lock serialises every datapath call on one volume on this host; calls
// run in parallel processes on newer xapi.
func (p *Datapath) lock(ctx context.Context, t Target) (func(), error) {
	return p.d.Locker.Lock(ctx, "dp-"+t.SR+"-"+t.Key)
}

func (p *Datapath) scope(sr SR) lvm.Scope {
	return lvm.Scope{Devices: []string{sr.Device}, ReadOnly: !p.d.Role.Master}
}

// ensureActive activates the LV, or refreshes it when it is already
// active, so that a resize done on the master since it was activated here
// becomes visible at this host's next datapath call. build says whether
// the device is built for real (an activate, or an attach where a domain
// has the volume active already) or as an attach's placeholder may be
// (Stack.AttachLV).
func (p *Datapath) ensureActive(ctx context.Context, op string, sr SR, t Target, build bool) (string, error) {
	lv := p.d.LVName(t.Key)
	s := p.scope(sr)
	if r, ok := p.d.Stack.(LVResolver); ok {
		var err error
		if lv, err = r.LVOf(ctx, s, sr.UUID, sr.VG, t.Key); err != nil {
			return "", err
		}
	}
	info, err := p.d.LVM.LV(ctx, s, sr.VG, lv)
	if err != nil {
		if errors.Is(err, host.ErrNotFound) {
			return "", host.NewError(host.KindNotFound, op, fmt.Sprintf("volume %s does not exist in SR %s", t.Key, t.SR),
				"the VDI was destroyed or never created; rescan the SR (xe sr-scan uuid="+t.SR+")", err)
		}
		return "", err
	}
	if p.d.Usable != nil {
		if err := p.d.Usable(info); err != nil {
			return "", err
		}
	}
	// An active LV resized on the master since it was activated here
	// (lvs state 'X') needs the refresh: lvchange -ay would not reload it.
	// One whose device already has the metadata's size (the activate
	// after this host's attach) needs nothing: a refresh is an lvm
	// process with a metadata read, on every VM start.
	if info.Active() {
		if !p.current(sr.VG, info) {
			if err := p.d.LVM.Refresh(ctx, s, sr.VG, lv); err != nil {
				return "", err
			}
		}
	} else if err := p.d.LVM.Activate(ctx, s, sr.VG, lv); err != nil {
		return "", err
	}
	if p.d.Stack == nil {
		return lvm.DevicePath(sr.VG, lv), nil
	}
	// blkback gets a device-mapper device of sanvol's own, never the LV:
	// a snapshot later switches that device's table while blkback holds
	// it, and its major:minor stays.
	if !build {
		return p.d.Stack.AttachLV(ctx, s, sr.UUID, sr.VG, t.Key, info)
	}
	return p.d.Stack.AssembleLV(ctx, s, sr.UUID, sr.VG, t.Key, info)
}

// current reports whether active LV l's device is the one its metadata
// describes: it runs its live table (lvs state 'a', or the kernel's
// state: lvm.LV.Live) and the kernel's size is the LV's (what a resize
// on the master changes, and the only table change sanvol makes). lvm2
// 2.03 prints state 'X' for a table older than the metadata; the kernel's
// state has no such flag, and the size check covers it: it does not
// depend on how an lvm version, or the kernel, reports state.
func (p *Datapath) current(vg string, l lvm.LV) bool {
	if !l.Live() {
		return false
	}
	dev, err := p.d.Root.EvalSymlinks(lvm.DevicePath(vg, l.Name))
	if err != nil {
		return false
	}
	return blockdev.Size(p.d.Root, path.Base(dev)) == l.Size
}

func (p *Datapath) lookup(op string, t Target) (SR, error) {
	sr, err := p.d.Lookup(t.SR)
	if err != nil {
		// The lookup's own message says the same; one sentence is enough.
		if errors.Is(err, host.ErrNotAttached) {
			return sr, host.NewError(host.KindNotAttached, op, fmt.Sprintf("SR %s is not attached on this host", t.SR),
				"plug the SR's PBD on this host first (xe pbd-plug uuid=<pbd>; find it with xe pbd-list sr-uuid="+t.SR+" host-uuid=<this host>)", nil)
		}
		return sr, err
	}
	return sr, nil
}

// Attach makes the volume's device exist on this host for domain.
func (p *Datapath) Attach(ctx context.Context, uri, domain string) (Backend, error) {
	dev, err := p.use(ctx, "Datapath.attach", uri, domain, false)
	if err != nil {
		return Backend{}, err
	}
	return Backend{Device: dev}, nil
}

// Activate marks the volume in use by domain; idempotent. The LV is made
// active again if it was deactivated under us (a manual lvchange, a crash
// between attach and activate): that is cheap to ensure. The device's
// stack is built now, from the tags as they are now: for a volume with an
// overlay this replaces the attach's placeholder (one more table reload
// at a VM start), and in a live migration it runs after the source's
// deactivate (xen-api ocaml/xenopsd/lib/xenops_server.ml,
// VM_receive_memory: VM_restore_devices after "Synchronisation point 3";
// the source's ocaml/xenopsd/xc/xenops_server_xen.ml VM.save deactivates
// before "Synchronisation point 2"), so no exception the source wrote is
// missed.
func (p *Datapath) Activate(ctx context.Context, uri, domain string) error {
	_, err := p.use(ctx, "Datapath.activate", uri, domain, true)
	return err
}

// use is attach and activate: under the volume's lock, the LV is made
// active (or refreshed) and domain's reference recorded; activate marks
// it in use, attach keeps whatever state the domain already had.
func (p *Datapath) use(ctx context.Context, op, uri, domain string, activate bool) (string, error) {
	t, err := ParseURI(op, uri)
	if err != nil {
		return "", err
	}
	sr, err := p.lookup(op, t)
	if err != nil {
		return "", err
	}
	unlock, err := p.lock(ctx, t)
	if err != nil {
		return "", err
	}
	defer unlock()
	r, err := p.load(t)
	if err != nil {
		return "", err
	}
	dev, err := p.ensureActive(ctx, op, sr, t, activate || anyActive(r))
	if err != nil {
		return "", err
	}
	r.Domains[domain] = activate || r.Domains[domain]
	if err := p.save(t, r); err != nil {
		return "", err
	}
	p.d.Log.Info(op, zap.String("uri", uri), zap.String("domain", domain), zap.String("device", dev), zap.Strings("domains", sortedKeys(r.Domains)))
	return dev, nil
}

// Deactivate marks the volume no longer in use by domain. It is called
// twice by newer xapi; both succeed. The LV stays active until detach,
// because attach (not activate) is what made the device exist.
//
// When no domain here has the volume active any more, a snapshot merge
// running in its stack here is stopped (Stack.StopMerge): in a live
// migration this is the source's deactivate (xen-api
// ocaml/xenopsd/xc/xenops_server_xen.ml VM.save: Storage.deactivate once
// the domain is suspended and its disks flushed), and the destination's
// activate resumes the merge, so two kernels never merge one COW. The
// source then gets deactivate and detach again while the destination is
// active (xenops_server.ml VM_migrate: VM_shutdown of the temporary
// source domain): they only touch this host's devices, and a merge
// already stopped stays stopped. The reference is recorded inactive
// first: from then on the master's steps treat the device here as
// parked and leave it alone.
func (p *Datapath) Deactivate(ctx context.Context, uri, domain string) error {
	const op = "Datapath.deactivate"
	t, err := ParseURI(op, uri)
	if err != nil {
		return err
	}
	unlock, err := p.lock(ctx, t)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := p.load(t)
	if err != nil {
		return err
	}
	if d, ok := matchDomain(r, domain); ok {
		r.Domains[d] = false
	}
	if err := p.save(t, r); err != nil {
		return err
	}
	if anyActive(r) || p.d.Stack == nil {
		return nil
	}
	sr, err := p.d.Lookup(t.SR)
	if err != nil {
		// Without the SR attached here there is no stack here either.
		p.d.Log.Info("deactivate: SR not attached here; no device to quiesce", zap.String("uri", uri), zap.Error(err))
		return nil
	}
	return p.d.Stack.StopMerge(ctx, p.scope(sr), sr.UUID, sr.VG, t.Key)
}

// anyActive reports whether a domain has the volume active.
func anyActive(r refs) bool {
	for _, a := range r.Domains {
		if a {
			return true
		}
	}
	return false
}

// Inactive returns the check volume.Stack.Inactive wants, over this host's
// reference counts under root: true when the datapath holds volume key
// of SR sr attached for domains none of which has it active (after an
// attach and before its activate, or after a deactivate). A volume the
// datapath does not hold here is not inactive: a device of it here is
// the engine's own.
func Inactive(root host.Root) func(sr, key string) (bool, error) {
	p := &Datapath{d: Deps{Root: root}}
	return func(sr, key string) (bool, error) {
		r, err := p.load(Target{SR: strings.ToLower(sr), Key: key})
		if err != nil || len(r.Domains) == 0 {
			return false, err
		}
		return !anyActive(r), nil
	}
}

// Detach drops domain's reference and deactivates the LV when it was the
// last. It never fails (spec §6.4): xapi has no way to retry a detach,
// so problems are logged and the call succeeds.
func (p *Datapath) Detach(ctx context.Context, uri, domain string) error {
	const op = "Datapath.detach"
	log := p.d.Log.With(zap.String("uri", uri), zap.String("domain", domain))
	t, err := ParseURI(op, uri)
	if err != nil {
		log.Warn("detach of an unparsable URI; nothing to do", zap.Error(err))
		return nil
	}
	unlock, err := p.lock(ctx, t)
	if err != nil {
		log.Error("detach could not take the volume lock; leaving the LV as it is", zap.Error(err))
		return nil
	}
	defer unlock()
	r, err := p.load(t)
	if err != nil {
		log.Error("unreadable reference counts; treating the volume as unreferenced", zap.Error(err))
		r = refs{Domains: map[string]bool{}}
	}
	if d, ok := matchDomain(r, domain); ok {
		delete(r.Domains, d)
	} else {
		log.Info("detach of a domain that is not attached (repeated call?)")
	}
	if err := p.save(t, r); err != nil {
		log.Error("cannot save reference counts", zap.Error(err))
	}
	if len(r.Domains) > 0 {
		log.Info("volume still attached for other domains", zap.Strings("domains", sortedKeys(r.Domains)))
		return nil
	}
	sr, err := p.d.Lookup(t.SR)
	if err != nil {
		log.Info("SR not attached here; no LV to deactivate", zap.Error(err))
		return nil
	}
	lv := p.d.LVName(t.Key)
	if r, ok := p.d.Stack.(LVResolver); ok {
		if got, err := r.LVOf(ctx, p.scope(sr), sr.UUID, sr.VG, t.Key); err == nil {
			lv = got
		}
	}
	if p.d.Stack != nil {
		if err := p.d.Stack.Disassemble(ctx, p.scope(sr), sr.UUID, sr.VG, t.Key); err != nil {
			log.Error("cannot take down the volume's device; the LV stays active until the next detach", zap.Error(err))
			return nil
		}
	}
	if lv != p.d.LVName(t.Key) {
		// A snapshot's image maps its volume's LV, which Disassemble
		// deactivated unless something here still uses it.
		log.Info("detached; the image's LV is left to the stack", zap.String("lv", lv))
		return nil
	}
	if err := p.d.LVM.Deactivate(ctx, p.scope(sr), sr.VG, lv); err != nil {
		if errors.Is(err, host.ErrNotFound) {
			log.Info("LV already gone")
			return nil
		}
		log.Error("cannot deactivate the LV; it stays active until the next detach or SR detach", zap.Error(err))
		return nil
	}
	log.Info("detached; LV deactivated")
	return nil
}

// matchDomain finds the reference a domain token names. xapi sends ""
// on teardown when the guest domain is already gone; then the one guest
// (numeric domid) reference is meant, if there is exactly one.
func matchDomain(r refs, domain string) (string, bool) {
	if _, ok := r.Domains[domain]; ok {
		return domain, true
	}
	if domain != "" {
		return "", false
	}
	var guests []string
	for d := range r.Domains {
		if d != "0" && d != "" && strings.Trim(d, "0123456789") == "" {
			guests = append(guests, d)
		}
	}
	if len(guests) == 1 {
		return guests[0], true
	}
	return "", false
}

// Refs reports the domains holding a volume on this host and whether
// each is active; for status and tests.
func (p *Datapath) Refs(uri string) (map[string]bool, error) {
	t, err := ParseURI("refs", uri)
	if err != nil {
		return nil, err
	}
	r, err := p.load(t)
	return r.Domains, err
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

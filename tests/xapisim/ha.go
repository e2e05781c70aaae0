package xapisim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// HA sizes and names, from xen-api.
const (
	// StatefileSize is Xha_statefile.minimum_statefile_size: a 4 KiB
	// global section and 64 host sections of 4 KiB (xha_statefile.ml).
	StatefileSize = 4096 + 64*4096
	// RedoLogSize is Redo_log.minimum_vdi_size: 4 GB in 4 MiB units,
	// less two (ocaml/database/redo_log.ml).
	RedoLogSize = (4_000_000_000/(4<<20) - 2) * (4 << 20)
	// StatefileReason and RedoLogReason are the static-vdis reasons
	// (xha_statefile.ml, reason; xapi_globs.ml, ha_metadata_vdi_reason).
	StatefileReason = "HA statefile"
	RedoLogReason   = "HA metadata VDI"
)

// minimumSRSize is Xha_statefile.minimum_sr_size: both sizes rounded up
// to 4 MiB, summed.
func minimumSRSize(statefile, redo int64) int64 {
	const align = 4 << 20
	up := func(n int64) int64 { return (n + align - 1) / align * align }
	return up(statefile) + up(redo)
}

// StaticVDIs is static-vdis (xen-api python3/bin/static-vdis) for
// SMAPIv3 plugins: the configuration it keeps per static VDI under Dir and
// the method files it runs, with positional arguments and no --json,
// under ScriptRoot. It needs no XenAPI but in Add, whose answers the
// caller passes (AddInfo), as at boot xapi is not running.
type StaticVDIs struct {
	// Dir is /etc/xensource/static-vdis (static-vdis: main_dir).
	Dir string
	// ScriptRoot is /usr/libexec/xapi-storage-script.
	ScriptRoot string
	// MultipathFlag is /var/run/nonpersistent/multipath_enabled.
	MultipathFlag string
	// Calls records each positional call as "<dir>/<file> <args…>".
	Calls []string
}

// AddInfo is what `static-vdis add` reads through XenAPI: the VDI's
// location, its SR's type and uuid, this host's PBD device-config and the
// SM record's features.
type AddInfo struct {
	VDIUUID, Location, SRType string
	DeviceConfig              map[string]string
	SMFeatures                []string
}

// StaticVDI is one static VDI's configuration (static-vdis: load).
type StaticVDI struct {
	ID, VDIUUID, Reason     string
	DeleteNextBoot          bool
	Disk                    string // the symlink's target when attached
	VolumePlugin, VolumeURI string
	VolumeKey               string
	DeviceConfig            string // the JSON text static-vdis stored
}

// positional runs a method file as static-vdis does (call_volume_plugin,
// call_datapath_plugin): argv [file, "static-vdis", args…], output read
// with check_output (a non-zero exit fails) and json.loads of the whole
// of stdout.
func (sv *StaticVDIs) positional(ctx context.Context, file string, args []string, out any) error {
	sv.Calls = append(sv.Calls, strings.TrimPrefix(file, sv.ScriptRoot+"/")+" "+strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, file, append([]string{"static-vdis"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("static-vdis: %s: %w (stdout %s, stderr %s)", filepath.Base(file), err, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	dec := json.NewDecoder(&stdout)
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("static-vdis: %s: json.loads of stdout: %w", filepath.Base(file), err)
	}
	if _, err := dec.Token(); err == nil {
		return fmt.Errorf("static-vdis: %s: json.loads of stdout: extra data after the value", filepath.Base(file))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(v, out)
}

func (sv *StaticVDIs) volumeFile(ty, method string) string {
	return filepath.Join(sv.ScriptRoot, "volume", "org.xen.xapi.storage."+ty, method)
}

// srAttach is static-vdis' sr_attach: check_clusterstack (Plugin.Query),
// then SR.attach with "--configuration k v" per device-config key.
func (sv *StaticVDIs) srAttach(ctx context.Context, ty string, cfg map[string]string) (string, error) {
	var q schema.QueryResult
	if err := sv.positional(ctx, sv.volumeFile(ty, "Plugin.Query"), nil, &q); err != nil {
		return "", err
	}
	if slices.Contains(q.RequiredClusterStack, "corosync") {
		return "", errors.New("static-vdis: the plugin requires corosync, which the simulator does not provide (wait_for_corosync_quorum)")
	}
	var args []string
	for _, k := range slices.Sorted(maps.Keys(cfg)) {
		args = append(args, "--configuration", k, cfg[k])
	}
	var sr string
	err := sv.positional(ctx, sv.volumeFile(ty, "SR.attach"), args, &sr)
	return sr, err
}

// List is static-vdis' list_vdis.
func (sv *StaticVDIs) List() []StaticVDI {
	entries, _ := os.ReadDir(sv.Dir)
	var out []StaticVDI
	for _, e := range entries {
		d := filepath.Join(sv.Dir, e.Name())
		read := func(k string) string {
			b, _ := os.ReadFile(filepath.Join(d, k))
			return strings.TrimSpace(string(b))
		}
		v := StaticVDI{ID: e.Name(), VDIUUID: read("vdi-uuid"), Reason: read("reason"), VolumePlugin: read("volume-plugin"),
			VolumeURI: read("volume-uri"), VolumeKey: read("volume-key"), DeviceConfig: read("device-config")}
		if _, err := os.Stat(filepath.Join(d, "disk")); err == nil {
			v.Disk, _ = os.Readlink(filepath.Join(d, "disk"))
		}
		_, err := os.Stat(filepath.Join(d, "delete-next-boot"))
		v.DeleteNextBoot = err == nil
		out = append(out, v)
	}
	return out
}

func (sv *StaticVDIs) find(vdi string) (StaticVDI, bool) {
	for _, v := range sv.List() {
		if v.VDIUUID == vdi {
			return v, true
		}
	}
	return StaticVDI{}, false
}

// Add is `static-vdis add <vdi> <reason>` for a plugin with
// VDI_ATTACH_OFFLINE: SR.attach and Volume.stat (with the VDI's location
// as key), then the configuration written to a fresh directory.
func (sv *StaticVDIs) Add(ctx context.Context, info AddInfo, reason string) error {
	if v, ok := sv.find(info.VDIUUID); ok {
		if !v.DeleteNextBoot {
			return errors.New("static-vdis: Static configuration for VDI already exists")
		}
		d := filepath.Join(sv.Dir, v.ID)
		_ = os.Remove(filepath.Join(d, "delete-next-boot"))
		return os.WriteFile(filepath.Join(d, "reason"), []byte(reason), 0o644)
	}
	if !slices.Contains(info.SMFeatures, "VDI_ATTACH_OFFLINE") {
		return fmt.Errorf("static-vdis: SM %s lacks VDI_ATTACH_OFFLINE: static-vdis would call VDI.generate_config, which SMAPIv3 SRs do not have", info.SRType)
	}
	dc, err := json.Marshal(info.DeviceConfig)
	if err != nil {
		return err
	}
	sr, err := sv.srAttach(ctx, info.SRType, info.DeviceConfig)
	if err != nil {
		return err
	}
	var st struct {
		Key string   `json:"key"`
		URI []string `json:"uri"`
	}
	if err := sv.positional(ctx, sv.volumeFile(info.SRType, "Volume.stat"), []string{sr, info.Location}, &st); err != nil {
		return err
	}
	if len(st.URI) == 0 {
		return errors.New("static-vdis: Volume.stat returned no uri (stat[\"uri\"][0] raises IndexError)")
	}
	_, mp := os.Stat(sv.MultipathFlag)
	mpJSON, _ := json.Marshal(mp == nil)
	data := map[string]string{
		"vdi-uuid": info.VDIUUID, "reason": reason, "volume-plugin": info.SRType,
		"device-config": string(dc), "volume-uri": st.URI[0], "volume-key": st.Key, "multipath": string(mpJSON),
	}
	d := filepath.Join(sv.Dir, sv.freshName())
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(d, k), []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// freshName is static-vdis' fresh_name: the first unused number.
func (sv *StaticVDIs) freshName() string {
	entries, _ := os.ReadDir(sv.Dir)
	used := map[string]bool{}
	for _, e := range entries {
		used[e.Name()] = true
	}
	for i := 0; ; i++ {
		if !used[strconv.Itoa(i)] {
			return strconv.Itoa(i)
		}
	}
}

// Attach is `static-vdis attach <vdi>`: SR.attach with the stored
// device-config, Datapath.attach and Datapath.activate for domain "0",
// and the first BlockDevice, File or Nbd implementation linked as
// <dir>/disk. It returns the link.
func (sv *StaticVDIs) Attach(ctx context.Context, vdi string) (string, error) {
	v, ok := sv.find(vdi)
	if !ok {
		return "", errors.New("static-vdis: Disk configuration not found")
	}
	d := filepath.Join(sv.Dir, v.ID)
	_ = os.Remove(filepath.Join(d, "disk"))
	var cfg map[string]string
	if err := json.Unmarshal([]byte(v.DeviceConfig), &cfg); err != nil {
		return "", fmt.Errorf("static-vdis: device-config: %w", err)
	}
	mpRaw, _ := os.ReadFile(filepath.Join(d, "multipath"))
	var mp bool
	if err := json.Unmarshal(mpRaw, &mp); err != nil {
		return "", fmt.Errorf("static-vdis: multipath: %w", err)
	}
	if mp {
		if err := os.MkdirAll(filepath.Dir(sv.MultipathFlag), 0o755); err == nil {
			_ = os.WriteFile(sv.MultipathFlag, nil, 0o644)
		}
	}
	u, err := url.Parse(v.VolumeURI)
	if err != nil {
		return "", err
	}
	if _, err := sv.srAttach(ctx, v.VolumePlugin, cfg); err != nil {
		return "", err
	}
	dpFile := func(m string) string { return filepath.Join(sv.ScriptRoot, "datapath", u.Scheme, m) }
	var backend struct {
		Implementations []json.RawMessage `json:"implementations"`
	}
	if err := sv.positional(ctx, dpFile("Datapath.attach"), []string{v.VolumeURI, "0"}, &backend); err != nil {
		return "", err
	}
	var path string
	for _, raw := range backend.Implementations {
		var impl schema.Implementation
		if err := json.Unmarshal(raw, &impl); err != nil {
			return "", fmt.Errorf("static-vdis: implementation %s: %w", raw, err)
		}
		if impl.BlockDevice != "" || impl.File != "" {
			path = impl.BlockDevice + impl.File
			break
		}
		if impl.Nbd != "" {
			return "", errors.New("static-vdis: Nbd implementations need nbd_client_manager, which the simulator does not provide")
		}
	}
	if path == "" {
		// next() over an empty generator raises StopIteration.
		return "", fmt.Errorf("static-vdis: no BlockDevice, File or Nbd implementation in %d", len(backend.Implementations))
	}
	if err := sv.positional(ctx, dpFile("Datapath.activate"), []string{v.VolumeURI, "0"}, nil); err != nil {
		return "", err
	}
	link := filepath.Join(d, "disk")
	return link, os.Symlink(path, link)
}

// Detach is `static-vdis detach <vdi>`: Datapath.deactivate and
// Datapath.detach for domain "0", and the link removed.
func (sv *StaticVDIs) Detach(ctx context.Context, vdi string) error {
	v, ok := sv.find(vdi)
	if !ok {
		return errors.New("static-vdis: Disk configuration not found")
	}
	if v.Disk == "" {
		return nil
	}
	u, err := url.Parse(v.VolumeURI)
	if err != nil {
		return err
	}
	dpFile := func(m string) string { return filepath.Join(sv.ScriptRoot, "datapath", u.Scheme, m) }
	if err := sv.positional(ctx, dpFile("Datapath.deactivate"), []string{v.VolumeURI, "0"}, nil); err != nil {
		return err
	}
	if err := sv.positional(ctx, dpFile("Datapath.detach"), []string{v.VolumeURI, "0"}, nil); err != nil {
		return err
	}
	return os.Remove(filepath.Join(sv.Dir, v.ID, "disk"))
}

// Del is `static-vdis del <vdi>`: marked delete-next-boot, and removed
// now unless attached.
func (sv *StaticVDIs) Del(vdi string) error {
	v, ok := sv.find(vdi)
	if !ok {
		return errors.New("static-vdis: Disk configuration not found")
	}
	d := filepath.Join(sv.Dir, v.ID)
	if err := os.WriteFile(filepath.Join(d, "delete-next-boot"), nil, 0o644); err != nil {
		return err
	}
	if v.Disk == "" {
		return os.RemoveAll(d)
	}
	return nil
}

// Boot is attach-static-vdis start (xen-api scripts/attach-static-vdis,
// run Before=xapi.service): stale disk links and delete-next-boot
// configurations go, then every static VDI is attached in directory
// order, stopping at the first failure.
func (sv *StaticVDIs) Boot(ctx context.Context) (map[string]string, error) {
	for _, v := range sv.List() {
		d := filepath.Join(sv.Dir, v.ID)
		_ = os.Remove(filepath.Join(d, "disk"))
		if v.DeleteNextBoot {
			_ = os.RemoveAll(d)
		}
	}
	disks := map[string]string{}
	list := sv.List()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	for _, v := range list {
		disk, err := sv.Attach(ctx, v.VDIUUID)
		if err != nil {
			// attach-static-vdis logs "Attempt to attach VDI: <uuid> failed" and stops.
			return disks, fmt.Errorf("attach of static VDI %s failed, the others are skipped: %w", v.VDIUUID, err)
		}
		disks[v.VDIUUID] = disk
	}
	return disks, nil
}

// detachByReason is Xha_statefile.detach_existing_statefiles and
// Xha_metadata_vdi.detach_existing: static-vdis detach then del, the
// detach's failure ignored (static_vdis.ml, permanent_vdi_detach_by_uuid).
func (sv *StaticVDIs) detachByReason(ctx context.Context, reason string) error {
	for _, v := range sv.List() {
		if v.Reason != reason {
			continue
		}
		_ = sv.Detach(ctx, v.VDIUUID)
		if err := sv.Del(v.VDIUUID); err != nil {
			return err
		}
	}
	return nil
}

// HAOptions are the sizes pool-ha-enable creates its VDIs with; zero
// means xapi's (StatefileSize, RedoLogSize).
type HAOptions struct {
	StatefileSize, RedoLogSize int64
}

// HAVDI is one VDI HA made and attached in dom0.
type HAVDI struct {
	UUID, Key string
	Size      int64
	Disk      string // static-vdis' <dir>/disk link
}

// HAEnable replays `xe pool-ha-enable heartbeat-sr-uuids=<sr>` on the
// master, for the storage part (xapi_ha.ml, enable): the SR must hold
// the statefile (xha_statefile.ml, check_sr_can_host_statefile: a PBD
// plugged, SM features VDI_GENERATE_CONFIG or VDI_ATTACH_OFFLINE, room
// for both VDIs); VDI.create of the statefile ("Statefile for HA", type
// ha_statefile, sharable, xha_statefile.ml create) and of the redo log
// ("Metadata for HA", type redo_log, sharable, xha_metadata_vdi.ml
// create); attach_statefiles (the existing ones detached, then
// static_vdis.ml permanent_vdi_attach: `static-vdis add` and `attach`);
// then attach_metadata_vdi likewise. The xHA daemon, its configuration
// file and Host.preconfigure_ha on the other hosts (which repeat the two
// attaches there) are not storage calls and are left out.
func (sr *SR) HAEnable(ctx context.Context, sv *StaticVDIs, deviceConfig map[string]string, opts HAOptions) (statefile, redo HAVDI, err error) {
	if opts.StatefileSize == 0 {
		opts.StatefileSize = StatefileSize
	}
	if opts.RedoLogSize == 0 {
		opts.RedoLogSize = RedoLogSize
	}
	o := sr.sim.begin("xe pool-ha-enable heartbeat-sr-uuids=" + sr.UUID)
	defer o.end()
	if err := sr.mustBePlugged("pool-ha-enable"); err != nil {
		return statefile, redo, err
	}
	features, err := sr.smFeatures(ctx)
	if err != nil {
		return statefile, redo, err
	}
	if !slices.Contains(features, "VDI_GENERATE_CONFIG") && !slices.Contains(features, "VDI_ATTACH_OFFLINE") {
		return statefile, redo, fmt.Errorf("SR_OPERATION_NOT_SUPPORTED [%s]: xapi's SM features %v have neither VDI_GENERATE_CONFIG nor VDI_ATTACH_OFFLINE", sr.UUID, features)
	}
	st, err := sr.stat(ctx, o, sr.Handle)
	if err != nil {
		return statefile, redo, err
	}
	if need := minimumSRSize(opts.StatefileSize, opts.RedoLogSize); st.FreeSpace < need {
		return statefile, redo, fmt.Errorf("SR_SOURCE_SPACE_INSUFFICIENT [%s]: free %d, needed %d", sr.UUID, st.FreeSpace, need)
	}
	mk := func(name, desc, ty string, size int64) (HAVDI, error) {
		var v schema.Volume
		dir := sr.sim.VolumeDir(sr.Type)
		if err := o.call(ctx, dir, "Volume.create", schema.VolumeCreateArgs{Dbg: o.dbg, SR: sr.Handle, Name: name, Description: desc, Size: size, Sharable: true}, &v); err != nil {
			return HAVDI{}, err
		}
		// The daemon's update_keys of the VDI type (main.ml, vdi_create_impl).
		if err := o.call(ctx, dir, "Volume.set", schema.VolumeSetArgs{Dbg: o.dbg, SR: sr.Handle, Key: v.Key, K: "vdi-type", V: ty}, nil); err != nil {
			return HAVDI{}, err
		}
		u := v.UUID
		if u == "" {
			u = newUUID()
		}
		return HAVDI{UUID: u, Key: v.Key, Size: v.VirtualSize}, nil
	}
	if statefile, err = mk("Statefile for HA", "Used for storage heartbeating", "ha_statefile", opts.StatefileSize); err != nil {
		return statefile, redo, err
	}
	if redo, err = mk("Metadata for HA", "Used for master failover", "redo_log", opts.RedoLogSize); err != nil {
		return statefile, redo, err
	}
	attach := func(v *HAVDI, reason string) error {
		if err := sv.detachByReason(ctx, reason); err != nil {
			return err
		}
		o.say("    static-vdis add %s %q", v.UUID, reason)
		if err := sv.Add(ctx, AddInfo{VDIUUID: v.UUID, Location: v.Key, SRType: sr.Type, DeviceConfig: deviceConfig, SMFeatures: features}, reason); err != nil {
			return err
		}
		o.say("    static-vdis attach %s", v.UUID)
		disk, err := sv.Attach(ctx, v.UUID)
		v.Disk = disk
		return err
	}
	if err := attach(&statefile, StatefileReason); err != nil {
		return statefile, redo, err
	}
	if err := attach(&redo, RedoLogReason); err != nil {
		return statefile, redo, err
	}
	o.say("  = statefile %s, redo log %s", statefile.Disk, redo.Disk)
	return statefile, redo, nil
}

// HADisable replays the storage part of `xe pool-ha-disable` on this
// host (xapi_ha.ml, disable_internal → deactivate_and_detach the
// statefiles, Xha_metadata_vdi.deactivate_and_detach_existing): static-vdis
// detach and del of both.
func (sv *StaticVDIs) HADisable(ctx context.Context) error {
	if err := sv.detachByReason(ctx, StatefileReason); err != nil {
		return err
	}
	return sv.detachByReason(ctx, RedoLogReason)
}

// smFeatures are the features xapi records for the SR type: Plugin.Query's
// plus what the daemon derives from the method files (deriveFeatures).
func (sr *SR) smFeatures(ctx context.Context) ([]string, error) {
	var q schema.QueryResult
	if err := pluginQuery(ctx, sr, &q); err != nil {
		return nil, err
	}
	return deriveFeatures(sr.sim.VolumeDir(sr.Type), q.Features), nil
}

func pluginQuery(ctx context.Context, sr *SR, q *schema.QueryResult) error {
	o := sr.sim.begin("# Plugin.Query (SM record)")
	defer o.end()
	return o.call(ctx, sr.sim.VolumeDir(sr.Type), "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, q)
}

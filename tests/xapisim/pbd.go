package xapisim

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sanvol/sanvol/host"
)

// xapiDB is the part of xapi's database a plugin reads and writes through
// XenAPI: this host, the SRs it knows and their PBDs on this host. Field
// and error names are xapi's (xen-api ocaml/idl/datamodel*.ml for the
// fields, ocaml/xapi/exnHelper.ml for how database exceptions become
// XenAPI errors).
type xapiDB struct {
	mu    sync.Mutex
	hosts map[string]bool       // the uuids of the hosts it knows (a pool's: PoolSim)
	srs   map[string]*srRecord  // by ref
	pbds  map[string]*pbdRecord // by ref
	// The VBDs of running VMs and where they run (hostplugin.go).
	vbds map[string]*vbdRecord // by ref
	// sims are the daemons of the pool by host uuid, for host.call_plugin;
	// down are the hosts xapi finds offline (PoolSim.Down).
	sims map[string]*Sim
	down map[string]bool
	// master is the pool master's uuid, what pool.get_master names
	// (PoolSim; SetMaster replays a designate_new_master); "" for a
	// one-host pool, whose master is that host.
	master string
}

type srRecord struct {
	UUID string
	Type string
	Name string
}

type pbdRecord struct {
	UUID        string
	Host        string // ref
	SR          string // ref
	DeviceCfg   map[string]string
	OtherConfig map[string]string
}

const (
	hostRefPrefix = "OpaqueRef:host-"
	srRefPrefix   = "OpaqueRef:sr-"
	pbdRefPrefix  = "OpaqueRef:pbd-"
	poolRef       = "OpaqueRef:pool"
)

// init makes the maps on first use; callers hold mu.
func (db *xapiDB) init() {
	if db.srs == nil {
		db.srs, db.pbds, db.hosts = map[string]*srRecord{}, map[string]*pbdRecord{}, map[string]bool{}
		db.vbds, db.sims, db.down = map[string]*vbdRecord{}, map[string]*Sim{}, map[string]bool{}
	}
}

// hostLocked is this Sim's host uuid, made and entered in the database on
// first use; callers hold s.xapi.mu.
func (s *Sim) hostLocked() string {
	s.xapi.init()
	if s.hostUUID == "" {
		s.hostUUID = newUUID()
	}
	s.xapi.hosts[s.hostUUID] = true
	s.xapi.sims[s.hostUUID] = s
	return s.hostUUID
}

// HostUUID is this host's uuid in the simulated xapi: what the plugin
// must find as INSTALLATION_UUID in /etc/xensource-inventory.
func (s *Sim) HostUUID() string {
	s.xapi.mu.Lock()
	defer s.xapi.mu.Unlock()
	return s.hostLocked()
}

// xapiVersion is software_version["xapi"] of the daemon simulated: the
// 2020 daemon is XCP-ng 8.2's xapi 1.249, the newer one XCP-ng 8.3's
// 26.1 (spec §5.3).
func (s *Sim) xapiVersion() string {
	if s.OldDaemon {
		return "1.249"
	}
	return "26.1"
}

// Inventory is the /etc/xensource-inventory naming this host, as the
// XCP-ng installer writes it (the part a plugin reads).
func (s *Sim) Inventory() []byte {
	return fmt.Appendf(nil, "PRODUCT_BRAND='XCP-ng'\nINSTALLATION_UUID='%s'\n", s.HostUUID())
}

// WriteInventory writes <root>/etc/xensource-inventory naming this host,
// as the XCP-ng installer does, and returns how to put back what was there.
func (s *Sim) WriteInventory(root string) (restore func() error, err error) {
	path := filepath.Join(root, host.InventoryPath)
	old, readErr := os.ReadFile(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, s.Inventory(), 0o644); err != nil {
		return nil, err
	}
	return func() error {
		if readErr != nil {
			return os.Remove(path)
		}
		return os.WriteFile(path, old, 0o644)
	}, nil
}

// recordSR is what xapi's SR.create does after the plugin's SR.create
// answered (xapi_sr.ml create: introduce, then a PBD per host with the
// configuration returned), for this host; Introduce does the same for an
// SR created from another host.
func (s *Sim) recordSR(sr *SR) {
	db := s.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	self := s.hostLocked()
	srRef := ""
	for ref, r := range db.srs {
		if r.UUID == sr.UUID {
			srRef = ref
		}
	}
	if srRef == "" {
		srRef = srRefPrefix + sr.UUID
		db.srs[srRef] = &srRecord{UUID: sr.UUID, Type: sr.Type, Name: sr.Name}
	}
	db.pbds[pbdRefPrefix+sr.PBD] = &pbdRecord{UUID: sr.PBD, Host: hostRefPrefix + self, SR: srRef,
		DeviceCfg: maps.Clone(sr.Config), OtherConfig: map[string]string{}}
}

// AddSMAPIv1SR records an SR that sm serves (type lvmoiscsi or iscsi), as
// `xe sr-create type=lvmoiscsi shared=true` leaves it: the SR and one PBD
// per host with the device-config, this host's first and hosts-1 others.
// It returns the SR's uuid.
func (s *Sim) AddSMAPIv1SR(srType, name string, deviceConfig map[string]string, hosts int) string {
	db := s.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	self := s.hostLocked()
	uuid := newUUID()
	ref := srRefPrefix + uuid
	db.srs[ref] = &srRecord{UUID: uuid, Type: srType, Name: name}
	for i := range hosts {
		h := hostRefPrefix + self
		if i > 0 {
			h = hostRefPrefix + newUUID()
		}
		pbd := newUUID()
		db.pbds[pbdRefPrefix+pbd] = &pbdRecord{UUID: pbd, Host: h, SR: ref,
			DeviceCfg: maps.Clone(deviceConfig), OtherConfig: map[string]string{}}
	}
	return uuid
}

// forgetSR is what xapi does after SR.destroy (xapi_sr.ml destroy, then
// forget): the PBDs and the SR record go.
func (s *Sim) forgetSR(uuid string) {
	db := s.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	for ref, r := range db.srs {
		if r.UUID != uuid {
			continue
		}
		for pref, p := range db.pbds {
			if p.SR == ref {
				delete(db.pbds, pref)
			}
		}
		delete(db.srs, ref)
	}
}

// PBDOtherConfig is this host's PBD's other-config, as
// `xe pbd-param-get uuid=<pbd> param-name=other-config` shows it.
func (sr *SR) PBDOtherConfig() map[string]string {
	db := sr.sim.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	if p, ok := db.pbds[pbdRefPrefix+sr.PBD]; ok {
		return maps.Clone(p.OtherConfig)
	}
	return nil
}

// PBDParamGet narrates and answers `xe pbd-param-get uuid=<pbd>
// param-name=other-config param-key=<key>`; ok is false when the key is
// absent (xe then fails with "Key <key> not found in map").
func (sr *SR) PBDParamGet(key string) (string, bool) {
	o := sr.sim.begin(fmt.Sprintf("xe pbd-param-get uuid=%s param-name=other-config param-key=%s", sr.PBD, key))
	defer o.end()
	v, ok := sr.PBDOtherConfig()[key]
	if ok {
		o.say("  %s", v)
	} else {
		o.say("  Key %s not found in map", key)
	}
	return v, ok
}

// xenAPIRecords answers the XenAPI calls on hosts, SRs and PBDs; handled
// is false for any other method.
func (s *Sim) xenAPIRecords(method string, params []json.RawMessage) (result any, rerr *rpcError, handled bool) {
	str := func(i int) string {
		var v string
		if i < len(params) {
			_ = json.Unmarshal(params[i], &v)
		}
		return v
	}
	db := s.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	s.hostLocked()
	// get_by_uuid of an unknown uuid: Db_exn.Read_missing_uuid becomes
	// UUID_INVALID [class; uuid]; a bad reference: DBCache_NotFound
	// "missing row" becomes HANDLE_INVALID [class; ref] (exnHelper.ml).
	uuidInvalid := func(class string) *rpcError {
		return &rpcError{Message: "UUID_INVALID", Data: []string{class, str(1)}}
	}
	handleInvalid := func(class string) *rpcError {
		return &rpcError{Message: "HANDLE_INVALID", Data: []string{class, str(1)}}
	}
	pbd := func() (*pbdRecord, *rpcError) {
		if p, ok := db.pbds[str(1)]; ok {
			return p, nil
		}
		return nil, handleInvalid("PBD")
	}
	switch method {
	case "pool.get_all":
		return []string{poolRef}, nil, true
	case "pool.get_master":
		// The pool record's master field (xen-api ocaml/idl/datamodel_pool.ml);
		// a member's xapi answers it from the master's database.
		if str(1) != poolRef {
			return nil, handleInvalid("pool"), true
		}
		if db.master == "" {
			return hostRefPrefix + s.hostLocked(), nil, true
		}
		return hostRefPrefix + db.master, nil, true
	case "host.get_by_uuid":
		if !db.hosts[str(1)] {
			return nil, uuidInvalid("host"), true
		}
		return hostRefPrefix + str(1), nil, true
	case "host.get_software_version":
		if u, ok := strings.CutPrefix(str(1), hostRefPrefix); !ok || !db.hosts[u] {
			return nil, handleInvalid("host"), true
		}
		return map[string]string{"xapi": s.xapiVersion(), "product_brand": "XCP-ng"}, nil, true
	case "host.get_uuid":
		if u, ok := strings.CutPrefix(str(1), hostRefPrefix); ok && db.hosts[u] {
			return u, nil, true
		}
		return nil, handleInvalid("host"), true
	case "VDI.get_all_records_where", "VBD.get_all_records_where", "VM.get_resident_on", "VM.get_current_operations":
		return db.vmRecords(method, str(1))
	case "SR.get_by_uuid":
		for ref, r := range db.srs {
			if r.UUID == str(1) {
				return ref, nil, true
			}
		}
		return nil, uuidInvalid("SR"), true
	case "SR.get_all_records_where":
		match, err := parseWhere(str(1))
		if err != nil {
			return nil, &rpcError{Message: "INTERNAL_ERROR", Data: []string{err.Error()}}, true
		}
		out := map[string]any{}
		for ref, r := range db.srs {
			if match(map[string]string{"uuid": r.UUID, "type": r.Type, "name_label": r.Name}) {
				out[ref] = map[string]any{"uuid": r.UUID, "type": r.Type, "name_label": r.Name}
			}
		}
		return out, nil, true
	case "PBD.get_all_records_where":
		match, err := parseWhere(str(1))
		if err != nil {
			return nil, &rpcError{Message: "INTERNAL_ERROR", Data: []string{err.Error()}}, true
		}
		out := map[string]any{}
		for ref, p := range db.pbds {
			if match(map[string]string{"uuid": p.UUID, "host": p.Host, "SR": p.SR}) {
				out[ref] = map[string]any{"uuid": p.UUID, "host": p.Host, "SR": p.SR,
					"device_config": p.DeviceCfg, "other_config": p.OtherConfig, "currently_attached": true}
			}
		}
		return out, nil, true
	case "PBD.get_other_config":
		p, e := pbd()
		if e != nil {
			return nil, e, true
		}
		return p.OtherConfig, nil, true
	case "PBD.add_to_other_config":
		p, e := pbd()
		if e != nil {
			return nil, e, true
		}
		// The master's database adds non-idempotently: an existing key
		// fails, whatever its value (db_cache_impl.ml
		// process_structured_field_locked, AddMapLegacy;
		// db_cache_types.ml add_to_map; exnHelper.ml Duplicate_key).
		k := str(2)
		if k == "" {
			return nil, &rpcError{Message: "INTERNAL_ERROR", Data: []string{"Db_exn.Empty_key_in_map"}}, true
		}
		if _, exists := p.OtherConfig[k]; exists {
			return nil, &rpcError{Message: "MAP_DUPLICATE_KEY", Data: []string{"PBD", "other_config", str(1), k}}, true
		}
		p.OtherConfig[k] = str(3)
		return "", nil, true
	case "PBD.remove_from_other_config":
		p, e := pbd()
		if e != nil {
			return nil, e, true
		}
		// Removing an absent key is no error (db_cache_types.ml
		// remove_from_map filters).
		delete(p.OtherConfig, str(2))
		return "", nil, true
	}
	return nil, nil, false
}

// parseWhere compiles the conjunctions of `field "<name>" = "<value>"`
// that XenAPI's get_all_records_where takes (xen-api
// ocaml/database/db_filter_lex.mll, db_filter_parse.mly), plus "true".
// Other forms (or, not, parentheses) are refused rather than guessed.
func parseWhere(expr string) (func(map[string]string) bool, error) {
	type eq struct{ field, value string }
	var terms []eq
	rest := strings.TrimSpace(expr)
	if rest == "true" {
		return func(map[string]string) bool { return true }, nil
	}
	for {
		var t eq
		var err error
		if rest, err = cutWord(rest, "field"); err != nil {
			return nil, fmt.Errorf("where %q: %w", expr, err)
		}
		if t.field, rest, err = cutQuoted(rest); err != nil {
			return nil, fmt.Errorf("where %q: %w", expr, err)
		}
		if rest, err = cutWord(rest, "="); err != nil {
			return nil, fmt.Errorf("where %q: %w", expr, err)
		}
		if t.value, rest, err = cutQuoted(rest); err != nil {
			return nil, fmt.Errorf("where %q: %w", expr, err)
		}
		terms = append(terms, t)
		if rest = strings.TrimSpace(rest); rest == "" {
			break
		}
		if rest, err = cutWord(rest, "and"); err != nil {
			return nil, fmt.Errorf("where %q: %w", expr, err)
		}
	}
	return func(rec map[string]string) bool {
		for _, t := range terms {
			if rec[t.field] != t.value {
				return false
			}
		}
		return true
	}, nil
}

func cutWord(s, w string) (string, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, w) {
		return "", fmt.Errorf("expected %s at %q", w, s)
	}
	return s[len(w):], nil
}

// cutQuoted takes a "…" token; the lexer has no escapes inside quotes.
func cutQuoted(s string) (string, string, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, `"`) {
		return "", "", fmt.Errorf("expected a quoted string at %q", s)
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 0 {
		return "", "", fmt.Errorf("unterminated string at %q", s)
	}
	return s[1 : 1+end], s[2+end:], nil
}

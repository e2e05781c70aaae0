package xapisim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sort"
	"strings"
	"sync"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// Pool is the part of xapi's database that shared SRs, their PBDs and the
// PBDs' secrets live in, for a pool of several hosts. The secrets are the
// master Sim's (AddSecret). It reproduces, each with its source:
//   - xe sr-create shared=true (xapi_sr.ml, create): the device-config's
//     passwords become secrets (message_forwarding.ml, SR.create →
//     xapi_secret.ml, move_passwds_to_secrets); one PBD per host, master
//     first, each with its own copy of every "*password_secret"
//     (xapi_pbd.ml, create_common → xapi_secret.ml, duplicate_passwds);
//     SR.create on the master with the master PBD's device-config
//     (storage_access.ml, create_sr); and the configuration it returned
//     written into every PBD (Db.PBD.set_device_config), as the daemon
//     hands it back unmerged (xapi-storage-script main.ml, sr_create_impl);
//   - PBD.destroy (xapi_pbd.ml, destroy): the record goes and so does
//     every secret its device-config names (xapi_secret.ml,
//     clean_out_passwds), as when a host is ejected from the pool;
//   - the XenAPI calls a plugin makes about them (ServeXenAPI).
type Pool struct {
	Sim *Sim
	// Hosts are the host uuids; Hosts[0] is the pool master.
	Hosts []string

	mu   sync.Mutex
	srs  map[string]string // SR uuid -> ref
	pbds map[string]*PBD   // ref -> PBD
}

// PBD is one host's record of an SR.
type PBD struct {
	Ref, UUID, Host, SR string // SR is the SR's ref
	DeviceConfig        map[string]string
}

// NewPool returns a pool of n hosts whose master's daemon is sim.
func NewPool(sim *Sim, n int) *Pool {
	p := &Pool{Sim: sim, srs: map[string]string{}, pbds: map[string]*PBD{}}
	for range n {
		p.Hosts = append(p.Hosts, newUUID())
	}
	return p
}

// Master is the pool master's host uuid.
func (p *Pool) Master() string { return p.Hosts[0] }

// SRCreate replays `xe sr-create shared=true` up to, not including, the
// PBD plugs (xapi_sr.ml, create; see Pool), and returns the SR's uuid.
func (p *Pool) SRCreate(ctx context.Context, srType, name string, deviceConfig map[string]string) (string, error) {
	s := p.Sim
	o := s.begin(fmt.Sprintf("xe sr-create type=%s shared=true name-label=%s%s", srType, quote(name), xeConfig(deviceConfig)))
	defer o.end()
	srUUID := newUUID()
	srRef := "OpaqueRef:sr-" + srUUID
	base := s.hideSecrets(deviceConfig)
	var created []*PBD
	for _, h := range p.Hosts {
		created = append(created, &PBD{Ref: "OpaqueRef:pbd-" + newUUID(), UUID: newUUID(), Host: h, SR: srRef, DeviceConfig: p.duplicatePasswds(base)})
	}
	p.mu.Lock()
	p.srs[srUUID] = srRef
	for _, pbd := range created {
		p.pbds[pbd.Ref] = pbd
	}
	p.mu.Unlock()
	dir := s.VolumeDir(srType)
	var q schema.QueryResult
	if err := o.call(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, &q); err != nil {
		return "", err
	}
	var ret map[string]string
	if err := o.call(ctx, dir, "SR.create", schema.SRCreateArgs{
		Dbg: o.dbg, UUID: srUUID, Configuration: created[0].DeviceConfig, Name: name,
	}, &ret); err != nil {
		return "", err
	}
	p.mu.Lock()
	for _, pbd := range created {
		pbd.DeviceConfig = maps.Clone(ret)
	}
	p.mu.Unlock()
	o.say("  = %s", srUUID)
	return srUUID, nil
}

// duplicatePasswds is xapi_secret.ml's duplicate_passwds.
func (p *Pool) duplicatePasswds(cfg map[string]string) map[string]string {
	out := make(map[string]string, len(cfg))
	for k, v := range cfg {
		if strings.HasSuffix(k, "password_secret") {
			if val, ok := p.Sim.secret(v); ok {
				v = p.Sim.AddSecret(val)
			}
		}
		out[k] = v
	}
	return out
}

// PBD returns a copy of host's PBD of the SR.
func (p *Pool) PBD(srUUID, host string) (PBD, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pbd := range p.pbds {
		if pbd.SR == p.srs[srUUID] && pbd.Host == host {
			c := *pbd
			c.DeviceConfig = maps.Clone(pbd.DeviceConfig)
			return c, true
		}
	}
	return PBD{}, false
}

// PBDDestroy replays PBD.destroy of host's PBD of the SR (xapi_pbd.ml,
// destroy): the record and every secret it names go.
func (p *Pool) PBDDestroy(srUUID, host string) error {
	pbd, ok := p.PBD(srUUID, host)
	if !ok {
		return fmt.Errorf("host %s has no PBD of SR %s", host, srUUID)
	}
	p.mu.Lock()
	delete(p.pbds, pbd.Ref)
	p.mu.Unlock()
	for k, v := range pbd.DeviceConfig {
		if strings.HasSuffix(k, "password_secret") {
			p.Sim.mu.Lock()
			delete(p.Sim.secrets, v)
			p.Sim.mu.Unlock()
		}
	}
	return nil
}

// DeviceConfigFor is host's PBD device-config with its secrets resolved
// as a plugin resolves them at PBD.plug: it fails as that plug would when
// a named secret is gone.
func (p *Pool) DeviceConfigFor(srUUID, host string) (map[string]string, error) {
	pbd, ok := p.PBD(srUUID, host)
	if !ok {
		return nil, fmt.Errorf("host %s has no PBD of SR %s", host, srUUID)
	}
	out := map[string]string{}
	for k, v := range pbd.DeviceConfig {
		if name, ok := strings.CutSuffix(k, "_secret"); ok && strings.HasSuffix(name, "password") {
			val, ok := p.Sim.secret(v)
			if !ok {
				return nil, fmt.Errorf("PBD %s of host %s: secret %s (%s) does not exist", pbd.UUID, host, v, k)
			}
			out[name] = val
			continue
		}
		out[k] = v
	}
	return out, nil
}

// ServeXenAPI serves the master's XenAPI socket for a pool: the PBD, SR,
// pool and secret calls a plugin makes, and the rest as Sim.ServeXenAPI.
func (p *Pool) ServeXenAPI(socket string) (stop func() error, err error) {
	return serveUnix(socket, http.HandlerFunc(p.serveRPC))
}

func (p *Pool) serveRPC(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var req struct {
		Method string            `json:"method"`
		Params []json.RawMessage `json:"params"`
		ID     json.RawMessage   `json:"id"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	str := func(i int) string {
		var v string
		if i < len(req.Params) {
			_ = json.Unmarshal(req.Params[i], &v)
		}
		return v
	}
	const secretRef = "OpaqueRef:secret-"
	var result any
	var fail *rpcError
	p.mu.Lock()
	switch req.Method {
	case "pool.get_all":
		result = []string{"OpaqueRef:pool"}
	case "pool.get_master":
		result = "OpaqueRef:host-" + p.Master()
	case "SR.get_by_uuid":
		if ref, ok := p.srs[str(1)]; ok {
			result = ref
		} else {
			fail = &rpcError{Message: "UUID_INVALID", Data: []string{"SR", str(1)}}
		}
	case "PBD.get_all_records":
		recs := map[string]any{}
		for ref, pbd := range p.pbds {
			recs[ref] = map[string]any{"uuid": pbd.UUID, "host": "OpaqueRef:host-" + pbd.Host, "SR": pbd.SR, "device_config": pbd.DeviceConfig}
		}
		result = recs
	case "PBD.set_device_config":
		var cfg map[string]string
		pbd, ok := p.pbds[str(1)]
		if ok && len(req.Params) > 2 && json.Unmarshal(req.Params[2], &cfg) == nil {
			pbd.DeviceConfig = cfg
			result = ""
		} else {
			fail = &rpcError{Message: "HANDLE_INVALID", Data: []string{"PBD", str(1)}}
		}
	case "secret.create":
		var rec struct {
			Value string `json:"value"`
		}
		if len(req.Params) > 1 && json.Unmarshal(req.Params[1], &rec) == nil {
			result = secretRef + p.Sim.AddSecret(rec.Value)
		} else {
			fail = &rpcError{Message: "FIELD_TYPE_ERROR", Data: []string{"value"}}
		}
	case "secret.get_uuid":
		result = strings.TrimPrefix(str(1), secretRef)
	}
	p.mu.Unlock()
	if result == nil && fail == nil {
		// Sessions and the secret reads are the single host's.
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.Sim.serveRPC(w, r)
		return
	}
	resp := map[string]any{"jsonrpc": "2.0", "id": req.ID}
	if fail != nil {
		resp["error"] = fail
	} else {
		resp["result"] = result
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// SecretsOf lists, sorted, the secret uuids host's PBD of the SR names.
func (p *Pool) SecretsOf(srUUID, host string) []string {
	pbd, _ := p.PBD(srUUID, host)
	var out []string
	for k, v := range pbd.DeviceConfig {
		if strings.HasSuffix(k, "password_secret") {
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

package xapisim

// XenAPI host plugins and the VM records sanvol's control channel reads
// (docs/design.md "The control channel"): host.call_plugin, and the VDI,
// VBD and VM fields that say where a volume is active.

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
)

// vbdRecord is a VBD of a running VM, with the little of its VDI and VM
// the control channel reads. The simulator keeps VDI records only for
// the VDIs some VM has a VBD of: a VDI without one answers the same
// queries (no VBD attached) as a real record would.
type vbdRecord struct {
	SR, Key  string // the VDI: its SR's uuid and its location (the volume key)
	VM       string // ref
	Host     string // the VM's resident_on, a host uuid; "" for OpaqueRef:NULL
	Attached bool   // currently_attached
	// Migrating is set while PoolSR.Migrate runs: the VM's
	// current_operations holds pool_migrate (message_forwarding.ml,
	// with_vm_operation ~op:`pool_migrate).
	Migrating bool
}

const (
	vdiRefPrefix = "OpaqueRef:vdi-"
	vbdRefPrefix = "OpaqueRef:vbd-"
	vmRefPrefix  = "OpaqueRef:vm-"
	nullRef      = "OpaqueRef:NULL"
)

// vmRecords answers VDI.get_all_records_where (fields SR and location),
// VBD.get_all_records_where (fields VDI and VM) and VM.get_resident_on;
// the caller holds db.mu.
func (db *xapiDB) vmRecords(method, arg string) (any, *rpcError, bool) {
	srRef := func(uuid string) string {
		for ref, r := range db.srs {
			if r.UUID == uuid {
				return ref
			}
		}
		return ""
	}
	switch method {
	case "VM.get_current_operations":
		for _, v := range db.vbds {
			if v.VM == arg {
				if v.Migrating {
					return map[string]string{"OpaqueRef:task-migrate": "pool_migrate"}, nil, true
				}
				return map[string]string{}, nil, true
			}
		}
		return nil, &rpcError{Message: "HANDLE_INVALID", Data: []string{"VM", arg}}, true
	case "VM.get_resident_on":
		for _, v := range db.vbds {
			if v.VM == arg {
				if v.Host == "" {
					return nullRef, nil, true
				}
				return hostRefPrefix + v.Host, nil, true
			}
		}
		return nil, &rpcError{Message: "HANDLE_INVALID", Data: []string{"VM", arg}}, true
	}
	match, err := parseWhere(arg)
	if err != nil {
		return nil, &rpcError{Message: "INTERNAL_ERROR", Data: []string{err.Error()}}, true
	}
	out := map[string]any{}
	for ref, v := range db.vbds {
		vdi := vdiRefPrefix + v.Key
		switch method {
		case "VDI.get_all_records_where":
			if match(map[string]string{"SR": srRef(v.SR), "location": v.Key}) {
				out[vdi] = map[string]any{"SR": srRef(v.SR), "location": v.Key}
			}
		case "VBD.get_all_records_where":
			if match(map[string]string{"VDI": vdi, "VM": v.VM}) {
				out[ref] = map[string]any{"VDI": vdi, "VM": v.VM, "currently_attached": v.Attached}
			}
		}
	}
	return out, nil, true
}

// recordVM enters a started VM's VBD of a: its VM resident on this host
// and the VBD attached (xapi_xenops.ml update_vbd sets currently_attached
// from xenopsd's plugged state; update_vm sets resident_on).
func (sr *SR) recordVM(a *Attachment) {
	db := sr.sim.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	h := sr.sim.hostLocked()
	n := newUUID()
	a.vbd = vbdRefPrefix + n
	db.vbds[a.vbd] = &vbdRecord{SR: sr.UUID, Key: a.Key, VM: vmRefPrefix + n, Host: h, Attached: true}
}

// forgetVM drops the records of a's VM once it is shut down.
func (sr *SR) forgetVM(a *Attachment) {
	db := sr.sim.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	delete(db.vbds, a.vbd)
}

// migrating marks a's VM as migrating, or no longer.
func (ps *PoolSR) migrating(a *Attachment, on bool) {
	db := ps.SRs[0].sim.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	if v := db.vbds[a.vbd]; v != nil {
		v.Migrating = on
	}
}

// migrated hands a's VM to b on host to, once the migration is complete:
// the same VM and VBD, now resident on the destination (xen-api
// ocaml/xapi/xapi_vm_migrate.ml pool_migrate_complete,
// Xapi_xenops.set_resident_on).
func (ps *PoolSR) migrated(a, b *Attachment, to int) {
	db := ps.SRs[to].sim.xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	b.vbd = a.vbd
	if v := db.vbds[a.vbd]; v != nil {
		v.Host = ps.SRs[to].sim.hostLocked()
	}
}

// Down makes host i offline for xapi, or back: host.call_plugin to it
// fails HOST_OFFLINE (message_forwarding.ml do_op_on, check_live), as
// once the master sees no heartbeat from it.
func (p *PoolSim) Down(i int, down bool) {
	db := p.Master().xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	db.down[p.Hosts[i].hostLocked()] = down
}

// DeclareDead replays `xe host-declare-dead` of host i (xapi_host.ml
// declare_dead: VM.power_state_reset of each VM resident there, which
// xapi_vm_lifecycle.ml force_state_reset_keep_current_operations turns
// into VBDs not currently_attached and resident_on NULL): its VMs can
// start elsewhere. The host is also offline from then on.
func (p *PoolSim) DeclareDead(i int) {
	db := p.Master().xapi
	db.mu.Lock()
	defer db.mu.Unlock()
	h := p.Hosts[i].hostLocked()
	db.down[h] = true
	for ref, v := range db.vbds {
		if v.Host == h {
			delete(db.vbds, ref)
		}
	}
}

// callPlugin is host.call_plugin: forwarded to the host (message_forwarding.ml
// Host.call_plugin, do_op_on), which runs the plugin there.
func (s *Sim) callPlugin(ctx context.Context, session, hostRef, name, fn string, args map[string]string) (string, *rpcError) {
	db := s.xapi
	db.mu.Lock()
	db.init()
	u, _ := strings.CutPrefix(hostRef, hostRefPrefix)
	target, known := db.sims[u]
	down := db.down[u]
	db.mu.Unlock()
	switch {
	case !known:
		return "", &rpcError{Message: "HANDLE_INVALID", Data: []string{"host", hostRef}}
	case down:
		return "", &rpcError{Message: "HOST_OFFLINE", Data: []string{hostRef}}
	}
	res, rerr, err := target.runHostPlugin(ctx, session, name, fn, args)
	if err != nil {
		// The host's xapi did not answer (do_op_on_common turns a
		// connection failure into CANNOT_CONTACT_HOST).
		return "", &rpcError{Message: "CANNOT_CONTACT_HOST", Data: []string{hostRef}}
	}
	return res, rerr
}

// pluginDir is where this host's xapi finds host plugins.
func (s *Sim) pluginDir() string {
	if s.PluginDir != "" {
		return s.PluginDir
	}
	return host.HostPluginDir
}

// runHostPlugin is xapi_plugins.ml call_plugin on this host: the plugin
// must be an entry of the plugin directory (find_plugin, else
// XENAPI_MISSING_PLUGIN); it is forked with the XML-RPC call as its one
// argument; a signal, a non-zero exit or output that is no
// methodResponse become XENAPI_PLUGIN_FAILURE; a Failure struct becomes
// the error it names, a Success struct its string Value. err is this
// host not answering at all.
func (s *Sim) runHostPlugin(ctx context.Context, session, name, fn string, args map[string]string) (string, *rpcError, error) {
	fail := func(params ...string) *rpcError {
		return &rpcError{Message: "XENAPI_PLUGIN_FAILURE", Data: params}
	}
	missing := &rpcError{Message: "XENAPI_MISSING_PLUGIN", Data: []string{name}}
	path := filepath.Join(s.pluginDir(), name)
	run := s.HostPlugin
	if run == nil {
		run = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
			entries, _ := os.ReadDir(filepath.Dir(path))
			if !slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.Name() == filepath.Base(path) }) {
				return plugin.Outcome{}, fs.ErrNotExist
			}
			r, err := host.RunHostPlugin(ctx, path, call)
			out := plugin.Outcome{Script: path, ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr, Elapsed: r.Elapsed}
			if r.Signal != 0 {
				// xapi prints it with Debug.Pp.signal: "SIGKILL".
				out.Signal = unix.SignalName(r.Signal)
			}
			return out, err
		}
	}
	o := s.begin(fmt.Sprintf("xe host-call-plugin host-uuid=%s plugin=%s fn=%s", s.HostUUID(), name, fn))
	defer o.end()
	out, err := run(ctx, path, MethodCallXML(fn, session, args))
	if errors.Is(err, fs.ErrNotExist) {
		return "", missing, nil
	}
	if err != nil && out.Signal == "" {
		o.say("    %-22s FAILED: %v", name+"."+fn, err)
		return "", nil, err
	}
	stdout, stderr := string(out.Stdout), string(out.Stderr)
	switch {
	case out.Signal != "":
		return "", fail("signal: "+out.Signal, stdout, stderr), nil
	case out.ExitCode != 0:
		return "", fail("non-zero exit", stdout, stderr), nil
	}
	res, rerr, perr := parseMethodResponse(stdout)
	if perr != nil {
		return "", fail("failed to parse plugin output", stdout, perr.Error()), nil
	}
	if rerr != nil {
		o.say("    %-22s %7s  %s %v", name+"."+fn, out.Elapsed.Round(1e7), rerr.Message, rerr.Data)
	} else {
		o.say("    %-22s %7s  %q", name+"."+fn, out.Elapsed.Round(1e7), res)
	}
	return res, rerr, nil
}

// MethodCallXML is the argument xapi gives a host plugin: Xml.to_string
// of XMLRPC.To.methodCall fn [session; struct args] (xapi_plugins.ml
// call_plugin; xMLRPC.ml To.string writes a string as bare PCData, ""
// as <value/>).
func MethodCallXML(fn, session string, args map[string]string) string {
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	value := func(s string) string {
		if s == "" {
			return "<value/>"
		}
		return "<value>" + esc(s) + "</value>"
	}
	var b strings.Builder
	b.WriteString("<methodCall><methodName>" + esc(fn) + "</methodName><params><param>" + value(session) + "</param><param><value><struct>")
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b.WriteString("<member><name>" + esc(k) + "</name>" + value(args[k]) + "</member>")
	}
	b.WriteString("</struct></value></param></params></methodCall>")
	return b.String()
}

// xrValue is an XML-RPC value as xMLRPC.ml From reads it.
type xrValue struct {
	Text   string  `xml:",chardata"`
	String *string `xml:"string"`
	Struct *struct {
		Members []struct {
			Name  string  `xml:"name"`
			Value xrValue `xml:"value"`
		} `xml:"member"`
	} `xml:"struct"`
	Array *struct {
		Values []xrValue `xml:"value"`
	} `xml:"array>data"`
	Int *string `xml:"int"`
	I4  *string `xml:"i4"`
}

func (v xrValue) str() (string, error) {
	if v.Struct != nil || v.Array != nil {
		return "", errors.New("a string was expected")
	}
	if v.String != nil {
		return *v.String, nil
	}
	return v.Text, nil
}

// parseMethodResponse reads a plugin's output as xMLRPC.ml
// From.methodResponse and xapi_plugins.ml do: params with exactly one
// param, a struct whose Status is Success (Value, a string) or Failure
// (ErrorDescription, a non-empty array of strings); or a fault (becomes
// XENAPI_PLUGIN_FAILURE ["fault"; code; reason]).
func parseMethodResponse(out string) (string, *rpcError, error) {
	var r struct {
		XMLName xml.Name `xml:"methodResponse"`
		Params  *[]struct {
			Value xrValue `xml:"value"`
		} `xml:"params>param"`
		Fault *struct {
			Value xrValue `xml:"value"`
		} `xml:"fault"`
	}
	if err := xml.Unmarshal([]byte(out), &r); err != nil {
		return "", nil, err
	}
	if r.Fault != nil {
		f := map[string]xrValue{}
		if r.Fault.Value.Struct != nil {
			for _, m := range r.Fault.Value.Struct.Members {
				f[m.Name] = m.Value
			}
		}
		code := f["faultCode"].I4
		if code == nil {
			code = f["faultCode"].Int
		}
		reason, _ := f["faultString"].str()
		if code == nil {
			return "", nil, errors.New("fault without faultCode")
		}
		return "", &rpcError{Message: "XENAPI_PLUGIN_FAILURE", Data: []string{"fault", *code, reason}}, nil
	}
	if r.Params == nil || len(*r.Params) != 1 || (*r.Params)[0].Value.Struct == nil {
		return "", nil, errors.New("expected a single return value (struct status)")
	}
	st := map[string]xrValue{}
	for _, m := range (*r.Params)[0].Value.Struct.Members {
		st[m.Name] = m.Value
	}
	status, _ := st["Status"].str()
	switch status {
	case "Success":
		v, ok := st["Value"]
		if !ok {
			return "", nil, errors.New("Status")
		}
		s, err := v.str()
		return s, nil, err
	case "Failure":
		d := st["ErrorDescription"]
		if d.Array == nil || len(d.Array.Values) == 0 {
			return "", nil, errors.New("empty array of error strings")
		}
		var params []string
		for _, v := range d.Array.Values {
			s, err := v.str()
			if err != nil {
				return "", nil, err
			}
			params = append(params, s)
		}
		return "", &rpcError{Message: params[0], Data: params[1:]}, nil
	}
	return "", nil, errors.New("Status")
}

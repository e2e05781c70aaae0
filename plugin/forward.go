package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// A member forwards reset-on-boot's metadata writes to the master
// (docs/design.md "The pool model"). xapi sends every SR and VDI
// operation to the master, except the VDI epoch calls: xenopsd on the
// host starting a VM calls its own storage daemon (xen-api
// ocaml/xenopsd/lib/storage.ml epoch_begin and epoch_end, from
// xenops_server.ml's VBD_epoch_begin and VBD_epoch_end atomics), whose
// vdi_epoch_begin_impl (ocaml/xapi-storage-script/main.ml) calls
// Volume.destroy of a leftover temporary, Volume.clone of the VDI and
// Volume.set clone-on-boot=<clone> on it, and vdi_epoch_end_impl
// Volume.destroy of the temporary and Volume.unset clone-on-boot. Those
// four methods, on a member, become a host plugin call (HostFnVolume) to
// the master, which runs them through the same handlers as its own
// method files. Every other metadata-writing call keeps the member's
// refusal: xapi never sends one to a member.
var forwardedMethods = []string{"Volume.clone", "Volume.set", "Volume.unset", "Volume.destroy"}

// HostFnVolume is the host plugin function a member forwards a volume
// method to: args plugin (the volume plugin directory's name, which
// names the SR type), method, request (the method's declared arguments
// as JSON) and from (the member's uuid, for the master's log).
const HostFnVolume = "volume"

// PoolPlugins is the part of XenAPI forwarding uses (host.XenAPI): the
// pool master, and a host plugin call there.
type PoolPlugins interface {
	PoolMaster(ctx context.Context) (string, error)
	CallPlugin(ctx context.Context, hostUUID, name, fn string, args map[string]string) (string, error)
}

// forwardReply is the host plugin's answer to HostFnVolume: exactly one
// of Result (the method's JSON result, null for unit) and Error (its
// error document), as the method file would have printed them.
type forwardReply struct {
	Result json.RawMessage  `json:"result,omitempty"`
	Error  *schema.ErrorDoc `json:"error,omitempty"`
}

// ForwardedError is the error document the master answered to a
// forwarded call: the member prints it unchanged (ErrorDocument).
type ForwardedError struct{ Doc schema.ErrorDoc }

func (e *ForwardedError) Error() string {
	if len(e.Doc.Params) >= 2 {
		return e.Doc.Params[1]
	}
	return e.Doc.Code + " " + strings.Join(e.Doc.Params, " ")
}

// Unwrap gives errors.As and host.KindOf the document's kind.
func (e *ForwardedError) Unwrap() error {
	if len(e.Doc.Params) >= 2 {
		return host.NewError(host.Kind(e.Doc.Params[0]), "", e.Doc.Params[1], "", nil)
	}
	return nil
}

// forwarded reports whether c is a call this host sends to the master
// instead of running it, and if so sends it: a forwarded method on a pool
// member, not itself a forwarded call (a host plugin call never forwards
// again, so a call that lands on a non-master is refused there, not
// bounced on). A role that cannot be read is left to the engine, which
// reports it.
func (c *Call) forwarded(ctx context.Context) (bool, any, error) {
	if c.Deps.Forwarded || c.Target.Kind != VolumePlugin || !slices.Contains(forwardedMethods, c.Target.Method.Name) {
		return false, nil, nil
	}
	role, err := host.ReadRole(c.Deps.Root)
	if err != nil || role.Master {
		return false, nil, nil
	}
	res, err := c.forward(ctx, role)
	return true, res, err
}

// forward runs the call on the pool master through its host plugin and
// returns the master's result (raw JSON, printed as is) or its error
// document (ForwardedError). A master that cannot be reached is an
// Unreachable error naming it: xapi retries the VM start or shutdown,
// nothing was written here.
func (c *Call) forward(ctx context.Context, role host.Role) (any, error) {
	name := c.Target.Method.Name
	op := fmt.Sprintf("%s: forward to the pool master %s", name, role.MasterAddr)
	retry := "the pool master " + role.MasterAddr + " must answer for a VM with on-boot=reset to start or stop on a member; check it is up and its xapi runs (xe host-list), then retry"
	// Only the method's declared arguments travel: they become the
	// master's plugin command line (xapi_plugins.ml call_plugin passes
	// the call as argv[1]), and these four methods carry no secret.
	req, err := c.Args.encode(c.Target.Method.Args)
	if err != nil {
		return nil, host.NewError(host.KindInternal, op, "cannot encode the arguments", "report this as a sanvol bug", err)
	}
	pool := c.Deps.Pool
	if pool == nil {
		pool = host.NewXenAPI(c.Deps.Root)
	}
	master, err := pool.PoolMaster(ctx)
	if err != nil {
		return nil, host.NewError(host.KindUnreachable, op, "xapi does not name the master", retry, err)
	}
	c.Log.Info("forwarding to the pool master", zap.String("master", master), zap.String("master_addr", role.MasterAddr))
	args := map[string]string{"plugin": c.Target.Dir, "method": name, "request": string(req),
		"from": host.ReadInventory(c.Deps.Root)["INSTALLATION_UUID"]}
	out, err := pool.CallPlugin(ctx, master, host.HostPluginName, HostFnVolume, args)
	op = fmt.Sprintf("%s: forward to the pool master %s (host %s)", name, role.MasterAddr, master)
	var xe *host.XenAPIError
	switch {
	case errors.As(err, &xe) && xe.Code == ErrorCode && len(xe.Params) >= 2:
		// The master's plugin failed before the method ran: an older
		// sanvol there without HostFnVolume (Unimplemented), or a bad call.
		return nil, host.NewError(host.Kind(xe.Params[0]), op, xe.Params[1],
			"install the same sanvol version on every host of the pool", nil)
	case errors.As(err, &xe) && xe.Code == "XENAPI_MISSING_PLUGIN":
		return nil, host.NewError(host.KindUnreachable, op, "sanvol's host plugin is not installed there",
			"install the same sanvol version on every host of the pool (sanvol install; ls "+host.HostPluginDir+")", err)
	case err != nil:
		return nil, host.NewError(host.KindUnreachable, op, "the master did not answer", retry, err)
	}
	var r forwardReply
	if err := json.Unmarshal([]byte(out), &r); err != nil || (r.Error == nil) == (r.Result == nil) {
		return nil, host.NewError(host.KindInternal, op, fmt.Sprintf("unexpected answer %q", out),
			"install the same sanvol version on every host of the pool", err)
	}
	if r.Error != nil {
		return nil, &ForwardedError{Doc: *r.Error}
	}
	return r.Result, nil
}

// encode is the JSON request of the declared arguments, as xapi would
// send it.
func (a Args) encode(specs []argSpec) ([]byte, error) {
	obj := map[string]any{}
	for _, s := range specs {
		switch s.Type {
		case tString:
			obj[s.Name] = a.strs[s.Name]
		case tInt64:
			obj[s.Name] = a.ints[s.Name]
		case tBool:
			obj[s.Name] = a.bools[s.Name]
		case tDict:
			obj[s.Name] = a.dicts[s.Name]
		}
	}
	return json.Marshal(obj)
}

// forwardable is the method a member may forward, by name, from the
// installed methods.
func forwardable(name string) *Method {
	if !slices.Contains(forwardedMethods, name) {
		return nil
	}
	for _, m := range volumeMethods {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// runForwarded is HostFnVolume on the master: the forwarded method, run
// as its method file runs it (the same argument checks, handler and
// error documents), answered as a forwardReply. It refuses on a host
// that is not the master: the pool changed master after the member
// looked it up, and the member then returns the refusal to xapi.
func runForwarded(ctx context.Context, deps *Deps, args map[string]string) (string, error) {
	m := forwardable(args["method"])
	if m == nil {
		return "", host.NewError(host.KindInvalid, "host plugin "+HostFnVolume, fmt.Sprintf("method %q is not one a member forwards", args["method"]),
			"the caller and this host run different sanvol versions; update them together", nil)
	}
	dir := args["plugin"]
	srType := strings.TrimPrefix(strings.ToLower(dir), VolumePrefix)
	if !strings.HasPrefix(strings.ToLower(dir), VolumePrefix) || !slices.Contains(SRTypes(), srType) {
		return "", host.NewError(host.KindInvalid, "host plugin "+HostFnVolume, fmt.Sprintf("unknown volume plugin %q", dir),
			"the caller and this host run different sanvol versions; update them together", nil)
	}
	fd := *deps
	fd.Forwarded = true
	log := deps.Log.With(zap.String("method", m.Name), zap.String("plugin", dir), zap.String("forwarded_from", args["from"]))
	run := func() (any, error) {
		role, err := host.ReadRole(deps.Root)
		if err != nil {
			return nil, host.NewError(host.KindInternal, "read pool role", err.Error(),
				"check "+host.PoolConf+" (it should hold \"master\" or \"slave:<master address>\")", err)
		}
		if !role.Master {
			return nil, host.NewError(host.KindNotMaster, m.Name,
				fmt.Sprintf("forwarded by member %s to this host, which is no longer the pool master (the master is now %s)", args["from"], role.MasterAddr),
				"retry: xapi runs the VM start or shutdown again and the member forwards to the new master", nil)
		}
		a, err := DecodeArgs(m.Name, []byte(args["request"]), m.Args)
		if err != nil {
			return nil, err
		}
		log = log.With(zap.String("dbg", a.Str("dbg")))
		c := &Call{Target: Target{Kind: VolumePlugin, SRType: srType, Dir: dir, Method: m}, Args: a, Deps: &fd, Log: log}
		return m.Run(ctx, c)
	}
	res, err := run()
	var r forwardReply
	if err != nil {
		log.Warn("forwarded call failed", zap.Error(err))
		doc := ErrorDocument(m.Name, err)
		r.Error = &doc
	} else {
		b, err := json.Marshal(res)
		if err != nil {
			return "", host.NewError(host.KindInternal, m.Name, "cannot encode the result", "report this as a sanvol bug", err)
		}
		r.Result = b
	}
	b, err := json.Marshal(r)
	return string(b), err
}

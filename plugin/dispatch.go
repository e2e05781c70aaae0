package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// Directory names of the plugins (spec §2.2, §2.3).
const (
	VolumePrefix = "org.xen.xapi.storage."
	TypeNVMeTCP  = "nvmetcp"
	TypeISCSI    = "iscsi-ng"
	// DatapathScheme names the datapath directory and is the URI scheme
	// of every volume sanvol returns.
	DatapathScheme = "sanvol"
)

// Kind of plugin directory.
type Kind int

// The two kinds of plugin directory.
const (
	VolumePlugin Kind = iota
	DatapathPlugin
)

// Target is what a method file's path resolves to.
type Target struct {
	Kind   Kind
	SRType string // volume plugins only
	Dir    string // the plugin directory's name
	Method *Method
}

// Method is one wire method: its name, its arguments and its handler.
type Method struct {
	Name string
	Args []argSpec
	Run  func(ctx context.Context, c *Call) (any, error)
}

// Call is one invocation: the decoded arguments and what serves them.
type Call struct {
	Target Target
	Args   Args
	Deps   *Deps
	Log    *zap.Logger
}

// VolumeMethods and DatapathMethods are the method tables. Every method
// that works is here, so that its file exists and answers; a method that
// does not work has no file, because the daemon advertises features from
// the files it finds (see volumeMethods).
func VolumeMethods() []*Method { return volumeMethods }

// DatapathMethods lists the datapath plugin's methods.
func DatapathMethods() []*Method { return datapathMethods }

// SRTypes lists the volume plugins sanvol provides.
func SRTypes() []string { return []string{TypeNVMeTCP, TypeISCSI} }

// PluginDirs returns the plugin directories relative to the
// xapi-storage-script root, each with its method names.
func PluginDirs() map[string][]string {
	names := func(ms []*Method) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.Name
		}
		sort.Strings(out)
		return out
	}
	dirs := map[string][]string{}
	for _, t := range SRTypes() {
		dirs[filepath.Join("volume", VolumePrefix+t)] = names(volumeMethods)
	}
	dirs[filepath.Join("datapath", DatapathScheme)] = names(datapathMethods)
	return dirs
}

// Resolve maps argv[0] to a plugin and method, case-insensitively for
// both, as the daemon looks method files up case-insensitively.
func Resolve(argv0 string) (Target, error) {
	dir := filepath.Base(filepath.Dir(argv0))
	file := filepath.Base(argv0)
	ldir := strings.ToLower(dir)
	var t Target
	var table []*Method
	switch {
	case ldir == DatapathScheme:
		t = Target{Kind: DatapathPlugin, Dir: dir}
		table = datapathMethods
	case strings.HasPrefix(ldir, VolumePrefix):
		typ := strings.TrimPrefix(ldir, VolumePrefix)
		known := false
		for _, s := range SRTypes() {
			known = known || s == typ
		}
		if !known {
			return t, host.NewError(host.KindInvalid, file, fmt.Sprintf("unknown plugin directory %q", dir),
				fmt.Sprintf("sanvol serves %s%s, %s%s and datapath/%s; reinstall with `sanvol install`", VolumePrefix, TypeNVMeTCP, VolumePrefix, TypeISCSI, DatapathScheme), nil)
		}
		t = Target{Kind: VolumePlugin, SRType: typ, Dir: dir}
		table = volumeMethods
	default:
		return t, host.NewError(host.KindInvalid, file, fmt.Sprintf("unknown plugin directory %q", dir),
			"method files must live in volume/"+VolumePrefix+"<type>/ or datapath/"+DatapathScheme+"/ under /usr/libexec/xapi-storage-script; reinstall with `sanvol install`", nil)
	}
	for _, m := range table {
		if strings.EqualFold(m.Name, file) {
			t.Method = m
			return t, nil
		}
	}
	return t, host.NewError(host.KindInvalid, file, fmt.Sprintf("unknown method %q in plugin directory %s", file, dir),
		"this file is not a method sanvol implements; remove it or reinstall with `sanvol install`", nil)
}

// Serve runs one method call: it reads the request from stdin (`--json`,
// as xapi-storage-script calls) or from the command line (static-vdis'
// positional form), prints exactly one JSON value on stdout and returns
// the exit code. Both forms are checked alike and fail with the same
// error documents.
func Serve(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer, deps *Deps) int {
	log := deps.Log
	method := filepath.Base(argv[0])
	fail := func(err error) int {
		log.Warn("call failed", zap.String("method", method), zap.Error(err))
		writeJSON(stdout, ErrorDocument(method, err))
		return 1
	}
	t, err := Resolve(argv[0])
	if err != nil {
		return fail(err)
	}
	method = t.Method.Name
	var args Args
	if len(argv) >= 2 && argv[1] == "--json" {
		raw, err := ReadRequest(stdin)
		if err != nil {
			return fail(badRequest(method, err.Error()))
		}
		if args, err = DecodeArgs(method, raw, t.Method.Args); err != nil {
			return fail(err)
		}
	} else {
		// static-vdis, at boot and at HA enable, is the one caller that
		// passes arguments on the command line (see StaticVDIsMethods).
		if !takesPositional(method) {
			return fail(host.NewError(host.KindInvalid, method, "expected the single argument --json",
				"method files are run by xapi-storage-script as `<file> --json` with the arguments on stdin (only "+strings.Join(StaticVDIsMethods, ", ")+" also take static-vdis' positional form); use `sanvol call` by hand", nil))
		}
		if args, err = DecodePositional(method, argv[1:], t.Method.Args); err != nil {
			return fail(err)
		}
		deps.StaticVDIs = true
	}
	log = log.With(zap.String("dbg", args.Str("dbg")), zap.String("method", method), zap.String("plugin", t.Dir))
	call := &Call{Target: t, Args: args, Deps: deps, Log: log}
	log.Debug("call")
	res, err := runInterruptible(ctx, call)
	if err != nil {
		log.Warn("call failed", zap.Error(err))
		writeJSON(stdout, ErrorDocument(method, err))
		return 1
	}
	log.Debug("call ok")
	writeJSON(stdout, res)
	return 0
}

// runInterruptible runs the call with SIGTERM and SIGINT cancelling its
// context, so that a call stopped by xapi or an admin ends its commands
// (host.Runner kills them), rolls back what it can and still answers with
// an error document that says it was interrupted, rather than dying
// half-way with no document. A call that finishes in spite of the signal
// keeps its result: the work is done.
func runInterruptible(ctx context.Context, c *Call) (any, error) {
	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	res, err := c.Target.Method.Run(sctx, c)
	if err != nil && sctx.Err() != nil && ctx.Err() == nil {
		return nil, interrupted(c.Target.Method.Name, context.Cause(sctx), err)
	}
	return res, err
}

// interrupted is the error of a call a signal stopped: its own kind, so
// that xe shows "Interrupted" and not the kind of whatever step the
// signal cut short, which is in the cause.
func interrupted(method string, signal, err error) error {
	return host.NewError(host.KindInterrupted, method, "the call was interrupted ("+signal.Error()+")",
		"the signal came from xapi or an admin; check what the call left (xe sr-scan, xe vdi-list) and retry", err)
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only a bug in a result type gets here; still honour the contract.
		_ = enc.Encode(ErrorDocument("", host.NewError(host.KindInternal, "encode result", err.Error(), "report this as a sanvol bug", nil)))
	}
}

var (
	aDbg         = argSpec{"dbg", tString}
	aSR          = argSpec{"sr", tString}
	aKey         = argSpec{"key", tString}
	aURI         = argSpec{"uri", tString}
	aDomain      = argSpec{"domain", tString}
	aConfig      = argSpec{"configuration", tDict}
	aName        = argSpec{"name", tString}
	aDescription = argSpec{"description", tString}
)

var volumeMethods = []*Method{
	{Name: "Plugin.Query", Args: []argSpec{aDbg}, Run: pluginQuery},
	{Name: "Plugin.diagnostics", Args: []argSpec{aDbg}, Run: pluginDiagnostics},
	{Name: "SR.probe", Args: []argSpec{aDbg, aConfig}, Run: srProbe},
	{Name: "SR.create", Args: []argSpec{aDbg, {"uuid", tString}, aConfig, aName, aDescription}, Run: srCreate},
	{Name: "SR.attach", Args: []argSpec{aDbg, aConfig}, Run: srAttach},
	{Name: "SR.detach", Args: []argSpec{aDbg, aSR}, Run: srDetach},
	{Name: "SR.destroy", Args: []argSpec{aDbg, aSR}, Run: srDestroy},
	{Name: "SR.stat", Args: []argSpec{aDbg, aSR}, Run: srStat},
	{Name: "SR.ls", Args: []argSpec{aDbg, aSR}, Run: srLs},
	{Name: "SR.set_name", Args: []argSpec{aDbg, aSR, {"new_name", tString}}, Run: srSetName},
	{Name: "SR.set_description", Args: []argSpec{aDbg, aSR, {"new_description", tString}}, Run: srSetDescription},
	{Name: "Volume.create", Args: []argSpec{aDbg, aSR, aName, aDescription, {"size", tInt64}, {"sharable", tBool}}, Run: volumeCreate},
	{Name: "Volume.destroy", Args: []argSpec{aDbg, aSR, aKey}, Run: volumeDestroy},
	{Name: "Volume.resize", Args: []argSpec{aDbg, aSR, aKey, {"new_size", tInt64}}, Run: volumeResize},
	{Name: "Volume.stat", Args: []argSpec{aDbg, aSR, aKey}, Run: volumeStat},
	{Name: "Volume.set", Args: []argSpec{aDbg, aSR, aKey, {"k", tString}, {"v", tString}}, Run: volumeSet},
	{Name: "Volume.unset", Args: []argSpec{aDbg, aSR, aKey, {"k", tString}}, Run: volumeUnset},
	{Name: "Volume.set_name", Args: []argSpec{aDbg, aSR, aKey, {"new_name", tString}}, Run: volumeSetName},
	{Name: "Volume.set_description", Args: []argSpec{aDbg, aSR, aKey, {"new_description", tString}}, Run: volumeSetDescription},
	// The daemon derives VDI_SNAPSHOT, VDI_CLONE and VDI_RESET_ON_BOOT/2
	// from the mere presence of these two files, whatever Plugin.Query
	// says (xapi-storage-script main.ml, QueryImpl.query_impl): they were
	// installed once snapshots, clones and reset-on-boot passed on one
	// host and on the pool lab (issue 17).
	{Name: "Volume.snapshot", Args: []argSpec{aDbg, aSR, aKey}, Run: volumeSnapshot},
	{Name: "Volume.clone", Args: []argSpec{aDbg, aSR, aKey}, Run: volumeClone},
}

var datapathMethods = []*Method{
	{Name: "Plugin.Query", Args: []argSpec{aDbg}, Run: pluginQuery},
	{Name: "Plugin.diagnostics", Args: []argSpec{aDbg}, Run: pluginDiagnostics},
	{Name: "Datapath.open", Args: []argSpec{aDbg, aURI, {"persistent", tBool}}, Run: datapathOpen},
	{Name: "Datapath.attach", Args: []argSpec{aDbg, aURI, aDomain}, Run: datapathAttach},
	{Name: "Datapath.activate", Args: []argSpec{aDbg, aURI, aDomain}, Run: datapathActivate},
	{Name: "Datapath.deactivate", Args: []argSpec{aDbg, aURI, aDomain}, Run: datapathDeactivate},
	{Name: "Datapath.detach", Args: []argSpec{aDbg, aURI, aDomain}, Run: datapathDetach},
	{Name: "Datapath.close", Args: []argSpec{aDbg, aURI}, Run: datapathClose},
}

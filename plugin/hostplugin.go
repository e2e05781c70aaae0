package plugin

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// sanvol's XenAPI host plugin, /etc/xapi.d/plugins/sanvol: the master
// calls it with host.call_plugin on the host where a volume is active,
// to make the device steps of a snapshot or a merge there (volume/
// remote.go, docs/design.md "The control channel"). Those functions
// touch this host's device-mapper only, for the chain they are given;
// they never read or write LVM metadata beyond activating the COW LVs
// that chain maps, and repeating any of them is harmless. The other
// direction is HostFnVolume (forward.go): a member calls the master's
// plugin to run one of reset-on-boot's Volume methods there, which
// writes metadata as the master's own method file would.
//
// The process contract is xen-api ocaml/xapi/xapi_plugins.ml
// call_plugin: xapi forks the plugin with one argument, an XML-RPC
// methodCall (methodName = the function; params = the session reference
// and a struct of string arguments), with no stdin, the environment
// PATH=/sbin:/usr/sbin:/bin:/usr/bin only (forkhelpers.ml
// default_path_env_pair) and no deadline. It reads stdout as an XML-RPC
// methodResponse whose one param is a struct: {Status: "Success", Value:
// <string>} gives the call's result; {Status: "Failure",
// ErrorDescription: [code, params...]} raises the XenAPI error code
// with params (ocaml/libs/http-lib/xMLRPC.ml From.methodResponse and
// status; python3/examples/XenAPIPlugin.py writes the same). A non-zero
// exit, a signal or unparsable output become XENAPI_PLUGIN_FAILURE, so
// the plugin always exits 0 and reports failures in the document.

// The host plugin's functions.
const (
	HostFnConverge   = "converge"
	HostFnWaitMerged = "wait_merged"
	HostFnLive       = "live"
	// HostFnVolume (forward.go) is the other direction: a member's
	// reset-on-boot Volume call, run on the master.
)

// hostFnWait is how long one wait_merged call waits at most by default;
// the master calls again while the kernel copies.
const (
	hostFnWait    = 10 * time.Second
	hostFnMaxWait = time.Minute
	// hostPluginDeadline bounds the whole process: xapi sets none.
	hostPluginDeadline = 2 * time.Minute
)

// IsHostPlugin reports whether argv is xapi forking sanvol as its host
// plugin: argv[0] is <plugins dir>/sanvol (xapi_plugins.ml find_plugin
// joins the directory and the name) and the one argument is the call.
func IsHostPlugin(argv []string) bool {
	return len(argv) == 2 && filepath.Base(argv[0]) == host.HostPluginName &&
		strings.HasSuffix(filepath.Dir(argv[0]), host.HostPluginDir)
}

// xrValue is an XML-RPC value: a string (bare or <string>) or a struct.
type xrValue struct {
	Text   string     `xml:",chardata"`
	String *string    `xml:"string"`
	Struct *xrMembers `xml:"struct"`
}

type xrMembers struct {
	Members []struct {
		Name  string  `xml:"name"`
		Value xrValue `xml:"value"`
	} `xml:"member"`
}

func (v xrValue) str() string {
	if v.String != nil {
		return *v.String
	}
	return v.Text
}

// ParseHostPluginCall decodes xapi's methodCall: the function and the
// args struct (params[1]); params[0], the session, is not used.
func ParseHostPluginCall(doc string) (fn string, args map[string]string, err error) {
	var c struct {
		XMLName xml.Name `xml:"methodCall"`
		Method  string   `xml:"methodName"`
		Params  []struct {
			Value xrValue `xml:"value"`
		} `xml:"params>param"`
	}
	if err := xml.Unmarshal([]byte(doc), &c); err != nil {
		return "", nil, host.NewError(host.KindInvalid, "host plugin", "the argument is not an XML-RPC call", "", err)
	}
	args = map[string]string{}
	if len(c.Params) >= 2 && c.Params[1].Value.Struct != nil {
		for _, m := range c.Params[1].Value.Struct.Members {
			args[m.Name] = m.Value.str()
		}
	}
	return strings.TrimSpace(c.Method), args, nil
}

// xmlText escapes text for an XML-RPC value: only &, < and > (xapi's
// XML parser, xml-light, reads the five predefined entities; quotes need
// none in text), and characters XML forbids become spaces.
func xmlText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r < 0x20 && r != '\n' && r != '\t':
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// HostPluginSuccess is the methodResponse of a result.
func HostPluginSuccess(result string) string {
	return "<methodResponse><params><param><value><struct>" +
		"<member><name>Status</name><value>Success</value></member>" +
		"<member><name>Value</name><value>" + xmlText(result) + "</value></member>" +
		"</struct></value></param></params></methodResponse>\n"
}

// HostPluginFailure is the methodResponse of an error: xapi raises code
// with params as the XenAPI error of host.call_plugin.
func HostPluginFailure(code string, params ...string) string {
	var b strings.Builder
	b.WriteString("<methodResponse><params><param><value><struct>")
	b.WriteString("<member><name>Status</name><value>Failure</value></member>")
	b.WriteString("<member><name>ErrorDescription</name><value><array><data>")
	for _, s := range append([]string{code}, params...) {
		b.WriteString("<value>" + xmlText(s) + "</value>")
	}
	b.WriteString("</data></array></value></member></struct></value></param></params></methodResponse>\n")
	return b.String()
}

// ServeHostPlugin runs one host plugin call and writes its response; it
// returns 0, the exit code xapi wants even for a failure.
func ServeHostPlugin(ctx context.Context, argv []string, stdout io.Writer, deps *Deps) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, hostPluginDeadline)
	defer cancel()
	fn, args, err := ParseHostPluginCall(argv[1])
	var out string
	if err == nil {
		deps.Log.Info("host plugin call: " + fn + " " + fmt.Sprint(args))
		out, err = runHostFn(ctx, deps, fn, args)
	}
	if err != nil {
		deps.Log.Error("host plugin " + fn + ": " + err.Error())
		doc := ErrorDocument("host plugin "+fn, err)
		_, _ = io.WriteString(stdout, HostPluginFailure(doc.Code, doc.Params...))
		return 0
	}
	_, _ = io.WriteString(stdout, HostPluginSuccess(out))
	return 0
}

func runHostFn(ctx context.Context, deps *Deps, fn string, args map[string]string) (string, error) {
	switch fn {
	case HostFnConverge, HostFnWaitMerged, HostFnLive:
	case HostFnVolume:
		return runForwarded(ctx, deps, args)
	default:
		return "", host.NewError(host.KindUnimpl, "host plugin", fmt.Sprintf("no function %q", fn),
			"the caller and this host run different sanvol versions; update them together", nil)
	}
	rc, err := volume.ParseRemoteChain(args)
	if err != nil {
		return "", err
	}
	a, err := volume.LoadAttached(deps.Root, rc.SR)
	if errors.Is(err, host.ErrNotAttached) || errors.Is(err, host.ErrNotFound) {
		// K cannot be active on a host where its SR is not attached.
		if fn == HostFnWaitMerged {
			return string(volume.MergeAbsent), nil
		}
		return "absent", nil
	}
	if err != nil {
		return "", err
	}
	role, err := host.ReadRole(deps.Root)
	if err != nil {
		return "", err
	}
	// The datapath's scope: activation only, and read-only on a member.
	s := lvm.Scope{Devices: []string{a.Device}, ReadOnly: !role.Master}
	lc := newLVM(deps)
	st := &volume.Stack{DM: blockdev.NewDM(deps.Runner, 0), LVM: lc, Root: deps.Root, Log: deps.Log, Inactive: datapath.Inactive(deps.Root), MemoryWarnOnly: SnapshotMemoryWarnOnly(deps.Root)}
	// The datapath's lock on K: a table switch never races an attach or
	// a detach on this host.
	lock := func(ctx context.Context) (func(), error) {
		return transport.Lock(ctx, host.FileLocker{Root: deps.Root}, time.Minute, "host plugin "+fn,
			volume.DatapathLock(rc.SR, rc.Key), "a datapath call on this volume")
	}
	unlock, err := lock(ctx)
	if err != nil {
		return "", err
	}
	defer func() { unlock() }()
	// wait_merged's wait lets the lock go: a live migration's
	// deactivate here (the VM suspended) must not wait for it.
	st.Unlocked = func(ctx context.Context, f func(context.Context) error) error {
		unlock()
		unlock = func() {}
		ferr := f(ctx)
		u, err := lock(ctx)
		if err != nil {
			return errors.Join(ferr, err)
		}
		unlock = u
		return ferr
	}
	live := func(ok bool) string {
		if ok {
			return "live"
		}
		return "absent"
	}
	switch fn {
	case HostFnLive:
		ok, err := st.Live(ctx, rc.SR, rc.Key)
		return live(ok), err
	case HostFnConverge:
		ok, err := st.ConvergeHere(ctx, s, a.VG, rc)
		return live(ok), err
	}
	wait := hostFnWait
	if w, err := strconv.Atoi(args["wait"]); err == nil && w > 0 {
		wait = min(time.Duration(w)*time.Second, hostFnMaxWait)
	}
	state, err := st.MergeHere(ctx, s, a.VG, rc, wait)
	return string(state), err
}

// Package xapisim plays xapi and xapi-storage-script against an installed
// plugin tree: it runs the method files exactly as the daemon does (through
// sanvol's plugin.Invoke), picks the datapath plugin by URI scheme, and
// replays the call sequences of the xe commands (spec §8). It can narrate
// every step as the xe command an admin would have typed and what each
// method call answered, for people watching the demo.
//
// A Sim stands for one host's daemon. It is safe for concurrent use and,
// like the daemon, runs plugin calls in parallel: main.ml's
// watch_volume_plugins serves each volume plugin's queue with listen_p
// (one Lwt thread per request) while `concurrent` is true, its default
// (and the --concurrent flag can only set it). OldDaemon runs one call
// at a time, as the daemon did before CA-395512 (2024).
//
// Every rule the simulator applies is the daemon's or xapi's, read from
// the xen-api source and cited where it is applied (file and function);
// docs/design.md lists them under "What xapi really does".
package xapisim

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sanvol/sanvol/plugin"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// DefaultRoot is where XCP-ng's packaging points xapi-storage-script.
const DefaultRoot = "/usr/libexec/xapi-storage-script"

// Sim is one host's xapi-storage-script plus the bits of xapi that shape
// its calls (secrets, the SR master's extra health check).
type Sim struct {
	Root string
	// Out receives the narration; nil keeps the simulator quiet.
	Out io.Writer
	// Member makes this host a pool member rather than the SR master:
	// PBD.plug then skips the master's second SR.stat.
	Member bool
	// OldDaemon replays the 2020 daemon (XCP-ng 8.2): VBD teardown calls
	// Datapath.deactivate once, not twice; calls run one at a time;
	// sr-scan is SR.ls alone (no scan2); SR health knows only Healthy and
	// Recovering.
	OldDaemon bool
	// ScanRetryWait replaces stat_with_retry's 1 s between SR.stat calls
	// of a scan of an Unreachable SR, for tests; zero means 1 s.
	ScanRetryWait time.Duration
	// Exec runs a method file on the host this Sim stands for; nil runs it
	// on this machine (plugin.Run). A pool lab points a member's Sim at
	// that host's agent.
	Exec func(ctx context.Context, script string, stdin []byte) (plugin.Outcome, error)
	// HostPlugin runs a XenAPI host plugin on this host (host.call_plugin,
	// hostplugin.go); nil forks it here (host.RunHostPlugin). A pool lab
	// points a member's at that host's agent. An error wrapping
	// fs.ErrNotExist is a plugin the host does not have; a killed plugin
	// is an Outcome with its Signal.
	HostPlugin func(ctx context.Context, path, call string) (plugin.Outcome, error)
	// PluginDir is this host's xapi plugin directory; "" means
	// /etc/xapi.d/plugins.
	PluginDir string

	mu         sync.Mutex
	registered map[string]*Datapath // by scheme
	refused    map[string]error     // datapath dirs the daemon would ignore, and why
	secrets    map[string]string    // secret uuid -> value
	xapi       *xapiDB              // host, SR and PBD records (pbd.go), a pool's in a PoolSim
	hostUUID   string               // under xapi.mu
	narration  sync.Mutex
	serial     sync.Mutex // OldDaemon's one call at a time
	inflight   atomic.Int32
	opSeq      atomic.Int32
}

// Datapath is a registered datapath plugin.
type Datapath struct {
	Scheme string
	Dir    string
	Query  schema.QueryResult
}

// NonPersistent tells whether the daemon calls open/close on it.
func (d *Datapath) NonPersistent() bool {
	for _, f := range d.Query.Features {
		if f == "NONPERSISTENT" {
			return true
		}
	}
	return false
}

// New returns a simulator for the plugin tree under root.
func New(root string, out io.Writer) *Sim {
	return &Sim{Root: root, Out: out, secrets: map[string]string{}, xapi: &xapiDB{}}
}

// VolumeDir is the volume plugin directory of an SR type.
func (s *Sim) VolumeDir(srType string) string {
	return filepath.Join(s.Root, "volume", "org.xen.xapi.storage."+srType)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// op is one xe command in flight: its dbg string and its narration.
type op struct {
	s   *Sim
	dbg string
	tag string
}

// begin starts an xe operation and narrates the command line.
func (s *Sim) begin(xe string) *op {
	n := s.opSeq.Add(1)
	o := &op{s: s, dbg: "OpaqueRef:" + newUUID(), tag: fmt.Sprintf("[%d] ", n)}
	s.inflight.Add(1)
	o.say("$ %s", xe)
	return o
}

func (o *op) end() { o.s.inflight.Add(-1) }

// say writes one narration line. While several operations run at once,
// each line carries its operation's number so the story stays readable.
func (o *op) say(format string, a ...any) {
	if o.s.Out == nil {
		return
	}
	prefix := ""
	if o.s.inflight.Load() > 1 {
		prefix = o.tag
	}
	o.s.narration.Lock()
	defer o.s.narration.Unlock()
	fmt.Fprintf(o.s.Out, prefix+format+"\n", a...)
}

// call runs one method file and narrates its outcome.
func (o *op) call(ctx context.Context, dir, method string, args, result any) error {
	start := time.Now()
	raw, warn, err := o.s.invokeWarn(ctx, dir, method, args)
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		o.say("    %-22s %7s  FAILED: %s", method, took, describeErr(err))
		return fmt.Errorf("%s: %w", method, err)
	}
	o.say("    %-22s %7s  %s", method, took, summarize(method, raw))
	// A call that succeeds may still have logged a problem (Datapath.detach
	// never fails, spec §6.4, but says what it could not do): the
	// plugin's stderr carries warnings and errors only.
	for _, line := range strings.Split(strings.TrimSpace(warn), "\n") {
		if line != "" {
			o.say("      ! %s", line)
		}
	}
	if result != nil {
		if err := json.Unmarshal(raw, result); err != nil {
			return fmt.Errorf("%s: result %s: %w", method, raw, err)
		}
	}
	return nil
}

// invoke runs a method file as the daemon does (main.ml, fork_exec_rpc
// and Script.path) and decodes its result as the daemon's typed client
// does (checkResult): a result the daemon could not unmarshal fails here.
func (s *Sim) invoke(ctx context.Context, dir, method string, args any) (json.RawMessage, error) {
	raw, _, err := s.invokeWarn(ctx, dir, method, args)
	return raw, err
}

// invokeWarn is invoke that also returns what the method wrote to stderr.
func (s *Sim) invokeWarn(ctx context.Context, dir, method string, args any) (json.RawMessage, string, error) {
	script, err := plugin.FindMethod(dir, method)
	if err != nil {
		code, why := "SCRIPT_MISSING", "Check whether the file exists and has correct permissions"
		if strings.HasPrefix(err.Error(), "SCRIPT_NOT_EXECUTABLE") {
			code, why = "SCRIPT_NOT_EXECUTABLE", err.Error()
		}
		return nil, "", &plugin.CallError{Script: filepath.Join(dir, method), Doc: schema.ErrorDoc{Code: code, Params: []string{filepath.Join(dir, method), why}}}
	}
	stdin, err := json.Marshal(args)
	if err != nil {
		return nil, "", err
	}
	if s.OldDaemon {
		s.serial.Lock()
		defer s.serial.Unlock()
	}
	run := plugin.Run
	if s.Exec != nil {
		run = s.Exec
	}
	out, err := run(ctx, script, stdin)
	if err != nil {
		return nil, "", err
	}
	raw, err := plugin.Decode(out)
	if err != nil {
		return nil, "", err
	}
	if err := checkResult(method, script, raw, s.OldDaemon); err != nil {
		return nil, "", err
	}
	return raw, string(out.Stderr), nil
}

// APIError is an error xapi itself raises (a XenAPI error code and its
// parameters), before or after the plugin is called.
type APIError struct {
	Code   string
	Params []string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("xapi: %s %v", e.Code, e.Params)
}

// refuse narrates and returns an error xapi raises itself.
func (o *op) refuse(code string, params ...string) error {
	o.say("    refused by xapi: %s %s", code, strings.Join(params, " | "))
	return &APIError{Code: code, Params: params}
}

func (s *Sim) retryWait() time.Duration {
	if s.ScanRetryWait > 0 {
		return s.ScanRetryWait
	}
	return time.Second
}

// AddSecret stores a value the way xapi stores a password from a
// device-config, and returns the secret's uuid.
func (s *Sim) AddSecret(value string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := newUUID()
	s.secrets[u] = value
	return u
}

func (s *Sim) secret(uuid string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.secrets[uuid]
	return v, ok
}

// hideSecrets does what xapi does to a device-config before any plugin
// sees it (spec §10.6): every key ending in "password" becomes
// "<key>_secret" holding the uuid of a XenAPI secret.
func (s *Sim) hideSecrets(config map[string]string) map[string]string {
	out := make(map[string]string, len(config))
	for k, v := range config {
		if strings.HasSuffix(k, "password") {
			out[k+"_secret"] = s.AddSecret(v)
			continue
		}
		out[k] = v
	}
	return out
}

// xeConfig renders a device-config for narration, passwords masked.
func xeConfig(config map[string]string) string {
	keys := make([]string, 0, len(config))
	for k := range config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := config[k]
		if strings.HasSuffix(k, "password") {
			v = "********"
		}
		fmt.Fprintf(&b, " device-config:%s=%s", k, quote(v))
	}
	return b.String()
}

func quote(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"'$") {
		return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
	}
	return v
}

// summarize turns a method's result into one line a person can read.
func summarize(method string, raw json.RawMessage) string {
	if string(raw) == "null" {
		return "ok"
	}
	switch strings.ToLower(method) {
	case "plugin.query":
		var q schema.QueryResult
		if json.Unmarshal(raw, &q) == nil {
			return fmt.Sprintf("%s %s, API %s, features %s", q.Plugin, q.Version, q.RequiredAPIVersion, strings.Join(q.Features, " "))
		}
	case "sr.stat":
		var st schema.SRStat
		if json.Unmarshal(raw, &st) == nil {
			health := string(st.Health.State)
			if st.Health.Message != "" {
				health += " (" + st.Health.Message + ")"
			}
			return fmt.Sprintf("%s, %s free of %s", health, size(st.FreeSpace), size(st.TotalSpace))
		}
	case "volume.create", "volume.stat", "volume.snapshot", "volume.clone":
		var v schema.Volume
		if json.Unmarshal(raw, &v) == nil {
			return fmt.Sprintf("%s %q %s, uri %s", v.Key, v.Name, size(v.VirtualSize), strings.Join(v.URI, " "))
		}
	case "sr.ls":
		var vs []schema.Volume
		if json.Unmarshal(raw, &vs) == nil {
			return fmt.Sprintf("%d volumes", len(vs))
		}
	case "datapath.attach":
		var b schema.Backend
		if json.Unmarshal(raw, &b) == nil {
			var parts []string
			for _, i := range b.Implementations {
				switch {
				case i.XenDisk != nil:
					parts = append(parts, "XenDisk "+i.XenDisk.BackendType+" "+i.XenDisk.Params)
				case i.BlockDevice != "":
					parts = append(parts, "BlockDevice "+i.BlockDevice)
				case i.File != "":
					parts = append(parts, "File "+i.File)
				case i.Nbd != "":
					parts = append(parts, "Nbd "+i.Nbd)
				}
			}
			return strings.Join(parts, ", ")
		}
	}
	s := string(raw)
	var m map[string]string
	if json.Unmarshal(raw, &m) == nil { // a configuration: k=v, sorted
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			keys[i] = k + "=" + m[k]
		}
		s = strings.Join(keys, " ")
	}
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

func size(b int64) string {
	const gib, mib = 1 << 30, 1 << 20
	switch {
	case b >= gib:
		return fmt.Sprintf("%.1f GiB", float64(b)/gib)
	default:
		return fmt.Sprintf("%d MiB", b/mib)
	}
}

// Package xapisim plays xapi and xapi-storage-script against an installed
// plugin tree: it runs the method files exactly as the daemon does (through
// sanvol/plugin's Invoke), picks the datapath plugin by URI scheme, and
// replays the call sequences of the xe commands (spec §8). It can narrate
// every step as the xe command an admin would have typed and what each
// method call answered, for people watching the demo.
//
// A Sim stands for one host's daemon. It is safe for concurrent use, as
// newer xapi (≥ 24.40) runs plugin calls in parallel.
package xapisim

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"sanvol/plugin"
	schema "sanvol/xapi-storage-schema"
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
	// Datapath.deactivate once, not twice.
	OldDaemon bool

	mu         sync.Mutex
	registered map[string]*Datapath // by scheme
	refused    map[string]error     // datapath dirs the daemon would ignore, and why
	secrets    map[string]string    // secret uuid -> value
	xapi       xapiDB               // host, SR and PBD records (pbd.go)
	narration  sync.Mutex
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
	return &Sim{Root: root, Out: out, secrets: map[string]string{}}
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
	var raw json.RawMessage
	err := plugin.Invoke(ctx, dir, method, args, &raw)
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		o.say("    %-22s %7s  FAILED: %s", method, took, describeErr(err))
		return fmt.Errorf("%s: %w", method, err)
	}
	o.say("    %-22s %7s  %s", method, took, summarize(method, raw))
	if result != nil {
		if err := json.Unmarshal(raw, result); err != nil {
			return fmt.Errorf("%s: result %s: %w", method, raw, err)
		}
	}
	return nil
}

func describeErr(err error) string {
	var ce *plugin.CallError
	if errors.As(err, &ce) {
		s := ce.Doc.Code
		if len(ce.Doc.Params) > 0 {
			s += " " + strings.Join(ce.Doc.Params, " | ")
		}
		return s
	}
	return err.Error()
}

// Register runs Plugin.Query in every datapath directory as the daemon
// does when it starts. A directory whose query fails or asks for another
// API version is silently not registered by the daemon; Refused says why.
func (s *Sim) Register(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.registerLocked(ctx)
}

func (s *Sim) registerLocked(ctx context.Context) {
	s.registered, s.refused = map[string]*Datapath{}, map[string]error{}
	entries, err := os.ReadDir(filepath.Join(s.Root, "datapath"))
	if err != nil {
		s.refused["datapath/"] = err
		return
	}
	for _, e := range entries {
		dir := filepath.Join(s.Root, "datapath", e.Name())
		var q schema.QueryResult
		if err := plugin.Invoke(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: "register"}, &q); err != nil {
			s.refused[e.Name()] = err
			continue
		}
		if q.RequiredAPIVersion != "5.0" && q.RequiredAPIVersion != "3.0" {
			s.refused[e.Name()] = fmt.Errorf("required_api_version %q is neither 5.0 nor 3.0", q.RequiredAPIVersion)
			continue
		}
		s.registered[e.Name()] = &Datapath{Scheme: e.Name(), Dir: dir, Query: q}
	}
}

// Refused lists the datapath directories the daemon would not register.
func (s *Sim) Refused(ctx context.Context) map[string]error {
	s.ensureRegistered(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]error{}
	for k, v := range s.refused {
		out[k] = v
	}
	return out
}

func (s *Sim) ensureRegistered(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registered == nil {
		s.registerLocked(ctx)
	}
}

// ChooseDatapath picks the datapath for a volume's URIs as the daemon
// does (spec §2.3): the first URI whose lower-cased scheme names a
// registered datapath directory. The URI is returned verbatim.
func (s *Sim) ChooseDatapath(ctx context.Context, uris []string) (*Datapath, string, error) {
	s.ensureRegistered(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil || p.Scheme == "" {
			continue
		}
		if d, ok := s.registered[strings.ToLower(p.Scheme)]; ok {
			return d, u, nil
		}
	}
	names := make([]string, 0, len(s.registered))
	for n := range s.registered {
		names = append(names, n)
	}
	sort.Strings(names)
	return nil, "", &plugin.CallError{Doc: schema.ErrorDoc{
		Code:   "MISSING_URI",
		Params: []string{fmt.Sprintf("no registered datapath plugin (%s) for any of %v", strings.Join(names, ", "), uris)},
	}}
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

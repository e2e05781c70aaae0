//go:build lab

package e2e

// The pool lab's member agent (run.sh test --pool). Guest B runs
// `SANVOL_LAB_POOL_AGENT=1 e2e.test`, which serves this agent instead of
// the scenarios; the scenarios run on guest A, the pool master, and reach
// B through it: the member's xapi-storage-script (method files run on B),
// B's shell (commands, files), O_DIRECT pattern I/O on B's devices, and a
// proxy from B's XenAPI socket to the master's XenAPI over the pool link,
// so B's sanvol talks to the one pool database, as a member's does.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
	"github.com/sanvol/sanvol/tests/labtarget"
)

// The pool lab's addresses (tests/lab/guest/init.sh): A holds both target
// portals and is the master, B the member.
const (
	poolAddrA1    = "10.99.0.1"
	poolAddrA2    = "10.99.0.2"
	poolAddrB     = "10.99.0.20"
	poolAgent     = poolAddrB + ":7480"
	poolXenAPI    = poolAddrA1 + ":7481"
	agentStopFile = "stop" // in the lab share: run.sh writes it when A is done
)

type invokeReq struct {
	Script string `json:"script"`
	Stdin  []byte `json:"stdin"`
}

type invokeResp struct {
	Outcome plugin.Outcome `json:"outcome"`
	Err     string         `json:"err"`
}

type execReq struct {
	Argv []string `json:"argv"`
}

type execResp struct {
	Out string `json:"out"`
	Err string `json:"err"`
}

type writeReq struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
}

// patternReq writes (or with Verify, checks) chunks [0, Chunks) of Dev
// with the IOLoad pattern of pass Seed, 1 MiB each, O_DIRECT.
type patternReq struct {
	Dev    string `json:"dev"`
	Seed   uint32 `json:"seed"`
	Chunks int    `json:"chunks"`
	Verify bool   `json:"verify"`
}

// pluginReq runs the host plugin at Path with Call (host.RunHostPlugin),
// as B's xapi forks it for host.call_plugin; KillAfterMs > 0 SIGKILLs
// it after that long, as a host dying under it would.
type pluginReq struct {
	Path        string `json:"path"`
	Call        string `json:"call"`
	KillAfterMs int    `json:"kill_after_ms"`
}

// loadReq drives an IOLoad on B's Dev: Op "start" (Span bytes; Size
// bytes of each MiB slot, 0 for the whole MiB of a pattern writer),
// "writes", "stop" (and verify).
type loadReq struct {
	Op   string `json:"op"`
	Dev  string `json:"dev"`
	Span int64  `json:"span"`
	Size int    `json:"size,omitempty"`
}

type loadResp struct {
	Writes     int           `json:"writes"`
	Errors     []string      `json:"errors"`
	MaxLatency time.Duration `json:"max_latency"`
	Verify     string        `json:"verify"`
	Err        string        `json:"err"`
}

// errNoPlugin is the agent's answer for a plugin B does not have.
const errNoPlugin = "no such host plugin"

// runPoolAgent serves the agent until /quit or the stop file; its exit
// code is the guest command's.
func runPoolAgent() int {
	l, err := net.Listen("tcp", poolAgent)
	if err != nil {
		fmt.Println("pool agent:", err)
		return 1
	}
	a := &agent{quit: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "pong") })
	mux.HandleFunc("/invoke", handle(func(r invokeReq) invokeResp {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out, err := plugin.Run(ctx, r.Script, r.Stdin)
		resp := invokeResp{Outcome: out}
		if err != nil {
			resp.Err = err.Error()
		}
		return resp
	}))
	mux.HandleFunc("/plugin", handle(func(r pluginReq) invokeResp {
		if _, err := os.Stat(r.Path); err != nil {
			return invokeResp{Err: errNoPlugin + ": " + err.Error()}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		if r.KillAfterMs > 0 {
			ctx, cancel = context.WithTimeout(context.Background(), time.Duration(r.KillAfterMs)*time.Millisecond)
		}
		defer cancel()
		res, err := host.RunHostPlugin(ctx, r.Path, r.Call)
		out := plugin.Outcome{Script: r.Path, ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr, Elapsed: res.Elapsed}
		if res.Signal != 0 {
			// A killed plugin is an outcome, as xapi sees it (WSIGNALED).
			out.Signal = strings.ToUpper(unix.SignalName(res.Signal))
			return invokeResp{Outcome: out}
		}
		return invokeResp{Outcome: out, Err: errString(err)}
	}))
	mux.HandleFunc("/load", handle(a.load))
	mux.HandleFunc("/exec", handle(func(r execReq) execResp {
		if len(r.Argv) == 0 {
			return execResp{Err: "empty argv"}
		}
		out, err := labtarget.Output(context.Background(), r.Argv[0], r.Argv[1:]...)
		return execResp{Out: out, Err: errString(err)}
	}))
	mux.HandleFunc("/write", handle(func(r writeReq) execResp {
		if err := os.MkdirAll(filepath.Dir(r.Path), 0o755); err != nil {
			return execResp{Err: err.Error()}
		}
		return execResp{Err: errString(os.WriteFile(r.Path, r.Data, 0o644))}
	}))
	mux.HandleFunc("/pattern", handle(func(r patternReq) execResp {
		return execResp{Err: errString(directIO(r.Dev, r.Chunks, r.Seed, r.Verify))}
	}))
	mux.HandleFunc("/xenapi", handle(func(r execReq) execResp {
		if len(r.Argv) != 1 {
			return execResp{Err: "want the master's XenAPI address"}
		}
		return execResp{Err: errString(a.proxyXenAPI(r.Argv[0]))}
	}))
	mux.HandleFunc("/forward", handle(func(r execReq) execResp {
		return execResp{Err: errString(a.forward(r.Argv))}
	}))
	mux.HandleFunc("/quit", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "bye")
		a.once.Do(func() { close(a.quit) })
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	fmt.Println("pool agent: serving on", poolAgent)
	stop := filepath.Join(LabDir(), agentStopFile)
	for {
		select {
		case <-a.quit:
			fmt.Println("pool agent: told to quit")
			time.Sleep(200 * time.Millisecond) // let the answer go out
			return 0
		case <-time.After(2 * time.Second):
			if _, err := os.Stat(stop); err == nil {
				fmt.Println("pool agent: the master's run is over")
				return 0
			}
		}
	}
}

type agent struct {
	quit  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	xapi  net.Listener
	fwd   []net.Listener
	loads map[string]*IOLoad // by device
}

// load runs the writers a VM on B stands for: IOLoad's O_DIRECT pattern.
func (a *agent) load(r loadReq) loadResp {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loads == nil {
		a.loads = map[string]*IOLoad{}
	}
	l := a.loads[r.Dev]
	switch {
	case r.Op == "start" && l == nil:
		size := r.Size
		if size == 0 {
			size = ioChunk
		}
		l, err := startIO(r.Dev, r.Span, size)
		if err != nil {
			return loadResp{Err: err.Error()}
		}
		a.loads[r.Dev] = l
		return loadResp{}
	case l == nil:
		return loadResp{Err: "no load on " + r.Dev}
	case r.Op == "writes":
		return loadResp{Writes: l.Writes()}
	case r.Op == "stop":
		delete(a.loads, r.Dev)
		st := l.Stop()
		resp := loadResp{Writes: st.Writes, MaxLatency: st.MaxLatency, Verify: errString(l.Verify())}
		for _, e := range st.Errors {
			resp.Errors = append(resp.Errors, e.Error())
		}
		return resp
	}
	return loadResp{Err: "bad load request " + r.Op}
}

// forward with [listen, to] relays TCP connections to listen (an address
// of B's) to to, the storage array's service on A: the floating portal
// scenario's stand-in for the array's service moving with its address.
// With no argument it stops every relay.
func (a *agent) forward(argv []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(argv) == 0 {
		for _, l := range a.fwd {
			_ = l.Close()
		}
		a.fwd = nil
		return nil
	}
	if len(argv) != 2 {
		return errors.New("want the address to listen on and the one to relay to")
	}
	l, err := net.Listen("tcp", argv[0])
	if err != nil {
		return err
	}
	a.fwd = append(a.fwd, l)
	go relay(l, argv[1])
	return nil
}

// relay pipes each connection accepted on l to a new one to addr.
func relay(l net.Listener, addr string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, c) }()
			_, _ = io.Copy(c, up)
		}()
	}
}

// proxyXenAPI makes B's XenAPI socket (host.XapiSocket) a pipe to the
// master's XenAPI on the pool link: B's plugin then reads and writes the
// pool's one database, as a member's xapi forwards to the master's.
func (a *agent) proxyXenAPI(addr string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.xapi != nil {
		_ = a.xapi.Close()
	}
	_ = os.MkdirAll(filepath.Dir(host.XapiSocket), 0o755)
	_ = os.Remove(host.XapiSocket)
	l, err := net.Listen("unix", host.XapiSocket)
	if err != nil {
		return err
	}
	a.xapi = l
	go relay(l, addr)
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// handle decodes a JSON request into Req and answers Resp as JSON.
func handle[Req, Resp any](f func(Req) Resp) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(f(req))
	}
}

// member is the scenarios' handle on guest B's agent.
type member struct {
	c http.Client
}

func (m *member) post(path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	r, err := m.c.Post("http://"+poolAgent+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("member agent %s: %w", path, err)
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(r.Body)
		return fmt.Errorf("member agent %s: %s: %s", path, r.Status, b)
	}
	return json.NewDecoder(r.Body).Decode(resp)
}

// Invoke runs a method file on B: a member Sim's Exec.
func (m *member) Invoke(ctx context.Context, script string, stdin []byte) (plugin.Outcome, error) {
	var resp invokeResp
	if err := m.post("/invoke", invokeReq{Script: script, Stdin: stdin}, &resp); err != nil {
		return plugin.Outcome{Script: script}, err
	}
	if resp.Err != "" {
		return resp.Outcome, errors.New(resp.Err)
	}
	return resp.Outcome, nil
}

// Plugin runs a host plugin on B: a member Sim's HostPlugin.
func (m *member) Plugin(ctx context.Context, path, call string) (plugin.Outcome, error) {
	return m.plugin(pluginReq{Path: path, Call: call})
}

// PluginKilled runs a host plugin on B and SIGKILLs it after d.
func (m *member) PluginKilled(path, call string, d time.Duration) (plugin.Outcome, error) {
	return m.plugin(pluginReq{Path: path, Call: call, KillAfterMs: int(d / time.Millisecond)})
}

func (m *member) plugin(r pluginReq) (plugin.Outcome, error) {
	var resp invokeResp
	if err := m.post("/plugin", r, &resp); err != nil {
		return plugin.Outcome{Script: r.Path}, err
	}
	switch {
	case strings.HasPrefix(resp.Err, errNoPlugin):
		return resp.Outcome, fmt.Errorf("%s: %w", resp.Err, fs.ErrNotExist)
	case resp.Err != "":
		return resp.Outcome, errors.New(resp.Err)
	}
	return resp.Outcome, nil
}

// Load drives a writer on B (agent.load).
func (m *member) Load(op, dev string, span int64) (loadResp, error) {
	return m.load(loadReq{Op: op, Dev: dev, Span: span})
}

// FlowLoad starts a flow writer on B (StartIO's: flowChunk bytes of each
// MiB), for a VM that must keep writing across a path cut.
func (m *member) FlowLoad(dev string, span int64) error {
	_, err := m.load(loadReq{Op: "start", Dev: dev, Span: span, Size: flowChunk})
	return err
}

func (m *member) load(r loadReq) (loadResp, error) {
	var resp loadResp
	if err := m.post("/load", r, &resp); err != nil {
		return resp, err
	}
	if resp.Err != "" {
		return resp, errors.New(resp.Err)
	}
	return resp, nil
}

// Exec runs a command on B and returns its standard output.
func (m *member) Exec(argv ...string) (string, error) {
	var resp execResp
	if err := m.post("/exec", execReq{Argv: argv}, &resp); err != nil {
		return "", err
	}
	if resp.Err != "" {
		return resp.Out, errors.New(resp.Err)
	}
	return resp.Out, nil
}

func (m *member) call(path string, req any) error {
	var resp execResp
	if err := m.post(path, req, &resp); err != nil {
		return err
	}
	if resp.Err != "" {
		return fmt.Errorf("on the member: %s", resp.Err)
	}
	return nil
}

// Write writes a file on B.
func (m *member) Write(path string, data []byte) error {
	return m.call("/write", writeReq{Path: path, Data: data})
}

// Pattern writes (or verifies) the pattern of pass seed on B's dev.
func (m *member) Pattern(dev string, seed uint32, chunks int, verify bool) error {
	return m.call("/pattern", patternReq{Dev: dev, Seed: seed, Chunks: chunks, Verify: verify})
}

// ProxyXenAPI points B's XenAPI socket at the master's XenAPI.
func (m *member) ProxyXenAPI(addr string) error {
	return m.call("/xenapi", execReq{Argv: []string{addr}})
}

// Forward makes B relay connections to listen on to to (agent.forward);
// Unforward stops every relay.
func (m *member) Forward(listen, to string) error {
	return m.call("/forward", execReq{Argv: []string{listen, to}})
}

func (m *member) Unforward() error { return m.call("/forward", execReq{}) }

// waitUp waits for B's agent (B boots alongside A).
func (m *member) waitUp(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		r, err := m.c.Get("http://" + poolAgent + "/ping")
		if err == nil {
			r.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the member's agent at %s did not answer in %s: %w", poolAgent, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// quit ends B's agent, and so B's guest.
func (m *member) quit() {
	r, err := m.c.Post("http://"+poolAgent+"/quit", "text/plain", nil)
	if err == nil {
		r.Body.Close()
	}
}

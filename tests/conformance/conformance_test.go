// Package conformance checks the process contract of the built binary,
// installed into a temporary root, exactly as xapi-storage-script drives
// it: every method file of every plugin directory is forked with --json
// and its arguments on stdin, and every request and answer is validated
// against the schema.
package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/plugin"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

var (
	binary   string // the built sanvol
	root     string // the install root
	hostRoot string // the host's "/" as the test build sees it
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "sanvol-conformance-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binary = filepath.Join(tmp, "sanvol")
	// The sanvoltest tag lets the binary take its host root from
	// SANVOL_TEST_ROOT: every method call then reads and writes an empty
	// tree under tmp, never this machine's /run, /etc or /sys, even as
	// root. The shipped binary has no such switch (plugin/hostroot.go).
	build := exec.Command("go", "build", "-tags", "sanvoltest", "-trimpath", "-ldflags", "-X main.version=conformance", "-o", binary, "github.com/sanvol/sanvol/cmd/sanvol")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sanvol: %v\n%s", err, out)
		return 1
	}
	hostRoot = filepath.Join(tmp, "host")
	if err := os.MkdirAll(hostRoot, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv(plugin.TestRootEnv, hostRoot) //nolint:errcheck // cannot fail for a valid name
	root = filepath.Join(tmp, "root")
	if out, err := exec.Command(binary, "install", "--root", root).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "sanvol install: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

func pluginDir(rel string) string { return filepath.Join(root, plugin.ScriptRoot, rel) }

// requests holds one well-formed request per method, as xapi sends it.
// The SR handles name SRs that are not attached here, so the methods that
// need storage answer with an error document; that is what is checked on
// a machine without storage. The lab runs them for real.
var requests = map[string]string{
	"Plugin.Query":           `{"dbg":"OpaqueRef:q"}`,
	"Plugin.diagnostics":     `{"dbg":"OpaqueRef:d"}`,
	"SR.probe":               `{"configuration":{"target":"127.0.0.1","port":"9"},"dbg":"OpaqueRef:p"}`,
	"SR.create":              `{"description":"","name":"sr0","configuration":{"target":"127.0.0.1","port":"9"},"uuid":"6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:c"}`,
	"SR.attach":              `{"configuration":{"target":"127.0.0.1","port":"9"},"dbg":"OpaqueRef:a"}`,
	"SR.detach":              `{"sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"SR.destroy":             `{"sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"SR.stat":                `{"sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"SR.ls":                  `{"sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"SR.set_name":            `{"new_name":"n","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"SR.set_description":     `{"new_description":"d","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.create":          `{"sharable":false,"size":10737418240,"description":"","name":"disk0","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.destroy":         `{"key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.resize":          `{"new_size":21474836480,"key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.snapshot":        `{"key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.clone":           `{"key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.stat":            `{"key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.set":             `{"v":"user","k":"vdi-type","key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.unset":           `{"k":"vdi-type","key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.set_name":        `{"new_name":"n","key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Volume.set_description": `{"new_description":"d","key":"k","sr":"nvmetcp://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01","dbg":"OpaqueRef:x"}`,
	"Datapath.open":          `{"persistent":true,"uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
	"Datapath.attach":        `{"domain":"7","uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
	"Datapath.activate":      `{"domain":"7","uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
	"Datapath.deactivate":    `{"domain":"7","uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
	"Datapath.detach":        `{"domain":"u0_vbd_0_xvdb","uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
	"Datapath.close":         `{"uri":"sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k","dbg":"OpaqueRef:x"}`,
}

// wireName is the IDL's spelling (Plugin.query), which the schema uses.
func wireName(file string) string {
	if strings.EqualFold(file, "Plugin.Query") {
		return "Plugin.query"
	}
	return file
}

func call(t *testing.T, script string, stdin []byte) plugin.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := plugin.Run(ctx, script, stdin)
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return out
}

// checkOutcome enforces the process contract: exactly one JSON value on
// stdout; exit 0 means a result of the declared type, non-zero a complete
// error document.
func checkOutcome(t *testing.T, method string, out plugin.Outcome) {
	t.Helper()
	s := schema.Ours()
	if out.ExitCode == 0 {
		if err := s.Validate("res:"+wireName(method), out.Stdout); err != nil {
			t.Errorf("%s: result does not match the schema: %v\nstdout: %s", method, err, out.Stdout)
		}
	} else {
		if _, ok := plugin.ParseErrorDoc(out.Stdout); !ok {
			t.Errorf("%s: exit %d without a complete error document: %q\nstderr: %s", method, out.ExitCode, out.Stdout, out.Stderr)
		}
		if err := s.Validate("plugin_error", out.Stdout); err != nil {
			t.Errorf("%s: error document does not match the schema: %v", method, err)
		}
	}
	if _, err := plugin.Decode(out); err != nil {
		if ce, ok := err.(*plugin.CallError); ok && ce.Doc.Code == "SCRIPT_FAILED" {
			t.Errorf("%s: the daemon would report SCRIPT_FAILED: %v", method, ce.Doc.Params)
		}
	}
}

func TestEveryMethodOfEveryPlugin(t *testing.T) {
	s := schema.Ours()
	for rel, methods := range plugin.PluginDirs() {
		for _, m := range methods {
			t.Run(rel+"/"+m, func(t *testing.T) {
				req, ok := requests[m]
				if !ok {
					t.Fatalf("no conformance request for %s", m)
				}
				if err := s.Validate("req:"+wireName(m), []byte(req)); err != nil {
					t.Fatalf("the test's own request is invalid: %v", err)
				}
				out := call(t, filepath.Join(pluginDir(rel), m), []byte(req))
				checkOutcome(t, m, out)
			})
		}
	}
}

func TestQueryIsTruthful(t *testing.T) {
	for _, typ := range plugin.SRTypes() {
		var q schema.QueryResult
		dir := pluginDir(filepath.Join("volume", plugin.VolumePrefix+typ))
		if err := plugin.Invoke(context.Background(), dir, "Plugin.query", map[string]string{"dbg": "register"}, &q); err != nil {
			t.Fatal(err)
		}
		if q.Plugin != typ || q.RequiredAPIVersion != "5.0" || q.Version != "conformance" {
			t.Errorf("%s: %+v", typ, q)
		}
		for _, f := range q.Features {
			if f == "SR_STATS" || f == "NONPERSISTENT" {
				t.Errorf("%s declares %s", typ, f)
			}
		}
	}
	var q schema.QueryResult
	if err := plugin.Invoke(context.Background(), pluginDir("datapath/"+plugin.DatapathScheme), "Plugin.query", map[string]string{"dbg": "register"}, &q); err != nil {
		t.Fatal(err)
	}
	if q.Plugin != plugin.DatapathScheme || q.RequiredAPIVersion != "5.0" || len(q.Features) != 0 {
		t.Errorf("datapath query: %+v", q)
	}
}

func TestCaseInsensitiveLookup(t *testing.T) {
	dir := pluginDir(filepath.Join("volume", plugin.VolumePrefix+plugin.TypeNVMeTCP))
	script, err := plugin.FindMethod(dir, "plugin.query")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(script) != "Plugin.Query" {
		t.Fatalf("found %s", script)
	}
	// A file whose own name differs in case still dispatches.
	odd := filepath.Join(t.TempDir(), plugin.VolumePrefix+plugin.TypeNVMeTCP)
	if err := os.MkdirAll(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(binary, filepath.Join(odd, "plugin.query")); err != nil {
		t.Fatal(err)
	}
	out := call(t, filepath.Join(odd, "plugin.query"), []byte(`{"dbg":"d"}`))
	if out.ExitCode != 0 {
		t.Fatalf("exit %d: %s", out.ExitCode, out.Stdout)
	}
	checkOutcome(t, "Plugin.Query", out)
}

func TestBadInput(t *testing.T) {
	stat := filepath.Join(pluginDir(filepath.Join("volume", plugin.VolumePrefix+plugin.TypeISCSI)), "Volume.stat")
	huge := append([]byte(`{"dbg":"`), bytes.Repeat([]byte("x"), 10<<20)...)
	huge = append(huge, []byte(`","sr":"s","key":"k"}`)...)
	cases := map[string][]byte{
		"not json":       []byte("this is not json"),
		"empty":          {},
		"10 MiB":         huge,
		"invalid utf-8":  []byte("{\"dbg\":\"\xc3\x28\",\"sr\":\"s\",\"key\":\"k\"}"),
		"missing arg":    []byte(`{"dbg":"d","sr":"s"}`),
		"wrong type":     []byte(`{"dbg":"d","sr":"s","key":42}`),
		"json but array": []byte(`["dbg"]`),
	}
	for name, stdin := range cases {
		t.Run(name, func(t *testing.T) {
			out := call(t, stat, stdin)
			if out.ExitCode == 0 {
				t.Fatalf("exit 0 for bad input; stdout %s", out.Stdout)
			}
			checkOutcome(t, "Volume.stat", out)
			doc, _ := plugin.ParseErrorDoc(out.Stdout)
			if len(doc.Params) != 2 || doc.Params[0] != "InvalidArgument" {
				t.Fatalf("params = %q", doc.Params)
			}
		})
	}
	t.Run("unknown extra arguments are ignored", func(t *testing.T) {
		q := filepath.Join(pluginDir("datapath/"+plugin.DatapathScheme), "Plugin.Query")
		out := call(t, q, []byte(`{"dbg":"d","future_argument":{"x":[1,2]}}`))
		if out.ExitCode != 0 {
			t.Fatalf("exit %d: %s", out.ExitCode, out.Stdout)
		}
		checkOutcome(t, "Plugin.Query", out)
	})
	t.Run("unknown method file", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), plugin.VolumePrefix+plugin.TypeNVMeTCP)
		os.MkdirAll(dir, 0o755)
		p := filepath.Join(dir, "Volume.copy")
		if err := os.Symlink(binary, p); err != nil {
			t.Fatal(err)
		}
		out := call(t, p, []byte(`{"dbg":"d","sr":"s","key":"k","dest_sr":"x"}`))
		if out.ExitCode == 0 {
			t.Fatal("exit 0")
		}
		checkOutcome(t, "Volume.copy", out)
	})
	t.Run("unknown plugin directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "org.xen.xapi.storage.zfs-vol")
		os.MkdirAll(dir, 0o755)
		p := filepath.Join(dir, "Plugin.Query")
		if err := os.Symlink(binary, p); err != nil {
			t.Fatal(err)
		}
		out := call(t, p, []byte(`{"dbg":"d"}`))
		if out.ExitCode == 0 {
			t.Fatal("exit 0")
		}
		checkOutcome(t, "Plugin.Query", out)
	})
}

type entry struct {
	Mode  fs.FileMode
	Ino   uint64
	MTime time.Time
	Link  string
}

func tree(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Lstat(p)
		e := entry{Mode: st.Mode(), Ino: st.Sys().(*syscall.Stat_t).Ino, MTime: st.ModTime()}
		if st.Mode()&fs.ModeSymlink != 0 {
			e.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = e
		return nil
	})
	return out
}

func TestSecondInstallChangesNothing(t *testing.T) {
	before := tree(t, root)
	out, err := exec.Command(binary, "install", "--root", root).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(string(out), "installed ") {
		t.Errorf("second install reports changes:\n%s", out)
	}
	if diff := cmp.Diff(before, tree(t, root)); diff != "" {
		t.Fatalf("second install changed the tree:\n%s", diff)
	}
}

func TestInstalledTreeIsComplete(t *testing.T) {
	for rel, methods := range plugin.PluginDirs() {
		entries, err := os.ReadDir(pluginDir(rel))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if diff := cmp.Diff(methods, got); diff != "" {
			t.Errorf("%s:\n%s", rel, diff)
		}
	}
	if len(requests) != len(plugin.VolumeMethods())+len(plugin.DatapathMethods())-2 {
		t.Errorf("the request table and the method tables disagree")
	}
}

func TestObserverShims(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed; .ci/run installs it")
	}
	shimRoot := t.TempDir()
	if out, err := exec.Command(binary, "install", "--root", shimRoot, "--observer-shims", "--shim-target", binary).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	script := filepath.Join(shimRoot, plugin.ScriptRoot, "volume", plugin.VolumePrefix+plugin.TypeNVMeTCP, "Plugin.Query")
	// Run as the observer does: the file executed as Python source.
	observer := exec.Command(py, "-c", "import runpy, sys; sys.argv = [sys.argv[1], '--json']; runpy.run_path(sys.argv[0], run_name='__main__')", script)
	observer.Stdin = strings.NewReader(`{"dbg":"d"}`)
	stdout, err := observer.Output()
	if err != nil {
		t.Fatalf("observer-style run: %v", err)
	}
	checkOutcome(t, "Plugin.Query", plugin.Outcome{Script: script, Stdout: stdout})
	var q schema.QueryResult
	if err := json.Unmarshal(stdout, &q); err != nil || q.Plugin != plugin.TypeNVMeTCP {
		t.Fatalf("%s: %v", stdout, err)
	}
	// And as the daemon runs it without tracing: the file itself.
	out := call(t, script, []byte(`{"dbg":"d"}`))
	if out.ExitCode != 0 {
		t.Fatalf("direct run: exit %d %s", out.ExitCode, out.Stdout)
	}
}

// The calls ran against the test's host root: what a Datapath call keeps
// on a host (its lock under /run/sanvol/locks) is in the temporary tree.
func TestCallsUseTheTestHostRoot(t *testing.T) {
	call(t, pluginDir(filepath.Join("datapath", plugin.DatapathScheme, "Datapath.deactivate")), []byte(requests["Datapath.deactivate"]))
	lock := filepath.Join(hostRoot, "run/sanvol/locks/dp-6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01-k.lock")
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("Datapath.deactivate took its lock elsewhere than the test host root: %v", err)
	}
}

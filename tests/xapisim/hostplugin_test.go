package xapisim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
)

// Host plugins as shell scripts, each answering one way xapi_plugins.ml
// call_plugin must handle.
var hostPlugins = map[string]string{
	// Echoes the function name and the value of arg "who" (as
	// escaped in the call) back.
	"echo": `#!/bin/sh
fn=$(printf '%s' "$1" | sed -n 's|.*<methodName>\([^<]*\)</methodName>.*|\1|p')
who=$(printf '%s' "$1" | sed -n 's|.*<name>who</name><value>\([^<]*\)</value>.*|\1|p')
printf '<methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value>%s %s</value></member></struct></value></param></params></methodResponse>\n' "$fn" "$who"
`,
	"refuse": `#!/bin/sh
echo '<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data><value>SR_BACKEND_FAILURE</value><value>Busy</value><value>x &amp; y</value></data></array></value></member></struct></value></param></params></methodResponse>'
`,
	"crash":   "#!/bin/sh\necho partial\nexit 3\n",
	"killed":  "#!/bin/sh\nkill -9 $$\n",
	"garbage": "#!/bin/sh\necho hello\n",
	"fault": `#!/bin/sh
echo '<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>7</int></value></member><member><name>faultString</name><value>bad</value></member></struct></value></fault></methodResponse>'
`,
}

// hostPluginSim is a one-host sim serving XenAPI on a socket under a
// temporary root, with the plugins above, and a client of it.
func hostPluginSim(t *testing.T) (*Sim, *host.XenAPI) {
	t.Helper()
	root := t.TempDir()
	s := New(fakeRoot(t), nil)
	s.PluginDir = filepath.Join(root, "plugins")
	if err := os.MkdirAll(s.PluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range hostPlugins {
		if err := os.WriteFile(filepath.Join(s.PluginDir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stop, err := s.ServeXenAPI(filepath.Join(root, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return s, host.NewXenAPI(host.NewRoot(root))
}

func TestCallPlugin(t *testing.T) {
	ctx := context.Background()
	s, x := hostPluginSim(t)
	me := s.HostUUID()
	out, err := x.CallPlugin(ctx, me, "echo", "hello", map[string]string{"who": "a<b", "empty": ""})
	// The script copies "<" escaped, as the call has it, into its
	// answer, which is parsed back.
	if err != nil || out != "hello a<b" {
		t.Fatalf("echo: %q %v", out, err)
	}
	xerr := func(name string) *host.XenAPIError {
		t.Helper()
		_, err := x.CallPlugin(ctx, me, name, "f", nil)
		var xe *host.XenAPIError
		if !errors.As(err, &xe) {
			t.Fatalf("%s: %v, want a XenAPI error", name, err)
		}
		return xe
	}
	for name, want := range map[string][]string{
		"refuse":  {"SR_BACKEND_FAILURE", "Busy", "x & y"},
		"crash":   {"XENAPI_PLUGIN_FAILURE", "non-zero exit", "partial\n", ""},
		"garbage": {"XENAPI_PLUGIN_FAILURE", "failed to parse plugin output"},
		"killed":  {"XENAPI_PLUGIN_FAILURE", "signal: SIGKILL"},
		"fault":   {"XENAPI_PLUGIN_FAILURE", "fault", "7", "bad"},
		"nothere": {"XENAPI_MISSING_PLUGIN", "nothere"},
	} {
		xe := xerr(name)
		got := append([]string{xe.Code}, xe.Params...)
		for i, w := range want {
			if i >= len(got) || got[i] != w {
				t.Errorf("%s: %v, want %v", name, got, want)
				break
			}
		}
	}
}

func TestActiveHostAndOfflineHosts(t *testing.T) {
	ctx := context.Background()
	root := fakeRoot(t)
	a, b := New(root, nil), New(root, nil)
	pool := NewPoolSim(a, b)
	sock := filepath.Join(t.TempDir(), "r")
	stop, err := a.ServeXenAPI(filepath.Join(sock, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	x := host.NewXenAPI(host.NewRoot(sock))
	ps, err := pool.SRCreate(ctx, "fake", "pool SR", "", map[string]string{"target": "x"})
	if err != nil {
		t.Fatal(err)
	}
	sr := ps.Master().UUID
	active := func(want, when string) {
		t.Helper()
		if h, err := x.ActiveHost(ctx, sr, "k1"); h != want || err != nil {
			t.Fatalf("%s: active on %q (%v), want %q", when, h, err, want)
		}
	}
	active("", "before any VM")
	att, err := ps.On(1).VMStart(ctx, "k1", "5")
	if err != nil {
		t.Fatal(err)
	}
	active(b.HostUUID(), "VM on B")
	if h, _ := x.ActiveHost(ctx, sr, "k2"); h != "" {
		t.Fatalf("another VDI active on %q", h)
	}
	ps.DuringMigration = func() {
		if _, err := x.ActiveHost(ctx, sr, "k1"); host.KindOf(err) != host.KindBusy {
			t.Errorf("during the migration: %v, want Busy", err)
		}
	}
	moved, _, err := ps.Migrate(ctx, att, 1, 0, "9")
	ps.DuringMigration = nil
	if err != nil {
		t.Fatal(err)
	}
	active(a.HostUUID(), "migrated to A")
	if err := ps.Master().VMShutdown(ctx, moved); err != nil {
		t.Fatal(err)
	}
	active("", "shut down")

	// B runs a host plugin through its own runner (a pool lab's agent).
	var ran []string
	b.PluginDir = t.TempDir()
	if err := os.WriteFile(filepath.Join(b.PluginDir, "echo"), []byte(hostPlugins["echo"]), 0o755); err != nil {
		t.Fatal(err)
	}
	b.HostPlugin = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
		ran = append(ran, path)
		r, err := host.RunHostPlugin(ctx, path, call)
		return plugin.Outcome{ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr}, err
	}
	if out, err := x.CallPlugin(ctx, b.HostUUID(), "echo", "hi", map[string]string{"who": "b"}); out != "hi b" || err != nil || len(ran) != 1 {
		t.Fatalf("on B: %q %v %v", out, err, ran)
	}
	b.HostPlugin = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
		return plugin.Outcome{}, errors.New("connection refused")
	}
	if _, err := x.CallPlugin(ctx, b.HostUUID(), "echo", "hi", nil); host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("B not answering: %v", err)
	}
	if _, err := ps.On(1).VMStart(ctx, "k1", "6"); err != nil {
		t.Fatal(err)
	}
	pool.Down(1, true)
	if _, err := x.CallPlugin(ctx, b.HostUUID(), "echo", "hi", nil); host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("B offline: %v", err)
	}
	active(b.HostUUID(), "B offline, not yet declared dead")
	pool.DeclareDead(1)
	active("", "B declared dead")
}

// A member forwards reset-on-boot's Volume calls to the host
// pool.get_master names (plugin/forward.go): the master's uuid, then,
// after a designate_new_master, the new one's; host.call_plugin to it
// runs the plugin there.
func TestPoolMasterRoutesCallPlugin(t *testing.T) {
	ctx := context.Background()
	root := fakeRoot(t)
	a, b := New(root, nil), New(root, nil)
	pool := NewPoolSim(a, b)
	sock := filepath.Join(t.TempDir(), "r")
	stop, err := a.ServeXenAPI(filepath.Join(sock, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	x := host.NewXenAPI(host.NewRoot(sock))
	ran := map[string]int{}
	for name, s := range map[string]*Sim{"A": a, "B": b} {
		s.HostPlugin = func(ctx context.Context, path, call string) (plugin.Outcome, error) {
			ran[name]++
			out := plugin.HostPluginSuccess(name)
			return plugin.Outcome{Stdout: []byte(out)}, nil
		}
	}
	for i, want := range []string{"A", "B"} {
		pool.SetMaster(i)
		m, err := x.PoolMaster(ctx)
		if err != nil || m != pool.Hosts[i].HostUUID() {
			t.Fatalf("master %s: pool.get_master named %q (%v)", want, m, err)
		}
		if out, err := x.CallPlugin(ctx, m, host.HostPluginName, plugin.HostFnVolume, nil); out != want || err != nil || ran[want] != 1 {
			t.Fatalf("call_plugin on master %s: %q %v %v", want, out, err, ran)
		}
	}
	// A host alone is its own master.
	one, dir := New(fakeRoot(t), nil), t.TempDir()
	stop1, err := one.ServeXenAPI(filepath.Join(dir, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer stop1()
	if m, err := host.NewXenAPI(host.NewRoot(dir)).PoolMaster(ctx); m != one.HostUUID() || err != nil {
		t.Fatalf("one host: master %q (%v), want %s", m, err, one.HostUUID())
	}
}

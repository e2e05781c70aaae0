package xapisim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"sanvol/host"
	"sanvol/plugin"
)

// fakePlugin answers like a plugin and records every call (its directory,
// method, argv[1] and stdin) in <root>/calls.log. Files in <root> change
// its behaviour: fail-<Method> makes that method return an error document,
// clone-on-boot puts that key in volumes, nonpersistent declares
// NONPERSISTENT.
const fakePlugin = `#!/bin/sh
m=$(basename "$0")
dir=$(basename "$(dirname "$0")")
root=$(cd "$(dirname "$0")/../.." && pwd)
args=$(cat)
printf '%s %s %s %s\n' "$dir" "$m" "$1" "$args" >>"$root/calls.log"
if [ -f "$root/fail-$m" ]; then
	echo '{"code":"SR_BACKEND_FAILURE","params":["boom"],"backtrace":{"error":"","files":[],"lines":[]}}'
	exit 1
fi
feat='[]'; [ -f "$root/nonpersistent" ] && feat='["NONPERSISTENT"]'
keys='{}'; [ -f "$root/clone-on-boot" ] && keys='{"clone-on-boot":"k2"}'
case $m in
Plugin.Query) echo '{"plugin":"fake","name":"f","description":"","vendor":"","copyright":"","version":"1.0","required_api_version":"5.0","features":'"$feat"',"configuration":{},"required_cluster_stack":[]}' ;;
SR.create) echo '{"target":"x","sr_uuid":"u"}' ;;
SR.attach) echo '"fake://sr"' ;;
SR.stat) echo '{"sr":"fake://sr","name":"n","description":"","free_space":1073741824,"total_space":2147483648,"datasources":[],"clustered":false,"health":["Healthy","2 of 2 paths live"]}' ;;
SR.ls) echo '[]' ;;
SR.probe) if [ -f "$root/bad-probe" ]; then echo '[{"configuration":{"sr_uuid":"u"},"complete":false,"extra_info":{}}]'; else echo '[{"configuration":{"target":"x","sr_uuid":"u"},"complete":true,"extra_info":{"size":"1"}}]'; fi ;;
Volume.create|Volume.stat) echo '{"key":"k1","name":"d","description":"","read_write":true,"sharable":false,"virtual_size":1048576,"physical_utilisation":1048576,"uri":["old://sr/k1","FAKE+BLK://sr/k1"],"keys":'"$keys"'}' ;;
Datapath.attach) echo '{"implementations":[["XenDisk",{"params":"/dev/fake","extra":{},"backend_type":"vbd"}],["BlockDevice",{"path":"/dev/fake"}]]}' ;;
*) echo null ;;
esac
`

// oldPlugin is a datapath plugin the daemon refuses to register.
const oldPlugin = `#!/bin/sh
cat >/dev/null
echo '{"plugin":"old","name":"","description":"","vendor":"","copyright":"","version":"1","required_api_version":"2.0","features":[],"configuration":{},"required_cluster_stack":[]}'
`

var methods = []string{
	"Plugin.Query", "SR.probe", "SR.create", "SR.attach", "SR.stat", "SR.detach", "SR.destroy", "SR.ls",
	"Volume.create", "Volume.set", "Volume.stat", "Volume.resize", "Volume.destroy",
	"Datapath.open", "Datapath.attach", "Datapath.activate", "Datapath.deactivate", "Datapath.detach", "Datapath.close",
}

func fakeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	bin := filepath.Join(root, "fake.sh")
	if err := os.WriteFile(bin, []byte(fakePlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(root, "old.sh")
	if err := os.WriteFile(old, []byte(oldPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"volume/org.xen.xapi.storage.fake", "datapath/fake+blk"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, m := range methods {
			if err := os.Symlink(bin, filepath.Join(root, d, m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "datapath/old"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(old, filepath.Join(root, "datapath/old/Plugin.Query")); err != nil {
		t.Fatal(err)
	}
	return root
}

type call struct {
	Dir, Method, Argv1 string
	Args               map[string]any
}

// calls reads the log and empties it.
func calls(t *testing.T, root string) []call {
	t.Helper()
	p := filepath.Join(root, "calls.log")
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	_ = os.Remove(p)
	var out []call
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		f := strings.SplitN(line, " ", 4)
		c := call{Dir: f[0], Method: f[1], Argv1: f[2]}
		if err := json.Unmarshal([]byte(f[3]), &c.Args); err != nil {
			t.Fatalf("stdin of %s was not one JSON object: %q", c.Method, f[3])
		}
		out = append(out, c)
	}
	return out
}

func sequence(cs []call) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Dir + " " + c.Method
	}
	return out
}

func flag(t *testing.T, root, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

const vol, dp = "org.xen.xapi.storage.fake", "fake+blk"

func TestSRCreateHidesPasswordsAndPlugs(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr, err := sim.SRCreate(ctx, "fake", "lab SR", "", map[string]string{"target": "x", "chappassword": "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	cs := calls(t, root)
	want := []string{vol + " Plugin.Query", vol + " SR.create", vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat", vol + " SR.stat"}
	if diff := cmp.Diff(want, sequence(cs)); diff != "" {
		t.Fatalf("sr-create sequence (-want +got):\n%s", diff)
	}
	for _, c := range cs {
		if c.Argv1 != "--json" {
			t.Errorf("%s got argv[1] %q, the daemon passes --json", c.Method, c.Argv1)
		}
	}
	create := cs[1].Args
	cfg := create["configuration"].(map[string]any)
	if _, leaked := cfg["chappassword"]; leaked {
		t.Fatalf("SR.create saw the password itself: %v", cfg)
	}
	secret, ok := cfg["chappassword_secret"].(string)
	if !ok {
		t.Fatalf("SR.create configuration has no chappassword_secret: %v", cfg)
	}
	if create["uuid"] != sr.UUID || create["name"] != "lab SR" {
		t.Errorf("SR.create args %v", create)
	}
	// SR.attach receives what SR.create returned, and SR.stat the handle.
	if diff := cmp.Diff(map[string]any{"target": "x", "sr_uuid": "u"}, cs[3].Args["configuration"]); diff != "" {
		t.Errorf("SR.attach configuration (-want +got):\n%s", diff)
	}
	if cs[4].Args["sr"] != "fake://sr" || sr.Handle != "fake://sr" {
		t.Errorf("SR.stat got sr %v, handle %q", cs[4].Args["sr"], sr.Handle)
	}

	// The plugin reads the secret back over the XenAPI socket.
	sock := filepath.Join(root, "xapi-root", host.XapiSocket)
	stop, err := sim.ServeXenAPI(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	x := host.NewXenAPI(host.NewRoot(filepath.Join(root, "xapi-root")))
	if v, err := x.Secret(ctx, secret); err != nil || v != "s3cret" {
		t.Fatalf("secret via XenAPI: %q, %v", v, err)
	}
	if _, err := x.Secret(ctx, "no-such-uuid"); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("unknown secret: %v, want a not-found error", err)
	}
}

func TestMemberHostSkipsTheMastersHealthCheck(t *testing.T) {
	root := fakeRoot(t)
	master := New(root, nil)
	ctx := context.Background()
	sr, err := master.SRCreate(ctx, "fake", "n", "", map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	member := New(root, nil)
	member.Member = true
	if err := member.Introduce(sr).Plug(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("pbd-plug on a member (-want +got):\n%s", diff)
	}
}

// plugged registers the datapath plugins (the daemon does it when it
// starts) and creates a plugged SR, then forgets those calls.
func plugged(t *testing.T, root string, sim *Sim) *SR {
	t.Helper()
	sim.Register(context.Background())
	sr, err := sim.SRCreate(context.Background(), "fake", "n", "", map[string]string{"target": "x"})
	if err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	return sr
}

func TestVolumeAndVMSequences(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)

	v, err := sr.VDICreate(ctx, "disk0", "", 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	cs := calls(t, root)
	if diff := cmp.Diff([]string{vol + " Volume.create", vol + " Volume.set"}, sequence(cs)); diff != "" {
		t.Fatalf("vdi-create (-want +got):\n%s", diff)
	}
	if cs[1].Args["key"] != "k1" || cs[1].Args["k"] != "vdi-type" || cs[1].Args["v"] != "user" || v.Keys["vdi-type"] != "user" {
		t.Fatalf("Volume.set args %v, volume keys %v", cs[1].Args, v.Keys)
	}

	a, err := sr.VMStart(ctx, v.Key, "7")
	if err != nil {
		t.Fatal(err)
	}
	cs = calls(t, root)
	want := []string{vol + " Volume.stat", vol + " Volume.stat", dp + " Datapath.attach", vol + " Volume.stat", dp + " Datapath.activate"}
	if diff := cmp.Diff(want, sequence(cs)); diff != "" {
		t.Fatalf("vm-start (-want +got):\n%s", diff)
	}
	// The unregistered "old" scheme is skipped; the URI goes out verbatim.
	if cs[2].Args["uri"] != "FAKE+BLK://sr/k1" || cs[2].Args["domain"] != "7" {
		t.Fatalf("Datapath.attach args %v", cs[2].Args)
	}
	if a.Device != "/dev/fake" {
		t.Fatalf("device %q", a.Device)
	}

	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	want = []string{vol + " Volume.stat", dp + " Datapath.deactivate", vol + " Volume.stat", dp + " Datapath.deactivate", dp + " Datapath.detach", vol + " Volume.stat"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("vm-shutdown (-want +got):\n%s", diff)
	}
	sim.OldDaemon = true
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	want = []string{vol + " Volume.stat", dp + " Datapath.deactivate", vol + " Volume.stat", dp + " Datapath.detach", vol + " Volume.stat"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("vm-shutdown, old daemon (-want +got):\n%s", diff)
	}

	if _, err := sr.VDIResize(ctx, v.Key, 2<<20); err != nil {
		t.Fatal(err)
	}
	cs = calls(t, root)
	if diff := cmp.Diff([]string{vol + " Volume.resize", vol + " Volume.stat"}, sequence(cs)); diff != "" {
		t.Fatalf("vdi-resize (-want +got):\n%s", diff)
	}
	if cs[0].Args["new_size"] != float64(2<<20) {
		t.Fatalf("Volume.resize args %v", cs[0].Args)
	}

	if err := sr.VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{vol + " Volume.stat", vol + " Volume.destroy"}, sequence(calls(t, root))); diff != "" {
		t.Fatalf("vdi-destroy (-want +got):\n%s", diff)
	}
	flag(t, root, "clone-on-boot")
	if err := sr.VDIDestroy(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{vol + " Volume.stat", vol + " Volume.destroy", vol + " Volume.destroy"}, sequence(calls(t, root))); diff != "" {
		t.Fatalf("vdi-destroy with clone-on-boot (-want +got):\n%s", diff)
	}
}

func TestNonPersistentDatapathGetsOpenAndClose(t *testing.T) {
	root := fakeRoot(t)
	flag(t, root, "nonpersistent")
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	a, err := sr.VMStart(ctx, "k1", "3")
	if err != nil {
		t.Fatal(err)
	}
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	seq := strings.Join(sequence(calls(t, root)), ",")
	if !strings.HasPrefix(seq, vol+" Volume.stat,"+dp+" Datapath.open,") || !strings.HasSuffix(seq, vol+" Volume.stat,"+dp+" Datapath.close") {
		t.Fatalf("a NONPERSISTENT datapath must be opened first and closed last: %s", seq)
	}
}

func TestUnplugAndDestroy(t *testing.T) {
	root := fakeRoot(t)
	var out bytes.Buffer
	sim := New(root, &out)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	if err := sr.Destroy(ctx); err == nil {
		t.Fatal("sr-destroy with a plugged PBD must be refused")
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{vol + " SR.detach"}, sequence(calls(t, root))); diff != "" {
		t.Fatalf("pbd-unplug (-want +got):\n%s", diff)
	}
	if err := sr.Unplug(ctx); err != nil || len(calls(t, root)) != 0 {
		t.Fatalf("a second unplug must not reach the plugin: %v", err)
	}

	flag(t, root, "fail-SR.destroy")
	err := sr.Destroy(ctx)
	var ce *plugin.CallError
	if !errors.As(err, &ce) || ce.Doc.Code != "SR_BACKEND_FAILURE" {
		t.Fatalf("failed destroy: %v, want the plugin's error document", err)
	}
	want := []string{vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat", vol + " SR.destroy", vol + " SR.detach"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("failed sr-destroy (-want +got):\n%s", diff)
	}
	if err := os.Remove(filepath.Join(root, "fail-SR.destroy")); err != nil {
		t.Fatal(err)
	}
	if err := sr.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	want = []string{vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat", vol + " SR.destroy"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("sr-destroy (-want +got):\n%s", diff)
	}
	for _, s := range []string{"$ xe pbd-unplug uuid=", "SR.destroy", "FAILED: SR_BACKEND_FAILURE boom", "$ xe sr-destroy uuid=" + sr.UUID} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("narration lacks %q:\n%s", s, out.String())
		}
	}
}

func TestDatapathChoiceFollowsTheDaemon(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	refused := sim.Refused(ctx)
	if _, ok := refused["old"]; !ok || len(refused) != 1 {
		t.Fatalf("the API 2.0 plugin must be refused, and only it: %v", refused)
	}
	d, uri, err := sim.ChooseDatapath(ctx, []string{"no-scheme", "old://a", "Fake+Blk://sr/k"})
	if err != nil || d.Scheme != "fake+blk" || uri != "Fake+Blk://sr/k" {
		t.Fatalf("got %v %q %v", d, uri, err)
	}
	_, _, err = sim.ChooseDatapath(ctx, []string{"old://a", "/dev/x"})
	var ce *plugin.CallError
	if !errors.As(err, &ce) || ce.Doc.Code != "MISSING_URI" {
		t.Fatalf("no usable scheme: %v, want MISSING_URI", err)
	}
}

func TestConcurrentCallsAreNarratedPerOperation(t *testing.T) {
	root := fakeRoot(t)
	var out syncBuffer
	sim := New(root, &out)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	out.Reset()
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := sr.VDICreate(ctx, fmt.Sprintf("disk%d", i), "", 1<<20, false)
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := len(calls(t, root)); got != 2*n {
		t.Fatalf("%d plugin calls, want %d", got, 2*n)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4*n {
		t.Fatalf("%d narration lines, want %d (command, two calls, result per create):\n%s", len(lines), 4*n, out.String())
	}
	tagged := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "[") {
			tagged++
		}
	}
	if tagged == 0 {
		t.Fatalf("concurrent operations must be told apart in the narration:\n%s", out.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func TestProbeChecksTheDaemonsRules(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	res, err := sim.Probe(ctx, "fake", map[string]string{"target": "x", "chappassword": "pw"})
	if err != nil || len(res) != 1 || !res[0].Complete {
		t.Fatalf("probe: %v %v", res, err)
	}
	cs := calls(t, root)
	if diff := cmp.Diff([]string{vol + " SR.probe"}, sequence(cs)); diff != "" {
		t.Fatalf("sr-probe (-want +got):\n%s", diff)
	}
	if _, leaked := cs[0].Args["configuration"].(map[string]any)["chappassword"]; leaked {
		t.Fatal("SR.probe saw the password itself")
	}
	flag(t, root, "bad-probe")
	var ce *plugin.CallError
	if _, err := sim.Probe(ctx, "fake", map[string]string{}); !errors.As(err, &ce) || ce.Doc.Code != "SCRIPT_FAILED" {
		t.Fatalf("sr_uuid with complete=false: %v, want SCRIPT_FAILED", err)
	}
}

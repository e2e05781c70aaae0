package xapisim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/plugin"
)

// fakePlugin answers like a plugin and records every call (its directory,
// method, argv[1] and stdin) in <root>/calls.log. Files in <root> change
// its behaviour:
//   - fail-<Method> makes that method return an error document; if it
//     holds a number n > 0, the method succeeds n more times first;
//   - kill-<Method> makes that method kill itself with SIGKILL;
//   - result-<Method> is printed as that method's result;
//   - health holds SR.stat's health states, one a line, one line used
//     per call (the last one stays);
//   - features is Plugin.Query's feature list (JSON);
//   - nonpersistent declares NONPERSISTENT on the datapath;
//   - clone-on-boot puts that key in every volume;
//   - barrier makes Volume.create wait (up to the number of tenths of a
//     second it holds) for a second Volume.create to have started,
//     logging "start" and "end" in barrier.log. A call counts once it has
//     started, not while it lives: the second call may see the first and
//     end before the first looks again, which left the first waiting out
//     the whole barrier (a minute of the host tests' time).
//
// Volume.set and Volume.unset of clone-on-boot on k1 are remembered, and
// Volume.stat answers for the key it is asked about.
const fakePlugin = `#!/bin/sh
m=$(basename "$0")
dir=$(basename "$(dirname "$0")")
root=$(cd "$(dirname "$0")/../.." && pwd)
args=$(cat)
printf '%s %s %s %s\n' "$dir" "$m" "$1" "$args" >>"$root/calls.log"
field() { printf '%s' "$args" | sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }
if [ -f "$root/kill-$m" ]; then kill -9 $$; fi
if [ -f "$root/fail-$m" ]; then
	n=$(cat "$root/fail-$m")
	if [ -n "$n" ] && [ "$n" -gt 0 ]; then
		echo $((n - 1)) >"$root/fail-$m"
	else
		echo '{"code":"SR_BACKEND_FAILURE","params":["boom"],"backtrace":{"error":"","files":[],"lines":[]}}'
		exit 1
	fi
fi
if [ -f "$root/result-$m" ]; then cat "$root/result-$m"; exit 0; fi
feat='[]'; [ -f "$root/features" ] && feat=$(cat "$root/features")
dpfeat='[]'; [ -f "$root/nonpersistent" ] && dpfeat='["NONPERSISTENT"]'
[ "$dir" = fake+blk ] && feat=$dpfeat
key=$(field key); [ -n "$key" ] || key=k1
keys='{}'
if [ -f "$root/clone-on-boot" ]; then keys='{"clone-on-boot":"k2"}'
elif [ "$key" = k1 ] && [ -f "$root/cob" ]; then keys='{"clone-on-boot":"'"$(cat "$root/cob")"'"}'
fi
health=Healthy
if [ -f "$root/health" ]; then
	health=$(head -n 1 "$root/health")
	if [ "$(wc -l <"$root/health")" -gt 1 ]; then tail -n +2 "$root/health" >"$root/health.new" && mv "$root/health.new" "$root/health"; fi
fi
volume() { echo '{"key":"'"$1"'","name":"d","description":"","read_write":true,"sharable":false,"virtual_size":1048576,"physical_utilisation":1048576,"uri":["old://sr/'"$1"'","FAKE+BLK://sr/'"$1"'"],"keys":'"$2"'}'; }
case $m in
Plugin.Query) echo '{"plugin":"fake","name":"f","description":"","vendor":"","copyright":"","version":"1.0","required_api_version":"5.0","features":'"$feat"',"configuration":{},"required_cluster_stack":[]}' ;;
SR.create) echo '{"target":"x","sr_uuid":"u"}' ;;
SR.attach) echo '"fake://sr"' ;;
SR.stat) echo '{"sr":"fake://sr","name":"n","description":"","free_space":1073741824,"total_space":2147483648,"datasources":[],"clustered":false,"health":["'"$health"'","2 of 2 paths live"]}' ;;
SR.ls) echo '[]' ;;
SR.probe) if [ -f "$root/bad-probe" ]; then echo '[{"configuration":{"sr_uuid":"u"},"complete":false,"extra_info":{}}]'; else echo '[{"configuration":{"target":"x","sr_uuid":"u"},"complete":true,"extra_info":{"size":"1"}}]'; fi ;;
Volume.create)
	if [ -f "$root/barrier" ]; then
		echo start >>"$root/barrier.log"; touch "$root/in-$$"; i=0
		while [ $i -lt "$(cat "$root/barrier")" ]; do
			set -- "$root"/in-*
			if [ $# -ge 2 ]; then break; fi
			sleep 0.1; i=$((i + 1))
		done
		echo end >>"$root/barrier.log"
	fi
	volume k1 "$keys" ;;
Volume.stat) volume "$key" "$keys" ;;
Volume.clone|Volume.snapshot) volume k2 '{}' ;;
Volume.set) [ "$(field k)" = clone-on-boot ] && field v >"$root/cob"; echo null ;;
Volume.unset) [ "$(field k)" = clone-on-boot ] && rm -f "$root/cob"; echo null ;;
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
	"Volume.create", "Volume.set", "Volume.unset", "Volume.stat", "Volume.resize", "Volume.destroy",
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

func write(t *testing.T, root, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func unflag(t *testing.T, root, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(root, name)); err != nil {
		t.Fatal(err)
	}
}

// addMethod installs one more method file in the fake volume plugin.
func addMethod(t *testing.T, root, method string) {
	t.Helper()
	if err := os.Symlink(filepath.Join(root, "fake.sh"), filepath.Join(root, "volume", vol, method)); err != nil {
		t.Fatal(err)
	}
}

func apiError(t *testing.T, err error, code string) *APIError {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != code {
		t.Fatalf("got %v, want xapi's %s", err, code)
	}
	return ae
}

func scriptFailed(t *testing.T, err error) []string {
	t.Helper()
	var ce *plugin.CallError
	if !errors.As(err, &ce) || ce.Doc.Code != "SCRIPT_FAILED" {
		t.Fatalf("got %v, want SCRIPT_FAILED", err)
	}
	return ce.Doc.Params
}

// The daemon derives features from the method files, whatever the plugin
// declares (main.ml QueryImpl.query_impl).
func TestFeaturesComeFromMethodFiles(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	write(t, root, "features", `["VDI_DESTROY","SR_PROBE","VDI_RESIZE_ONLINE"]`)
	got, err := sim.SMFeatures(ctx, "fake")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"VDI_DELETE", "SR_PROBE", "VDI_RESIZE_ONLINE",
		"VDI_UPDATE", "VDI_DELETE", "VDI_RESIZE", "VDI_CREATE", "SR_PROBE", "SR_UPDATE", "SR_SCAN", "SR_DETACH", "SR_DELETE", "SR_CREATE", "SR_ATTACH",
		"VDI_ATTACH", "VDI_DETACH", "VDI_ACTIVATE", "VDI_DEACTIVATE", "VDI_INTRODUCE"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("features (-want +got):\n%s", diff)
	}

	// A method file adds its feature undeclared; Volume.clone brings
	// reset-on-boot along. A file that is not executable adds nothing,
	// and a declared feature stays without its file.
	write(t, root, "features", `["VDI_DESTROY"]`)
	addMethod(t, root, "Volume.clone")
	snap := filepath.Join(root, "volume", vol, "Volume.snapshot")
	if err := os.WriteFile(snap, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "volume", vol, "Volume.destroy")); err != nil {
		t.Fatal(err)
	}
	if got, err = sim.SMFeatures(ctx, "fake"); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]bool{"VDI_CLONE": true, "VDI_RESET_ON_BOOT": true, "VDI_SNAPSHOT": false, "VDI_DELETE": true, "VDI_DESTROY": false} {
		if HasFeature(got, f) != want {
			t.Errorf("%s in %v: %t, want %t", f, got, !want, want)
		}
	}
	if !slices.Contains(got, "VDI_RESET_ON_BOOT/2") {
		t.Errorf("the daemon adds VDI_RESET_ON_BOOT/2 with VDI_CLONE: %v", got)
	}
}

// SR.attach is followed by the daemon's own SR.stat; when that fails the
// daemon records no attach, and no SR.detach ever follows. The master's
// second SR.stat failing leaves the PBD plugged.
func TestAttachStatFailureLeavesNoDetach(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	calls(t, root)

	flag(t, root, "fail-SR.stat")
	if err := sr.Plug(ctx); err == nil {
		t.Fatal("pbd-plug must fail when the daemon's SR.stat fails")
	}
	want := []string{vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("failed pbd-plug (-want +got):\n%s", diff)
	}
	if err := sr.Unplug(ctx); err != nil || len(calls(t, root)) != 0 {
		t.Fatalf("no SR.detach may follow an attach whose SR.stat failed: %v", err)
	}

	write(t, root, "fail-SR.stat", "1") // the daemon's stat passes, xapi's health check fails
	if err := sr.Plug(ctx); err == nil {
		t.Fatal("pbd-plug on the master must fail when the health check's SR.stat fails")
	}
	want = append(want, vol+" SR.stat")
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("pbd-plug, health check failing (-want +got):\n%s", diff)
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{vol + " SR.detach"}, sequence(calls(t, root))); diff != "" {
		t.Fatalf("the daemon had recorded the attach: unplug detaches (-want +got):\n%s", diff)
	}

	// sr-destroy's attach fails the same way: no SR.destroy, no SR.detach.
	write(t, root, "fail-SR.stat", "")
	if err := sr.Destroy(ctx); err == nil {
		t.Fatal("sr-destroy must fail when the daemon's SR.stat fails")
	}
	want = []string{vol + " Plugin.Query", vol + " SR.attach", vol + " SR.stat"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("sr-destroy, SR.stat failing (-want +got):\n%s", diff)
	}
}

// sr-scan is the daemon's scan2 (main.ml stat_with_retry).
func TestScanIsScan2(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	sim.ScanRetryWait = 10 * time.Millisecond
	ctx := context.Background()
	sr := plugged(t, root, sim)
	stat, ls := vol+" SR.stat", vol+" SR.ls"
	for _, c := range []struct {
		health string
		want   []string
		code   string // SR_UNHEALTHY's health and advice, or "" for a scan that passes
		advice string
	}{
		{"Healthy", []string{stat, ls}, "", ""},
		{"Recovering", []string{stat}, "Recovering", ""},
		{"Unavailable", []string{stat}, "Unavailable", "try reboot"},
		{"Unreachable\nUnreachable\nHealthy", []string{stat, stat, stat, ls}, "", ""},
		{"Unreachable", []string{stat, stat, stat, stat}, "Unreachable", "try again later"},
		{"Unreachable\nRecovering", []string{stat, stat}, "Recovering", ""},
	} {
		t.Run(c.health, func(t *testing.T) {
			write(t, root, "health", c.health+"\n")
			_, err := sr.Scan(ctx)
			if diff := cmp.Diff(c.want, sequence(calls(t, root))); diff != "" {
				t.Errorf("scan with health %q (-want +got):\n%s", c.health, diff)
			}
			if c.code == "" {
				if err != nil {
					t.Errorf("scan with health %q: %v", c.health, err)
				}
				return
			}
			ae := apiError(t, err, "SR_UNHEALTHY")
			if diff := cmp.Diff([]string{sr.UUID, c.code, c.advice}, ae.Params); diff != "" {
				t.Errorf("SR_UNHEALTHY params with health %q (-want +got):\n%s", c.health, diff)
			}
		})
	}

	// The 2020 daemon had no scan2: SR.ls alone, whatever the health.
	sim.OldDaemon = true
	write(t, root, "health", "Recovering\n")
	if _, err := sr.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ls}, sequence(calls(t, root))); diff != "" {
		t.Errorf("scan by the old daemon (-want +got):\n%s", diff)
	}
	sim.OldDaemon = false

	// Clone-on-boot temporaries are not VDIs.
	unflag(t, root, "health")
	write(t, root, "result-SR.ls", `[{"key":"a","name":"","description":"","read_write":true,"sharable":false,"virtual_size":1,"physical_utilisation":1,"uri":[],"keys":{"clone-on-boot":"b"}},
		{"key":"b","name":"","description":"","read_write":true,"sharable":false,"virtual_size":1,"physical_utilisation":1,"uri":[],"keys":{}}]`)
	vols, err := sr.Scan(ctx)
	if err != nil || len(vols) != 1 || vols[0].Key != "a" {
		t.Fatalf("scan must leave out the temporary b: %v %v", vols, err)
	}
}

// A VM start with on-boot=reset: epoch_begin persistent=false makes the
// daemon clone the volume when the datapath lacks NONPERSISTENT, and the
// VBD uses the clone.
func TestResetOnBootEpoch(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	_, err := sr.VMStartResetOnBoot(ctx, "k1", "5")
	apiError(t, err, "SR_OPERATION_NOT_SUPPORTED")
	if n := len(calls(t, root)); n != 0 {
		t.Fatalf("xapi refuses on-boot=reset without VDI_RESET_ON_BOOT before any call; %d calls made", n)
	}

	addMethod(t, root, "Volume.clone")
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sr.Plug(ctx); err != nil { // xapi learns the features at bind
		t.Fatal(err)
	}
	calls(t, root)
	a, err := sr.VMStartResetOnBoot(ctx, "k1", "5")
	if err != nil {
		t.Fatal(err)
	}
	cs := calls(t, root)
	want := []string{vol + " Volume.stat", vol + " Volume.clone", vol + " Volume.set",
		vol + " Volume.stat", vol + " Volume.stat", dp + " Datapath.attach",
		vol + " Volume.stat", vol + " Volume.stat", dp + " Datapath.activate"}
	if diff := cmp.Diff(want, sequence(cs)); diff != "" {
		t.Fatalf("vm-start with on-boot=reset (-want +got):\n%s", diff)
	}
	if cs[2].Args["key"] != "k1" || cs[2].Args["k"] != "clone-on-boot" || cs[2].Args["v"] != "k2" || cs[4].Args["key"] != "k2" {
		t.Fatalf("the clone's key must be kept on k1 and the clone attached: %v, %v", cs[2].Args, cs[4].Args)
	}
	if cs[5].Args["uri"] != "FAKE+BLK://sr/k2" {
		t.Fatalf("Datapath.attach of %v, want the clone's URI", cs[5].Args["uri"])
	}
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	cs = calls(t, root)
	want = []string{vol + " Volume.stat", vol + " Volume.stat", dp + " Datapath.deactivate",
		vol + " Volume.stat", vol + " Volume.stat", dp + " Datapath.deactivate", dp + " Datapath.detach",
		vol + " Volume.stat", vol + " Volume.destroy", vol + " Volume.unset"}
	if diff := cmp.Diff(want, sequence(cs)); diff != "" {
		t.Fatalf("vm-shutdown with on-boot=reset (-want +got):\n%s", diff)
	}
	if cs[8].Args["key"] != "k2" || cs[9].Args["key"] != "k1" {
		t.Fatalf("epoch_end destroys the clone and unsets k1's key: %v, %v", cs[8].Args, cs[9].Args)
	}

	// A plugin whose Volume.clone fails fails the VM start.
	flag(t, root, "fail-Volume.clone")
	if _, err := sr.VMStartResetOnBoot(ctx, "k1", "5"); err == nil {
		t.Fatal("a failing Volume.clone must fail the VM start")
	}
}

func TestNonPersistentDatapathOpensNonPersistent(t *testing.T) {
	root := fakeRoot(t)
	flag(t, root, "nonpersistent")
	addMethod(t, root, "Volume.clone")
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	a, err := sr.VMStartResetOnBoot(ctx, "k1", "5")
	if err != nil {
		t.Fatal(err)
	}
	cs := calls(t, root)
	if cs[1].Method != "Datapath.open" || cs[1].Args["persistent"] != false {
		t.Fatalf("a NONPERSISTENT datapath gets Datapath.open persistent=false: %v", cs[1])
	}
	for _, c := range cs {
		if c.Method == "Volume.clone" {
			t.Fatal("the daemon must not clone for a NONPERSISTENT datapath")
		}
	}
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	if cs = calls(t, root); cs[len(cs)-1].Method != "Datapath.close" {
		t.Fatalf("epoch_end closes: %v", sequence(cs))
	}
}

// xapi's operation checks (xapi_vdi.ml check_operation_error).
func TestVDIOperationChecks(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	v, err := sr.VDICreate(ctx, "d", "", 1<<20, true)
	if err != nil {
		t.Fatal(err)
	}
	a, err := sr.VMStart(ctx, v.Key, "7")
	if err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	_, err = sr.VDIResize(ctx, v.Key, 2<<20)
	if ae := apiError(t, err, "VDI_IN_USE"); ae.Params[1] != "resize" {
		t.Fatalf("VDI_IN_USE params %v", ae.Params)
	}
	apiError(t, sr.VDIDestroy(ctx, v.Key), "VDI_IN_USE")
	_, err = sr.VDIResizeOnline(ctx, v.Key, 2<<20)
	apiError(t, err, "SR_OPERATION_NOT_SUPPORTED")
	_, err = sr.VDISnapshot(ctx, v.Key)
	apiError(t, err, "SR_OPERATION_NOT_SUPPORTED")
	_, err = sr.VDIClone(ctx, v.Key)
	apiError(t, err, "SR_OPERATION_NOT_SUPPORTED")
	if n := len(calls(t, root)); n != 0 {
		t.Fatalf("refused operations must not reach the plugin: %d calls", n)
	}

	// Declared VDI_RESIZE_ONLINE, method files for snapshot and clone.
	write(t, root, "features", `["VDI_RESIZE_ONLINE"]`)
	addMethod(t, root, "Volume.snapshot")
	addMethod(t, root, "Volume.clone")
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := sr.Unplug(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sr.Plug(ctx); err != nil {
		t.Fatal(err)
	}
	if a, err = sr.VMStart(ctx, v.Key, "7"); err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	if _, err := sr.VDIResizeOnline(ctx, v.Key, 2<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := sr.VDIClone(ctx, v.Key); err != nil {
		t.Fatal(err)
	}
	_, err = sr.VDISnapshot(ctx, v.Key)
	apiError(t, err, "VDI_IS_SHARABLE")
	want := []string{vol + " Volume.resize", vol + " Volume.stat", vol + " Volume.clone"}
	if diff := cmp.Diff(want, sequence(calls(t, root))); diff != "" {
		t.Fatalf("live operations (-want +got):\n%s", diff)
	}
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	if _, err := sr.VDIResize(ctx, v.Key, 4<<20); err != nil {
		t.Fatalf("vdi-resize of a detached VDI: %v", err)
	}
	u, err := sr.VDICreate(ctx, "u", "", 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	calls(t, root)
	if _, err := sr.VDISnapshot(ctx, u.Key); err != nil {
		t.Fatal(err)
	}
	cs := calls(t, root)
	want = []string{vol + " Volume.snapshot", vol + " Volume.set", vol + " Volume.set", vol + " Volume.set", vol + " Volume.set", vol + " Volume.set"}
	if diff := cmp.Diff(want, sequence(cs)); diff != "" {
		t.Fatalf("vdi-snapshot (-want +got):\n%s", diff)
	}
	if cs[3].Args["key"] != "k2" || cs[3].Args["k"] != "snapshot_of" || cs[3].Args["v"] != u.Key {
		t.Fatalf("the snapshot's keys go on the snapshot: %v", cs[3].Args)
	}
}

// The daemon runs calls in parallel; the old one ran them one at a time.
func TestCallsRunInParallel(t *testing.T) {
	for _, old := range []bool{false, true} {
		root := fakeRoot(t)
		sim := New(root, nil)
		sr := plugged(t, root, sim)
		sim.OldDaemon = old
		write(t, root, "barrier", map[bool]string{false: "600", true: "10"}[old]) // the parallel case leaves the loop as soon as both run
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := sr.VDICreate(context.Background(), "d", "", 1<<20, false); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		b, err := os.ReadFile(filepath.Join(root, "barrier.log"))
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]string{false: "start\nstart\nend\nend\n", true: "start\nend\nstart\nend\n"}[old]
		if string(b) != want {
			t.Errorf("old daemon %t: Volume.create calls went %q, want %q", old, b, want)
		}
	}
}

func TestSignalledPluginIsScriptFailed(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	sr := plugged(t, root, sim)
	flag(t, root, "kill-Volume.stat")
	_, err := sr.VMStart(context.Background(), "k1", "7")
	p := scriptFailed(t, err)
	if len(p) != 5 || p[0] != filepath.Join(root, "volume", vol, "Volume.stat") || p[1] != "signalled" || p[2] != "sigkill" {
		t.Fatalf("SCRIPT_FAILED params %q, want [<script> signalled sigkill <stdout> <stdout>]", p)
	}
}

// Results are unmarshalled into the IDL's records as rpclib does.
func TestStrictResultDecoding(t *testing.T) {
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	const vol0 = `"key":"k","name":"","description":"","read_write":true,"sharable":false,"physical_utilisation":1,"uri":[],"keys":{}`
	const stat0 = `"sr":"s","name":"","description":"","free_space":1,"total_space":2,"datasources":[],"clustered":false`
	for _, c := range []struct {
		method, result, fails string // fails: the rpclib message, "" to pass
		old                   bool
	}{
		{"Volume.stat", `{` + vol0 + `}`, "No value found for key: 'virtual_size' when unmarshalling 'volume'", false},
		{"Volume.stat", `{` + vol0 + `,"virtual_size":1,"extra":[1],"cbt_enabled":"junk","volume_type":7}`, "", false},
		{"Volume.stat", `{` + strings.ToUpper(vol0[:5]) + vol0[5:] + `,"Virtual_Size":"1048576"}`, "", false},
		{"Volume.stat", `{` + vol0 + `,"virtual_size":1.5}`, "Expected int64", false},
		{"Volume.stat", `{` + vol0 + `,"virtual_size":1,"uuid":null}`, "Expected string", false},
		{"SR.stat", `{` + stat0 + `,"health":["Degraded","1 of 2 paths"]}`, "Unknown tag 'degraded'", false},
		{"SR.stat", `{` + stat0 + `,"health":["unreachable","no path"]}`, "", false},
		{"SR.stat", `{` + stat0 + `,"health":["Unreachable","no path"]}`, "Unknown tag 'unreachable'", true},
		{"SR.stat", `{` + stat0 + `,"health":"Healthy"}`, "Expected string", false},
		{"SR.detach", `{}`, "Expected unit", false},
		{"Datapath.attach", `{"implementations":[["BlockDevice",{"path":"/dev/x"}],["Nbd",{}]]}`, "No value found for key: 'uri' when unmarshalling 'nbd'", false},
	} {
		t.Run(c.method, func(t *testing.T) {
			write(t, root, "result-"+c.method, c.result)
			sim.OldDaemon = c.old
			var args any = map[string]string{"dbg": "d", "sr": sr.Handle, "key": "k"}
			var err error
			if strings.HasPrefix(c.method, "Datapath.") {
				err = sim.CallDatapath(ctx, "fake+blk://sr/k", c.method, map[string]string{"dbg": "d", "uri": "fake+blk://sr/k", "domain": "7"}, nil)
			} else {
				err = sr.Call(ctx, c.method, args, nil)
			}
			unflag(t, root, "result-"+c.method)
			if c.fails == "" {
				if err != nil {
					t.Errorf("%s %s: %v, want it accepted", c.method, c.result, err)
				}
				return
			}
			if err == nil {
				t.Errorf("%s %s: accepted, want SCRIPT_FAILED (%s)", c.method, c.result, c.fails)
				return
			}
			if p := scriptFailed(t, err); len(p) != 1 || !strings.HasPrefix(p[0], "Unexpected exception:") || !strings.Contains(p[0], c.fails) {
				t.Errorf("%s %s: params %q, want %q", c.method, c.result, p, c.fails)
			}
		})
	}
}

// Dom0 users get a u0_<dp> token (main.ml domain_of); nothing else but
// a domid reaches the plugin.
func TestDomainTokens(t *testing.T) {
	for _, c := range [][3]string{
		{"vbd/0/xvdb", "0", "u0_vbd_0_xvdb"},
		{"3f0c2a1e-7b1d-4d5e-9a6b-0c1d2e3f4a5b", "0", "u0_3f0c2a1e_7b1d_4d5e_9a6b_0c1d2e3f4a5b"},
		{"vbd/7/xvda", "7", "7"},
	} {
		if got := DomainOf(c[0], c[1]); got != c[2] {
			t.Errorf("DomainOf(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
	root := fakeRoot(t)
	sim := New(root, nil)
	ctx := context.Background()
	sr := plugged(t, root, sim)
	for _, bad := range []string{"u0-vbd/0/xvdb", "0", "dom7", ""} {
		if _, err := sr.VMStart(ctx, "k1", bad); err == nil {
			t.Errorf("domain %q reached the plugin", bad)
		}
	}
	if n := len(calls(t, root)); n != 0 {
		t.Fatalf("%d calls with invalid domains", n)
	}
	a, err := sr.VMStart(ctx, "k1", DomainOf("vbd/0/xvdb", "0"))
	if err != nil {
		t.Fatal(err)
	}
	if cs := calls(t, root); cs[2].Method != "Datapath.attach" || cs[2].Args["domain"] != "u0_vbd_0_xvdb" {
		t.Fatalf("Datapath.attach domain %v", cs[2])
	}
	if err := sr.VMShutdown(ctx, a); err != nil {
		t.Fatal(err)
	}
}

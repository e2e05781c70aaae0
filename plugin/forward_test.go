package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

const (
	fwdMasterUUID = "6a1f3a9e-1111-4c8e-9d3a-0a0b0c0d0e0f"
	fwdMemberUUID = "7b2e4b0f-2222-4d9f-8e4b-1a1b1c1d1e1f"
	fwdMasterAddr = "10.0.0.1"
	fwdDir        = "/usr/libexec/xapi-storage-script/volume/" + VolumePrefix + TypeNVMeTCP + "/"
)

// fakeMaster is XenAPI as a member sees it (PoolPlugins): pool.get_master
// names the master, and host.call_plugin there forks the master's host
// plugin, ServeHostPlugin on the master's deps, whose response is read
// as xapi reads it (xapi_plugins.ml call_plugin: Success is the Value,
// Failure the XenAPI error it names).
type fakeMaster struct {
	t      *testing.T
	deps   *Deps // the master's
	master string
	// masterErr fails pool.get_master; callErr fails host.call_plugin
	// before the plugin runs (the host offline, no plugin).
	masterErr, callErr error
	calls              []map[string]string
}

func (f *fakeMaster) PoolMaster(context.Context) (string, error) { return f.master, f.masterErr }

func (f *fakeMaster) CallPlugin(ctx context.Context, h, name, fn string, args map[string]string) (string, error) {
	f.calls = append(f.calls, args)
	if f.callErr != nil {
		return "", f.callErr
	}
	if h != fwdMasterUUID || name != host.HostPluginName {
		f.t.Fatalf("call_plugin on host %s plugin %s, want the master's sanvol", h, name)
	}
	var out bytes.Buffer
	if code := ServeHostPlugin(ctx, []string{"/etc/xapi.d/plugins/sanvol", xapiCall(fn, args)}, &out, f.deps); code != 0 {
		f.t.Fatalf("the master's host plugin exited %d", code)
	}
	r := parseResponse(f.t, out.String())
	if r["Status"][0] == "Success" {
		return r["Value"][0], nil
	}
	d := r["ErrorDescription"]
	return "", &host.XenAPIError{Method: "host.call_plugin", Code: d[0], Params: d[1:]}
}

// noPool fails the test if a host forwards: the master never does, and a
// member forwards only the four methods.
type noPool struct{ t *testing.T }

func (n noPool) PoolMaster(context.Context) (string, error) {
	n.t.Fatal("this host looked up the master to forward a call")
	return "", nil
}

func (n noPool) CallPlugin(context.Context, string, string, string, map[string]string) (string, error) {
	n.t.Fatal("this host forwarded a call")
	return "", nil
}

// fwdHost is a host's deps under its own root: poolConf "" is a master
// without pool.conf, the SR hpSR attached (its record) when attached.
func fwdHost(t *testing.T, poolConf string, attached bool) *Deps {
	t.Helper()
	d := testDeps(t)
	d.Pool = noPool{t}
	for _, dir := range []string{path.Dir(host.PoolConf), path.Dir(host.InventoryPath), volume.StateDir} {
		if err := d.Root.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if poolConf != "" {
		if err := d.Root.WriteFile(host.PoolConf, []byte(poolConf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.Services = func(string) (Services, error) { return recordServices{d}, nil }
	if attached {
		rec, _ := json.Marshal(volume.Attached{Type: TypeNVMeTCP, UUID: hpSR, Device: "/dev/nvme0n1", VG: "VG_sanvol-" + hpSR, ExtentSize: 4 << 20})
		if err := d.Root.WriteFile(path.Join(volume.StateDir, hpSR+".json"), rec, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// typeOnly is a transport that only names its type, and resolves no
// device: an attach record is taken as written.
type typeOnly struct{ transport.Transport }

func (typeOnly) Type() string { return TypeNVMeTCP }

// recordServices serves the master's engine over its attach records
// (fwdHost): enough for the calls that end before LVM, where sanvol's
// own checks answer.
type recordServices struct{ d *Deps }

func (s recordServices) Describe() Description                  { return Description{} }
func (s recordServices) Diagnostics(ctx context.Context) string { return "" }
func (s recordServices) Engine() (*volume.Engine, error) {
	role, err := host.ReadRole(s.d.Root)
	if err != nil {
		return nil, err
	}
	return volume.New(volume.Options{LVM: lvm.New(s.d.Runner, s.d.Log), Transport: typeOnly{}, Runner: s.d.Runner,
		Locker: host.FileLocker{Root: s.d.Root}, Root: s.d.Root, Role: role, Log: s.d.Log})
}

// forwardPool is a master (attached) and a member whose calls reach it.
func forwardPool(t *testing.T) (member *Deps, f *fakeMaster) {
	t.Helper()
	master := fwdHost(t, "master", true)
	member = fwdHost(t, "slave:"+fwdMasterAddr, true)
	f = &fakeMaster{t: t, deps: master, master: fwdMasterUUID}
	member.Pool = f
	member.Services = func(string) (Services, error) {
		t.Fatal("the member built an engine for a call it forwards")
		return nil, nil
	}
	if err := member.Root.WriteFile(host.InventoryPath, []byte("INSTALLATION_UUID='"+fwdMemberUUID+"'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return member, f
}

func serveOn(t *testing.T, d *Deps, method, stdin string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := Serve(context.Background(), []string{fwdDir + method, "--json"}, strings.NewReader(stdin), &out, &errb, d)
	return rc, out.String()
}

func errDoc(t *testing.T, out string) schema.ErrorDoc {
	t.Helper()
	var d schema.ErrorDoc
	if err := json.Unmarshal([]byte(out), &d); err != nil || d.Code != ErrorCode || len(d.Params) < 2 {
		t.Fatalf("not an error document: %q (%v)", out, err)
	}
	return d
}

var handle = volume.MakeHandle(TypeNVMeTCP, hpSR)

func TestForwardRunsOnTheMaster(t *testing.T) {
	member, f := forwardPool(t)
	// A key no volume has: the master's engine answers success without
	// touching LVM, as for a temporary destroyed twice.
	req := `{"dbg":"epoch_end","sr":"` + handle + `","key":"gone","secret_thing":"s3cr3t"}`
	for i := range 2 {
		rc, out := serveOn(t, member, "Volume.destroy", req)
		if rc != 0 || strings.TrimSpace(out) != "null" {
			t.Fatalf("call %d: exit %d, %q", i+1, rc, out)
		}
	}
	if len(f.calls) != 2 {
		t.Fatalf("%d forwarded calls, want 2", len(f.calls))
	}
	a := f.calls[0]
	if a["method"] != "Volume.destroy" || a["plugin"] != VolumePrefix+TypeNVMeTCP || a["from"] != fwdMemberUUID {
		t.Fatalf("forwarded args %v", a)
	}
	// Only the declared arguments travel (they are the master plugin's
	// command line).
	var sent map[string]string
	if err := json.Unmarshal([]byte(a["request"]), &sent); err != nil || len(sent) != 3 || sent["key"] != "gone" || sent["dbg"] != "epoch_end" {
		t.Fatalf("request %q: %v", a["request"], err)
	}
	if strings.Contains(a["request"], "s3cr3t") {
		t.Fatal("an undeclared argument was forwarded")
	}
}

// The member answers xapi exactly what the master's own method file
// answers: the same checks, the same error document.
func TestForwardReturnsTheMastersDocumentUnchanged(t *testing.T) {
	member, f := forwardPool(t)
	for _, c := range []struct{ method, req string }{
		{"Volume.set", `{"dbg":"d","sr":"` + handle + `","key":"k","k":"` + strings.Repeat("x", 5000) + `","v":"v"}`},
		{"Volume.unset", `{"dbg":"d","sr":"` + volume.MakeHandle(TypeNVMeTCP, hpKey) + `","key":"k","k":"clone-on-boot"}`},
		{"Volume.destroy", `{"dbg":"d","sr":"` + handle + `","key":7}`},
	} {
		rcM, want := serveOn(t, f.deps, c.method, c.req)
		rc, got := serveOn(t, member, c.method, c.req)
		if c.method == "Volume.destroy" {
			// A request the member's own checks refuse never leaves it.
			if rc != 1 || len(f.calls) != 2 {
				t.Fatalf("bad request: exit %d, %d calls", rc, len(f.calls))
			}
			continue
		}
		if rcM != 1 || rc != 1 || got != want {
			t.Fatalf("%s: member exit %d %q; master's own exit %d %q", c.method, rc, got, rcM, want)
		}
		errDoc(t, got)
	}
}

func TestForwardClone(t *testing.T) {
	// The master serves a forwarded Volume.clone through its handler.
	member, f := forwardPool(t)
	m := forwardable("Volume.clone")
	if m == nil {
		t.Fatal("Volume.clone is not forwardable")
	}
	args, err := DecodeArgs(m.Name, []byte(`{"dbg":"epoch_begin","sr":"`+volume.MakeHandle(TypeNVMeTCP, hpKey)+`","key":"`+hpKey+`"}`), m.Args)
	if err != nil {
		t.Fatal(err)
	}
	c := &Call{Target: Target{Kind: VolumePlugin, SRType: TypeNVMeTCP, Dir: VolumePrefix + TypeNVMeTCP, Method: m}, Args: args, Deps: member, Log: zap.NewNop()}
	_, err = m.Run(context.Background(), c)
	// The SR hpKey is attached nowhere: the master's engine says so.
	if host.KindOf(err) != host.KindNotAttached || len(f.calls) != 1 || f.calls[0]["method"] != "Volume.clone" {
		t.Fatalf("%v (%s), %d calls", err, host.KindOf(err), len(f.calls))
	}
	for _, name := range []string{"Volume.create", "Volume.resize", "Volume.set_name", "SR.destroy", "Volume.stat"} {
		if forwardable(name) != nil {
			t.Errorf("%s is forwardable", name)
		}
	}
}

func TestForwardMasterUnreachable(t *testing.T) {
	for _, c := range []struct {
		name               string
		masterErr, callErr error
		kind               host.Kind
		advice             string
	}{
		{"no master from xapi", host.NewError(host.KindUnreachable, "find the pool master", "cannot log in to xapi", "", nil), nil, host.KindUnreachable, "retry"},
		{"master offline", nil, host.NewError(host.KindUnreachable, "host plugin", "the host does not answer", "", &host.XenAPIError{Code: "HOST_OFFLINE"}), host.KindUnreachable, "retry"},
		{"plugin died", nil, &host.XenAPIError{Code: "XENAPI_PLUGIN_FAILURE", Params: []string{"signal: SIGKILL"}}, host.KindUnreachable, "retry"},
		{"no plugin", nil, &host.XenAPIError{Code: "XENAPI_MISSING_PLUGIN", Params: []string{"sanvol"}}, host.KindUnreachable, "sanvol install"},
		{"older master", nil, &host.XenAPIError{Code: ErrorCode, Params: []string{string(host.KindUnimpl), `host plugin volume: no function "volume"`}}, host.KindUnimpl, "same sanvol version"},
	} {
		t.Run(c.name, func(t *testing.T) {
			member, f := forwardPool(t)
			f.masterErr, f.callErr = c.masterErr, c.callErr
			rc, out := serveOn(t, member, "Volume.set", `{"dbg":"d","sr":"`+handle+`","key":"k","k":"clone-on-boot","v":"t"}`)
			d := errDoc(t, out)
			if rc != 1 || d.Params[0] != string(c.kind) || !strings.Contains(d.Params[1], fwdMasterAddr) {
				t.Fatalf("exit %d, %v; want %s naming the master %s", rc, d.Params, c.kind, fwdMasterAddr)
			}
			if !strings.Contains(d.Params[1], c.advice) {
				t.Fatalf("no advice %q: %s", c.advice, d.Params[1])
			}
		})
	}
}

// The master changed between the member's lookup and the call: the host
// it reached refuses, the member passes the refusal on, and nobody
// forwards again.
func TestForwardToAHostNoLongerMaster(t *testing.T) {
	member, f := forwardPool(t)
	f.deps = fwdHost(t, "slave:10.0.0.9", true) // noPool: it must not forward
	rc, out := serveOn(t, member, "Volume.set", `{"dbg":"d","sr":"`+handle+`","key":"k","k":"clone-on-boot","v":"t"}`)
	d := errDoc(t, out)
	if rc != 1 || d.Params[0] != string(host.KindNotMaster) || !strings.Contains(d.Params[1], "10.0.0.9") || !strings.Contains(d.Params[1], fwdMemberUUID) {
		t.Fatalf("exit %d, %v", rc, d.Params)
	}
}

func TestForwardOnlyReachesTheFourMethods(t *testing.T) {
	member, f := forwardPool(t)
	member.Services = func(string) (Services, error) { return recordServices{member}, nil } // its own refusal
	rc, out := serveOn(t, member, "Volume.create", `{"dbg":"d","sr":"`+handle+`","name":"n","description":"","size":1048576,"sharable":false}`)
	if d := errDoc(t, out); rc != 1 || d.Params[0] != string(host.KindNotMaster) || len(f.calls) != 0 {
		t.Fatalf("Volume.create on a member: exit %d %v, %d forwarded", rc, d.Params, len(f.calls))
	}
	// The master runs the four itself.
	master := fwdHost(t, "master", true)
	if rc, out := serveOn(t, master, "Volume.destroy", `{"dbg":"d","sr":"`+handle+`","key":"gone"}`); rc != 0 || strings.TrimSpace(out) != "null" {
		t.Fatalf("on the master: exit %d %q", rc, out)
	}
	// A forwarded call of something else is refused by the master.
	_, err := runForwarded(context.Background(), master, map[string]string{"plugin": VolumePrefix + TypeNVMeTCP, "method": "Volume.create", "request": "{}"})
	if host.KindOf(err) != host.KindInvalid {
		t.Fatalf("forwarded Volume.create: %v", err)
	}
	if _, err := runForwarded(context.Background(), master, map[string]string{"plugin": "org.xen.xapi.storage.ffs", "method": "Volume.set", "request": "{}"}); host.KindOf(err) != host.KindInvalid {
		t.Fatalf("unknown plugin: %v", err)
	}
}

func TestForwardedErrorKind(t *testing.T) {
	e := &ForwardedError{Doc: schema.ErrorDoc{Code: ErrorCode, Params: []string{string(host.KindBusy), "locked"}}}
	var he *host.Error
	if host.KindOf(e) != host.KindBusy || !errors.As(e, &he) || e.Error() != "locked" {
		t.Fatalf("%v %s", e, host.KindOf(e))
	}
	if d := ErrorDocument("Volume.set", e); d.Params[1] != "locked" {
		t.Fatalf("document changed: %v", d)
	}
}

func TestCloneResolvesInVolumeDirsOnly(t *testing.T) {
	if tg, err := Resolve(fwdDir + "Volume.clone"); err != nil || tg.Method.Name != "Volume.clone" {
		t.Fatalf("Volume.clone: %+v %v", tg, err)
	}
	if _, err := Resolve("/x/datapath/sanvol/Volume.clone"); err == nil {
		t.Fatal("a datapath directory serves Volume.clone")
	}
	if dirs := PluginDirs(); !slices.Contains(dirs["volume/"+VolumePrefix+TypeNVMeTCP], "Volume.clone") {
		t.Fatal("Volume.clone is not installed")
	}
}

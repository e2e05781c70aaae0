package plugin

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

const (
	hpSR  = "0b2f6c1e-7d3a-4e55-9a0b-3c4d5e6f7a8b"
	hpKey = "3f1c9a52-0d1e-4b7a-9c11-5e2d7a6b8c90"
)

// xapiCall is the argument xapi gives a host plugin, as xapi_plugins.ml
// call_plugin builds it: Xml.to_string of XMLRPC.To.methodCall fn
// [session; struct args], strings as bare PCData and an empty string as
// <value/> (xMLRPC.ml To.string).
func xapiCall(fn string, args map[string]string) string {
	var b strings.Builder
	b.WriteString("<methodCall><methodName>" + fn + "</methodName><params><param><value>OpaqueRef:5e55</value></param><param><value><struct>")
	for k, v := range args {
		b.WriteString("<member><name>" + k + "</name>")
		if v == "" {
			b.WriteString("<value/>")
		} else {
			b.WriteString("<value>" + xmlText(v) + "</value>")
		}
		b.WriteString("</member>")
	}
	b.WriteString("</struct></value></param></params></methodCall>")
	return b.String()
}

func TestParseHostPluginCall(t *testing.T) {
	rc := volume.RemoteChain{SR: hpSR, Key: hpKey, Sectors: 2048}
	fn, args, err := ParseHostPluginCall(xapiCall("converge", rc.Args()))
	if err != nil || fn != "converge" {
		t.Fatalf("%q %v", fn, err)
	}
	got, err := volume.ParseRemoteChain(args)
	if err != nil || got.Key != hpKey || got.Sectors != 2048 || len(got.Snaps) != 0 || got.Intent != "" {
		t.Fatalf("args %v: %+v %v", args, got, err)
	}
	// A <string> value is a string too (xMLRPC.ml From.string).
	_, args, err = ParseHostPluginCall(`<methodCall><methodName>live</methodName><params><param><value>s</value></param><param><value><struct><member><name>a&amp;b</name><value><string>x &lt; y</string></value></member></struct></value></param></params></methodCall>`)
	if err != nil || args["a&b"] != "x < y" {
		t.Fatalf("%v %v", args, err)
	}
	if _, _, err := ParseHostPluginCall("converge"); host.KindOf(err) != host.KindInvalid {
		t.Fatalf("not XML: %v", err)
	}
}

// response is what xapi's XMLRPC.From.methodResponse reads: one param,
// a struct with Status and Value or ErrorDescription.
type response struct {
	Members []struct {
		Name  string `xml:"name"`
		Value struct {
			Text  string   `xml:",chardata"`
			Array []string `xml:"array>data>value"`
		} `xml:"value"`
	} `xml:"params>param>value>struct>member"`
}

func parseResponse(t *testing.T, out string) map[string][]string {
	t.Helper()
	var r response
	if err := xml.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	m := map[string][]string{}
	for _, mem := range r.Members {
		if mem.Value.Array != nil {
			m[mem.Name] = mem.Value.Array
		} else {
			m[mem.Name] = []string{mem.Value.Text}
		}
	}
	return m
}

func TestHostPluginResponses(t *testing.T) {
	ok := parseResponse(t, HostPluginSuccess("a <b> & c"))
	if ok["Status"][0] != "Success" || ok["Value"][0] != "a <b> & c" {
		t.Fatalf("success: %v", ok)
	}
	bad := parseResponse(t, HostPluginFailure("SR_BACKEND_FAILURE", "Busy", "x"))
	if bad["Status"][0] != "Failure" || strings.Join(bad["ErrorDescription"], "|") != "SR_BACKEND_FAILURE|Busy|x" {
		t.Fatalf("failure: %v", bad)
	}
}

func hostPluginRun(t *testing.T, root host.Root, doc string) map[string][]string {
	t.Helper()
	var out bytes.Buffer
	deps := &Deps{Log: zap.NewNop(), Root: root, Runner: nil}
	if code := ServeHostPlugin(context.Background(), []string{"/etc/xapi.d/plugins/sanvol", doc}, &out, deps); code != 0 {
		t.Fatalf("exit %d: xapi turns it into XENAPI_PLUGIN_FAILURE", code)
	}
	return parseResponse(t, out.String())
}

func TestServeHostPlugin(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	rc := volume.RemoteChain{SR: hpSR, Key: hpKey, Sectors: 2048}
	// The SR is not attached here: K cannot be active here.
	if r := hostPluginRun(t, root, xapiCall("converge", rc.Args())); r["Status"][0] != "Success" || r["Value"][0] != "absent" {
		t.Fatalf("converge: %v", r)
	}
	r := hostPluginRun(t, root, xapiCall("format_disk", rc.Args()))
	if r["Status"][0] != "Failure" || r["ErrorDescription"][0] != ErrorCode || r["ErrorDescription"][1] != string(host.KindUnimpl) {
		t.Fatalf("unknown function: %v", r)
	}
	args := rc.Args()
	args["key"] = "../../etc"
	if r := hostPluginRun(t, root, xapiCall("converge", args)); r["ErrorDescription"][1] != string(host.KindInvalid) {
		t.Fatalf("bad key: %v", r)
	}
}

func TestIsHostPlugin(t *testing.T) {
	for argv, want := range map[string]bool{
		"/etc/xapi.d/plugins/sanvol|<methodCall/>":      true,
		"/tmp/root/etc/xapi.d/plugins/sanvol|<x/>":      true,
		"/usr/libexec/sanvol/sanvol|doctor":             false,
		"/etc/xapi.d/plugins/sanvol":                    false,
		"/usr/libexec/xapi-storage-script/datapath/x|a": false,
	} {
		if got := IsHostPlugin(strings.Split(argv, "|")); got != want {
			t.Errorf("%s: %t", argv, got)
		}
	}
}

type fakePlugins struct {
	active string
	out    []string
	err    error
	fns    []string
}

func (f *fakePlugins) ActiveHost(ctx context.Context, sr, key string) (string, error) {
	return f.active, nil
}

func (f *fakePlugins) CallPlugin(ctx context.Context, h, name, fn string, args map[string]string) (string, error) {
	f.fns = append(f.fns, fn+" "+args["wait"])
	if f.err != nil {
		return "", f.err
	}
	out := f.out[0]
	f.out = f.out[1:]
	return out, nil
}

func TestRemote(t *testing.T) {
	ctx := context.Background()
	rc := volume.RemoteChain{SR: hpSR, Key: hpKey, Sectors: 2048}
	f := &fakePlugins{active: "self"}
	r := &Remote{X: f, Self: "self"}
	if h, err := r.ActiveHost(ctx, hpSR, hpKey); h != "" || err != nil {
		t.Fatalf("active here: %q %v", h, err)
	}
	f.active = "B"
	if h, _ := r.ActiveHost(ctx, hpSR, hpKey); h != "B" {
		t.Fatalf("active on B: %q", h)
	}
	f.out = []string{"live", "absent"}
	if live, err := r.Converge(ctx, "B", rc); !live || err != nil {
		t.Fatal(live, err)
	}
	if live, err := r.Converge(ctx, "B", rc); live || err != nil {
		t.Fatal(live, err)
	}
	f.out, f.fns = []string{"merging", "merging", "merged"}, nil
	if err := r.WaitMerged(ctx, "B", rc); err != nil || len(f.fns) != 3 || f.fns[0] != "wait_merged 10" {
		t.Fatalf("%v %v", err, f.fns)
	}
	f.out = []string{"absent"}
	if err := r.WaitMerged(ctx, "B", rc); host.KindOf(err) != host.KindBusy {
		t.Fatalf("K left B: %v", err)
	}
	// The plugin's error document comes back typed; xapi's own errors
	// (no plugin, plugin crashed) mean the host cannot do the step.
	f.err = &host.XenAPIError{Code: ErrorCode, Params: []string{"Busy", "locked"}}
	if _, err := r.Converge(ctx, "B", rc); host.KindOf(err) != host.KindBusy {
		t.Fatalf("plugin error: %v", err)
	}
	// The host plugin's memory refusal comes back as NoSpace with its
	// figures and fix: the master undoes the snapshot on that kind.
	refusal := volume.CheckOverlayMemory("snapshot of volume "+hpKey, hpKey, 1<<40, 1<<40, volume.Meminfo{Total: 4 << 30, Available: 2 << 30})
	doc := ErrorDocument("host plugin converge", refusal)
	f.err = &host.XenAPIError{Code: doc.Code, Params: doc.Params}
	if _, err := r.Converge(ctx, "B", rc); !errors.Is(err, host.ErrNoSpace) || !strings.Contains(err.Error(), "dom0 has 2048 MiB available") || !strings.Contains(err.Error(), "dom0_mem=") {
		t.Fatalf("memory refusal: %v", err)
	}
	f.err = &host.XenAPIError{Code: "XENAPI_PLUGIN_FAILURE", Params: []string{"signal: SIGKILL", "", ""}}
	if _, err := r.Converge(ctx, "B", rc); host.KindOf(err) != host.KindUnreachable {
		t.Fatalf("plugin killed: %v", err)
	}
	f.err = errors.New("dial: connection refused")
	if _, err := r.Converge(ctx, "B", rc); err == nil {
		t.Fatal("no error")
	}
}

package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

func TestResolve(t *testing.T) {
	cases := []struct {
		argv0  string
		kind   Kind
		srType string
		method string
	}{
		{"/usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.nvmetcp/Plugin.Query", VolumePlugin, "nvmetcp", "Plugin.Query"},
		{"/x/volume/org.xen.xapi.storage.iscsi-ng/plugin.query", VolumePlugin, "iscsi-ng", "Plugin.Query"},
		{"/x/volume/ORG.XEN.XAPI.STORAGE.NVMETCP/volume.STAT", VolumePlugin, "nvmetcp", "Volume.stat"},
		{"/x/datapath/sanvol/Datapath.attach", DatapathPlugin, "", "Datapath.attach"},
		{"/x/datapath/Sanvol/DATAPATH.DETACH", DatapathPlugin, "", "Datapath.detach"},
	}
	for _, c := range cases {
		t.Run(c.argv0, func(t *testing.T) {
			got, err := Resolve(c.argv0)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != c.kind || got.SRType != c.srType || got.Method.Name != c.method {
				t.Errorf("got kind %v type %q method %q", got.Kind, got.SRType, got.Method.Name)
			}
		})
	}
	for _, bad := range []string{
		"/x/volume/org.xen.xapi.storage.zfs-vol/Plugin.Query",
		"/x/volume/elsewhere/Plugin.Query",
		"/x/datapath/sanvol/Volume.create",
		"/x/volume/org.xen.xapi.storage.nvmetcp/Datapath.attach",
		"/x/volume/org.xen.xapi.storage.nvmetcp/Volume.copy",
	} {
		t.Run(bad, func(t *testing.T) {
			if _, err := Resolve(bad); err == nil || host.KindOf(err) != host.KindInvalid {
				t.Errorf("err = %v", err)
			}
		})
	}
}

func TestEveryMethodHasADbgArgument(t *testing.T) {
	for _, ms := range [][]*Method{volumeMethods, datapathMethods} {
		for _, m := range ms {
			if len(m.Args) == 0 || m.Args[0] != aDbg {
				t.Errorf("%s: first argument is not dbg", m.Name)
			}
		}
	}
}

func testDeps(t *testing.T) *Deps {
	d := &Deps{Version: "test", Log: zap.NewNop(), Root: host.NewRoot(t.TempDir()), Runner: host.NewExecRunner(nil)}
	d.Services = func(srType string) (Services, error) { return newServices(d, srType) }
	d.Datapath = func() (*datapath.Datapath, error) { return newDatapath(d) }
	return d
}

func serve(t *testing.T, argv0, stdin string) (int, []byte) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := Serve(context.Background(), []string{argv0, "--json"}, strings.NewReader(stdin), &out, &errb, testDeps(t))
	return rc, out.Bytes()
}

func TestServeQueryPrintsOneValue(t *testing.T) {
	rc, out := serve(t, "/x/volume/org.xen.xapi.storage.nvmetcp/Plugin.Query", `{"dbg":"d"}`)
	if rc != 0 {
		t.Fatalf("rc = %d: %s", rc, out)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	var q map[string]any
	if err := dec.Decode(&q); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Fatal("more than one JSON value on stdout")
	}
	if q["plugin"] != "nvmetcp" || q["required_api_version"] != "5.0" {
		t.Fatalf("query = %v", q)
	}
	for _, k := range []string{"features", "required_cluster_stack"} {
		if _, ok := q[k].([]any); !ok {
			t.Errorf("%s is %T, want a list", k, q[k])
		}
	}
	if _, ok := q["configuration"].(map[string]any); !ok {
		t.Errorf("configuration is %T, want an object", q["configuration"])
	}
}

func TestServeFailuresPrintCompleteErrorDocument(t *testing.T) {
	cases := map[string]struct{ argv0, stdin, kind string }{
		"bad json":       {"/x/volume/org.xen.xapi.storage.nvmetcp/SR.stat", "{", "InvalidArgument"},
		"missing arg":    {"/x/volume/org.xen.xapi.storage.nvmetcp/SR.stat", `{"dbg":"d"}`, "InvalidArgument"},
		"unknown dir":    {"/x/volume/org.xen.xapi.storage.foo/SR.stat", `{"dbg":"d","sr":"s"}`, "InvalidArgument"},
		"unknown method": {"/x/datapath/sanvol/Volume.stat", `{"dbg":"d"}`, "InvalidArgument"},
		"no clone file":  {"/x/volume/org.xen.xapi.storage.nvmetcp/Volume.clone", `{"dbg":"d","sr":"s","key":"k"}`, "InvalidArgument"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			rc, out := serve(t, c.argv0, c.stdin)
			if rc == 0 {
				t.Fatal("exit 0")
			}
			doc, ok := ParseErrorDoc(out)
			if !ok {
				t.Fatalf("not a complete error document: %s", out)
			}
			if doc.Code != ErrorCode || len(doc.Params) != 2 || doc.Params[0] != c.kind {
				t.Fatalf("doc = %+v", doc)
			}
			if err := schema.Ours().Validate("plugin_error", out); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestServeRequiresJSONFlag(t *testing.T) {
	var out bytes.Buffer
	rc := Serve(context.Background(), []string{"/x/datapath/sanvol/Plugin.Query"}, strings.NewReader(`{"dbg":"d"}`), &out, &bytes.Buffer{}, testDeps(t))
	if _, ok := ParseErrorDoc(out.Bytes()); rc == 0 || !ok {
		t.Fatalf("rc %d, out %s", rc, out.String())
	}
}

func TestErrorDocumentActivatedOnAnotherHost(t *testing.T) {
	doc := ErrorDocument("Volume.snapshot", &ActivatedOnAnotherHost{HostUUID: "h-1"})
	if len(doc.Params) != 2 || doc.Params[0] != "Activated_on_another_host" || doc.Params[1] != "h-1" {
		t.Fatalf("params = %v", doc.Params)
	}
}

func TestErrorDocumentEncodesEmptyLists(t *testing.T) {
	b, err := json.Marshal(ErrorDocument("SR.stat", host.NewError(host.KindNotFound, "", "gone", "", nil)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"files":[]`)) || !bytes.Contains(b, []byte(`"lines":[]`)) {
		t.Fatalf("%s", b)
	}
}

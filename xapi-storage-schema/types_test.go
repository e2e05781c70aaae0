package schema

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustValidateValue(t *testing.T, def string, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	if err := Ours().Validate(def, b); err != nil {
		t.Fatalf("%T %s: %v", v, b, err)
	}
	return b
}

func wantJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	g, err := parseJSON(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := parseJSON([]byte(want))
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestVolumeEncoding(t *testing.T) {
	v := Volume{
		Key: "2f0b8a4e-6a55-4c1e-9f0e-0c9d7c1b5a11", UUID: "2f0b8a4e-6a55-4c1e-9f0e-0c9d7c1b5a11",
		Name: "db-disk", ReadWrite: true,
		VirtualSize: 1<<62 + 1, PhysicalUtilisation: 21474836480,
		URI:  []string{"sanvol://7d1e/2f0b8a4e"},
		Keys: map[string]string{"vdi-type": "user", "is_a_snapshot": "false"},
	}
	b := mustValidateValue(t, "volume", v)
	// 2^62+1 is not representable as a float64: it must survive exactly.
	if !strings.Contains(string(b), `"virtual_size":4611686018427387905`) {
		t.Fatalf("virtual_size not an exact integer literal: %s", b)
	}
	b = mustValidateValue(t, "volume", Volume{})
	wantJSON(t, b, `{"key":"","name":"","description":"","read_write":false,"sharable":false,"virtual_size":0,"physical_utilisation":0,"uri":[],"keys":{}}`)
	// Through a pointer and inside SR.ls's list the same rules hold.
	mustValidateValue(t, "volume", &Volume{Key: "k"})
	mustValidateValue(t, "res:SR.ls", []Volume{{Key: "a"}, v})
}

func TestSRStatEncoding(t *testing.T) {
	s := SRStat{SR: "nvmetcp://7d1e", Name: "pool", UUID: "7d1e5a52-3c1b-4f7e-9c44-2a8b0e6d1f00",
		FreeSpace: 3298534883328, TotalSpace: 4398046511104, Datasources: []string{},
		Health: Health{State: Recovering, Message: "path 10.0.1.5:4420 down"}}
	b := mustValidateValue(t, "res:SR.stat", s)
	if !strings.Contains(string(b), `"health":["Recovering","path 10.0.1.5:4420 down"]`) {
		t.Fatalf("health variant: %s", b)
	}
	b = mustValidateValue(t, "sr_stat", SRStat{})
	wantJSON(t, b, `{"sr":"","name":"","description":"","free_space":0,"total_space":0,"datasources":[],"clustered":false,"health":["Healthy",""]}`)

	// Newer constructors decode. Unreachable may go out (the plugin
	// sends it only to daemons that decode it); Unavailable never does.
	var h Health
	if err := json.Unmarshal([]byte(`["unreachable","no path"]`), &h); err != nil || h.State != Unreachable {
		t.Fatalf("decode newer health: %v %+v", err, h)
	}
	s.Health = h
	mustValidateValue(t, "sr_stat", s)
	if err := json.Unmarshal([]byte(`["Unavailable","reboot"]`), &h); err != nil || h.State != Unavailable {
		t.Fatalf("decode newer health: %v %+v", err, h)
	}
	s.Health = h
	err := Ours().ValidateValue("sr_stat", s)
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Path != "$.health[0]" {
		t.Fatalf("Unavailable must be rejected at $.health[0], got %v", err)
	}
	for _, bad := range []string{`"Healthy"`, `["Healthy"]`, `["Sick",""]`, `["Healthy",1]`} {
		t.Run(bad, func(t *testing.T) {
			if err := json.Unmarshal([]byte(bad), &h); err == nil {
				t.Errorf("Health decoded %s", bad)
			}
		})
	}
}

func TestProbeResultEncodingAndCheck(t *testing.T) {
	stat := &SRStat{SR: "nvmetcp://7d1e", Name: "pool"}
	b := mustValidateValue(t, "probe_result", ProbeResult{})
	wantJSON(t, b, `{"configuration":{},"complete":false,"extra_info":{}}`)

	// Check() and the schema's oneOf encode the same two daemon rules
	// (spec §5.4); they must agree on every combination.
	for _, c := range []struct {
		name string
		p    ProbeResult
		ok   bool
	}{
		{"partial", ProbeResult{Configuration: map[string]string{"target": "10.0.0.5"}}, true},
		{"complete without sr_uuid", ProbeResult{Configuration: map[string]string{"nqn": "n"}, Complete: true, ExtraInfo: map[string]string{"size": "1"}}, true},
		{"existing sr", ProbeResult{Configuration: map[string]string{"sr_uuid": "u"}, Complete: true, SR: stat}, true},
		{"sr_uuid complete without sr", ProbeResult{Configuration: map[string]string{"sr_uuid": "u"}, Complete: true}, true},
		{"sr_uuid incomplete", ProbeResult{Configuration: map[string]string{"sr_uuid": "u"}}, false},
		{"sr without sr_uuid", ProbeResult{Complete: true, SR: stat}, false},
		{"sr without sr_uuid incomplete", ProbeResult{SR: stat}, false},
		{"sr with sr_uuid incomplete", ProbeResult{Configuration: map[string]string{"sr_uuid": "u"}, SR: stat}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkErr := c.p.Check()
			schemaErr := Ours().ValidateValue("probe_result", c.p)
			if (checkErr == nil) != c.ok || (schemaErr == nil) != c.ok {
				t.Errorf("%s: Check() = %v, schema = %v, want ok=%v", c.name, checkErr, schemaErr, c.ok)
			}
		})
	}
	mustValidateValue(t, "res:SR.probe", []ProbeResult{{}, {Configuration: map[string]string{"sr_uuid": "u"}, Complete: true, SR: stat}})
}

func TestQueryResultEncoding(t *testing.T) {
	q := QueryResult{Plugin: "iscsi-ng", Name: "iSCSI shared block SR", Vendor: "sanvol", Version: "0.1.0",
		RequiredAPIVersion: "5.0", Features: []string{"SR_PROBE", "VDI_CREATE", "VDI_DESTROY"},
		Configuration: map[string]string{"target": "portal", "iqn": "target IQN"}}
	b := mustValidateValue(t, "res:Plugin.query", q)
	if !strings.Contains(string(b), `"required_cluster_stack":[]`) {
		t.Fatalf("nil required_cluster_stack must encode as []: %s", b)
	}
	// The zero value encodes by the rules, but is not a valid answer:
	// required_api_version must be "5.0".
	b, err := json.Marshal(QueryResult{})
	if err != nil {
		t.Fatal(err)
	}
	wantJSON(t, b, `{"plugin":"","name":"","description":"","vendor":"","copyright":"","version":"","required_api_version":"","features":[],"configuration":{},"required_cluster_stack":[]}`)
	var ve *ValidationError
	if err := Ours().Validate("query_result", b); !errors.As(err, &ve) || ve.Path != "$.required_api_version" {
		t.Fatalf("zero QueryResult: got %v, want an error at $.required_api_version", err)
	}
}

func TestBackendEncoding(t *testing.T) {
	be := Backend{Implementations: []Implementation{
		{XenDisk: &XenDisk{Params: "/dev/dm-3", BackendType: "vbd"}},
		{BlockDevice: "/dev/dm-3"},
	}}
	b := mustValidateValue(t, "res:Datapath.attach", be)
	wantJSON(t, b, `{"implementations":[["XenDisk",{"params":"/dev/dm-3","extra":{},"backend_type":"vbd"}],["BlockDevice",{"path":"/dev/dm-3"}]]}`)
	mustValidateValue(t, "backend", Backend{Implementations: []Implementation{{File: "/run/x.raw"}, {Nbd: "nbd:unix:/run/s:exportname=d"}}})

	var back Backend
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	be.Implementations[0].XenDisk.Extra = map[string]string{}
	if d := cmp.Diff(be, back); d != "" {
		t.Fatalf("round trip (-sent +decoded):\n%s", d)
	}

	// Zero values: an empty list encodes as [] but can never be attached.
	b, err := json.Marshal(Backend{})
	if err != nil {
		t.Fatal(err)
	}
	wantJSON(t, b, `{"implementations":[]}`)
	if err := Ours().Validate("backend", b); err == nil || !strings.Contains(err.Error(), "at least 1") {
		t.Fatalf("empty backend: got %v, want a minItems error", err)
	}
	if _, err := json.Marshal(Implementation{}); err == nil {
		t.Fatal("an Implementation with no variant set must not marshal")
	}
	var impl Implementation
	for _, bad := range []string{`["BlockDevice","/dev/x"]`, `["Tapdisk",{}]`, `["File"]`, `{"File":{"path":"/x"}}`, `["Nbd",{"path":"/x"}]`} {
		t.Run(bad, func(t *testing.T) {
			if err := json.Unmarshal([]byte(bad), &impl); err == nil {
				t.Errorf("Implementation decoded %s", bad)
			}
		})
	}
}

func TestErrorDocEncoding(t *testing.T) {
	e := ErrorDoc{Code: "SR_BACKEND_FAILURE", Params: []string{"NVMeConnectError", "connect to 10.0.0.5:4420 timed out"},
		Backtrace: Backtrace{Error: "connect to 10.0.0.5:4420 timed out", Files: []string{"nvme/connect.go"}, Lines: []int{88}}}
	mustValidateValue(t, "plugin_error", e)
	b := mustValidateValue(t, "plugin_error", ErrorDoc{})
	wantJSON(t, b, `{"code":"","params":[],"backtrace":{"error":"","files":[],"lines":[]}}`)
}

// requestTypes maps each method to the argument struct the plugin decodes
// its stdin into.
var requestTypes = map[string]func() any{
	"Plugin.query": func() any { return &DbgArgs{} }, "Plugin.diagnostics": func() any { return &DbgArgs{} },
	"SR.probe": func() any { return &SRProbeArgs{} }, "SR.create": func() any { return &SRCreateArgs{} },
	"SR.attach": func() any { return &SRAttachArgs{} }, "SR.detach": func() any { return &SRArgs{} },
	"SR.destroy": func() any { return &SRArgs{} }, "SR.stat": func() any { return &SRArgs{} },
	"SR.ls": func() any { return &SRArgs{} }, "SR.set_name": func() any { return &SRSetNameArgs{} },
	"SR.set_description": func() any { return &SRSetDescriptionArgs{} },
	"Volume.create":      func() any { return &VolumeCreateArgs{} }, "Volume.destroy": func() any { return &VolumeArgs{} },
	"Volume.resize": func() any { return &VolumeResizeArgs{} }, "Volume.stat": func() any { return &VolumeArgs{} },
	"Volume.set": func() any { return &VolumeSetArgs{} }, "Volume.unset": func() any { return &VolumeUnsetArgs{} },
	"Volume.set_name": func() any { return &VolumeSetNameArgs{} }, "Volume.set_description": func() any { return &VolumeSetDescriptionArgs{} },
	"Volume.snapshot": func() any { return &VolumeArgs{} }, "Volume.clone": func() any { return &VolumeArgs{} },
	"Datapath.open": func() any { return &DatapathOpenArgs{} }, "Datapath.attach": func() any { return &DatapathArgs{} },
	"Datapath.activate": func() any { return &DatapathArgs{} }, "Datapath.deactivate": func() any { return &DatapathArgs{} },
	"Datapath.detach": func() any { return &DatapathArgs{} }, "Datapath.close": func() any { return &DatapathCloseArgs{} },
}

// resultTypes maps each method to the Go type of its result.
var resultTypes = map[string]func() any{
	"Plugin.query": func() any { return &QueryResult{} }, "Plugin.diagnostics": func() any { return new(string) },
	"SR.probe": func() any { return &[]ProbeResult{} }, "SR.create": func() any { return &map[string]string{} },
	"SR.attach": func() any { return new(string) }, "SR.stat": func() any { return &SRStat{} },
	"SR.ls": func() any { return &[]Volume{} }, "Volume.create": func() any { return &Volume{} },
	"Volume.stat": func() any { return &Volume{} }, "Volume.snapshot": func() any { return &Volume{} },
	"Volume.clone": func() any { return &Volume{} }, "Datapath.attach": func() any { return &Backend{} },
}

// Every accepted example decodes into the lead's Go type and re-encodes to
// the same JSON: the wire types carry every field of the contract, under
// the right names, and nothing is lost on the way (int64 sizes included).
func TestWireTypesRoundTripExamples(t *testing.T) {
	for _, m := range servedMethods {
		if requestTypes[m] == nil {
			t.Errorf("no request type for %s", m)
		}
	}
	for _, ex := range loadExamples(t) {
		if ex.verdict != "ok" {
			continue
		}
		kind, method, _ := strings.Cut(ex.def, ":")
		var mk func() any
		switch kind {
		case "req":
			mk = requestTypes[method]
		case "res":
			mk = resultTypes[method]
			if mk == nil { // unit result
				if string(ex.doc) != "null\n" {
					t.Errorf("%s: unit result example is not null", ex.file)
				}
				continue
			}
		case "plugin_error":
			mk = func() any { return &ErrorDoc{} }
		default:
			continue
		}
		v := mk()
		if err := json.Unmarshal(ex.doc, v); err != nil {
			t.Errorf("%s: decode into %T: %v", ex.file, v, err)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Errorf("%s: re-encode %T: %v", ex.file, v, err)
			continue
		}
		want, _ := parseJSON(ex.doc)
		got, _ := parseJSON(b)
		if !jsonEqual(got, want) {
			t.Errorf("%s: %T loses information:\n read  %s\n wrote %s", ex.file, v, ex.doc, b)
		}
		if err := Ours().Validate(ex.def, b); err != nil {
			t.Errorf("%s: re-encoded %T invalid: %v", ex.file, v, err)
		}
	}
}

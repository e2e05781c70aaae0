package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

const (
	isDir = "/x/volume/org.xen.xapi.storage.iscsi-ng/"
	dpDir = "/x/datapath/sanvol/"
	srH   = "iscsi-ng://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01"
	volU  = "sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k1"
)

func serveArgv(t *testing.T, argv []string, stdin string) (int, []byte) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := Serve(context.Background(), argv, strings.NewReader(stdin), &out, &errb, testDeps(t))
	return rc, out.Bytes()
}

// TestPositionalFormOfEveryStaticVDIsCall decodes each call exactly as
// static-vdis makes it (python3/bin/static-vdis: call_volume_plugin and
// call_datapath_plugin put "static-vdis" first, as dbg).
func TestPositionalFormOfEveryStaticVDIsCall(t *testing.T) {
	cases := []struct {
		file  string
		argv  []string
		strs  map[string]string
		dicts map[string]map[string]string
	}{
		{isDir + "Plugin.Query", nil, map[string]string{"dbg": "static-vdis"}, nil},
		{isDir + "SR.attach", []string{"--configuration", "target", "10.0.1.5", "--configuration", "chappassword_secret", "0b6e1a3c-1111-4222-8333-944445555666", "--configuration", "wwid", "36001405abc"},
			map[string]string{"dbg": "static-vdis"},
			map[string]map[string]string{"configuration": {"target": "10.0.1.5", "chappassword_secret": "0b6e1a3c-1111-4222-8333-944445555666", "wwid": "36001405abc"}}},
		{isDir + "SR.attach", nil, map[string]string{"dbg": "static-vdis"}, map[string]map[string]string{"configuration": {}}},
		{isDir + "Volume.stat", []string{srH, "k1"}, map[string]string{"dbg": "static-vdis", "sr": srH, "key": "k1"}, nil},
		{dpDir + "Datapath.attach", []string{volU, "0"}, map[string]string{"dbg": "static-vdis", "uri": volU, "domain": "0"}, nil},
		{dpDir + "Datapath.activate", []string{volU, "0"}, map[string]string{"dbg": "static-vdis", "uri": volU, "domain": "0"}, nil},
		{dpDir + "Datapath.deactivate", []string{volU, "0"}, map[string]string{"dbg": "static-vdis", "uri": volU, "domain": "0"}, nil},
		{dpDir + "Datapath.detach", []string{volU, "0"}, map[string]string{"dbg": "static-vdis", "uri": volU, "domain": "0"}, nil},
	}
	for _, c := range cases {
		t.Run(c.file[strings.LastIndex(c.file, "/")+1:], func(t *testing.T) {
			tg, err := Resolve(c.file)
			if err != nil {
				t.Fatal(err)
			}
			args, err := DecodePositional(tg.Method.Name, append([]string{"static-vdis"}, c.argv...), tg.Method.Args)
			if err != nil {
				t.Fatalf("%v: %v", c.argv, err)
			}
			if diff := cmp.Diff(c.strs, args.strs); diff != "" {
				t.Errorf("%s strings:\n%s", c.file, diff)
			}
			if c.dicts != nil {
				if diff := cmp.Diff(c.dicts, args.dicts); diff != "" {
					t.Errorf("%s dicts:\n%s", c.file, diff)
				}
			}
		})
	}
}

// TestPositionalQueryAnswersAsJSON: static-vdis json.loads the whole of
// stdout, so the positional answer is the same single JSON value.
func TestPositionalQueryAnswersAsJSON(t *testing.T) {
	rc, pos := serveArgv(t, []string{isDir + "Plugin.Query", "static-vdis"}, "")
	if rc != 0 {
		t.Fatalf("rc %d: %s", rc, pos)
	}
	_, js := serve(t, isDir+"Plugin.Query", `{"dbg":"static-vdis"}`)
	if !bytes.Equal(pos, js) {
		t.Fatalf("positional %s\n--json %s", pos, js)
	}
	var q schema.QueryResult
	if err := json.Unmarshal(pos, &q); err != nil {
		t.Fatal(err)
	}
	if err := schema.Ours().Validate("res:Plugin.query", pos); err != nil {
		t.Fatal(err)
	}
}

// TestPositionalFailuresMatchJSON: for the same bad input, the positional
// form prints the very error document the --json form prints.
func TestPositionalFailuresMatchJSON(t *testing.T) {
	cases := map[string]struct {
		file string
		argv []string
		json string
	}{
		"query without dbg":     {isDir + "Plugin.Query", nil, `{}`},
		"stat without key":      {isDir + "Volume.stat", []string{"static-vdis", srH}, `{"dbg":"static-vdis","sr":"` + srH + `"}`},
		"stat of unattached SR": {isDir + "Volume.stat", []string{"static-vdis", srH, "k1"}, `{"dbg":"static-vdis","sr":"` + srH + `","key":"k1"}`},
		"attach without target": {isDir + "SR.attach", []string{"static-vdis", "--configuration", "port", "3260"}, `{"dbg":"static-vdis","configuration":{"port":"3260"}}`},
		"dp attach bad uri":     {dpDir + "Datapath.attach", []string{"static-vdis", "nvme://x/y", "0"}, `{"dbg":"static-vdis","uri":"nvme://x/y","domain":"0"}`},
		"dp attach unattached":  {dpDir + "Datapath.attach", []string{"static-vdis", volU, "0"}, `{"dbg":"static-vdis","uri":"` + volU + `","domain":"0"}`},
		"dp activate no domain": {dpDir + "Datapath.activate", []string{"static-vdis", volU}, `{"dbg":"static-vdis","uri":"` + volU + `"}`},
		"dp deactivate bad uri": {dpDir + "Datapath.deactivate", []string{"static-vdis", "sanvol://nope/k", "0"}, `{"dbg":"static-vdis","uri":"sanvol://nope/k","domain":"0"}`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			rcP, pos := serveArgv(t, append([]string{c.file}, c.argv...), "")
			rcJ, js := serve(t, c.file, c.json)
			if rcP == 0 || rcJ == 0 {
				t.Fatalf("rc positional %d, --json %d: %s", rcP, rcJ, pos)
			}
			if !bytes.Equal(pos, js) {
				t.Fatalf("positional %s\n--json     %s", pos, js)
			}
			if _, ok := ParseErrorDoc(pos); !ok {
				t.Fatalf("not an error document: %s", pos)
			}
		})
	}
}

// TestPositionalFormIsOnlyForStaticVDIs: the form is refused for every
// method static-vdis does not call, and malformed command lines fail with
// a complete error document.
func TestPositionalFormIsOnlyForStaticVDIs(t *testing.T) {
	cases := map[string][]string{
		"SR.stat":                {isDir + "SR.stat", "static-vdis", srH},
		"SR.create":              {isDir + "SR.create", "static-vdis"},
		"Volume.destroy":         {isDir + "Volume.destroy", "static-vdis", srH, "k1"},
		"Datapath.open":          {dpDir + "Datapath.open", "static-vdis", volU},
		"extra argument":         {isDir + "Volume.stat", "static-vdis", srH, "k1", "more"},
		"unknown option":         {isDir + "SR.attach", "static-vdis", "--sr", "a", "b"},
		"option without a value": {isDir + "SR.attach", "static-vdis", "--configuration", "target"},
		"invalid UTF-8":          {isDir + "Volume.stat", "static-vdis", srH, "k\xff"},
	}
	for name, argv := range cases {
		t.Run(name, func(t *testing.T) {
			rc, out := serveArgv(t, argv, "")
			doc, ok := ParseErrorDoc(out)
			if rc == 0 || !ok {
				t.Fatalf("rc %d, out %s", rc, out)
			}
			if doc.Params[0] != "InvalidArgument" {
				t.Fatalf("doc %+v", doc)
			}
		})
	}
}

// TestOnlyPositionalCallsKeepBootSecrets: the secrets a call resolves are
// kept for boot (host.BootSecrets.Keep) only for static-vdis' calls.
func TestOnlyPositionalCallsKeepBootSecrets(t *testing.T) {
	for argv, want := range map[string]bool{"static-vdis": true, "--json": false} {
		t.Run(argv, func(t *testing.T) {
			d := testDeps(t)
			var out bytes.Buffer
			if rc := Serve(context.Background(), []string{isDir + "Plugin.Query", argv}, strings.NewReader(`{"dbg":"d"}`), &out, &bytes.Buffer{}, d); rc != 0 {
				t.Fatalf("%s: rc %d %s", argv, rc, out.String())
			}
			svc, err := d.Services(TypeISCSI)
			if err != nil {
				t.Fatal(err)
			}
			if d.StaticVDIs != want || svc.(*srServices).keep != want {
				t.Errorf("%s: StaticVDIs %t, services keep %t; want %t", argv, d.StaticVDIs, svc.(*srServices).keep, want)
			}
		})
	}
}

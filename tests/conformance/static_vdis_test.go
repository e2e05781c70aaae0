package conformance

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sanvol/sanvol/plugin"
)

// TestStaticVDIsPositionalForm runs the installed method files the way
// static-vdis does (xen-api python3/bin/static-vdis: argv [file,
// "static-vdis", args…], no stdin, check_output then json.loads of the
// whole of stdout): each answers one JSON value, and the error documents
// are the ones --json gets for the same arguments.
func TestStaticVDIsPositionalForm(t *testing.T) {
	const sr = "iscsi-ng://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01"
	const uri = "sanvol://6e0a7c7e-9e8f-4a61-9a37-1d4d3c0e9a01/k"
	vol := pluginDir(filepath.Join("volume", plugin.VolumePrefix+plugin.TypeISCSI))
	dp := pluginDir(filepath.Join("datapath", plugin.DatapathScheme))
	cases := []struct {
		dir, method string
		argv        []string
		json        string
	}{
		{vol, "Plugin.Query", nil, `{"dbg":"static-vdis"}`},
		{vol, "SR.attach", []string{"--configuration", "target", "127.0.0.1", "--configuration", "port", "9"}, `{"dbg":"static-vdis","configuration":{"target":"127.0.0.1","port":"9"}}`},
		{vol, "Volume.stat", []string{sr, "k"}, `{"dbg":"static-vdis","sr":"` + sr + `","key":"k"}`},
		{dp, "Datapath.attach", []string{uri, "0"}, `{"dbg":"static-vdis","uri":"` + uri + `","domain":"0"}`},
		{dp, "Datapath.activate", []string{uri, "0"}, `{"dbg":"static-vdis","uri":"` + uri + `","domain":"0"}`},
		{dp, "Datapath.deactivate", []string{uri, "0"}, `{"dbg":"static-vdis","uri":"` + uri + `","domain":"0"}`},
		{dp, "Datapath.detach", []string{uri, "0"}, `{"dbg":"static-vdis","uri":"` + uri + `","domain":"0"}`},
	}
	for _, c := range cases {
		t.Run(c.method, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			script := filepath.Join(c.dir, c.method)
			cmd := exec.CommandContext(ctx, script, append([]string{"static-vdis"}, c.argv...)...)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			out := plugin.Outcome{ExitCode: code, Stdout: stdout.Bytes()}
			checkOutcome(t, c.method, out)
			js := call(t, script, []byte(c.json))
			if js.ExitCode != code || !bytes.Equal(js.Stdout, out.Stdout) {
				t.Errorf("positional: exit %d %s\n--json: exit %d %s", code, out.Stdout, js.ExitCode, js.Stdout)
			}
		})
	}
}

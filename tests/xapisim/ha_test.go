package xapisim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// haPlugin answers both forms: `--json` with the request on stdin, and
// static-vdis' positional form with nothing read from stdin. It logs
// "<dir> <file> <argv…>" and, for --json, the request, to calls.log.
const haPlugin = `#!/bin/sh
m=$(basename "$0")
dir=$(basename "$(dirname "$0")")
root=$(cd "$(dirname "$0")/../.." && pwd)
req=
[ "$1" = --json ] && req=$(cat)
printf '%s %s %s %s\n' "$dir" "$m" "$*" "$req" >>"$root/calls.log"
feat='["VDI_ATTACH_OFFLINE","VDI_DESTROY"]'; [ -f "$root/no-offline" ] && feat='["VDI_DESTROY"]'
case $m in
Plugin.Query) echo '{"plugin":"ha","name":"h","description":"","vendor":"","copyright":"","version":"1.0","required_api_version":"5.0","features":'"$feat"',"configuration":{},"required_cluster_stack":[]}' ;;
SR.create) echo '{"target":"x","chappassword_secret":"s-1","sr_uuid":"u"}' ;;
SR.attach) echo '"ha://sr"' ;;
SR.stat) echo '{"sr":"ha://sr","name":"n","description":"","free_space":5000000000,"total_space":6000000000,"datasources":[],"clustered":false,"health":["Healthy",""]}' ;;
Volume.create) n=$(cat "$root/n" 2>/dev/null || echo 0); n=$((n+1)); echo $n >"$root/n"
	size=$(printf '%s' "$req" | sed -n 's/.*"size":\([0-9]*\).*/\1/p')
	echo '{"key":"k'$n'","uuid":"00000000-0000-4000-8000-00000000000'$n'","name":"d","description":"","read_write":true,"sharable":true,"virtual_size":'$size',"physical_utilisation":'$size',"uri":["hadp://sr/k'$n'"],"keys":{}}' ;;
Volume.stat) key=$3; echo '{"key":"'$key'","name":"d","description":"","read_write":true,"sharable":true,"virtual_size":1,"physical_utilisation":1,"uri":["hadp://sr/'$key'"],"keys":{}}' ;;
Datapath.attach) k=${2##*/}; : >"$root/dev-$k"; echo '{"implementations":[["XenDisk",{"params":"'$root/dev-$k'","extra":{},"backend_type":"vbd"}],["BlockDevice",{"path":"'$root/dev-$k'"}]]}' ;;
*) echo null ;;
esac
`

func haRoot(t *testing.T) (root string, sim *Sim, sv *StaticVDIs) {
	t.Helper()
	root = t.TempDir()
	bin := filepath.Join(root, "ha.sh")
	if err := os.WriteFile(bin, []byte(haPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]string{
		"volume/org.xen.xapi.storage.ha": {"Plugin.Query", "SR.create", "SR.attach", "SR.stat", "SR.detach", "Volume.create", "Volume.set", "Volume.stat", "Volume.destroy"},
		"datapath/hadp":                  {"Plugin.Query", "Datapath.attach", "Datapath.activate", "Datapath.deactivate", "Datapath.detach"},
	}
	for d, ms := range files {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if err := os.Symlink(bin, filepath.Join(root, d, m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	sim = New(root, nil)
	sv = &StaticVDIs{Dir: filepath.Join(root, "etc/static-vdis"), ScriptRoot: root, MultipathFlag: filepath.Join(root, "run/multipath_enabled")}
	return root, sim, sv
}

type haCall struct{ Dir, File, Argv, Req string }

func haCalls(t *testing.T, root string) []haCall {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(root, "calls.log"))
	_ = os.Remove(filepath.Join(root, "calls.log"))
	var out []haCall
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		f := strings.SplitN(line, " ", 3)
		c := haCall{Dir: f[0], File: f[1]}
		rest := f[2]
		if i := strings.Index(rest, " {"); i >= 0 {
			c.Argv, c.Req = rest[:i], rest[i+1:]
		} else {
			c.Argv = strings.TrimSpace(rest)
		}
		out = append(out, c)
	}
	return out
}

// TestHAEnableCreatesAttachesAndBootReattachesWithoutXapi replays
// pool-ha-enable and then a boot: the VDIs xapi creates, the static-vdis
// calls in their order and form, what static-vdis stores, and the boot's
// positional calls with no XenAPI at all.
func TestHAEnableCreatesAttachesAndBootReattachesWithoutXapi(t *testing.T) {
	root, sim, sv := haRoot(t)
	ctx := context.Background()
	sr, err := sim.SRCreate(ctx, "ha", "ha SR", "", map[string]string{"target": "x", "chappassword": "p"})
	if err != nil {
		t.Fatal(err)
	}
	haCalls(t, root)
	pbdConfig := map[string]string{"target": "x", "chappassword_secret": "s-1", "sr_uuid": "u"}
	sf, redo, err := sr.HAEnable(ctx, sv, pbdConfig, HAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cs := haCalls(t, root)
	var seq []string
	var sizes []int64
	for _, c := range cs {
		seq = append(seq, c.File+" "+c.Argv)
		if c.File == "Volume.create" {
			var req struct {
				Size     int64 `json:"size"`
				Sharable bool  `json:"sharable"`
			}
			if err := json.Unmarshal([]byte(c.Req), &req); err != nil || !req.Sharable {
				t.Fatalf("Volume.create %s: %v (xapi creates both VDIs sharable)", c.Req, err)
			}
			sizes = append(sizes, req.Size)
		}
	}
	if diff := cmp.Diff([]int64{266240, 3988783104}, sizes); diff != "" {
		t.Errorf("VDI sizes (xha_statefile.ml minimum_statefile_size, redo_log.ml minimum_vdi_size):\n%s", diff)
	}
	attach := func(key string) []string {
		return []string{
			"Plugin.Query static-vdis",
			"SR.attach static-vdis --configuration chappassword_secret s-1 --configuration sr_uuid u --configuration target x",
			"Volume.stat static-vdis ha://sr " + key,
			"Plugin.Query static-vdis",
			"SR.attach static-vdis --configuration chappassword_secret s-1 --configuration sr_uuid u --configuration target x",
			"Datapath.attach static-vdis hadp://sr/" + key + " 0",
			"Datapath.activate static-vdis hadp://sr/" + key + " 0",
		}
	}
	want := []string{"Plugin.Query --json", "SR.stat --json", "Volume.create --json", "Volume.set --json", "Volume.create --json", "Volume.set --json"}
	want = append(append(want, attach("k1")...), attach("k2")...)
	if diff := cmp.Diff(want, seq); diff != "" {
		t.Fatalf("pool-ha-enable calls (-want +got):\n%s", diff)
	}
	for _, v := range []HAVDI{sf, redo} {
		if target, err := os.Readlink(v.Disk); err != nil || target != filepath.Join(root, "dev-"+v.Key) {
			t.Fatalf("%s disk link %s -> %q %v", v.Key, v.Disk, target, err)
		}
	}
	list := sv.List()
	if len(list) != 2 || list[0].Reason != StatefileReason || list[1].Reason != RedoLogReason {
		t.Fatalf("static VDIs %+v", list)
	}
	var stored map[string]string
	if err := json.Unmarshal([]byte(list[0].DeviceConfig), &stored); err != nil || !cmp.Equal(stored, pbdConfig) {
		t.Fatalf("stored device-config %s (%v), want this host's PBD's", list[0].DeviceConfig, err)
	}
	if list[0].VolumeURI != "hadp://sr/k1" || list[0].VolumeKey != "k1" || list[0].VolumePlugin != "ha" {
		t.Fatalf("stored %+v", list[0])
	}

	// A reboot: no XenAPI anywhere, attach-static-vdis before xapi.
	disks, err := sv.Boot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 {
		t.Fatalf("boot attached %v", disks)
	}
	seq = seq[:0]
	for _, c := range haCalls(t, root) {
		if c.Req != "" {
			t.Errorf("boot used --json for %s", c.File)
		}
		seq = append(seq, c.File+" "+c.Argv)
	}
	if diff := cmp.Diff([]string{
		"Plugin.Query static-vdis", "SR.attach static-vdis --configuration chappassword_secret s-1 --configuration sr_uuid u --configuration target x",
		"Datapath.attach static-vdis hadp://sr/k1 0", "Datapath.activate static-vdis hadp://sr/k1 0",
		"Plugin.Query static-vdis", "SR.attach static-vdis --configuration chappassword_secret s-1 --configuration sr_uuid u --configuration target x",
		"Datapath.attach static-vdis hadp://sr/k2 0", "Datapath.activate static-vdis hadp://sr/k2 0",
	}, seq); diff != "" {
		t.Fatalf("boot calls (-want +got):\n%s", diff)
	}

	// pool-ha-disable: deactivate, detach, and the configuration gone.
	if err := sv.HADisable(ctx); err != nil {
		t.Fatal(err)
	}
	seq = seq[:0]
	for _, c := range haCalls(t, root) {
		seq = append(seq, c.File+" "+c.Argv)
	}
	if diff := cmp.Diff([]string{
		"Datapath.deactivate static-vdis hadp://sr/k1 0", "Datapath.detach static-vdis hadp://sr/k1 0",
		"Datapath.deactivate static-vdis hadp://sr/k2 0", "Datapath.detach static-vdis hadp://sr/k2 0",
	}, seq); diff != "" {
		t.Fatalf("disable calls (-want +got):\n%s", diff)
	}
	if l := sv.List(); len(l) != 0 {
		// Attached ones are only marked; the next boot removes them.
		for _, v := range l {
			if !v.DeleteNextBoot {
				t.Fatalf("left %+v", v)
			}
		}
	}
}

// TestHAEnableRefusedWithoutAttachOffline: xapi refuses the SR when the
// SM features have neither VDI_ATTACH_OFFLINE nor VDI_GENERATE_CONFIG,
// before creating anything.
func TestHAEnableRefusedWithoutAttachOffline(t *testing.T) {
	root, sim, sv := haRoot(t)
	ctx := context.Background()
	sr, err := sim.SRCreate(ctx, "ha", "ha SR", "", map[string]string{"target": "x"})
	if err != nil {
		t.Fatal(err)
	}
	flag(t, root, "no-offline")
	haCalls(t, root)
	_, _, err = sr.HAEnable(ctx, sv, map[string]string{"target": "x"}, HAOptions{})
	if err == nil || !strings.Contains(err.Error(), "SR_OPERATION_NOT_SUPPORTED") {
		t.Fatalf("err %v", err)
	}
	for _, c := range haCalls(t, root) {
		if c.File == "Volume.create" {
			t.Fatal("a VDI was created before the refusal")
		}
	}
}

// TestSMFeaturesFollowMethodFiles: a Volume.clone file alone brings
// VDI_CLONE and VDI_RESET_ON_BOOT/2 (main.ml, QueryImpl.query_impl).
func TestSMFeaturesFollowMethodFiles(t *testing.T) {
	root, sim, _ := haRoot(t)
	sr := &SR{Type: "ha", sim: sim}
	f, err := sr.smFeatures(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"VDI_CLONE", "VDI_RESET_ON_BOOT/2", "VDI_SNAPSHOT"} {
		if strings.Contains(strings.Join(f, " "), bad) {
			t.Fatalf("%s without its file: %v", bad, f)
		}
	}
	if err := os.Symlink(filepath.Join(root, "ha.sh"), filepath.Join(root, "volume/org.xen.xapi.storage.ha/Volume.clone")); err != nil {
		t.Fatal(err)
	}
	f, _ = sr.smFeatures(context.Background())
	if !strings.Contains(strings.Join(f, " "), "VDI_RESET_ON_BOOT/2") || !strings.Contains(strings.Join(f, " "), "VDI_DELETE") {
		t.Fatalf("features %v", f)
	}
}

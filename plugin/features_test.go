package plugin

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// daemonFeatures derives the features xapi records for an SR type as
// xapi-storage-script does (ocaml/xapi-storage-script/main.ml,
// QueryImpl.query_impl): Plugin.Query's list with VDI_DESTROY renamed,
// plus one feature per method file found, plus the ones always added,
// plus VDI_RESET_ON_BOOT/2 whenever VDI_CLONE is there.
func daemonFeatures(declared []string, files []string) []string {
	var out []string
	for _, f := range declared {
		if f == "VDI_DESTROY" {
			f = "VDI_DELETE"
		}
		out = append(out, f)
	}
	byFile := [][2]string{
		{"SR.attach", "SR_ATTACH"}, {"SR.create", "SR_CREATE"}, {"SR.destroy", "SR_DELETE"},
		{"SR.detach", "SR_DETACH"}, {"SR.ls", "SR_SCAN"}, {"SR.stat", "SR_UPDATE"},
		{"SR.probe", "SR_PROBE"}, {"Volume.create", "VDI_CREATE"}, {"Volume.clone", "VDI_CLONE"},
		{"Volume.snapshot", "VDI_SNAPSHOT"}, {"Volume.resize", "VDI_RESIZE"},
		{"Volume.destroy", "VDI_DELETE"}, {"Volume.stat", "VDI_UPDATE"},
	}
	for _, p := range byFile {
		if slices.Contains(files, p[0]) {
			out = append(out, p[1])
		}
	}
	out = append(out, "VDI_ATTACH", "VDI_DETACH", "VDI_ACTIVATE", "VDI_DEACTIVATE", "VDI_INTRODUCE")
	if slices.Contains(out, "VDI_CLONE") {
		out = append(out, "VDI_RESET_ON_BOOT/2")
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// TestAdvertisedFeaturesAreTheWorkingOnes installs the tree and derives
// what `xe sm-list params=features` would show: snapshot, clone and
// reset-on-boot (issue 17), no SR_STATS (not built), and
// VDI_ATTACH_OFFLINE, without which xapi refuses the SR for the HA
// statefile (xha_statefile.ml, check_sr_can_host_statefile).
func TestAdvertisedFeaturesAreTheWorkingOnes(t *testing.T) {
	root := t.TempDir()
	if _, err := Install(InstallOptions{Root: root, Binary: fakeBinary(t)}); err != nil {
		t.Fatal(err)
	}
	deps := testDeps(t)
	for _, typ := range SRTypes() {
		dir := filepath.Join(root, ScriptRoot, "volume", VolumePrefix+typ)
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var files []string
		for _, e := range entries {
			files = append(files, e.Name())
		}
		svc, err := deps.Services(typ)
		if err != nil {
			t.Fatal(err)
		}
		got := daemonFeatures(svc.Describe().Features, files)
		for _, bad := range []string{"SR_STATS", "VDI_CONFIG_CBT", "VDI_MIRROR"} {
			if slices.Contains(got, bad) {
				t.Errorf("%s: xapi would offer %s, which sanvol does not do: %v", typ, bad, got)
			}
		}
		for _, need := range []string{"VDI_ATTACH_OFFLINE", "VDI_CREATE", "VDI_DELETE", "VDI_RESIZE", "VDI_UPDATE", "SR_PROBE", "SR_UPDATE",
			"VDI_SNAPSHOT", "VDI_CLONE", "VDI_RESET_ON_BOOT/2"} {
			if !slices.Contains(got, need) {
				t.Errorf("%s: %s missing from %v", typ, need, got)
			}
		}
	}
}

// TestInstallAddsSnapshotAndClone: an upgrade from a version without
// Volume.snapshot and Volume.clone adds both files to every volume
// plugin directory, which is what turns the features on in the daemon.
func TestInstallAddsSnapshotAndClone(t *testing.T) {
	root := t.TempDir()
	bin := fakeBinary(t)
	if _, err := Install(InstallOptions{Root: root, Binary: bin}); err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, typ := range SRTypes() {
		dir := filepath.Join(root, ScriptRoot, "volume", VolumePrefix+typ)
		dirs = append(dirs, dir)
		for _, m := range []string{"Volume.snapshot", "Volume.clone"} {
			if err := os.Remove(filepath.Join(dir, m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep, err := Install(InstallOptions{Root: root, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changed) != len(SRTypes()) {
		t.Errorf("upgrade changed %v, want the %d volume plugin directories", rep.Changed, len(SRTypes()))
	}
	for _, dir := range dirs {
		for _, m := range []string{"Volume.snapshot", "Volume.clone"} {
			if _, err := os.Lstat(filepath.Join(dir, m)); err != nil {
				t.Errorf("%s/%s missing after the upgrade: %v", dir, m, err)
			}
		}
	}
}

// Volume.snapshot and Volume.clone are what turns snapshot, clone and
// reset-on-boot on: with their files the daemon derives exactly those
// three features (main.ml, QueryImpl.query_impl), and their arguments are
// the schema's Volume.snapshot and Volume.clone requests.
func TestSnapshotAndCloneFilesAddTheirFeatures(t *testing.T) {
	names := []string{"Volume.snapshot", "Volume.clone"}
	for _, name := range names {
		i := slices.IndexFunc(volumeMethods, func(v *Method) bool { return v.Name == name })
		if i < 0 {
			t.Fatalf("%s is not installed", name)
		}
		if _, err := DecodeArgs(name, []byte(`{"dbg":"d","sr":"sr","key":"k"}`), volumeMethods[i].Args); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	base := daemonFeatures(nil, []string{"SR.ls"})
	with := daemonFeatures(nil, append([]string{"SR.ls"}, names...))
	var added []string
	for _, f := range with {
		if !slices.Contains(base, f) {
			added = append(added, f)
		}
	}
	if want := []string{"VDI_CLONE", "VDI_RESET_ON_BOOT/2", "VDI_SNAPSHOT"}; !slices.Equal(added, want) {
		t.Errorf("installing %v adds %v, want %v", names, added, want)
	}
}

package plugin

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

// snapshot records everything an install could change, including inode
// numbers and mtimes, so that "changes nothing" is checked literally.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		v := fmt.Sprintf("%s ino=%d mtime=%s", st.Mode(), sys.Ino, st.ModTime())
		if st.Mode()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			v += " -> " + l
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fakeBinary(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sanvol")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho fake\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInstallLayoutAndIdempotence(t *testing.T) {
	root := t.TempDir()
	bin := fakeBinary(t)
	rep, err := Install(InstallOptions{Root: root, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changed) != 5 || len(rep.Kept) != 0 {
		t.Fatalf("first install: %+v", rep)
	}
	// The XenAPI host plugin, as xapi finds it (xapi_plugins.ml
	// find_plugin): a link to the binary.
	hp := filepath.Join(root, "/etc/xapi.d/plugins/sanvol")
	if real, err := filepath.EvalSymlinks(hp); err != nil || real != filepath.Join(root, BinaryPath) {
		t.Fatalf("host plugin %s resolves to %s %v", hp, real, err)
	}
	if l, _ := os.Readlink(hp); l != HostPluginLink() {
		t.Fatalf("host plugin link %q, want %q", l, HostPluginLink())
	}
	for rel, methods := range PluginDirs() {
		for _, m := range methods {
			p := filepath.Join(root, ScriptRoot, rel, m)
			real, err := filepath.EvalSymlinks(p)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if real != filepath.Join(root, BinaryPath) {
				t.Fatalf("%s resolves to %s", p, real)
			}
		}
	}
	// Nothing but the plugin directories under volume/ and datapath/:
	// the daemon registers every entry there.
	for _, sub := range []string{"volume", "datapath"} {
		entries, _ := os.ReadDir(filepath.Join(root, ScriptRoot, sub))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("leftover %s/%s", sub, e.Name())
			}
		}
	}
	before := snapshot(t, root)
	rep, err = Install(InstallOptions{Root: root, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changed) != 0 {
		t.Fatalf("second install changed %v", rep.Changed)
	}
	if diff := cmp.Diff(before, snapshot(t, root)); diff != "" {
		t.Fatalf("second install changed the tree:\n%s", diff)
	}
}

func TestInstallRepairsAndSwapsWholeDirectories(t *testing.T) {
	root := t.TempDir()
	bin := fakeBinary(t)
	if _, err := Install(InstallOptions{Root: root, Binary: bin}); err != nil {
		t.Fatal(err)
	}
	dp := filepath.Join(root, ScriptRoot, "datapath", DatapathScheme)
	if err := os.Remove(filepath.Join(dp, "Datapath.detach")); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(dp)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Install(InstallOptions{Root: root, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{filepath.Join(ScriptRoot, "datapath", DatapathScheme)}, rep.Changed); diff != "" {
		t.Fatal(diff)
	}
	if _, err := os.Stat(filepath.Join(dp, "Datapath.detach")); err != nil {
		t.Fatal(err)
	}
	// Swapped whole (renameat2 RENAME_EXCHANGE), not repaired in place.
	if after, err := os.Stat(dp); err != nil || os.SameFile(before, after) {
		t.Fatalf("the directory was not replaced whole (err %v)", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(root, ScriptRoot, ".sanvol-*"))
	if len(leftovers) != 0 {
		t.Fatalf("leftovers: %v", leftovers)
	}
}

func TestInstallObserverShims(t *testing.T) {
	root := t.TempDir()
	if _, err := Install(InstallOptions{Root: root, Binary: fakeBinary(t), ObserverShims: true, ShimTarget: "/opt/x/sanvol"}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, ScriptRoot, "volume", VolumePrefix+TypeISCSI, "SR.attach")
	st, err := os.Lstat(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		t.Fatalf("shim %s: %v %v", p, st, err)
	}
	b, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(b), "#!/usr/bin/python3\n") || !strings.Contains(string(b), `os.execv("/opt/x/sanvol"`) {
		t.Fatalf("shim content:\n%s", b)
	}
}

func TestUninstall(t *testing.T) {
	root := t.TempDir()
	if _, err := Install(InstallOptions{Root: root, Binary: fakeBinary(t)}); err != nil {
		t.Fatal(err)
	}
	removed, err := Uninstall(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 5 || !slices.Contains(removed, "/etc/xapi.d/plugins/sanvol") {
		t.Fatalf("removed %v", removed)
	}
	// With HA's boot copies of CHAP secrets, those go too.
	if _, err := Install(InstallOptions{Root: root, Binary: fakeBinary(t)}); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(root, host.BootSecretDir, "0b6e1a3c-1111-4222-8333-944445555666")
	if err := os.MkdirAll(filepath.Dir(kept), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kept, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	// And the names of attached SRs' devices for the udev rule.
	marker := filepath.Join(root, volume.NoWatchDir, "uuid.0b6e1a3c-1111-4222-8333-944445555666")
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if removed, err = Uninstall(root); err != nil || len(removed) != 7 || !slices.Contains(removed, volume.NoWatchDir) {
		t.Fatalf("uninstall with boot secrets and udev names: %v %v", removed, err)
	}
	if _, err := os.Lstat(filepath.Join(root, volume.NoWatchDir)); !os.IsNotExist(err) {
		t.Fatalf("%s left: %v", volume.NoWatchDir, err)
	}
	if _, err := os.Lstat(filepath.Dir(filepath.Join(root, host.BootSecretDir))); !os.IsNotExist(err) {
		t.Fatalf("%s left: %v", filepath.Dir(host.BootSecretDir), err)
	}
	for _, sub := range []string{"volume", "datapath"} {
		entries, err := os.ReadDir(filepath.Join(root, ScriptRoot, sub))
		if err != nil || len(entries) != 0 {
			t.Fatalf("%s: %v %v (the daemon needs the directory to stay, empty)", sub, entries, err)
		}
	}
	if again, err := Uninstall(root); err != nil || len(again) != 0 {
		t.Fatalf("second uninstall: %v %v", again, err)
	}
}

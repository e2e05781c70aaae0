package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

// Install paths, relative to the install root.
const (
	ScriptRoot  = "/usr/libexec/xapi-storage-script"
	BinaryPath  = "/usr/libexec/sanvol/sanvol"
	stagePrefix = ".sanvol-stage-"
	oldPrefix   = ".sanvol-old-"
)

// InstallOptions controls Install.
type InstallOptions struct {
	Root string // install root ("/" on a host, DESTDIR when packaging)
	// Binary is the executable to install; default: the running one.
	Binary string
	// ObserverShims writes Python 3 method files that exec the binary,
	// for hosts with SMAPI tracing on (spec §3.6): the daemon then runs
	// method files with `python3 -m observer`, which fails on an ELF file.
	ObserverShims bool
	// ShimTarget is the binary path written into shims (default
	// BinaryPath; tests installing into a temporary root override it).
	ShimTarget string
}

// InstallReport says what Install changed.
type InstallReport struct {
	Changed []string
	Kept    []string
}

// Install lays out the binary and every plugin directory. Each plugin
// directory is fully built beside its final place and renamed into it,
// because the daemon registers a datapath directory once, when it
// appears (spec §2.3): one that appears empty is never registered. A
// directory whose content is already right is left alone, so re-running
// install changes nothing.
func Install(o InstallOptions) (InstallReport, error) {
	var rep InstallReport
	if o.Root == "" {
		o.Root = "/"
	}
	if o.ShimTarget == "" {
		o.ShimTarget = BinaryPath
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return rep, fmt.Errorf("find the running binary: %w", err)
		}
		o.Binary = exe
	}
	bin := filepath.Join(o.Root, BinaryPath)
	changed, err := installFile(o.Binary, bin, 0o755)
	if err != nil {
		return rep, fmt.Errorf("install %s: %w", bin, err)
	}
	note(&rep, BinaryPath, changed)

	scripts := filepath.Join(o.Root, ScriptRoot)
	for _, sub := range []string{"volume", "datapath"} {
		// The daemon watches these two with inotify and must find them.
		if err := os.MkdirAll(filepath.Join(scripts, sub), 0o755); err != nil {
			return rep, err
		}
	}
	dirs := PluginDirs()
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, rel := range names {
		final := filepath.Join(scripts, rel)
		want := map[string]fileSpec{}
		for _, m := range dirs[rel] {
			if o.ObserverShims {
				want[m] = fileSpec{content: shim(o.ShimTarget), mode: 0o755}
			} else {
				target, err := filepath.Rel(final, bin)
				if err != nil {
					return rep, err
				}
				want[m] = fileSpec{link: target}
			}
		}
		same, err := dirMatches(final, want)
		if err != nil {
			return rep, err
		}
		if same {
			note(&rep, filepath.Join(ScriptRoot, rel), false)
			continue
		}
		if err := replaceDir(final, want); err != nil {
			return rep, fmt.Errorf("install %s: %w", final, err)
		}
		note(&rep, filepath.Join(ScriptRoot, rel), true)
	}
	// The XenAPI host plugin (hostplugin.go) is a link too: xapi forks
	// it directly (xapi_plugins.ml call_plugin), never through SMAPI's
	// observer, so it needs no shim.
	hp := filepath.Join(o.Root, host.HostPluginDir, host.HostPluginName)
	changed, err = installLink(hp, bin)
	if err != nil {
		return rep, fmt.Errorf("install %s: %w", hp, err)
	}
	note(&rep, filepath.Join(host.HostPluginDir, host.HostPluginName), changed)
	return rep, nil
}

// HostPluginLink is the target of the host plugin's link: relative, like
// the method files', so that an install root (DESTDIR) resolves too.
func HostPluginLink() string {
	rel, _ := filepath.Rel(host.HostPluginDir, BinaryPath)
	return rel
}

// installLink makes link a symlink to bin (relative), replacing anything
// else there with one rename; a right link is left alone.
func installLink(link, bin string) (bool, error) {
	target, err := filepath.Rel(filepath.Dir(link), bin)
	if err != nil {
		return false, err
	}
	if got, err := os.Readlink(link); err == nil && got == target {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return false, err
	}
	tmp := filepath.Join(filepath.Dir(link), "."+filepath.Base(link)+".new")
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return false, err
	}
	return true, nil
}

// Uninstall removes the plugin directories and the binary. Each directory
// is first renamed out of the daemon's sight so that it never sees a
// half-removed plugin.
func Uninstall(root string) ([]string, error) {
	if root == "" {
		root = "/"
	}
	var removed []string
	for rel := range PluginDirs() {
		dir := filepath.Join(root, ScriptRoot, rel)
		if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		gone := filepath.Join(filepath.Dir(filepath.Dir(dir)), oldPrefix+filepath.Base(dir))
		_ = os.RemoveAll(gone)
		if err := os.Rename(dir, gone); err != nil {
			return removed, err
		}
		if err := os.RemoveAll(gone); err != nil {
			return removed, err
		}
		removed = append(removed, filepath.Join(ScriptRoot, rel))
	}
	// The host plugin, if it is sanvol's link: another file there is
	// not ours to remove.
	hp := filepath.Join(root, host.HostPluginDir, host.HostPluginName)
	if st, err := os.Lstat(hp); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		if target, _ := os.Readlink(hp); filepath.Base(target) == filepath.Base(BinaryPath) {
			if err := os.Remove(hp); err != nil {
				return removed, err
			}
			removed = append(removed, filepath.Join(host.HostPluginDir, host.HostPluginName))
		}
	}
	// The CHAP secrets kept for static-vdis' boot attach (host.BootSecrets)
	// must not outlive the package.
	secrets := filepath.Join(root, host.BootSecretDir)
	if _, err := os.Lstat(secrets); err == nil {
		if err := os.RemoveAll(secrets); err != nil {
			return removed, err
		}
		removed = append(removed, host.BootSecretDir)
		_ = os.Remove(filepath.Dir(secrets))
	}
	// The names of attached SRs' devices for the package's udev rule
	// (volume.NoWatchDir) mean nothing once the rule is gone.
	nowatch := filepath.Join(root, volume.NoWatchDir)
	if _, err := os.Lstat(nowatch); err == nil {
		if err := os.RemoveAll(nowatch); err != nil {
			return removed, err
		}
		removed = append(removed, volume.NoWatchDir)
	}
	bin := filepath.Join(root, BinaryPath)
	if err := os.Remove(bin); err == nil {
		removed = append(removed, BinaryPath)
		_ = os.Remove(filepath.Dir(bin))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return removed, err
	}
	sort.Strings(removed)
	return removed, nil
}

func note(r *InstallReport, p string, changed bool) {
	if changed {
		r.Changed = append(r.Changed, p)
	} else {
		r.Kept = append(r.Kept, p)
	}
}

type fileSpec struct {
	link    string // symlink target, or
	content []byte // regular file content
	mode    fs.FileMode
}

func shim(target string) []byte {
	return []byte(`#!/usr/bin/python3
# sanvol method shim: SMAPI tracing runs method files as Python source
# (python3 -m observer), so this file hands the call to the Go binary,
# keeping argv[0] (which names the plugin and the method), stdin and stdout.
import os
import sys

os.execv("` + target + `", [os.path.abspath(sys.argv[0])] + sys.argv[1:])
`)
}

func dirMatches(dir string, want map[string]fileSpec) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if len(entries) != len(want) {
		return false, nil
	}
	for _, e := range entries {
		spec, ok := want[e.Name()]
		if !ok {
			return false, nil
		}
		p := filepath.Join(dir, e.Name())
		if spec.link != "" {
			got, err := os.Readlink(p)
			if err != nil || got != spec.link {
				return false, nil
			}
			continue
		}
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != spec.mode {
			return false, nil
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, spec.content) {
			return false, nil
		}
	}
	return true, nil
}

func replaceDir(final string, want map[string]fileSpec) error {
	parent := filepath.Dir(final)
	stage, err := os.MkdirTemp(filepath.Dir(parent), stagePrefix+filepath.Base(final)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	for name, spec := range want {
		p := filepath.Join(stage, name)
		if spec.link != "" {
			// The link is relative to the final place; it dangles in
			// the stage, which sits beside volume/ and datapath/ so the
			// daemon never sees it, and resolves once renamed.
			if err := os.Symlink(spec.link, p); err != nil {
				return err
			}
			continue
		}
		if err := os.WriteFile(p, spec.content, spec.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, spec.mode); err != nil {
			return err
		}
	}
	if _, err := os.Lstat(final); err == nil {
		// One renameat2(RENAME_EXCHANGE) swaps the two directories: the
		// daemon's inotify watch sees the new plugin appear in place of the
		// old, never a moment without one. The stage then holds the old
		// directory and the deferred RemoveAll drops it.
		err := unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return &os.LinkError{Op: "renameat2 RENAME_EXCHANGE", Old: stage, New: final, Err: err}
		}
		// The filesystem (or kernel) refuses the exchange: fall back to
		// two renames, which leave the plugin absent between them.
		old := filepath.Join(filepath.Dir(parent), oldPrefix+filepath.Base(final))
		_ = os.RemoveAll(old)
		if err := os.Rename(final, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	return os.Rename(stage, final)
}

// installFile copies src to dst through a temporary file and a rename, so
// that a running call never executes a half-written binary; an identical
// file is left alone.
func installFile(src, dst string, mode fs.FileMode) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, err
	}
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, data) {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == mode {
			return false, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".new-")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(data)); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), dst)
}

// ResolvePluginDir turns "nvmetcp", "iscsi-ng", "sanvol" or a path into
// a plugin directory under root.
func ResolvePluginDir(root, name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	for rel := range PluginDirs() {
		base := filepath.Base(rel)
		if strings.EqualFold(base, name) || strings.EqualFold(base, VolumePrefix+name) {
			return filepath.Join(root, ScriptRoot, rel)
		}
	}
	return filepath.Join(root, ScriptRoot, "volume", VolumePrefix+name)
}

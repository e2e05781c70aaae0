// Package packaging checks the RPM that `make rpm` builds for XCP-ng
// dom0: its metadata, its files, that the binary in it is static, and what
// its scriptlets do when rpm runs them (install, refused removal while an
// SR is plugged, upgrade, erase), in a throwaway rpm root.
//
// It needs rpm (with rpmbuild), rpm2cpio and cpio (Debian: apt-get
// install rpm rpm2cpio cpio) and skips without them. SANVOL_RPM names a package to check
// instead of building one.
package packaging

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"rpm", "rpmbuild", "rpm2cpio", "cpio"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: apt-get install rpm rpm2cpio cpio", tool)
		}
	}
}

func version(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func run(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func must(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// thePackage is $SANVOL_RPM, or the package `make rpm` builds.
func thePackage(t *testing.T) string {
	t.Helper()
	needTools(t)
	if p := os.Getenv("SANVOL_RPM"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		root := repoRoot(t)
		out, err := run(t, root, nil, "make", "rpm")
		if err != nil {
			buildErr = fmt.Errorf("make rpm: %v\n%s", err, out)
			return
		}
		built = filepath.Join(root, "bin", "sanvol-"+version(t)+"-1.x86_64.rpm")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func TestRPMInfo(t *testing.T) {
	pkg := thePackage(t)
	info := must(t, "", nil, "rpm", "-qp", "--info", pkg)
	for _, re := range []string{`(?m)^Name\s*: sanvol$`, `(?m)^Version\s*: ` + regexp.QuoteMeta(version(t)) + `$`, `(?m)^Architecture: x86_64$`,
		`(?m)^License\s*: Apache-2.0$`, `(?m)^Group\s*: System Environment/Base$`, `(?m)^Vendor\s*: sanvol$`,
		`(?m)^Summary\s*: Shared NVMe/TCP and iSCSI storage repositories for XCP-ng \(SMAPIv3\)$`} {
		if !regexp.MustCompile(re).MatchString(info) {
			t.Errorf("rpm --info does not match %s:\n%s", re, info)
		}
	}
	// rpm 4.11 in XCP-ng 8.x dom0 cannot read zstd payloads.
	if c := must(t, "", nil, "rpm", "-qp", "--qf", "%{PAYLOADCOMPRESSOR}", pkg); c != "gzip" {
		t.Errorf("payload compressor %q", c)
	}
	// File digests in SHA-256 (PGPHASHALGO_SHA256), which rpm 4.11 reads
	// (rpmlib(FileDigests), since rpm 4.6).
	if a := must(t, "", nil, "rpm", "-qp", "--qf", "%{FILEDIGESTALGO}", pkg); a != "8" {
		t.Errorf("file digest algorithm %q, want 8 (SHA-256)", a)
	}
	// rpm 4.11 checks a package by its SHA-1 header digest or its MD5
	// header and payload digest (lib/package.c, rpmpkgRead); it knows
	// neither SHA-256 one, so without these it checks nothing.
	if d := must(t, "", nil, "rpm", "-qp", "--qf", "%{SHA1HEADER} %{SIGMD5}", pkg); strings.Contains(d, "(none)") {
		t.Errorf("SHA-1 header and MD5 digests: %q", d)
	}
}

func TestRPMFiles(t *testing.T) {
	pkg := thePackage(t)
	list := strings.Fields(must(t, "", nil, "rpm", "-qp", "--list", pkg))
	docs, _ := filepath.Glob(filepath.Join(repoRoot(t), "docs", "*.md"))
	want := []string{"/usr/libexec/sanvol", "/usr/libexec/sanvol/sanvol", "/usr/share/doc/sanvol", "/usr/share/doc/sanvol/README.md",
		"/usr/lib/udev/rules.d/12-sanvol-dm-disk.rules", "/usr/lib/udev/rules.d/90-sanvol-nowatch.rules", hostPlugin}
	want = append(want, pluginDirs...)
	for _, d := range docs {
		want = append(want, "/usr/share/doc/sanvol/"+filepath.Base(d))
	}
	sort.Strings(want)
	if strings.Join(list, "\n") != strings.Join(want, "\n") {
		t.Errorf("files:\n%s\nwant:\n%s", strings.Join(list, "\n"), strings.Join(want, "\n"))
	}
	for _, d := range []string{"/usr/share/doc/sanvol/install.md", "/usr/share/doc/sanvol/doctor.md"} {
		if !contains(list, d) {
			t.Errorf("%s is not packaged", d)
		}
	}
	modes := must(t, "", nil, "rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", pkg)
	if !strings.Contains(modes, "-rwxr-xr-x /usr/libexec/sanvol/sanvol\n") {
		t.Errorf("binary mode:\n%s", modes)
	}
	// No %doc files: dom0 installs with tsflags=nodocs, which would drop
	// them (rpmbuild flags files under /usr/share/doc as %doc by itself
	// unless told not to).
	for _, l := range strings.Split(must(t, "", nil, "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", pkg), "\n") {
		if f, _, _ := strings.Cut(l, " "); strings.Contains(f, "d") {
			t.Errorf("a %%doc file, which tsflags=nodocs would not install: %s", l)
		}
	}
}

// hostPlugin is the XenAPI host plugin, a link to the binary the package
// owns (xen-api ocaml/xapi/xapi_plugins.ml looks plugins up there).
const hostPlugin = "/etc/xapi.d/plugins/sanvol"

// pluginDirs are the directories `sanvol install` fills; the package owns
// them, as XCP-ng's SMAPIv3 plugin packages own theirs.
var pluginDirs = []string{
	"/usr/libexec/xapi-storage-script/datapath/sanvol",
	"/usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.iscsi-ng",
	"/usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.nvmetcp",
}

// rpm411Features are the rpmlib() features rpm 4.11.3 provides (its
// lib/rpmds.c, rpmlibProvides; the bzip2, xz/lzma, Lua and file
// capability ones depend on how it was built), the rpm of XCP-ng 8.2 and
// 8.3 dom0: a package requiring any other one does not install there.
// rpm 4.11.3 built from its source installed, upgraded and erased the
// package (2026-12-07); its rpm -i --test missed only the dom0 packages
// and /bin/sh.
var rpm411Features = map[string]string{
	"VersionedDependencies":    "3.0.3-1",
	"CompressedFileNames":      "3.0.4-1",
	"PayloadIsBzip2":           "3.0.5-1",
	"PayloadIsXz":              "5.2-1",
	"PayloadIsLzma":            "4.4.2-1",
	"PayloadFilesHavePrefix":   "4.0-1",
	"ExplicitPackageProvide":   "4.0-1",
	"HeaderLoadSortsTags":      "4.0.1-1",
	"ScriptletInterpreterArgs": "4.0.3-1",
	"PartialHardlinkSets":      "4.0.4-1",
	"ConcurrentAccess":         "4.1-1",
	"BuiltinLuaScripts":        "4.2.2-1",
	"FileDigests":              "4.6.0-1",
	"FileCaps":                 "4.6.1-1",
	"ScriptletExpansion":       "4.9.0-1",
	"TildeInVersions":          "4.10.0-1",
}

// The package declares what it runs, by dom0's package names, and
// nothing XCP-ng 8.x lacks (nvme-cli, an rpmlib() feature newer than rpm
// 4.11 such as PayloadIsZstd, a generated library dependency).
func TestRPMRequires(t *testing.T) {
	pkg := thePackage(t)
	var reqs []string
	featureRE := regexp.MustCompile(`^rpmlib\((\w+)\) <= (\S+)$`)
	for _, l := range strings.Split(must(t, "", nil, "rpm", "-qp", "--requires", pkg), "\n") {
		switch l = strings.TrimSpace(l); {
		case l == "":
		case strings.HasPrefix(l, "rpmlib("):
			m := featureRE.FindStringSubmatch(l)
			if m == nil || rpm411Features[m[1]] != m[2] {
				t.Errorf("requires %q, which rpm 4.11 (XCP-ng 8.x) does not provide", l)
			}
		case l == "/bin/sh":
			// The scriptlets' interpreter (bash provides it in dom0).
		default:
			reqs = append(reqs, l)
		}
	}
	sort.Strings(reqs)
	want := []string{"device-mapper-multipath", "iscsi-initiator-utils", "lvm2", "util-linux", "xapi-storage-script"}
	if strings.Join(reqs, ",") != strings.Join(want, ",") {
		t.Errorf("requires %q, want %q", reqs, want)
	}
	// The package itself, nothing generated from its files.
	prov := strings.Fields(strings.ReplaceAll(must(t, "", nil, "rpm", "-qp", "--provides", pkg), " = ", "="))
	sort.Strings(prov)
	evr := version(t) + "-" + must(t, "", nil, "rpm", "-qp", "--qf", "%{RELEASE}", pkg)
	for _, p := range prov {
		if p != "sanvol="+evr && p != "sanvol(x86-64)="+evr {
			t.Errorf("provides %q", p)
		}
	}
	for _, d := range pluginDirs {
		// %ghost: sanvol install/uninstall make and remove them, rpm
		// only records the ownership.
		if owner := must(t, "", nil, "rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILENAMES}\n]", pkg); !strings.Contains(owner, "drwxr-xr-x g "+d+"\n") {
			t.Errorf("%s is not a %%ghost directory of the package:\n%s", d, owner)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// scripts splits `rpm -qp --scripts` by scriptlet.
func scripts(t *testing.T, pkg string) map[string]string {
	out := must(t, "", nil, "rpm", "-qp", "--scripts", pkg)
	parts := map[string]string{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		if m := regexp.MustCompile(`^(\w+) scriptlet \(using /bin/sh\):$`).FindStringSubmatch(line); m != nil {
			cur = m[1]
			continue
		}
		parts[cur] += line + "\n"
	}
	return parts
}

func TestRPMScriptlets(t *testing.T) {
	s := scripts(t, thePackage(t))
	// The scriptlets are packaging/scripts as they are (rpmbuild expands
	// macros in them: none may change them).
	for name, file := range map[string]string{"postinstall": "postinstall.sh", "preuninstall": "preremove.sh", "postuninstall": "postremove.sh"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), "packaging", "scripts", file))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.TrimRight(s[name], "\n"), strings.TrimRight(string(b), "\n"); got != want {
			t.Errorf("the %s scriptlet is not packaging/scripts/%s:\n%s", name, file, got)
		}
	}
	for name, wants := range map[string][]string{
		"postinstall": {`"$bin" install --root / --binary "$bin"`, "systemctl try-restart xapi-storage-script.service", "xe-toolstack-restart", "--observer-shims"},
		"preuninstall": {`[ "$1" = 0 ] || exit 0`, "/run/sanvol/sr/*.json", "currently-attached=true", "refusing to remove sanvol", "exit 1",
			`"$bin" uninstall --root /`},
		"postuninstall": {`[ "$1" = 0 ] || exit 0`, "xe-toolstack-restart"},
	} {
		body, ok := s[name]
		if !ok {
			t.Errorf("no %s scriptlet; have %v", name, keys(s))
			continue
		}
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Errorf("%s lacks %q:\n%s", name, w, body)
			}
		}
	}
	// An upgrade runs the old package's %preun with $1=1: the guard must
	// come before anything that undoes the install.
	pre := s["preuninstall"]
	if strings.Index(pre, `[ "$1" = 0 ] || exit 0`) > strings.Index(pre, "uninstall --root") {
		t.Error("the preuninstall scriptlet uninstalls before checking for an upgrade")
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// extract unpacks the payload with rpm2cpio | cpio. rpmbuild names the
// payload files ./usr/…, other builders (nfpm) /usr/…, which GNU cpio
// would write to / itself.
func extract(t *testing.T, pkg string) string {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `rpm2cpio "$1" | cpio -idm --quiet --no-absolute-filenames`, "sh", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpm2cpio | cpio: %v\n%s", err, out)
	}
	return dir
}

// The binary must run on any dom0: no ELF interpreter, no shared library.
func TestRPMBinaryIsStatic(t *testing.T) {
	pkg := thePackage(t)
	bin := filepath.Join(extract(t, pkg), "usr/libexec/sanvol/sanvol")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		t.Errorf("machine %v class %v", f.Machine, f.Class)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter (PT_INTERP): it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if out := must(t, "", nil, bin, "version"); !strings.Contains(out, "sanvol "+version(t)) {
		t.Errorf("sanvol version: %q", out)
	}
}

// chroot makes an rpm root with what the scriptlets run: /bin/sh and the
// coreutils they call, with their shared libraries.
func chroot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running the scriptlets in an rpm root needs root (rpm chroots into it)")
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "tmp", "var/tmp", "run", "dev", "usr/libexec"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	libRE := regexp.MustCompile(`(/\S+\.so[.\d]*) \(0x`)
	for _, tool := range []string{"sh", "ln", "mv", "rm"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s not found", tool)
		}
		copyFile(t, p, filepath.Join(root, "bin", tool))
		out, _ := run(t, "", nil, "ldd", p)
		for _, m := range libRE.FindAllStringSubmatch(out, -1) {
			copyFile(t, m[1], filepath.Join(root, m[1]))
		}
	}
	if _, err := os.Stat("/etc/debian_version"); err == nil {
		// Debian's rpm wants to be told that this is on purpose.
		rpmArgs = []string{"--force-debian"}
	}
	must(t, "", nil, "rpm", "--root", root, "--initdb")
	return root
}

var rpmArgs []string

func rpmIn(t *testing.T, root string, args ...string) (string, error) {
	return run(t, "", nil, "rpm", append(append([]string{"--root", root}, rpmArgs...), args...)...)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// upgradePackage builds the same package with release 2.
func upgradePackage(t *testing.T) string {
	dir := t.TempDir()
	must(t, repoRoot(t), nil, "make", "rpm", "RPM_RELEASE=2", "RPM_OUT="+dir)
	return filepath.Join(dir, "sanvol-"+version(t)+"-2.x86_64.rpm")
}

const srUUID = "0b6f3d2a-2222-4e0f-8a11-7c9d5e3f1a2b"

// The whole life of the package as rpm runs it: install, refused removal
// while an SR is plugged, upgrade, erase.
func TestRPMLifecycle(t *testing.T) {
	pkg := thePackage(t)
	root := chroot(t)
	plugin := filepath.Join(root, "usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.nvmetcp")

	out, err := rpmIn(t, root, "-i", "--nodeps", pkg)
	if err != nil {
		t.Fatalf("rpm -i: %v\n%s", err, out)
	}
	// The plugin directories %post made belong to the package.
	for _, d := range pluginDirs {
		if q, err := rpmIn(t, root, "-qf", d); err != nil || !strings.HasPrefix(q, "sanvol-") {
			t.Errorf("rpm -qf %s: %q %v", d, q, err)
		}
	}
	if !strings.Contains(out, "Run xe-toolstack-restart") {
		t.Errorf("no toolstack hint on install:\n%s", out)
	}
	bin := filepath.Join(root, "usr/libexec/sanvol/sanvol")
	if got, err := filepath.EvalSymlinks(filepath.Join(root, hostPlugin)); err != nil || got != bin {
		t.Errorf("%s resolves to %q (%v), want %s", hostPlugin, got, err, bin)
	}
	if q, err := rpmIn(t, root, "-qf", hostPlugin); err != nil || !strings.HasPrefix(q, "sanvol-") {
		t.Errorf("rpm -qf %s: %q %v", hostPlugin, q, err)
	}
	for _, dir := range []string{plugin, filepath.Join(root, "usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.iscsi-ng"), filepath.Join(root, "usr/libexec/xapi-storage-script/datapath/sanvol")} {
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) == 0 {
			t.Fatalf("plugin directory %s: %v, %d entries", dir, err, len(entries))
		}
		for _, e := range entries {
			if e.Type()&os.ModeSymlink == 0 {
				t.Errorf("%s/%s is not a symlink", dir, e.Name())
				continue
			}
			if got, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name())); err != nil || got != bin {
				t.Errorf("%s/%s resolves to %q (%v), want %s", dir, e.Name(), got, err, bin)
			}
		}
	}

	// An SR plugged on this host: removal is refused, nothing changes.
	state := filepath.Join(root, "run/sanvol/sr", srUUID+".json")
	if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, []byte(`{"type":"nvmetcp","uuid":"`+srUUID+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = rpmIn(t, root, "-e", "sanvol")
	if err == nil {
		t.Fatalf("rpm -e succeeded with an SR plugged:\n%s", out)
	}
	if !strings.Contains(out, "refusing to remove sanvol: these sanvol SRs are plugged on this host: "+srUUID) {
		t.Errorf("refusal message:\n%s", out)
	}
	if q, err := rpmIn(t, root, "-q", "sanvol"); err != nil {
		t.Fatalf("package gone after a refused removal: %s", q)
	}
	if _, err := os.Lstat(filepath.Join(plugin, "SR.attach")); err != nil {
		t.Fatalf("plugin removed after a refused removal: %v", err)
	}

	// Volume.snapshot and Volume.clone are method files like the others:
	// the daemon derives VDI_SNAPSHOT, VDI_CLONE and VDI_RESET_ON_BOOT/2
	// from the files alone (xapi-storage-script main.ml,
	// QueryImpl.query_impl), so an upgrade must keep them.
	methods := []string{filepath.Join(plugin, "Volume.snapshot"), filepath.Join(plugin, "Volume.clone")}

	// An upgrade with the SR still plugged keeps everything in place.
	up := upgradePackage(t)
	out, err = rpmIn(t, root, "-U", "--nodeps", up)
	if err != nil {
		t.Fatalf("rpm -U: %v\n%s", err, out)
	}
	if q := must(t, "", nil, "rpm", "--root", root, "-q", "--qf", "%{RELEASE}", "sanvol"); q != "2" {
		t.Errorf("release after upgrade: %q", q)
	}
	for _, p := range []string{filepath.Join(plugin, "SR.attach"), filepath.Join(root, "usr/libexec/sanvol/sanvol")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after upgrade: %v", err)
		}
	}

	for _, p := range methods {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("method file after the upgrade: %v", err)
		}
	}

	// Unplugged: the erase removes the plugin, and rpm finds every file
	// it owns (no "remove failed" warning).
	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	out, err = rpmIn(t, root, "-e", "sanvol")
	if err != nil {
		t.Fatalf("rpm -e: %v\n%s", err, out)
	}
	if strings.Contains(out, "remove failed") || strings.Contains(out, "warning") {
		t.Errorf("rpm -e warned:\n%s", out)
	}
	for _, p := range []string{plugin, filepath.Join(root, "usr/libexec/sanvol")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			entries, _ := os.ReadDir(p)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s still exists after erase (%v): %v", p, err, names)
		}
	}
	if !bytes.Contains([]byte(out), []byte("xe-toolstack-restart")) {
		t.Errorf("no toolstack hint on removal:\n%s", out)
	}
}

package host

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRootPathAndUnroot(t *testing.T) {
	cases := []struct {
		name, dir, host, real string
	}{
		{"real host", "/", "/sys/class/nvme", "/sys/class/nvme"},
		{"empty is the real host", "", "/run/sanvol", "/run/sanvol"},
		{"test tree", "/tmp/t", "/etc/nvme/hostnqn", "/tmp/t/etc/nvme/hostnqn"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := NewRoot(c.dir)
			if got := r.Path(c.host); got != c.real {
				t.Errorf("Path(%q) = %q, want %q", c.host, got, c.real)
			}
			if got := r.Unroot(c.real); got != c.host {
				t.Errorf("Unroot(%q) = %q, want %q", c.real, got, c.host)
			}
		})
	}
	// A path outside the tree is left alone rather than turned into a
	// host path it is not.
	if got := NewRoot("/tmp/t").Unroot("/var/x"); got != "/var/x" {
		t.Errorf("Unroot outside the root = %q", got)
	}
}

func TestRootFilesStayInsideTheTree(t *testing.T) {
	dir := t.TempDir()
	r := NewRoot(dir)
	if err := r.WriteFileAtomic("/etc/sanvol/x.conf", []byte("a\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString("/etc/sanvol/x.conf"); err != nil || got != "a" {
		t.Fatalf("ReadString = %q, %v", got, err)
	}
	st, err := os.Stat(filepath.Join(dir, "etc/sanvol/x.conf"))
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("the file is not at its rooted place with its mode: %v %v", st, err)
	}
	if err := r.WriteFileAtomic("/etc/sanvol/x.conf", []byte("b\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "etc/sanvol/.*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if err := r.Symlink("../x.conf", "/etc/sanvol/link"); err != nil {
		t.Fatal(err)
	}
	if err := r.MkdirAll("/etc/sanvol/d", 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := r.EvalSymlinks("/etc/sanvol/d/../x.conf"); err != nil || got != "/etc/sanvol/x.conf" {
		t.Errorf("EvalSymlinks = %q, %v", got, err)
	}
	if m, err := r.Glob("/etc/sanvol/*.conf"); err != nil || len(m) != 1 || m[0] != "/etc/sanvol/x.conf" {
		t.Errorf("Glob = %v, %v", m, err)
	}
	if err := r.Remove("/etc/sanvol/missing"); err != nil {
		t.Errorf("Remove of a missing file = %v", err)
	}
	if r.Exists("/etc/sanvol/missing") || !r.Exists("/etc/sanvol/x.conf") {
		t.Error("Exists is wrong")
	}
}

func TestReadRole(t *testing.T) {
	cases := []struct {
		name    string
		conf    string // "" = no pool.conf
		want    Role
		wantErr bool
	}{
		{"stand-alone host", "", Role{Master: true}, false},
		{"master", "master\n", Role{Master: true}, false},
		{"member", "slave:10.0.0.1\n", Role{MasterAddr: "10.0.0.1"}, false},
		{"garbage", "primary\n", Role{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := NewRoot(t.TempDir())
			if c.conf != "" {
				if err := r.WriteFileAtomic(PoolConf, []byte(c.conf), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadRole(r)
			if (err != nil) != c.wantErr || got != c.want {
				t.Fatalf("ReadRole = %+v, %v; want %+v (error %v)", got, err, c.want, c.wantErr)
			}
		})
	}
	// An unreadable pool.conf is an error, not a master: guessing master
	// would let two hosts write the VG metadata.
	r := NewRoot(t.TempDir())
	if err := r.MkdirAll(PoolConf, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRole(r); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadRole of a directory = %v", err)
	}
}

// Different names are different locks; the same name excludes.
func TestFileLockerNamesAreIndependent(t *testing.T) {
	l := FileLocker{Root: NewRoot(t.TempDir())}
	a, err := l.Lock(context.Background(), "sr-a")
	if err != nil {
		t.Fatal(err)
	}
	defer a()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	b, err := l.Lock(ctx, "sr-b")
	if err != nil {
		t.Fatalf("a lock on another name waited: %v", err)
	}
	b()
	if !l.Root.Exists(LockDir + "/sr-a.lock") {
		t.Errorf("the lock file is not under %s of the root", LockDir)
	}
}

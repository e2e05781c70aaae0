package lvm

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

// versionRunner answers `lvm version` and counts how often it was asked.
type versionRunner struct {
	calls int
	out   string
}

func (r *versionRunner) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	r.calls++
	return host.Result{Stdout: []byte(r.out)}, nil
}

func TestVersionCacheAcrossProcesses(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	if err := root.MkdirAll("/usr/sbin", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := root.WriteFile("/usr/sbin/lvm", []byte("lvm 2.03.16"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := &versionRunner{out: "  LVM version:     2.03.16(2) (2022-05-18)\n  Library version: 1.02.185\n"}
	ctx := context.Background()
	// Each client stands for one plugin process.
	for i := 0; i < 3; i++ {
		v, err := New(run, nil).WithVersionCache(root).Version(ctx)
		if err != nil || v != (Version{2, 3, 16}) {
			t.Fatalf("process %d: %v, %v", i, v, err)
		}
	}
	if run.calls != 1 {
		t.Fatalf("lvm version ran %d times for 3 processes, want 1", run.calls)
	}
	// An lvm2 upgrade replaces the binary: the cache must not be trusted.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(root.Path("/usr/sbin/lvm"), later, later); err != nil {
		t.Fatal(err)
	}
	run.out = "  LVM version:     2.03.22(2) (2023-08-02)\n"
	v, err := New(run, nil).WithVersionCache(root).Version(ctx)
	if err != nil || v != (Version{2, 3, 22}) || run.calls != 2 {
		t.Fatalf("after upgrade: %v, %v, %d calls", v, err, run.calls)
	}
	// Without the cache (tests, tools) every client asks once.
	if _, err := New(run, nil).Version(ctx); err != nil || run.calls != 3 {
		t.Fatalf("uncached: %v, %d calls", err, run.calls)
	}
}

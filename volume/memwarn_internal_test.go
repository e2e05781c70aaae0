package volume

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sanvol/sanvol/host"
)

// snapshot-memory-check=warn (Stack.MemoryWarnOnly) lets through, with a
// warning, the snapshot the check would refuse; without it the refusal
// stands.
func TestMemoryWarnOnly(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, meminfoPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	// A 512 MiB dom0 with 130 MiB available keeps 128 MiB: a 1 GiB VDI's
	// overlay (about 5 MiB at worst) does not fit.
	if err := os.WriteFile(p, []byte("MemTotal:         524288 kB\nMemFree:           10000 kB\nMemAvailable:     133120 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	st := &Stack{Root: host.NewRoot(dir), Log: zap.New(core)}
	if err := st.checkOverlayHere("snapshot", "k", 1<<30, 1<<30); !errors.Is(err, host.ErrNoSpace) {
		t.Fatalf("check: %v, want NoSpace", err)
	}
	if logs.Len() != 0 {
		t.Fatalf("a refusal also warned: %v", logs.All())
	}
	st.MemoryWarnOnly = true
	if err := st.checkOverlayHere("snapshot", "k", 1<<30, 1<<30); err != nil {
		t.Fatalf("warn only: %v", err)
	}
	if logs.FilterMessageSnippet("snapshot-memory-check=warn").Len() != 1 {
		t.Fatalf("warn only: logs %v", logs.All())
	}
}

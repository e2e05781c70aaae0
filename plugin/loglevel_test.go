package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
)

func TestLogLevelFile(t *testing.T) {
	cases := []struct {
		name    string
		content string // "" = no file
		want    string
	}{
		{"no file", "", LogInfo},
		{"debug", "log-level=debug\n", LogDebug},
		{"spaces and comment", "# x\n log-level = debug \n", LogDebug},
		{"info", "log-level=info\n", LogInfo},
		{"unknown value", "log-level=trace\n", LogInfo},
		{"other key", "verbose=debug\n", LogInfo},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := host.NewRoot(t.TempDir())
			if c.content != "" {
				p := root.Path(ConfigPath)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := ReadLogLevel(root); got != c.want {
				t.Errorf("ReadLogLevel = %q, want %q", got, c.want)
			}
		})
	}
}

func TestWriteLogLevelRoundTrip(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	for _, level := range []string{LogDebug, LogInfo, LogDebug} {
		if err := WriteLogLevel(root, level); err != nil {
			t.Fatal(err)
		}
		if got := ReadLogLevel(root); got != level {
			t.Errorf("after writing %s, ReadLogLevel = %s", level, got)
		}
	}
	if err := WriteLogLevel(root, "trace"); err == nil {
		t.Error("WriteLogLevel accepted an unknown level")
	}
}

// sanvol log-level rewrites its own line and keeps the admin's other
// settings; snapshot-memory-check=warn is read, anything else is not.
func TestConfigKeepsOtherSettings(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	if SnapshotMemoryWarnOnly(root) {
		t.Fatal("no file: warn only")
	}
	if err := root.WriteFileAtomic(ConfigPath, []byte("# mine\nsnapshot-memory-check = warn\nlog-level=info\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !SnapshotMemoryWarnOnly(root) {
		t.Fatal("snapshot-memory-check=warn not read")
	}
	for _, level := range []string{LogDebug, LogInfo} {
		if err := WriteLogLevel(root, level); err != nil {
			t.Fatal(err)
		}
		b, _ := root.ReadFile(ConfigPath)
		if !SnapshotMemoryWarnOnly(root) || ReadLogLevel(root) != level || strings.Count(string(b), "log-level=") != 1 ||
			strings.Count(string(b), "# Written by") != 1 || !strings.Contains(string(b), "# mine") {
			t.Fatalf("after log-level %s:\n%s", level, b)
		}
	}
	if err := root.WriteFileAtomic(ConfigPath, []byte("snapshot-memory-check=off\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if SnapshotMemoryWarnOnly(root) {
		t.Fatal("only warn turns the refusal into a warning")
	}
}

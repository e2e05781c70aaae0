package host

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeProc writes a /proc with one comm file per PID under a test root.
func fakeProc(t *testing.T, comms map[string]string) Root {
	t.Helper()
	dir := t.TempDir()
	for pid, comm := range comms {
		d := filepath.Join(dir, "proc", pid)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if comm == "" {
			continue // a process that exited between the listing and the read
		}
		if err := os.WriteFile(filepath.Join(d, "comm"), []byte(comm+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	// Entries of /proc that are not processes.
	for _, f := range []string{"proc/self", "proc/sys/kernel"} {
		if err := os.MkdirAll(filepath.Join(dir, f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return NewRoot(dir)
}

func TestProcesses(t *testing.T) {
	root := fakeProc(t, map[string]string{
		"1":    "systemd",
		"912":  "iscsid",
		"913":  "iscsid",
		"1040": "multipathd",
		"77":   "",
	})
	got, err := Processes(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []Process{{1, "systemd"}, {912, "iscsid"}, {913, "iscsid"}, {1040, "multipathd"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Processes (-want +got):\n%s", d)
	}
	for _, tc := range []struct {
		name string
		want []int
	}{
		{"iscsid", []int{912, 913}},
		{"multipathd", []int{1040}},
		{"iscsi", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ProcessesNamed(root, tc.name); !cmp.Equal(got, tc.want) {
				t.Errorf("ProcessesNamed(%q) = %v, want %v", tc.name, got, tc.want)
			}
		})
	}
}

func TestKernelRelease(t *testing.T) {
	root := fakeProc(t, nil)
	if got := KernelRelease(root); got != "unknown" {
		t.Errorf("without osrelease: %q, want unknown", got)
	}
	if err := os.WriteFile(root.Path("/proc/sys/kernel/osrelease"), []byte("6.1.0-28-amd64\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if got := KernelRelease(root); got != "6.1.0-28-amd64" {
		t.Errorf("KernelRelease = %q", got)
	}
}

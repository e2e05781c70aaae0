package blockdev

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

// dmRunner records dmsetup command lines and fails the ones named in fail.
type dmRunner struct {
	calls []string
	fail  map[string]error
	out   map[string]string
}

func (r *dmRunner) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	line := strings.Join(append([]string{c.Name}, c.Args...), " ")
	r.calls = append(r.calls, line)
	if ctx.Err() != nil {
		return host.Result{}, ctx.Err()
	}
	for prefix, err := range r.fail {
		if strings.HasPrefix(line, prefix) {
			return host.Result{}, err
		}
	}
	return host.Result{Stdout: []byte(r.out[line])}, nil
}

func TestTables(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  Table
		want string
	}{
		{"linear", Linear("/dev/VG/base", 262144), "0 262144 linear /dev/VG/base 0"},
		{"snapshot", Snapshot("/dev/VG/base", "/dev/VG/cow", 262144), "0 262144 snapshot /dev/VG/base /dev/VG/cow P 16"},
		{"merge", SnapshotMerge("253:3", "253:4", 8), "0 8 snapshot-merge 253:3 253:4 P 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s := tc.got.String(); s != tc.want {
				t.Errorf("got %q, want %q", s, tc.want)
			}
			back, err := ParseTable(tc.want + "\n")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.got, back); diff != "" {
				t.Errorf("ParseTable(String()) differs (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := ParseTable("0 x linear /dev/a 0"); err == nil {
		t.Error("a non-numeric length was accepted")
	}
}

func TestParseSnapStatus(t *testing.T) {
	for _, tc := range []struct {
		line   string
		want   SnapStatus
		merged bool
	}{
		{"0 262144 snapshot 32/327680 32", SnapStatus{Allocated: 32, Total: 327680, Metadata: 32}, true},
		{"0 262144 snapshot-merge 131104/327680 288", SnapStatus{Allocated: 131104, Total: 327680, Metadata: 288}, false},
		{"0 262144 snapshot Invalid", SnapStatus{State: "Invalid"}, false},
		{"0 262144 snapshot-merge Merge failed", SnapStatus{State: "Merge failed"}, false},
	} {
		t.Run(tc.line, func(t *testing.T) {
			got, err := ParseSnapStatus(tc.line)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || got.Merged() != tc.merged {
				t.Errorf("got %+v merged=%v, want %+v merged=%v", got, got.Merged(), tc.want, tc.merged)
			}
		})
	}
	for _, bad := range []string{"0 8 linear 253:1 0", "0 8 snapshot 1/x 2", ""} {
		if _, err := ParseSnapStatus(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

func TestSwitchResumesOnEveryPath(t *testing.T) {
	loadErr := errors.New("device-mapper: reload ioctl failed: Invalid argument")
	for _, tc := range []struct {
		name    string
		fail    map[string]error
		wantErr error
		want    []string
	}{
		{"ok", nil, nil, []string{"dmsetup suspend k", "dmsetup reload k --table 0 8 linear b 0", "dmsetup resume k"}},
		{"load fails", map[string]error{"dmsetup reload": loadErr}, loadErr,
			[]string{"dmsetup suspend k", "dmsetup reload k --table 0 8 linear b 0", "dmsetup resume k"}},
		{"suspend fails", map[string]error{"dmsetup suspend": loadErr}, loadErr, []string{"dmsetup suspend k"}},
		{"resume fails", map[string]error{"dmsetup resume": loadErr}, ErrLeftSuspended,
			[]string{"dmsetup suspend k", "dmsetup reload k --table 0 8 linear b 0", "dmsetup resume k"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &dmRunner{fail: tc.fail}
			err := NewDM(r, 0).Switch(context.Background(), "k", Linear("b", 8))
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, r.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSuspendedResumesInReverseEvenWhenCancelled(t *testing.T) {
	r := &dmRunner{}
	ctx, cancel := context.WithCancel(context.Background())
	err := NewDM(r, 0).Suspended(ctx, []string{"k", "m"}, func(context.Context) error {
		cancel() // the call's deadline passes while the devices are held
		return context.Canceled
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	want := []string{"dmsetup suspend k", "dmsetup suspend m", "dmsetup resume m", "dmsetup resume k"}
	if diff := cmp.Diff(want, r.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

func TestCreateReadOnly(t *testing.T) {
	r := &dmRunner{}
	if err := NewDM(r, 0).Create(context.Background(), "m", Snapshot("b", "c", 8), true); err != nil {
		t.Fatal(err)
	}
	if want := "dmsetup create m --readonly --table 0 8 snapshot b c P 16"; r.calls[0] != want {
		t.Errorf("got %q, want %q", r.calls[0], want)
	}
}

// TestParseSnapStatusLab reads the status lines the 6.1 kernel gave in the
// lab's TestDMSnapshotPrimitives: an overlay in use, then a merge done.
func TestParseSnapStatusLab(t *testing.T) {
	b, err := os.ReadFile("testdata/dmsetup-status-snapshot-linux-6.1.0-50.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := []struct {
		st     SnapStatus
		merged bool
	}{
		{SnapStatus{Allocated: 65696, Total: 163840, Metadata: 160}, false},
		{SnapStatus{Allocated: 32, Total: 163840, Metadata: 32}, true},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines", len(lines))
	}
	for i, line := range lines {
		got, err := ParseSnapStatus(line)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[i].st || got.Merged() != want[i].merged {
			t.Errorf("%q: got %+v merged=%v", line, got, got.Merged())
		}
	}
}

func TestParseInfo(t *testing.T) {
	for _, c := range []struct {
		in   string
		want DevInfo
	}{
		{"L--w:253:3\n", DevInfo{Exists: true, Dev: "253:3"}},
		{"LIsr:253:12", DevInfo{Exists: true, Inactive: true, Suspended: true, ReadOnly: true, Dev: "253:12"}},
	} {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseInfo(c.in)
			if err != nil || got != c.want {
				t.Fatalf("ParseInfo(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			}
		})
	}
	if _, err := ParseInfo("L--w 253 3"); err == nil {
		t.Fatal("a line without separators parsed")
	}
}

// A device that does not exist is an answer, not an error.
func TestInfoOfAMissingDevice(t *testing.T) {
	r := &dmRunner{fail: map[string]error{"dmsetup info": &host.ExitError{Cmd: "dmsetup info", Code: 1, Stderr: "Device does not exist.\nCommand failed."}}}
	got, err := NewDM(r, 0).Info(context.Background(), "nope")
	if err != nil || got.Exists {
		t.Fatalf("Info of a missing device = %+v, %v", got, err)
	}
}

package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

// sysRoot builds a fake /sys/block under a temporary root from files
// (path → content) and directories holding only links (path → names).
func sysRoot(t *testing.T, files map[string]string, dirs map[string][]string) host.Root {
	t.Helper()
	dir := t.TempDir()
	for p, v := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for p, names := range dirs {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(full, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.Symlink("../../"+n, filepath.Join(full, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return host.NewRoot(dir)
}

func TestDMDevices(t *testing.T) {
	root := sysRoot(t, map[string]string{
		"sys/block/dm-0/dm/uuid":      "mpath-36001405abcdef",
		"sys/block/dm-0/dm/name":      "36001405abcdef",
		"sys/block/dm-0/dm/suspended": "0",
		"sys/block/dm-0/size":         "2048",
		"sys/block/dm-1/dm/uuid":      "LVM-vguuidlvuuid",
		"sys/block/dm-1/dm/name":      "VG_XenStorage--x-VHD--y",
		"sys/block/dm-1/dm/suspended": "1",
		"sys/block/dm-1/size":         "8",
		"sys/block/sda/size":          "2048",
	}, map[string][]string{
		"sys/block/dm-0/slaves":  {"sdb", "sda"},
		"sys/block/dm-0/holders": {"dm-1"},
		"sys/block/dm-1/slaves":  {"dm-0"},
		"sys/block/sda/holders":  {"dm-0"},
	})
	got, err := DMDevices(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []DMDevice{
		{Dev: "dm-0", Name: "36001405abcdef", UUID: "mpath-36001405abcdef", Slaves: []string{"sda", "sdb"}, Holders: []string{"dm-1"}, Size: 2048 * 512},
		{Dev: "dm-1", Name: "VG_XenStorage--x-VHD--y", UUID: "LVM-vguuidlvuuid", Suspended: true, Slaves: []string{"dm-0"}, Size: 8 * 512},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("DMDevices (-want +got):\n%s", d)
	}
	if got := Holders(root, "sda"); !cmp.Equal(got, []string{"dm-0"}) {
		t.Errorf("Holders(sda) = %v", got)
	}
	if got := Holders(root, "sdz"); got != nil {
		t.Errorf("Holders of a missing device = %v, want none", got)
	}
}

// blkidRunner answers blkid and wipefs as the tools do.
type blkidRunner struct {
	out  string
	err  error
	args [][]string
}

func (r *blkidRunner) Run(_ context.Context, c host.Cmd) (host.Result, error) {
	r.args = append(r.args, append([]string{c.Name}, c.Args...))
	return host.Result{Stdout: []byte(r.out)}, r.err
}

func TestSignatures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		r     blkidRunner
		want  []string
		fails bool
	}{
		{name: "lvm and gpt", r: blkidRunner{out: "DEVNAME=/dev/sda\nTYPE=LVM2_member\nPTTYPE=gpt\nUUID=x\n"}, want: []string{"TYPE=LVM2_member", "PTTYPE=gpt"}},
		{name: "blank", r: blkidRunner{err: &host.ExitError{Code: 2}}},
		{name: "ambivalent", r: blkidRunner{err: &host.ExitError{Code: 8, Stderr: "xfs and ext4\n"}}, want: []string{"ambivalent (several signatures): xfs and ext4"}},
		{name: "unreadable", r: blkidRunner{err: &host.ExitError{Code: 4}}, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Signatures(context.Background(), &tc.r, "SR.create", "/dev/sda")
			if tc.fails {
				var he *host.Error
				if !errors.As(err, &he) || he.Op != "SR.create" {
					t.Fatalf("err = %v, want a *host.Error of SR.create", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if want := [][]string{{"blkid", "-p", "-o", "export", "/dev/sda"}}; !cmp.Equal(tc.r.args, want) {
				t.Errorf("ran %v, want %v", tc.r.args, want)
			}
		})
	}
}

func TestWipe(t *testing.T) {
	r := &blkidRunner{}
	if err := Wipe(context.Background(), r, "SR.create", "/dev/sda"); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"wipefs", "--all", "/dev/sda"}}; !cmp.Equal(r.args, want) {
		t.Errorf("ran %v, want %v", r.args, want)
	}
	r = &blkidRunner{err: &host.ExitError{Code: 1, Stderr: "busy"}}
	if err := Wipe(context.Background(), r, "SR.create", "/dev/sda"); err == nil {
		t.Error("a failed wipefs gave no error")
	}
}

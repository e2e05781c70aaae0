// Package labtarget sets up, changes and tears down the storage targets
// that the lab guest serves to itself: an NVMe-oF subsystem through the
// kernel's nvmet configfs tree, and an iSCSI target through LIO's configfs
// tree (no targetcli). It runs only inside the lab guest, as root.
//
// Both targets keep their data in plain files on the guest's tmpfs, never in
// loop or brd devices: a block device would be seen by LVM, multipath and
// blkid next to the initiator's view of the same data (docs/lab-pitfalls.md §5).
package labtarget

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ConfigFS is where the guest mounts configfs.
const ConfigFS = "/sys/kernel/config"

// Portal addresses on the guest's loopback interface. Two addresses give
// two independent paths to the same namespace or LUN.
const (
	Addr1 = "127.0.0.1"
	Addr2 = "127.0.0.2"
)

// DefaultBackingDir is the tmpfs the guest's init mounts for backing files.
const DefaultBackingDir = "/srv/lab"

// cmdTimeout bounds every command labtarget runs; the guest is emulated,
// so it is generous.
const cmdTimeout = 60 * time.Second

// Run runs a command with a deadline and returns its combined output; the
// error carries the command line and output so a failing test says why.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	return run(ctx, true, name, args...)
}

// Output is Run for machine-readable output: it returns standard output
// alone, so a warning on stderr cannot corrupt a JSON report.
func Output(ctx context.Context, name string, args ...string) (string, error) {
	return run(ctx, false, name, args...)
}

func run(ctx context.Context, combined bool, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if combined {
		cmd.Stderr = &out
	}
	err := cmd.Run()
	msg := strings.TrimSpace(out.String() + errOut.String())
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("%s %s: timed out after %s: %s", name, strings.Join(args, " "), cmdTimeout, msg)
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// EnsureLoopbackAddrs gives lo the second portal address explicitly, so
// tools that list interface addresses see it (127/8 routes locally anyway).
func EnsureLoopbackAddrs(ctx context.Context) error {
	out, err := Run(ctx, "ip", "-o", "addr", "show", "dev", "lo")
	if err != nil {
		return err
	}
	if strings.Contains(out, " "+Addr2+"/") {
		return nil
	}
	_, err = Run(ctx, "ip", "addr", "add", Addr2+"/8", "dev", "lo")
	return err
}

// writeAttr writes one configfs attribute in a single write(2) and without
// a trailing newline: some attributes keep the newline as part of the value
// (LIO CHAP credentials, pitfall 8).
func writeAttr(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("configfs: write %q to %s: %w", value, path, err)
	}
	return nil
}

func readAttr(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func mkdir(path string) error {
	if err := os.Mkdir(path, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("configfs: mkdir %s: %w", path, err)
	}
	return nil
}

// rmdir removes a configfs directory; an absent one is already clean.
func rmdir(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("configfs: rmdir %s: %w", path, err)
	}
	return nil
}

func symlink(target, link string) error {
	if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("configfs: link %s -> %s: %w", link, target, err)
	}
	return nil
}

func unlink(link string) error {
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("configfs: unlink %s: %w", link, err)
	}
	return nil
}

// subdirs lists the directories (not attributes) of a configfs directory.
func subdirs(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// links lists the symlinks in a configfs directory.
func links(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.Type()&os.ModeSymlink != 0 {
			out = append(out, e.Name())
		}
	}
	return out
}

// backingFile creates (or resizes) a sparse backing file.
func backingFile(dir, name string, size int64) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return "", fmt.Errorf("size %s to %d: %w", p, size, err)
	}
	return p, nil
}

// stableID derives 16 bytes from a name, so that identities (NGUID, UUID,
// serials) are the same on every run and differ between objects.
func stableID(parts ...string) [16]byte {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	var id [16]byte
	copy(id[:], sum[:16])
	return id
}

// uuidString formats 16 bytes as an RFC 4122 version-4-shaped UUID.
func uuidString(id [16]byte) string {
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
}

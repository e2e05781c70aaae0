package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
)

// Target is one line of a device-mapper table; Start and Length are in
// 512-byte sectors, as the kernel counts them.
type Target struct {
	Start, Length uint64
	Type          string
	Args          string
}

// Table is a device-mapper table. sanvol's own tables are one target long,
// which is what lets `dmsetup --table` carry them on the command line.
type Table []Target

// String is the table in dmsetup's syntax, lines separated by newlines.
func (t Table) String() string {
	lines := make([]string, len(t))
	for i, tg := range t {
		lines[i] = fmt.Sprintf("%d %d %s %s", tg.Start, tg.Length, tg.Type, tg.Args)
	}
	return strings.Join(lines, "\n")
}

// Linear maps sectors of dev from its start.
func Linear(dev string, sectors uint64) Table {
	return Table{{Length: sectors, Type: "linear", Args: dev + " 0"}}
}

// SnapChunk is the exception chunk size in sectors (8 KiB), the size the
// lab measured (research/dm-snapshot-lab.md). The kernel keeps one
// exception per written chunk in dom0's RAM, so a larger chunk bounds that
// memory per GiB of changes at the cost of copying more on a first small
// write.
const SnapChunk = 16

// Snapshot is a writable overlay: reads come from origin unless a chunk
// was written, writes go to cow, and origin is never written. "P" keeps
// the exception store on the COW, so the same pair assembles again after
// a reboot or on another host.
func Snapshot(origin, cow string, sectors uint64) Table {
	return Table{{Length: sectors, Type: "snapshot", Args: fmt.Sprintf("%s %s P %d", origin, cow, SnapChunk)}}
}

// SnapshotMerge copies cow's exceptions back into origin while the device
// keeps serving I/O with the merged view.
func SnapshotMerge(origin, cow string, sectors uint64) Table {
	return Table{{Length: sectors, Type: "snapshot-merge", Args: fmt.Sprintf("%s %s P %d", origin, cow, SnapChunk)}}
}

// ParseTable reads `dmsetup table` output.
func ParseTable(out string) (Table, error) {
	var t Table
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("device-mapper table line %q has fewer than 3 fields", line)
		}
		start, err1 := strconv.ParseUint(f[0], 10, 64)
		length, err2 := strconv.ParseUint(f[1], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("device-mapper table line %q: %w", line, err)
		}
		t = append(t, Target{Start: start, Length: length, Type: f[2], Args: strings.Join(f[3:], " ")})
	}
	return t, nil
}

// SnapStatus is the status of a snapshot or snapshot-merge target
// (Documentation/admin-guide/device-mapper/snapshot.rst): sectors of the
// COW in use, its size, and how many of the used ones are metadata.
type SnapStatus struct {
	Allocated, Total, Metadata uint64
	// State is "" while the overlay works, else the kernel's word for why
	// it stopped: Invalid (the COW filled or failed: the overlay's view is
	// lost), Merge failed, Overflow, Unknown.
	State string
}

// Merged reports whether a snapshot-merge target has copied every
// exception back: only the metadata is still allocated.
func (s SnapStatus) Merged() bool { return s.State == "" && s.Allocated == s.Metadata }

// ParseSnapStatus reads one `dmsetup status` line of a snapshot or
// snapshot-merge target: "0 262144 snapshot 32/327680 16".
func ParseSnapStatus(line string) (SnapStatus, error) {
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) < 4 || (f[2] != "snapshot" && f[2] != "snapshot-merge") {
		return SnapStatus{}, fmt.Errorf("%q is not the status of a snapshot target", line)
	}
	rest := f[3:]
	used, total, ok := strings.Cut(rest[0], "/")
	if !ok || len(rest) < 2 {
		return SnapStatus{State: strings.Join(rest, " ")}, nil
	}
	a, err1 := strconv.ParseUint(used, 10, 64)
	t, err2 := strconv.ParseUint(total, 10, 64)
	m, err3 := strconv.ParseUint(rest[1], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return SnapStatus{}, fmt.Errorf("snapshot status %q: %w", line, err)
	}
	return SnapStatus{Allocated: a, Total: t, Metadata: m}, nil
}

// DM makes, switches and removes sanvol's own device-mapper devices with
// dmsetup, through the host's one exec choke point.
type DM struct {
	run     host.Runner
	timeout time.Duration
}

// NewDM returns a DM whose dmsetup calls are each bounded by timeout.
func NewDM(run host.Runner, timeout time.Duration) *DM {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &DM{run: run, timeout: timeout}
}

func (d *DM) dmsetup(ctx context.Context, args ...string) (string, error) {
	res, err := d.run.Run(ctx, host.Cmd{Name: "dmsetup", Args: args, Timeout: d.timeout})
	if err != nil {
		return "", err
	}
	return string(res.Stdout), nil
}

// Create makes device name with table t; readOnly devices refuse writes
// in the kernel, whatever their table.
func (d *DM) Create(ctx context.Context, name string, t Table, readOnly bool) error {
	args := []string{"create", name}
	if readOnly {
		args = append(args, "--readonly")
	}
	_, err := d.dmsetup(ctx, append(args, "--table", t.String())...)
	return err
}

// Table returns the live table of name.
func (d *DM) Table(ctx context.Context, name string) (Table, error) {
	out, err := d.dmsetup(ctx, "table", name)
	if err != nil {
		return nil, err
	}
	return ParseTable(out)
}

// Status returns the first status line of name.
func (d *DM) Status(ctx context.Context, name string) (string, error) {
	out, err := d.dmsetup(ctx, "status", name)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return line, nil
}

// Suspend flushes and holds name's I/O; every caller must Resume it on
// every path, or every opener of the device hangs.
func (d *DM) Suspend(ctx context.Context, name string) error {
	_, err := d.dmsetup(ctx, "suspend", name)
	return err
}

// Resume swaps in a loaded table, if any, and releases held I/O. It runs
// even when ctx is done: a device left suspended hangs the VM using it.
func (d *DM) Resume(ctx context.Context, name string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.timeout)
	defer cancel()
	_, err := d.dmsetup(rctx, "resume", name)
	return err
}

// Load puts t into name's inactive slot; the next Resume makes it live.
func (d *DM) Load(ctx context.Context, name string, t Table) error {
	_, err := d.dmsetup(ctx, "reload", name, "--table", t.String())
	return err
}

// Remove removes name; --retry rides out udev's short-lived opens.
func (d *DM) Remove(ctx context.Context, name string) error {
	_, err := d.dmsetup(ctx, "remove", "--retry", name)
	return err
}

// ErrLeftSuspended is wrapped when a device could not be resumed: its I/O
// is held until someone runs `dmsetup resume`.
var ErrLeftSuspended = errors.New("device left suspended")

// Switch replaces name's live table with t: suspend, load, resume. The
// device keeps its major:minor, so a holder (blkback) never notices but
// for the pause. If the load fails the old table stays live; the device is
// resumed on every path.
func (d *DM) Switch(ctx context.Context, name string, t Table) error {
	return d.Suspended(ctx, []string{name}, func(ctx context.Context) error {
		return d.Load(ctx, name, t)
	})
}

// Suspended suspends names in order, runs step, then resumes them in
// reverse order, whatever step returned: the stacking steps need an upper
// device held while the one below changes.
func (d *DM) Suspended(ctx context.Context, names []string, step func(context.Context) error) (err error) {
	var held []string
	defer func() {
		for i := len(held) - 1; i >= 0; i-- {
			if rerr := d.Resume(ctx, held[i]); rerr != nil {
				err = errors.Join(err, fmt.Errorf("%w: %s: %w", ErrLeftSuspended, held[i], rerr))
			}
		}
	}()
	for _, n := range names {
		if err := d.Suspend(ctx, n); err != nil {
			return err
		}
		held = append(held, n)
	}
	return step(ctx)
}

// DevInfo is what `dmsetup info` says of one device.
type DevInfo struct {
	Exists bool
	// Suspended: I/O is held until a resume (a process died between the
	// two). Inactive: a loaded table waits for a resume.
	Suspended, Inactive, ReadOnly bool
	// Dev is "major:minor", how `dmsetup table` names the devices a
	// table maps.
	Dev string
}

// Info reports whether name exists and its state. A missing device is
// Exists == false with a nil error.
func (d *DM) Info(ctx context.Context, name string) (DevInfo, error) {
	out, err := d.dmsetup(ctx, "info", "-c", "--noheadings", "--separator", ":", "-o", "attr,major,minor", name)
	if err != nil {
		var ee *host.ExitError
		if errors.As(err, &ee) && strings.Contains(ee.Stderr, "not exist") {
			return DevInfo{}, nil
		}
		return DevInfo{}, err
	}
	return ParseInfo(out)
}

// ParseInfo reads one line of `dmsetup info -c --noheadings --separator :
// -o attr,major,minor`: "L--w:253:3". The attr letters are (L)ive table,
// (I)nactive table, (s)uspended, (r)ead-only or read-(w)rite.
func ParseInfo(out string) (DevInfo, error) {
	f := strings.Split(strings.TrimSpace(out), ":")
	if len(f) != 3 || len(f[0]) < 4 {
		return DevInfo{}, fmt.Errorf("dmsetup info line %q is not attr:major:minor", strings.TrimSpace(out))
	}
	a := f[0]
	return DevInfo{Exists: true, Inactive: a[1] == 'I', Suspended: a[2] == 's', ReadOnly: a[3] == 'r', Dev: f[1] + ":" + f[2]}, nil
}

// SnapMagic is the first word of a persistent exception store's header
// (dm-snap-persistent.c SNAP_MAGIC 0x70416e53, little-endian "SnAp"): the
// kernel writes it when a snapshot target is first built on a zeroed COW.
const SnapMagic = "SnAp"

// HasSnapMagic reports whether dev starts with a persistent exception
// store header. It reads with O_DIRECT: the header is written by the
// kernel below any page cache of dev.
func HasSnapMagic(root host.Root, dev string) (bool, error) {
	f, err := os.OpenFile(root.Path(dev), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return false, err
	}
	defer func() { _ = unix.Munmap(buf) }()
	if _, err := f.ReadAt(buf, 0); err != nil {
		return false, fmt.Errorf("read the header of %s: %w", dev, err)
	}
	return string(buf[:4]) == SnapMagic, nil
}

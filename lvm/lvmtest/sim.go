package lvmtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Sim is a stateful stand-in for lvm2 and the block tools (blkid, wipefs,
// and the BLKZEROOUT ioctl through ZeroOut) on one shared device, for tests of the engine's logic:
// sequences, crash recovery, concurrency. It enforces what the real tools
// enforce and what sanvol relies on: the --config filter decides whether
// the device is visible at all, metadata_read_only=1 refuses metadata
// changes, tags are a set, vgremove refuses a VG with LVs, lvremove
// refuses an open LV. It also tracks which bytes of each LV were zeroed,
// so a test can check that no visible volume exposes old data.
//
// Rules added with On/Once/OnFunc are consulted first, to inject faults.
type Sim struct {
	Runner

	mu     sync.Mutex
	Device string
	Size   int64
	sigs   []string // non-LVM signatures (TYPE=xfs, PTTYPE=gpt)
	pv     *simPV
	vg     *simVG
	// Ops counts commands by program/subcommand.
	Ops map[string]int
	// offline: every path to the device is down, as SetOffline says.
	offline bool
	// commits counts metadata changes: the state of the PV's metadata
	// area header that ReadAt shows.
	commits int

	// device-mapper (dm.go)
	dm           map[string]*simDM
	minor        int
	nums         map[string]int
	magic        map[string]bool
	pendingMerge int
}

// SetOffline cuts (true) or restores (false) every path to the device:
// offline, nothing reads it (blkid and dd fail) and LVM sees no device,
// so it reports its VG "not found" while the data stays intact.
func (s *Sim) SetOffline(off bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offline = off
}

type simPV struct {
	uuid    string
	mdaSize int64
}

type simVG struct {
	name    string
	uuid    string
	extent  int64
	extents int64
	tags    []string
	lvs     map[string]*SimLV
	seq     int
}

// SimLV is an LV of the simulated VG.
type SimLV struct {
	UUID    string
	Extents int64
	Tags    []string
	Active  bool
	Open    bool
	// Zeroed is how many bytes from the start are known zero; Dirty
	// ranges beyond it came from extents nobody zeroed.
	zeroed []span
}

type span struct{ off, end int64 }

// NewSim returns a blank device of size bytes.
func NewSim(device string, size int64) *Sim {
	return &Sim{Device: device, Size: size, Ops: map[string]int{}}
}

// Grow makes the device larger, as when the array grows the LUN; the VG
// follows only after pvresize.
func (s *Sim) Grow(size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Size = size
}

// SetSignatures puts foreign signatures on the device.
func (s *Sim) SetSignatures(sigs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sigs = sigs
}

// LVs returns a copy of the simulated LVs by name.
func (s *Sim) LVs() map[string]SimLV {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]SimLV{}
	if s.vg != nil {
		for n, l := range s.vg.lvs {
			out[n] = *l
		}
	}
	return out
}

// HasVG reports whether the device holds a VG.
func (s *Sim) HasVG() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vg != nil
}

// HasPV reports whether the device carries an LVM label.
func (s *Sim) HasPV() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pv != nil
}

// SetOpen marks an LV as held open on this host (a running VM).
func (s *Sim) SetOpen(lv string, open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.vg.lvs[lv]; l != nil {
		l.Open, l.Active = open, l.Active || open
	}
}

// FullyZeroed reports whether every byte of the LV was zeroed.
func (l SimLV) FullyZeroed(extent int64) bool {
	return covered(l.zeroed, l.Extents*extent)
}

// ExtentSize of the VG.
func (s *Sim) ExtentSize() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vg == nil {
		return 0
	}
	return s.vg.extent
}

func covered(spans []span, size int64) bool {
	sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	var upTo int64
	for _, sp := range spans {
		if sp.off > upTo {
			return false
		}
		upTo = max(upTo, sp.end)
	}
	return upTo >= size
}

// Run implements host.Runner.
func (s *Sim) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	s.Runner.mu.Lock()
	matched := false
	for _, rule := range s.Runner.rules {
		if (rule.Times == 0 || rule.used < rule.Times) && rule.Match(c) {
			matched = true
			break
		}
	}
	s.Runner.mu.Unlock()
	if matched {
		return s.Runner.Run(ctx, c)
	}
	s.Runner.mu.Lock()
	s.Runner.calls = append(s.Runner.calls, c)
	s.Runner.mu.Unlock()
	s.mu.Lock()
	rep := s.do(c)
	if c.Name == "lvm" && rep.Code == 0 && isWrite(c) {
		s.commits++
	}
	s.mu.Unlock()
	res := host.Result{Stdout: []byte(rep.Stdout), Stderr: []byte(rep.Stderr), ExitCode: rep.Code}
	if rep.Code != 0 {
		return res, &host.ExitError{Cmd: c.String(), Code: rep.Code, Stderr: strings.TrimSpace(rep.Stderr)}
	}
	return res, nil
}

// isWrite reports whether an LVM command changes metadata.
func isWrite(c host.Cmd) bool {
	switch c.Args[0] {
	case "pvcreate", "vgcreate", "vgchange", "vgremove", "pvremove", "lvcreate", "lvextend", "lvremove", "pvresize":
		return true
	case "lvchange":
		return len(Values(c, "--addtag")) > 0 || len(Values(c, "--deltag")) > 0
	}
	return false
}

// ReadAt implements host.BlockReader for the simulated device: its PV
// label and metadata area header (lvmtest.PVHead), whose committed text
// moves with every metadata change, as lvm2's does.
func (s *Sim) ReadAt(path string, off int64, n int) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline || path != s.Device {
		return nil, fmt.Errorf("read %s: no such device or address", path)
	}
	b := make([]byte, n)
	if s.pv != nil && off < pvHeadSize {
		copy(b, NewPVHead(s.pv.uuid, s.commits).Bytes()[off:])
	}
	return b, nil
}

func fail(format string, a ...any) Reply {
	return Reply{Code: 5, Stderr: "  " + fmt.Sprintf(format, a...)}
}

func (s *Sim) do(c host.Cmd) Reply {
	switch c.Name {
	case "dd":
		s.Ops["dd"]++
		if s.offline || !slices.Contains(c.Args, "if="+s.Device) {
			return Reply{Code: 1, Stderr: "dd: failed to open the input: No such device or address"}
		}
		return Reply{Stderr: "1+0 records in\n1+0 records out"}
	case "blkid":
		s.Ops["blkid"]++
		if s.offline {
			return Reply{Code: 2}
		}
		var lines []string
		if s.pv != nil {
			lines = append(lines, "TYPE=LVM2_member")
		}
		lines = append(lines, s.sigs...)
		if len(lines) == 0 {
			return Reply{Code: 2}
		}
		return Reply{Stdout: "DEVNAME=" + s.Device + "\n" + strings.Join(lines, "\n") + "\n"}
	case "wipefs":
		s.Ops["wipefs"]++
		s.sigs, s.pv, s.vg = nil, nil, nil
		return Reply{}
	case ZeroOutCmd:
		s.Ops[ZeroOutCmd]++
		return s.zero(c)
	case "dmsetup":
		return s.dmsetup(c.Args)
	case "lvm":
	default:
		return Reply{Code: 127, Stderr: c.Name + ": not simulated"}
	}
	sub := c.Args[0]
	s.Ops["lvm "+sub]++
	if sub == "version" {
		return Version("2.03.16")
	}
	cfg := ""
	if len(c.Args) > 3 && c.Args[1] == "-qq" && c.Args[2] == "--config" {
		cfg = c.Args[3]
	} else {
		return fail("lvmtest: %s without -qq --config", sub)
	}
	visible := strings.Contains(cfg, "^"+s.Device+"$") && !s.offline
	readOnly := strings.Contains(cfg, "metadata_read_only=1")
	args := Args(c)
	last := ""
	if len(args) > 0 {
		last = args[len(args)-1]
	}
	if isWrite(c) && readOnly {
		return fail("Operation prohibited while global/metadata_read_only is set.")
	}
	vg := s.vg
	if !visible {
		vg = nil
	}
	switch sub {
	case "vgs":
		names := args[slices.Index(args, "-o")+2:]
		if len(names) == 0 {
			if vg == nil {
				return VGs()
			}
			return VGs(s.vgRow())
		}
		if vg == nil || len(names) != 1 || names[0] != vg.name {
			return fail("Volume group %q not found", names[0])
		}
		return VGs(s.vgRow())
	case "pvs":
		if !visible || s.pv == nil {
			return PVs()
		}
		p := lvm.PV{Name: s.Device, UUID: s.pv.uuid, Size: s.Size, MDASize: s.pv.mdaSize}
		if s.vg != nil {
			p.VG, p.VGTags = s.vg.name, slices.Clone(s.vg.tags)
		}
		return PVs(p)
	case "lvs":
		vgn, lvn, _ := strings.Cut(last, "/")
		if vg == nil || vg.name != vgn {
			return fail("Volume group %q not found", vgn)
		}
		var rows []lvm.LV
		for _, name := range sortedKeys(vg.lvs) {
			if lvn == "" || lvn == name {
				rows = append(rows, s.lvRow(name))
			}
		}
		if lvn != "" && len(rows) == 0 {
			return fail("Failed to find logical volume %q", last)
		}
		return LVsOf(Values(c, "-o")[0], rows...)
	case "pvcreate":
		if !visible || last != s.Device {
			return fail("Cannot use %s: device not found", last)
		}
		if s.pv != nil && s.vg != nil {
			return fail("Can't initialize physical volume %q of volume group %q without -ff", last, s.vg.name)
		}
		if len(s.sigs) > 0 {
			return fail("WARNING: %s detected on %s. Wipe it? [y/n]: [n]\n  Aborted wiping of %s.", s.sigs[0], last, s.sigs[0])
		}
		mda, _ := strconv.ParseInt(strings.TrimSuffix(Values(c, "--metadatasize")[0], "m"), 10, 64)
		s.pv = &simPV{uuid: "pv-" + strconv.Itoa(len(s.Device)), mdaSize: mda << 20}
		return Reply{}
	case "vgcreate":
		if !visible || s.pv == nil {
			return fail("Device %s not found or not a PV", last)
		}
		if s.vg != nil {
			return fail("Physical volume %q is already in volume group %q", last, s.vg.name)
		}
		ext, _ := strconv.ParseInt(strings.TrimSuffix(Values(c, "--physicalextentsize")[0], "m"), 10, 64)
		ext <<= 20
		s.vg = &simVG{name: args[len(args)-2], uuid: "Q1w2E3-r4T5-y6U7-i8O9-p0A1-s2D3-f4G5h6", extent: ext,
			extents: (s.Size - s.pv.mdaSize - 1<<20) / ext, lvs: map[string]*SimLV{}}
		s.vg.tags = addTags(nil, Values(c, "--addtag"))
		return Reply{}
	case "pvresize":
		if !visible || s.pv == nil || last != s.Device {
			return fail("Failed to find physical volume %q", last)
		}
		if s.vg != nil {
			s.vg.extents = (s.Size - s.pv.mdaSize - 1<<20) / s.vg.extent
		}
		return Reply{}
	case "vgchange":
		if vg == nil || vg.name != last {
			return fail("Volume group %q not found", last)
		}
		vg.tags = addTags(delTags(vg.tags, Values(c, "--deltag")), Values(c, "--addtag"))
		return Reply{}
	case "vgremove":
		if vg == nil || vg.name != last {
			return fail("Volume group %q not found", last)
		}
		if len(vg.lvs) > 0 {
			return fail("Do you really want to remove volume group %q containing %d logical volumes? [y/n]: [n]", last, len(vg.lvs))
		}
		s.vg = nil
		return Reply{}
	case "pvremove":
		if !visible {
			return fail("No device found for %s.", last)
		}
		if s.pv == nil {
			return fail("No PV found on device %s.", last)
		}
		if s.vg != nil {
			return fail("PV %s is used by VG %s so please use vgreduce first.", last, s.vg.name)
		}
		s.pv = nil
		return Reply{}
	case "lvcreate":
		if vg == nil || vg.name != last {
			return fail("Volume group %q not found", last)
		}
		name := Values(c, "--name")[0]
		if vg.lvs[name] != nil {
			return fail("Logical Volume %q already exists in volume group %q", name, vg.name)
		}
		n, _ := strconv.ParseInt(Values(c, "--extents")[0], 10, 64)
		if n > vg.extents-s.used() {
			return fail("Volume group %q has insufficient free space (%d extents): %d required.", vg.name, vg.extents-s.used(), n)
		}
		vg.seq++
		vg.lvs[name] = &SimLV{UUID: fmt.Sprintf("lv%030d", vg.seq), Extents: n, Tags: addTags(nil, Values(c, "--addtag")), Active: true}
		return Reply{}
	}
	vgn, lvn, _ := strings.Cut(last, "/")
	if vg == nil || vg.name != vgn {
		return fail("Volume group %q not found", vgn)
	}
	l := vg.lvs[lvn]
	if l == nil {
		return fail("Failed to find logical volume %q", last)
	}
	switch sub {
	case "lvextend":
		n, _ := strconv.ParseInt(Values(c, "--extents")[0], 10, 64)
		if n <= l.Extents {
			return fail("New size given (%d extents) not larger than existing size (%d extents)", n, l.Extents)
		}
		if n-l.Extents > vg.extents-s.used() {
			return fail("Insufficient free space: %d extents needed, but only %d available", n-l.Extents, vg.extents-s.used())
		}
		l.Extents = n
		return Reply{}
	case "lvremove":
		if l.Open || s.mapped(lvm.DevicePath(vg.name, lvn)) {
			return fail("Logical volume %s contains a filesystem in use.", last)
		}
		delete(vg.lvs, lvn)
		return Reply{}
	case "lvchange":
		switch act := Values(c, "--activate"); {
		case len(act) == 1 && act[0] == "y":
			l.Active = true
		case len(act) == 1 && act[0] == "n":
			if l.Open || s.mapped(lvm.DevicePath(vg.name, lvn)) {
				return fail("Logical volume %s in use.", last)
			}
			l.Active = false
		}
		l.Tags = addTags(delTags(l.Tags, Values(c, "--deltag")), Values(c, "--addtag"))
		return Reply{}
	}
	return fail("lvmtest: lvm %s not simulated", sub)
}

// ZeroOutCmd is the pseudo-command under which the sim records a ZeroOut
// call (the real one is an ioctl, not a program), so that tests count and
// fail zeroing with the same rules as commands.
const ZeroOutCmd = "BLKZEROOUT"

// ZeroOut makes the sim a volume.Zeroer: it zeroes [off, off+length) of an
// active LV's device, or fails as the rules say.
func (s *Sim) ZeroOut(ctx context.Context, dev string, off, length int64) error {
	c := host.Cmd{Name: ZeroOutCmd, Args: []string{"--offset", strconv.FormatInt(off, 10), "--length", strconv.FormatInt(length, 10), dev}}
	if _, err := s.Run(ctx, c); err != nil {
		var ee *host.ExitError
		if errors.As(err, &ee) {
			return errors.New(ee.Stderr)
		}
		return err
	}
	return nil
}

func (s *Sim) zero(c host.Cmd) Reply {
	dev := c.Args[len(c.Args)-1]
	off, _ := strconv.ParseInt(Values(c, "--offset")[0], 10, 64)
	length, _ := strconv.ParseInt(Values(c, "--length")[0], 10, 64)
	if s.vg == nil {
		return Reply{Code: 1, Stderr: "open " + dev + ": no such file or directory"}
	}
	lvn, ok := strings.CutPrefix(dev, "/dev/"+s.vg.name+"/")
	l := s.vg.lvs[lvn]
	if !ok || l == nil || !l.Active {
		return Reply{Code: 1, Stderr: "open " + dev + ": no such file or directory"}
	}
	if off+length > l.Extents*s.vg.extent {
		return Reply{Code: 1, Stderr: "BLKZEROOUT: invalid argument (beyond the end of the device)"}
	}
	l.zeroed = append(l.zeroed, span{off, off + length})
	if off == 0 {
		delete(s.magic, dev)
	}
	return Reply{}
}

func (s *Sim) used() int64 {
	var n int64
	for _, l := range s.vg.lvs {
		n += l.Extents
	}
	return n
}

func (s *Sim) vgRow() lvm.VG {
	return lvm.VG{Name: s.vg.name, UUID: s.vg.uuid, Size: s.vg.extents * s.vg.extent, Free: (s.vg.extents - s.used()) * s.vg.extent,
		ExtentSize: s.vg.extent, Tags: slices.Clone(s.vg.tags), MDASize: s.pv.mdaSize, MDAFree: s.pv.mdaSize / 2,
		LVCount: len(s.vg.lvs), PVCount: 1}
}

func (s *Sim) lvRow(name string) lvm.LV {
	l := s.vg.lvs[name]
	return lvm.LV{Name: name, VG: s.vg.name, UUID: l.UUID, Size: l.Extents * s.vg.extent, Tags: slices.Clone(l.Tags), Attr: Attr(s.lvDM(name))}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func addTags(tags, add []string) []string {
	for _, t := range add {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return tags
}

func delTags(tags, del []string) []string {
	return slices.DeleteFunc(slices.Clone(tags), func(t string) bool { return slices.Contains(del, t) })
}

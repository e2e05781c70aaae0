package lvmtest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// simDM is a device-mapper device of the sim.
type simDM struct {
	minor              int
	live, inactive     string
	suspended, ro      bool
	invalid            bool // its snapshot target handed its COW over
	roNext, hasInact   bool
	opened             bool // held open (by blkback): remove fails
	mergeStatusPending int
}

// The sim's dmsetup keeps the kernel's rules that sanvol's table
// sequences depend on (research on the 6.1 kernel, see blockdev.Snapshot):
// `dmsetup table` names devices by major:minor; a snapshot target built
// on a COW writes the store's header (SnapMagic reads it); resuming a
// snapshot table whose COW a running device holds fails (preresume -22),
// one whose COW a suspended device holds takes it over and leaves that
// device invalid; an LV a table maps is open, so it can be neither
// deactivated nor removed.

// DevNum is the sim's "major:minor" for a device path, stable for the
// life of the sim: device-mapper devices get 253:<minor>, other paths
// (LVs) 254:<n> in order of first sight.
func (s *Sim) DevNum(path string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devNum(path), nil
}

func (s *Sim) devNum(path string) string {
	if name, ok := strings.CutPrefix(path, "/dev/mapper/"); ok {
		if d := s.dm[name]; d != nil {
			return "253:" + strconv.Itoa(d.minor)
		}
	}
	if s.nums == nil {
		s.nums = map[string]int{}
	}
	n, ok := s.nums[path]
	if !ok {
		n = len(s.nums)
		s.nums[path] = n
	}
	return "254:" + strconv.Itoa(n)
}

// SnapMagic reports whether a snapshot target was ever built on dev since
// its start was last zeroed.
func (s *Sim) SnapMagic(_ context.Context, dev string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.magic[dev], nil
}

// DM returns the live table of every device-mapper device the sim holds,
// with devices by path, and the names of those left suspended.
func (s *Sim) DM() (tables map[string]string, suspended []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tables = map[string]string{}
	for _, n := range sortedKeys(s.dm) {
		d := s.dm[n]
		tables[n] = d.live
		if d.suspended {
			suspended = append(suspended, n)
		}
	}
	return tables, suspended
}

// DMInvalid lists the devices whose snapshot target lost its COW to a
// handover and was resumed (or left) with it: their I/O fails.
func (s *Sim) DMInvalid() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range sortedKeys(s.dm) {
		if s.dm[n].invalid && !s.dm[n].suspended {
			out = append(out, n)
		}
	}
	return out
}

// tableDevs returns the device paths a table maps, and the COW if it is
// a snapshot target.
func tableDevs(t string) (devs []string, cow string) {
	f := strings.Fields(t)
	if len(f) < 4 {
		return nil, ""
	}
	switch f[2] {
	case "linear":
		return []string{f[3]}, ""
	case "snapshot", "snapshot-merge":
		if len(f) >= 5 {
			return []string{f[3], f[4]}, f[4]
		}
	}
	return nil, ""
}

// mapped reports whether a device-mapper table (live or loaded) maps path.
func (s *Sim) mapped(path string) bool {
	for _, d := range s.dm {
		for _, t := range []string{d.live, d.inactive} {
			devs, _ := tableDevs(t)
			if slices.Contains(devs, path) {
				return true
			}
		}
	}
	return false
}

func (s *Sim) numbered(t string) string {
	f := strings.Fields(t)
	for i := range f {
		if strings.HasPrefix(f[i], "/dev/") {
			f[i] = s.devNum(f[i])
		}
	}
	return strings.Join(f, " ")
}

func (s *Sim) dmsetup(args []string) Reply {
	s.Ops["dmsetup "+args[0]]++
	if s.dm == nil {
		s.dm = map[string]*simDM{}
	}
	name := ""
	table, ro := "", false
	for i := 1; i < len(args); i++ {
		switch {
		case args[i] == "--table" && i+1 < len(args):
			table = args[i+1]
			i++
		case args[i] == "--readonly":
			ro = true
		case strings.HasPrefix(args[i], "-"):
			if args[i] == "--separator" || args[i] == "-o" {
				i++
			}
		default:
			name = args[i]
		}
	}
	d := s.dm[name]
	if d == nil && args[0] != "create" {
		return Reply{Code: 1, Stderr: "Device does not exist.\nCommand failed."}
	}
	switch args[0] {
	case "create":
		if d != nil {
			return Reply{Code: 1, Stderr: "device-mapper: create ioctl on " + name + " failed: Device or resource busy"}
		}
		s.minor++
		d = &simDM{minor: s.minor, roNext: ro}
		s.dm[name] = d
		d.inactive, d.hasInact = table, true
		s.built(table)
		if rep := s.resume(name, d); rep.Code != 0 {
			// dmsetup leaves the half-made device behind, as the kernel does.
			return rep
		}
		return Reply{}
	case "reload":
		d.inactive, d.hasInact, d.roNext = table, true, ro
		s.built(table)
		return Reply{}
	case "suspend":
		d.suspended = true
		return Reply{}
	case "resume":
		return s.resume(name, d)
	case "remove":
		if d.opened {
			return Reply{Code: 1, Stderr: "device-mapper: remove ioctl on " + name + " failed: Device or resource busy"}
		}
		for n, o := range s.dm {
			devs, _ := tableDevs(o.live)
			if n != name && slices.Contains(devs, "/dev/mapper/"+name) {
				return Reply{Code: 1, Stderr: "device-mapper: remove ioctl on " + name + " failed: Device or resource busy"}
			}
		}
		delete(s.dm, name)
		return Reply{}
	case "table":
		return Reply{Stdout: s.numbered(d.live) + "\n"}
	case "status":
		f := strings.Fields(d.live)
		if len(f) < 3 {
			return Reply{Stdout: "\n"}
		}
		switch f[2] {
		case "snapshot", "snapshot-merge":
			if d.invalid {
				return Reply{Stdout: strings.Join(f[:3], " ") + " Invalid\n"}
			}
			used := 64
			if f[2] == "snapshot-merge" && d.mergeStatusPending > 0 {
				d.mergeStatusPending--
				used = 4096
			}
			return Reply{Stdout: fmt.Sprintf("%s %s %s %d/1048576 64\n", f[0], f[1], f[2], used)}
		}
		return Reply{Stdout: strings.Join(f[:3], " ") + "\n"}
	case "info":
		attr := []byte("L--w")
		if d.hasInact {
			attr[1] = 'I'
		}
		if d.suspended {
			attr[2] = 's'
		}
		if d.ro {
			attr[3] = 'r'
		}
		return Reply{Stdout: fmt.Sprintf("%s:253:%d\n", attr, d.minor)}
	}
	return Reply{Code: 1, Stderr: "lvmtest: dmsetup " + args[0] + " not simulated"}
}

// built is the constructor of a table: a snapshot target writes its
// store's header.
func (s *Sim) built(table string) {
	if _, cow := tableDevs(table); cow != "" {
		if s.magic == nil {
			s.magic = map[string]bool{}
		}
		s.magic[cow] = true
		// A new merge takes a few status polls to finish.
		if strings.Fields(table)[2] == "snapshot-merge" {
			s.pendingMerge = 2
		}
	}
}

func (s *Sim) resume(name string, d *simDM) Reply {
	if d.hasInact {
		if _, cow := tableDevs(d.inactive); cow != "" {
			for n, o := range s.dm {
				if n == name {
					continue
				}
				if _, ocow := tableDevs(o.live); ocow == cow && !o.invalid {
					if !o.suspended {
						return Reply{Code: 1, Stderr: "device-mapper: resume ioctl on " + name + " failed: Invalid argument\nCommand failed."}
					}
					o.invalid = true // handed over
				}
			}
		}
		d.live, d.inactive, d.hasInact = d.inactive, "", false
		d.invalid = false
		// A table is read-only as its create or reload said.
		d.ro, d.roNext = d.roNext, false
		if strings.Contains(d.live, "snapshot-merge") {
			d.mergeStatusPending = s.pendingMerge
		}
	}
	d.suspended = false
	return Reply{}
}

// ForgetDM drops every device-mapper device, as a host that died or
// rebooted has none.
func (s *Sim) ForgetDM() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dm = nil
}

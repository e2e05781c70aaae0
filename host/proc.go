package host

import (
	"path"
	"sort"
	"strconv"
)

// Process is one process of the host as /proc shows it.
type Process struct {
	PID int
	// Comm is the kernel's name for the process (/proc/<pid>/comm): the
	// executable's base name cut to 15 bytes, whatever argv[0] says.
	Comm string
}

// Processes lists the host's processes by PID from root's /proc. Reading
// /proc needs no command and finds a daemon whether or not systemd
// started it. A process that exits during the scan is left out.
func Processes(root Root) ([]Process, error) {
	comms, err := root.Glob("/proc/[0-9]*/comm")
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, c := range comms {
		pid, err := strconv.Atoi(path.Base(path.Dir(c)))
		if err != nil {
			continue
		}
		comm, err := root.ReadString(c)
		if err != nil {
			continue
		}
		out = append(out, Process{PID: pid, Comm: comm})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// ProcessesNamed lists the PIDs of the processes whose Comm is name.
func ProcessesNamed(root Root, name string) []int {
	ps, _ := Processes(root)
	var pids []int
	for _, p := range ps {
		if p.Comm == name {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

// KernelRelease is the running kernel's release (uname -r, from
// /proc/sys/kernel/osrelease), or "unknown" when it cannot be read.
func KernelRelease(root Root) string {
	if r, err := root.ReadString("/proc/sys/kernel/osrelease"); err == nil && r != "" {
		return r
	}
	return "unknown"
}

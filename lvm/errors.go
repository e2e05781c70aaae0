package lvm

import (
	"errors"
	"strings"

	"github.com/sanvol/sanvol/host"
)

// LVM's exit codes are coarse (5 = "failed" for nearly everything), so the
// kind of failure is read from the message. Messages are matched in the C
// locale (the runner sets LC_ALL=C) and lower-cased; each list holds the
// wording of lvm2 2.02 and 2.03.
var (
	notFoundText = []string{
		"not found",            // Volume group "x" not found; ... logical volume(s) not found
		"failed to find",       // Failed to find logical volume "vg/lv"; ... physical volume
		"no pv found",          // 2.03 pvremove on a non-PV
		"no pv label found",    // 2.02 pvremove on a non-PV
		"cannot find",          //
		"couldn't find device", //
		"no device found",      // 2.03 pvremove of a device that is gone (seen in the lab)
	}
	existsText = []string{
		"already exists",
		"already in volume group",
	}
	noSpaceText = []string{
		"insufficient free space",
		"insufficient suitable",
		"exceeds maximum metadata size",
		"too large for circular buffer",
		"no space for",
		"not enough space",
		"insufficient free extents",
	}
	busyText = []string{
		"in use",
		"can't get lock",
		"device or resource busy",
		"is open",
		"open logical volume",
		"unable to deactivate",
	}
	readOnlyText = []string{
		"metadata_read_only", // "Operation prohibited while global/metadata_read_only is set."
	}
	// checksumText is what a reader sees when it reads the metadata area
	// while the master rewrites it (xapi-project/sm#561, CA-356102). The
	// read is retried; sm's lvmretry does the same.
	checksumText = []string{
		"incorrect checksum in metadata area header",
		"incorrect metadata area header checksum",
		"checksum error",
	}
)

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func stderrOf(err error) string {
	var ee *host.ExitError
	if errors.As(err, &ee) {
		if ee.Stderr != "" {
			return ee.Stderr
		}
		return ee.Stdout
	}
	return ""
}

func isChecksumError(err error) bool {
	return containsAny(strings.ToLower(stderrOf(err)), checksumText)
}

// classify turns a failed LVM command into a typed error that names the
// step, what LVM said and what to do.
func classify(op string, err error) error {
	var ce *host.CmdError
	if errors.As(err, &ce) {
		switch {
		case errors.Is(err, host.ErrNotInstalled):
			return host.NewError(host.KindUnsupported, op, "lvm2 is not installed on this host", "install the lvm2 package", err)
		case errors.Is(err, host.ErrTimeout):
			return host.NewError(host.KindTimeout, op, "LVM did not answer in time", "check that the SR's storage answers (paths live, no hung I/O: dmesg, nvme list-subsys / multipath -ll) and retry", err)
		}
		return host.NewError(host.KindInternal, op, "could not run LVM", "", err)
	}
	msg := strings.ToLower(stderrOf(err))
	switch {
	case containsAny(msg, readOnlyText):
		return host.NewError(host.KindNotMaster, op, "LVM refused to change metadata on a host that is not the pool master", "run the operation on the pool master", err)
	case containsAny(msg, existsText):
		return host.NewError(host.KindExists, op, "already exists", "", err)
	case containsAny(msg, noSpaceText):
		return host.NewError(host.KindNoSpace, op, "not enough space in the SR", "free space (destroy unused disks) or grow the LUN/namespace", err)
	case containsAny(msg, busyText):
		return host.NewError(host.KindBusy, op, "in use", "stop what uses it (a VM or a dom0 attach on this host) and retry", err)
	case containsAny(msg, notFoundText):
		return host.NewError(host.KindNotFound, op, "not found", "", err)
	}
	return host.NewError(host.KindInternal, op, "LVM command failed", "", err)
}

// Missing says what a not-found failure of an LVM command found missing.
// It decides whether "not found" may count as "already gone": only a
// missing LV (LVM read the VG and it lacks the LV) proves that by itself;
// a missing VG, PV or device is also what LVM says when it cannot read
// the device at all (paths down, I/O errors), so the caller must prove
// the device readable first.
type Missing int

// What a not-found failure names.
const (
	MissingNothing Missing = iota // not a not-found failure
	MissingLV                     // the VG was read and has no such LV
	MissingVG                     // no such VG among the devices LVM could read
	MissingPV                     // the device was read and carries no PV label
	MissingDevice                 // LVM has no such device (absent, unreadable or filtered)
)

func (m Missing) String() string {
	return [...]string{"nothing", "logical volume", "volume group", "physical volume", "device"}[m]
}

// lvm2 reports not-found with exit code 5 (ECMD_FAILED); the message says
// what is missing. The patterns, lower-cased, are the messages captured in
// the lab (testdata/lvm-errors-*.txt) and those of lvm2 2.02. The model
// is topolvm's IsLVMNotFound (internal/lvmd/command: exit code 5 and the
// message together), which knows the VG and LV cases.
var missingText = []struct {
	m    Missing
	text string
}{
	{MissingLV, "failed to find logical volume"},
	{MissingVG, "volume group \""}, // Volume group "x" not found
	{MissingPV, "no pv found on device"},
	{MissingPV, "no pv label found on"},
	{MissingPV, "failed to find physical volume"},
	{MissingDevice, "no device found for"},
	{MissingDevice, "couldn't find device"},
	{MissingDevice, "device not found"},
}

// MissingOf classifies a failed LVM command by exit code and message
// together. Anything else (another exit code, a timeout, a message it
// does not know) is MissingNothing, which no caller may take as "gone".
func MissingOf(err error) Missing {
	var ee *host.ExitError
	if !errors.As(err, &ee) || ee.Code != 5 {
		return MissingNothing
	}
	msg := strings.ToLower(ee.Stderr)
	for _, line := range strings.Split(msg, "\n") {
		for _, p := range missingText {
			if strings.Contains(line, p.text) && (p.m != MissingVG || strings.Contains(line, "not found")) {
				return p.m
			}
		}
	}
	return MissingNothing
}

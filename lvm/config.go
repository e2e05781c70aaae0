package lvm

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is an lvm2 release, e.g. 2.02.180 (XCP-ng 8.x dom0) or 2.03.16.
type Version struct {
	Major, Minor, Patch int
}

func (v Version) String() string { return fmt.Sprintf("%d.%02d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast compares release numbers.
func (v Version) AtLeast(major, minor, patch int) bool {
	if v.Major != major {
		return v.Major > major
	}
	if v.Minor != minor {
		return v.Minor > minor
	}
	return v.Patch >= patch
}

var versionRE = regexp.MustCompile(`LVM version:\s*(\d+)\.(\d+)\.(\d+)`)

// ParseVersion reads the output of `lvm version`, e.g.
// "  LVM version:     2.03.16(2) (2022-05-18)".
func ParseVersion(out string) (Version, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return Version{}, fmt.Errorf("no \"LVM version:\" line in %q", strings.TrimSpace(out))
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	return v, nil
}

// Scope is what one LVM command may see and do.
type Scope struct {
	// Devices are the only block devices LVM may scan: the SR's device
	// by its stable path, and optionally the kernel name it resolves to
	// now. LVM matches filters against every alias of a device.
	Devices []string
	// ReadOnly forbids any metadata change. It is set on every host that
	// is not the pool master, so that a reader never writes or "repairs"
	// metadata the master is writing. The client refuses metadata-changing
	// commands itself (host.KindNotMaster), and the config carries
	// metadata_read_only=1, which lvm2 2.02 enforces. lvm2 2.03.16 does
	// not: the lab showed lvchange --addtag, vgchange --addtag and
	// lvcreate succeeding with it set, both through --config and through
	// an lvm.conf in LVM_SYSTEM_DIR ("File locking settings: ...
	// global/metadata_read_only:0" in -vvvv).
	ReadOnly bool
	// Unlocked runs reports with --readonly (lvm2 >= 2.02.118): no LVM
	// locks, no device-mapper, and no way to write anything. It suits a
	// pool member reading metadata the master changes (a host-local lock
	// protects nothing there; a torn read is retried). Reports then do
	// not show activation state (LV.Active is false), so callers that
	// need it leave Unlocked off.
	Unlocked bool
	// Uncached keeps the report cache (Client.WithReportCache) out of
	// the command: the caller cannot rule out that every path to the
	// device is down, where the cache's read of the PV's headers could
	// wait in the kernel for as long as the transport queues I/O, and
	// keep the process from exiting; an lvm child is left behind instead.
	Uncached bool
}

// filterRegex anchors a path and quotes every byte that LVM's regex
// engine could read as an operator by putting it in a character class.
func filterRegex(path string) string {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/' || c == '_' || c == '-' || c == ':' {
			b.WriteByte(c)
		} else {
			b.WriteString("[" + string(c) + "]")
		}
	}
	b.WriteString("$")
	return b.String()
}

// checkDevicePath refuses paths that cannot be written into a filter
// safely. Real device paths never contain these.
func checkDevicePath(p string) error {
	if !strings.HasPrefix(p, "/dev/") || strings.ContainsAny(p, "\"\\|[] \t\n") {
		return fmt.Errorf("device path %q cannot be used in an LVM filter", p)
	}
	return nil
}

// BuildConfig is the --config string of every LVM command. It makes the
// command independent of the host's lvm.conf, which on XCP-ng sets
// metadata_read_only=1 on every host and whose filter knows nothing of
// our LUN:
//   - filter and global_filter admit only the SR's device, so LVM never
//     scans, activates or repairs anything else (guest PVs inside LVs,
//     other SRs, local disks);
//   - the device list comes from scanning /dev, not from udev, whose
//     database lags behind a fresh NVMe/iSCSI connection;
//   - no hints and no devices file (2.03): both are host-wide caches that
//     another host's changes make stale, and a devices file would hide
//     our LUN;
//   - metadata_read_only is set explicitly either way;
//   - no lvmetad (2.02 only; the setting is gone in 2.03 and would warn);
//   - no archive: every metadata change would otherwise keep a copy of
//     the whole VG metadata (megabytes at 10,000 volumes) in
//     /etc/lvm/archive, filling dom0's small root file system. The
//     single /etc/lvm/backup copy is kept.
func BuildConfig(v Version, s Scope) (string, error) {
	if len(s.Devices) == 0 {
		return "", fmt.Errorf("no device in the LVM scope")
	}
	var items []string
	for _, d := range s.Devices {
		if err := checkDevicePath(d); err != nil {
			return "", err
		}
		items = append(items, `"a|`+filterRegex(d)+`|"`)
	}
	items = append(items, `"r|.*|"`)
	filter := "[" + strings.Join(items, ",") + "]"

	var b strings.Builder
	fmt.Fprintf(&b, "devices{filter=%s global_filter=%s obtain_device_list_from_udev=0", filter, filter)
	if v.AtLeast(2, 3, 0) {
		b.WriteString(` hints="none" use_devicesfile=0`)
	} else {
		// The persistent device cache of 2.02 would record our narrow
		// view and mislead the host's own LVM commands.
		b.WriteString(" write_cache_state=0")
	}
	b.WriteString("} global{metadata_read_only=")
	if s.ReadOnly {
		b.WriteString("1")
	} else {
		b.WriteString("0")
	}
	if !v.AtLeast(2, 3, 0) {
		b.WriteString(" use_lvmetad=0")
	}
	b.WriteString("} backup{archive=0}")
	return b.String(), nil
}

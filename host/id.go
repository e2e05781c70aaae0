package host

import (
	"regexp"
	"strings"
)

var installationUUID = regexp.MustCompile(`(?m)^\s*INSTALLATION_UUID\s*=\s*['"]?([0-9a-fA-F-]{36})['"]?\s*$`)

// ID identifies this host in metadata other hosts read (the create mark of
// a volume): xapi's host uuid from /etc/xensource-inventory, else
// systemd's /etc/machine-id, else the kernel's boot id, else "" (unknown).
// It is compared, never trusted: another host may write anything in its
// place.
func ID(root Root) string {
	if s, err := root.ReadString("/etc/xensource-inventory"); err == nil {
		if m := installationUUID.FindStringSubmatch(s); m != nil {
			return strings.ToLower(m[1])
		}
	}
	if s, err := root.ReadString("/etc/machine-id"); err == nil && s != "" {
		return s
	}
	// Unique to this boot: enough, since a create's lock, which is what
	// the id is compared for, lives no longer than the boot either.
	if s, err := root.ReadString("/proc/sys/kernel/random/boot_id"); err == nil && s != "" {
		return "boot:" + s
	}
	return ""
}

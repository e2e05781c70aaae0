package volume

import (
	"errors"
	"io/fs"
	"path"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// NoWatchDir holds an empty file for each block device that carries the PV
// of an SR attached on this host, named by the device's identity as udev
// reads it from sysfs. packaging/udev/90-sanvol-nowatch.rules turns udev's
// inotify watch off for the devices named here: without it every LVM
// command that writes the SR's metadata ends in a "change" uevent on the
// PV, and each runs blkid and, on a multipath map, multipath, kpartx and
// dmsetup (docs/design.md, "udev and the SR's PV").
const NoWatchDir = "/run/sanvol/nowatch"

// noWatchKey is the name udev's rule looks for in NoWatchDir for the
// device at dev: an NVMe namespace's wwid, or a dm-multipath map's dm uuid
// ("mpath-<wwid>"). It is "" for any other device (a loop device, a plain
// SCSI disk) and for a value udev would rewrite when it substitutes it
// into the rule's file name ($attr strips trailing white space and
// replaces characters outside its allowed set): such a device keeps its
// watch, which costs CPU but is never wrong.
func noWatchKey(root host.Root, dev string) string {
	real, err := root.EvalSymlinks(dev)
	if err != nil {
		return ""
	}
	name := path.Base(real)
	var attr string
	switch {
	case strings.HasPrefix(name, "nvme"):
		attr = "wwid"
	case strings.HasPrefix(name, "dm-"):
		attr = "dm/uuid"
	default:
		return ""
	}
	b, err := root.ReadFile(path.Join("/sys/class/block", name, attr))
	if err != nil {
		return ""
	}
	v := strings.TrimRight(string(b), " \t\r\n")
	if attr == "dm/uuid" && !strings.HasPrefix(v, "mpath-") {
		return ""
	}
	if !validNoWatchKey(v) {
		return ""
	}
	return v
}

// validNoWatchKey admits the characters of NVMe wwids ("uuid.…", "eui.…",
// "nvme.<hex>-…") and SCSI wwids, which udev's substitution keeps as they
// are; nothing that could leave NoWatchDir.
func validNoWatchKey(v string) bool {
	return v != "" && v != "." && v != ".." &&
		strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:_-") == ""
}

// stopWatch names the SR's device in NoWatchDir and returns the name for
// the attach record ("" when the device has none). It never fails the
// attach: a device left watched only costs udev's work.
func (e *Engine) stopWatch(sr, dev string) string {
	key := noWatchKey(e.root, dev)
	if key == "" {
		return ""
	}
	p := path.Join(NoWatchDir, key)
	err := e.root.MkdirAll(NoWatchDir, 0o755)
	if err == nil {
		err = e.root.WriteFile(p, nil, 0o644)
	}
	if err != nil {
		e.log.Warn("cannot name the SR's device for udev; it keeps its inotify watch", zap.String("sr", sr), zap.String("file", p), zap.Error(err))
		return ""
	}
	return key
}

// resumeWatch removes the name stopWatch wrote, once the SR no longer
// uses the device on this host.
func (e *Engine) resumeWatch(a Attached) {
	if !validNoWatchKey(a.NoWatch) {
		return
	}
	// Gone already (a reboot emptied /run): nothing to undo.
	if err := e.root.Remove(path.Join(NoWatchDir, a.NoWatch)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Warn("cannot remove the SR's device name for udev", zap.String("sr", a.UUID), zap.Error(err))
	}
}

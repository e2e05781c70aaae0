package lvmtest

import (
	"errors"
	"strings"
	"sync"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Attr is the lv_attr lvm2 prints for a linear, writable LV whose
// device-mapper device is info (lvm2 lib/metadata/lv.c,
// lv_attr_dup_with_info_and_seg_status): state '-' without a device, 's'
// suspended, 'a' with a live table, 'i' with only an inactive one, 'd'
// with none; 'o' when its open count is above zero. A fake's lvs and its
// device-mapper state built from the same DMInfo agree.
func Attr(info host.DMInfo) string {
	attr := []byte("-wi-------")
	if info.Exists {
		switch {
		case info.Suspended:
			attr[4] = 's'
		case info.LiveTable:
			attr[4] = 'a'
		case info.InactiveTable:
			attr[4] = 'i'
		default:
			attr[4] = 'd'
		}
		if info.OpenCount > 0 {
			attr[5] = 'o'
		}
	}
	return string(attr)
}

// LVDMUUID is the device-mapper uuid lvm2 gives an LV's device: "LVM-"
// and the VG and LV uuids without dashes (lvm2 lib/misc/lvm-string.c,
// build_dm_uuid).
func LVDMUUID(vgUUID, lvUUID string) string {
	return "LVM-" + strings.ReplaceAll(vgUUID, "-", "") + strings.ReplaceAll(lvUUID, "-", "")
}

// DM is a fake host.DMStatusReader: the devices the kernel has, by name.
type DM struct {
	mu      sync.Mutex
	devices map[string]host.DMInfo
	// Err, when set, is every read's error: a host without
	// device-mapper.
	Err   error
	reads int
}

// Set makes the kernel have device name in state info (Exists is set).
func (d *DM) Set(name string, info host.DMInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.devices == nil {
		d.devices = map[string]host.DMInfo{}
	}
	info.Exists = true
	d.devices[name] = info
}

// Remove makes the kernel forget device name.
func (d *DM) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.devices, name)
}

// Reads counts the DMStatus calls so far.
func (d *DM) Reads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reads
}

// DMStatus implements host.DMStatusReader.
func (d *DM) DMStatus(names ...string) ([]host.DMInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reads++
	if d.Err != nil {
		return nil, d.Err
	}
	out := make([]host.DMInfo, len(names))
	for i, n := range names {
		out[i] = d.devices[n]
	}
	return out, nil
}

// ErrNoDM is the error of a host without device-mapper.
var ErrNoDM = errors.New("open /dev/mapper/control: no such file or directory")

// DMStatus implements host.DMStatusReader over the sim's state: an
// active LV's device (open while something holds it or a table maps it,
// as lvs says: lvRow renders Attr of the same state), and the
// device-mapper devices dmsetup made.
func (s *Sim) DMStatus(names ...string) ([]host.DMInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Ops["dm status"]++
	out := make([]host.DMInfo, len(names))
	for i, n := range names {
		out[i] = s.dmInfo(n)
	}
	return out, nil
}

func (s *Sim) dmInfo(name string) host.DMInfo {
	if s.vg != nil {
		for lvn := range s.vg.lvs {
			if lvm.DMName(s.vg.name, lvn) == name {
				return s.lvDM(lvn)
			}
		}
	}
	d := s.dm[name]
	if d == nil {
		return host.DMInfo{}
	}
	info := host.DMInfo{Exists: true, LiveTable: d.live != "", InactiveTable: d.hasInact, Suspended: d.suspended}
	if d.opened || s.mapped("/dev/mapper/"+name) {
		info.OpenCount = 1
	}
	return info
}

// lvDM is the kernel's state of an LV of the sim's VG.
func (s *Sim) lvDM(name string) host.DMInfo {
	l := s.vg.lvs[name]
	if !l.Active {
		return host.DMInfo{}
	}
	info := host.DMInfo{Exists: true, LiveTable: true, UUID: LVDMUUID(s.vg.uuid, l.UUID)}
	// A device-mapper table over the LV holds it open, as the kernel's
	// open count says.
	if l.Open || s.mapped(lvm.DevicePath(s.vg.name, name)) {
		info.OpenCount = 1
	}
	return info
}

package host

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DMInfo is what the kernel says of one device-mapper device: what
// libdm's dm_task_get_info reports after a DM_DEV_STATUS (lvm2
// libdm/ioctl/libdm-iface.c), and what lvm2 builds lv_attr's state and
// open characters from (lvm2 lib/metadata/lv.c,
// lv_attr_dup_with_info_and_seg_status).
type DMInfo struct {
	// Exists is false when the kernel has no device of that name.
	Exists bool
	// OpenCount counts the openers of the device.
	OpenCount int
	// Suspended: I/O to the device is held (dmsetup suspend).
	Suspended bool
	// LiveTable: the device has a table in use; InactiveTable: one
	// loaded and not yet resumed.
	LiveTable     bool
	InactiveTable bool
	// UUID is the device's device-mapper uuid (LVM's is "LVM-" and the
	// VG and LV uuids without dashes).
	UUID string
}

// DMStatusReader reads the state of device-mapper devices by name,
// without a process.
type DMStatusReader interface {
	// DMStatus returns the state of each named device, in order; a
	// device the kernel does not have is Exists false, not an error. An
	// error means the states could not be read (no device-mapper on the
	// host, no permission): the caller must find out another way.
	DMStatus(names ...string) ([]DMInfo, error)
}

// dmIoctl is struct dm_ioctl, the header of every device-mapper ioctl
// (Linux include/uapi/linux/dm-ioctl.h, copied in lvm2 as
// libdm/misc/dm-ioctl.h): 312 bytes in the host's byte order, with the
// same layout in Go as in C (Dev is 8-aligned at 40).
type dmIoctl struct {
	Version     [3]uint32
	DataSize    uint32 // the whole buffer, this struct included
	DataStart   uint32 // where data after the struct starts
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Padding     uint32
	Dev         uint64
	Name        [dmNameLen]byte
	UUID        [dmUUIDLen]byte
	Data        [7]byte
}

const (
	dmIoctlSize = 312
	// dmDevStatus is DM_DEV_STATUS, _IOWR(DM_IOCTL 0xfd,
	// DM_DEV_STATUS_CMD 7, struct dm_ioctl).
	dmDevStatus = 0xc138fd07
	dmNameLen   = 128 // DM_NAME_LEN
	dmUUIDLen   = 129 // DM_UUID_LEN

	dmSuspendFlag         = 1 << 1 // DM_SUSPEND_FLAG
	dmActivePresentFlag   = 1 << 5 // DM_ACTIVE_PRESENT_FLAG
	dmInactivePresentFlag = 1 << 6 // DM_INACTIVE_PRESENT_FLAG
)

// DMControlPath is device-mapper's control node.
const DMControlPath = "/dev/mapper/control"

// DMControl is the host's DMStatusReader: one DM_DEV_STATUS ioctl per
// device on DMControlPath under Root, the query `dmsetup info` makes,
// without the process.
type DMControl struct{ Root Root }

// DMStatus implements DMStatusReader.
func (d DMControl) DMStatus(names ...string) ([]DMInfo, error) {
	// libdm opens the control node read-write too (libdm-iface.c,
	// _open_control); the ioctls need CAP_SYS_ADMIN.
	f, err := os.OpenFile(d.Root.Path(DMControlPath), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make([]DMInfo, 0, len(names))
	for _, n := range names {
		info, err := dmStatus(f.Fd(), n)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// dmStatusRequest is the struct dm_ioctl of a DM_DEV_STATUS by name.
// Interface version 4.0.0: the kernel takes any request whose major is
// its own and whose minor is not above its own (dm-ioctl.c,
// check_version); 4 is every kernel's since 2.6.
func dmStatusRequest(name string) (dmIoctl, error) {
	var r dmIoctl
	if name == "" || len(name) >= dmNameLen {
		return r, fmt.Errorf("device-mapper name %q: not 1 to %d bytes", name, dmNameLen-1)
	}
	r.Version = [3]uint32{4, 0, 0}
	r.DataSize = dmIoctlSize
	r.DataStart = dmIoctlSize // no data follows
	copy(r.Name[:], name)
	return r, nil
}

// parseDMStatus decodes the kernel's answer to a DM_DEV_STATUS that
// succeeded.
func parseDMStatus(r dmIoctl) DMInfo {
	uuid := r.UUID[:]
	if i := bytes.IndexByte(uuid, 0); i >= 0 {
		uuid = uuid[:i]
	}
	return DMInfo{
		Exists:        true,
		OpenCount:     int(r.OpenCount),
		Suspended:     r.Flags&dmSuspendFlag != 0,
		LiveTable:     r.Flags&dmActivePresentFlag != 0,
		InactiveTable: r.Flags&dmInactivePresentFlag != 0,
		UUID:          string(uuid),
	}
}

// dmStatus asks the kernel about one device. The kernel looks it up by
// name and writes its name and uuid back (dm-ioctl.c,
// __find_device_hash_cell), then its open count and flags (__dev_status);
// ENXIO means no device of that name, as libdm reads it (libdm-iface.c,
// _do_dm_ioctl clears DM_EXISTS_FLAG).
func dmStatus(fd uintptr, name string) (DMInfo, error) {
	r, err := dmStatusRequest(name)
	if err != nil {
		return DMInfo{}, err
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, dmDevStatus, uintptr(unsafe.Pointer(&r)))
		switch {
		case errno == 0:
			return parseDMStatus(r), nil
		case errors.Is(errno, unix.ENXIO):
			return DMInfo{}, nil
		case errors.Is(errno, unix.EINTR):
			continue
		}
		return DMInfo{}, fmt.Errorf("DM_DEV_STATUS %s: %w", name, errno)
	}
}

package blockdev

import (
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/host"
)

// sysBlock is where the kernel lists every block device by its kernel
// name (sda, nvme0n1, dm-3), with holders/ and slaves/ naming the devices
// stacked on it and under it.
const sysBlock = "/sys/block"

// DMDevice is one device-mapper device as sysfs shows it. sysfs answers
// even when the storage under the device no longer does, which is why
// detach and the transports read it rather than asking dmsetup.
type DMDevice struct {
	Dev  string // kernel name: "dm-3"
	Name string // dm/name, the /dev/mapper name; "" when unreadable
	// UUID is dm/uuid, which says who made the device: "mpath-<wwid>"
	// for a dm-multipath map, "LVM-<vg uuid><lv uuid>" for an LV.
	UUID      string
	Suspended bool
	Slaves    []string // kernel names of the devices under it, sorted
	Holders   []string // kernel names of the devices on top of it, sorted
	Size      int64    // bytes
}

// DMDevices lists every device-mapper device that has a uuid, in the
// order of their sysfs paths.
func DMDevices(root host.Root) ([]DMDevice, error) {
	uuids, err := root.Glob(sysBlock + "/dm-*/dm/uuid")
	if err != nil {
		return nil, err
	}
	sort.Strings(uuids)
	var out []DMDevice
	for _, u := range uuids {
		uuid, err := root.ReadString(u)
		if err != nil {
			continue
		}
		base := path.Dir(path.Dir(u))
		d := DMDevice{Dev: path.Base(base), UUID: uuid}
		d.Name, _ = root.ReadString(base + "/dm/name")
		susp, _ := root.ReadString(base + "/dm/suspended")
		d.Suspended = susp == "1"
		d.Slaves = Slaves(root, d.Dev)
		d.Holders = Holders(root, d.Dev)
		d.Size = Size(root, d.Dev)
		out = append(out, d)
	}
	return out, nil
}

// Holders lists the kernel names of the devices stacked on a block device
// (a multipath map on a disk, an LV on a map), sorted; none when the
// device is gone.
func Holders(root host.Root, name string) []string {
	return list(root, path.Join(sysBlock, name, "holders"))
}

// Slaves lists the kernel names of the devices a block device is stacked
// on, sorted.
func Slaves(root host.Root, name string) []string {
	return list(root, path.Join(sysBlock, name, "slaves"))
}

// Size is a block device's size in bytes, 0 when unreadable. sysfs gives
// it in 512-byte sectors whatever the device's block size.
func Size(root host.Root, name string) int64 {
	v, _ := root.ReadString(path.Join(sysBlock, name, "size"))
	n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	return n * 512
}

func list(root host.Root, dir string) []string {
	entries, err := root.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

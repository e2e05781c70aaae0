package iscsi

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sanvol/sanvol/host"
)

// CapacityFunc asks a SCSI disk (/dev/sdX) for the LUN's capacity in
// bytes, as the array reports it now. Tests inject a fake.
type CapacityFunc func(dev string) (int64, error)

// The SG_IO interface of include/scsi/sg.h, which x/sys/unix does not
// define.
const (
	sgIO           = 0x2285
	sgDxferFromDev = -3
	sgInterfaceID  = 'S'
	sgInfoOKMask   = 0x1
	// readCapacity16 is SERVICE ACTION IN(16) with READ CAPACITY(16)
	// (SBC-3 §5.16), which every array of this decade answers; unlike
	// READ CAPACITY(10) it does not stop at 2 TiB.
	readCapacity16 = 0x9e
	saReadCap16    = 0x10
	readCapLen     = 32
	senseLen       = 32
	// senseUnitAttention is the sense key an array answers the first
	// command with after the LUN changed ("capacity data has changed").
	senseUnitAttention = 0x6
)

// sgIOHdr is struct sg_io_hdr. Go lays it out as C does on every Linux
// ABI (pointers as uintptr, the padding before usr_ptr included).
type sgIOHdr struct {
	interfaceID    int32
	dxferDirection int32
	cmdLen         uint8
	mxSbLen        uint8
	iovecCount     uint16
	dxferLen       uint32
	dxferp         uintptr
	cmdp           uintptr
	sbp            uintptr
	timeout        uint32
	flags          uint32
	packID         int32
	usrPtr         uintptr
	status         uint8
	maskedStatus   uint8
	msgStatus      uint8
	sbLenWr        uint8
	hostStatus     uint16
	driverStatus   uint16
	resid          int32
	duration       uint32
	info           uint32
}

// scsiCapacity reads a disk's capacity with one READ CAPACITY(16) through
// SG_IO. It is how SR.stat notices a grown LUN without rescanning: a
// rescan (sysfs device/rescan) revalidates the whole disk with several
// commands per path and emits uevents that `udevadm settle` must then
// wait for, while this is one command on one path, answered from the
// array's memory, with no change to the kernel's state. A unit attention
// (the array's note that the LUN changed) is read and the command
// repeated.
func scsiCapacity(root host.Root, timeout time.Duration) CapacityFunc {
	return func(dev string) (int64, error) {
		f, err := os.OpenFile(root.Path(dev), os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		for attempt := 0; ; attempt++ {
			size, ua, err := readCapacity(f, timeout)
			if !ua || attempt == 2 {
				return size, err
			}
		}
	}
}

func readCapacity(f *os.File, timeout time.Duration) (size int64, unitAttention bool, err error) {
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = readCapacity16, saReadCap16
	binary.BigEndian.PutUint32(cdb[10:14], readCapLen)
	buf := make([]byte, readCapLen)
	sense := make([]byte, senseLen)
	h := &sgIOHdr{
		interfaceID:    sgInterfaceID,
		dxferDirection: sgDxferFromDev,
		cmdLen:         uint8(len(cdb)),
		mxSbLen:        senseLen,
		dxferLen:       readCapLen,
		dxferp:         uintptr(unsafe.Pointer(&buf[0])),
		cmdp:           uintptr(unsafe.Pointer(&cdb[0])),
		sbp:            uintptr(unsafe.Pointer(&sense[0])),
		timeout:        uint32(timeout.Milliseconds()),
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), sgIO, uintptr(unsafe.Pointer(h)))
	runtime.KeepAlive(cdb)
	runtime.KeepAlive(buf)
	runtime.KeepAlive(sense)
	if errno != 0 {
		return 0, false, fmt.Errorf("SG_IO READ CAPACITY(16) on %s: %w", f.Name(), errno)
	}
	if h.info&sgInfoOKMask != 0 {
		if h.sbLenWr > 2 && senseKey(sense) == senseUnitAttention {
			return 0, true, fmt.Errorf("READ CAPACITY(16) on %s: unit attention", f.Name())
		}
		return 0, false, fmt.Errorf("READ CAPACITY(16) on %s failed: status %#x, host %#x, driver %#x", f.Name(), h.status, h.hostStatus, h.driverStatus)
	}
	lastLBA := binary.BigEndian.Uint64(buf[0:8])
	blockLen := binary.BigEndian.Uint32(buf[8:12])
	if blockLen == 0 || lastLBA == ^uint64(0) {
		return 0, false, fmt.Errorf("READ CAPACITY(16) on %s: no capacity in the answer", f.Name())
	}
	return int64(lastLBA+1) * int64(blockLen), false, nil
}

// senseKey reads the sense key of fixed (0x70/0x71) or descriptor
// (0x72/0x73) sense data.
func senseKey(s []byte) byte {
	switch s[0] & 0x7f {
	case 0x72, 0x73:
		return s[1] & 0x0f
	default:
		return s[2] & 0x0f
	}
}

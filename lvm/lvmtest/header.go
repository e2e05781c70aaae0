package lvmtest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// PVHead is the start of a PV as lvm2's pvcreate lays it out (lvm2
// lib/label/label.h and lib/format_text/layout.h): the label in sector 1,
// one metadata area at 4096 whose header locates the committed (slot 0)
// and precommitted (slot 1) metadata text. Bytes renders its first 8 KiB,
// for tests of the report cache's stamp.
type PVHead struct {
	UUID       string // 32 characters
	DeviceSize uint64
	MDASize    uint64
	Committed  RawLocn
	Precommit  RawLocn
}

// RawLocn is a raw_locn: where a metadata text is, and its checksum.
type RawLocn struct {
	Offset, Size uint64
	Checksum     uint32
}

const (
	pvHeadSize = 8192
	mdaStart   = 4096
	// initialCRC is lvm2's INITIAL_CRC.
	initialCRC = 0xf597a6cf
)

// crc is lvm2's calc_crc: CRC-32 (IEEE, reflected) with no inversions.
func crc(b []byte) uint32 { return ^crc32.Update(^uint32(initialCRC), crc32.IEEETable, b) }

// NewPVHead is a PV head with one metadata area of mdaSize bytes and
// committed metadata text number seq (each seq a different location and
// checksum, as each lvm2 commit gives).
func NewPVHead(uuid string, seq int) PVHead {
	return PVHead{UUID: fmt.Sprintf("%-32.32s", uuid), DeviceSize: 1 << 30, MDASize: 1 << 20,
		Committed: textAt(seq)}
}

// textAt is where the seq'th metadata text would be.
func textAt(seq int) RawLocn {
	return RawLocn{Offset: 512 + uint64(seq%100)*2048, Size: 1500 + uint64(seq), Checksum: crc([]byte(fmt.Sprint("metadata seqno = ", seq)))}
}

// Precommitted is h with text seq precommitted (slot 1), as lvm2 writes
// the header between vg_write and vg_commit.
func (h PVHead) Precommitted(seq int) PVHead {
	h.Precommit = textAt(seq)
	return h
}

// Bytes renders the first 8 KiB of the device.
func (h PVHead) Bytes() []byte {
	le := binary.LittleEndian
	b := make([]byte, pvHeadSize)
	// label_header in sector 1, pv_header right after it (offset_xl 32).
	s := b[512:1024]
	copy(s, "LABELONE")
	le.PutUint64(s[8:], 1)
	le.PutUint32(s[20:], 32)
	copy(s[24:], "LVM2 001")
	copy(s[32:64], h.UUID)
	le.PutUint64(s[64:], h.DeviceSize)
	// The data area list (one area from 1 MiB to the end: size 0), a
	// zero entry, the metadata area list (one at 4096), a zero entry.
	le.PutUint64(s[72:], 1<<20)
	le.PutUint64(s[104:], mdaStart)
	le.PutUint64(s[112:], h.MDASize)
	le.PutUint32(s[16:], crc(s[20:]))
	// mda_header at 4096.
	m := b[mdaStart : mdaStart+512]
	copy(m[4:], " LVM2 x[5A%r0N*>")
	le.PutUint32(m[20:], 1)
	le.PutUint64(m[24:], mdaStart)
	le.PutUint64(m[32:], h.MDASize)
	for i, r := range []RawLocn{h.Committed, h.Precommit} {
		p := 40 + 24*i
		le.PutUint64(m[p:], r.Offset)
		le.PutUint64(m[p+8:], r.Size)
		le.PutUint32(m[p+16:], r.Checksum)
	}
	le.PutUint32(m, crc(m[4:]))
	return b
}

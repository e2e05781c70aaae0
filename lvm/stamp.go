package lvm

// The on-disk LVM2 text format, as far as the report cache needs it
// (lvm2 lib/label/label.h, lib/format_text/layout.h, text_label.c and
// format-text.c; unchanged from 2.02 to 2.03). All integers are
// little-endian.
//
//	label_header (in one of sectors 0-3): id[8] "LABELONE", sector_xl u64
//	  (the sector it is in), crc_xl u32 (of the rest of the sector, from
//	  offset_xl on), offset_xl u32 (where pv_header starts in the sector),
//	  type[8] "LVM2 001".
//	pv_header: pv_uuid[32], device_size_xl u64, then two lists of
//	  disk_locn {offset u64, size u64}, each ended by a zero offset: the
//	  data areas, then the metadata areas.
//	mda_header (the first 512 bytes of each metadata area): checksum_xl
//	  u32 (of the other 508 bytes), magic[16], version u32, start u64,
//	  size u64, raw_locn[] {offset u64, size u64, checksum u32, flags u32}:
//	  slot 0 the committed metadata text, slot 1 the precommitted one.
//
// A metadata change writes the new text into the area's circular buffer
// and then rewrites the mda_header twice: precommit (slot 1) and commit
// (slot 0, slot 1 cleared) (format-text.c, _vg_commit_raw_rlocn). Readers
// find the text through slot 0 only. The text carries the VG's seqno,
// which every commit increments, so its checksum changes, and it is
// written after the previous text in the buffer, so its offset changes:
// a header never returns to a state it had before.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/sanvol/sanvol/host"
)

const (
	sectorSize    = 512
	labelSectors  = 4 // LABEL_SCAN_SECTORS
	mdaHeaderSize = 512
	labelID       = "LABELONE"
	labelType     = "LVM2 001"
	// fmttMagic is FMTT_MAGIC.
	fmttMagic   = " LVM2 x[5A%r0N*>"
	fmttVersion = 1
	// initialCRC is lvm2's INITIAL_CRC (lib/misc/crc.h).
	initialCRC = 0xf597a6cf
	// headRead is what the first read takes: the label sectors and, in
	// one I/O, the metadata area header pvcreate puts at 4096.
	headRead = 2 * host.BlockAlign
)

// lvmCRC is lvm2's calc_crc: the reflected CRC-32 of IEEE 802.3 without
// the pre- and post-inversion of crc32.Update.
func lvmCRC(initial uint32, b []byte) uint32 {
	return ^crc32.Update(^initial, crc32.IEEETable, b)
}

// diskLocn is a disk_locn: a byte range of the device.
type diskLocn struct{ Offset, Size uint64 }

// pvLabel is what the report cache needs of a PV label.
type pvLabel struct {
	Sector []byte // the whole label sector, as read
	UUID   string
	MDAs   []diskLocn
}

// parseLabel finds the PV label in the first labelSectors sectors of a
// device and decodes its metadata area list.
func parseLabel(head []byte) (pvLabel, error) {
	le := binary.LittleEndian
	for i := 0; i < labelSectors && (i+1)*sectorSize <= len(head); i++ {
		s := head[i*sectorSize : (i+1)*sectorSize]
		if string(s[:8]) != labelID {
			continue
		}
		if le.Uint64(s[8:]) != uint64(i) {
			return pvLabel{}, fmt.Errorf("PV label in sector %d says sector %d", i, le.Uint64(s[8:]))
		}
		if got, want := lvmCRC(initialCRC, s[20:]), le.Uint32(s[16:]); got != want {
			return pvLabel{}, fmt.Errorf("PV label checksum %#x, want %#x", got, want)
		}
		if string(s[24:32]) != labelType {
			return pvLabel{}, fmt.Errorf("PV label type %q is not %q", s[24:32], labelType)
		}
		off := int(le.Uint32(s[20:]))
		if off < 32 || off+32+8 > sectorSize {
			return pvLabel{}, fmt.Errorf("pv_header offset %d out of the label sector", off)
		}
		l := pvLabel{Sector: bytes.Clone(s), UUID: string(s[off : off+32])}
		p := off + 40
		next := func() (diskLocn, bool) {
			if p+16 > sectorSize {
				return diskLocn{}, false
			}
			d := diskLocn{le.Uint64(s[p:]), le.Uint64(s[p+8:])}
			p += 16
			return d, true
		}
		for list := 0; list < 2; list++ {
			for {
				d, ok := next()
				if !ok {
					return pvLabel{}, fmt.Errorf("pv_header area lists run past the label sector")
				}
				if d.Offset == 0 {
					break
				}
				if list == 1 {
					l.MDAs = append(l.MDAs, d)
				}
			}
		}
		return l, nil
	}
	return pvLabel{}, fmt.Errorf("no LVM2 PV label in the first %d sectors", labelSectors)
}

// checkMDAHeader validates the mda_header of the area at start.
func checkMDAHeader(h []byte, start uint64) error {
	le := binary.LittleEndian
	if len(h) < mdaHeaderSize {
		return fmt.Errorf("short metadata area header")
	}
	h = h[:mdaHeaderSize]
	if got, want := lvmCRC(initialCRC, h[4:]), le.Uint32(h); got != want {
		return fmt.Errorf("metadata area header checksum %#x, want %#x", got, want)
	}
	if string(h[4:20]) != fmttMagic || le.Uint32(h[20:]) != fmttVersion {
		return fmt.Errorf("not an LVM2 metadata area header (magic %q version %d)", h[4:20], le.Uint32(h[20:]))
	}
	if s := le.Uint64(h[24:]); s != start {
		return fmt.Errorf("metadata area header says start %d, found at %d", s, start)
	}
	return nil
}

// deviceStamp reads dev's PV label and every metadata area header, with
// reads that go to the storage (BlockReader), and returns the PV's uuid
// and the stamp: the label sector followed by each header's 512 bytes.
// Any failure means no stamp.
func deviceStamp(br host.BlockReader, dev string) (uuid string, stamp []byte, err error) {
	head, err := br.ReadAt(dev, 0, headRead)
	if err != nil {
		return "", nil, err
	}
	l, err := parseLabel(head)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", dev, err)
	}
	if len(l.MDAs) == 0 {
		// Its VG's metadata is on other PVs, which the stamp would not
		// cover.
		return "", nil, fmt.Errorf("%s: the PV has no metadata area", dev)
	}
	stamp = append(stamp, l.Sector...)
	for _, m := range l.MDAs {
		if m.Offset%sectorSize != 0 {
			return "", nil, fmt.Errorf("%s: metadata area at %d is not sector-aligned", dev, m.Offset)
		}
		var h []byte
		if m.Offset+mdaHeaderSize <= uint64(len(head)) {
			h = head[m.Offset : m.Offset+mdaHeaderSize]
		} else {
			// A 512-aligned header never crosses a 4096 boundary.
			base := m.Offset &^ (host.BlockAlign - 1)
			b, err := br.ReadAt(dev, int64(base), host.BlockAlign)
			if err != nil {
				return "", nil, err
			}
			h = b[m.Offset-base : m.Offset-base+mdaHeaderSize]
		}
		if err := checkMDAHeader(h, m.Offset); err != nil {
			return "", nil, fmt.Errorf("%s: %w", dev, err)
		}
		stamp = append(stamp, h...)
	}
	return l.UUID, stamp, nil
}

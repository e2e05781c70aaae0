package volume

import (
	"fmt"
	"math"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Byte limits on what a request may store in the SR's LVM metadata. Every
// byte becomes up to three in a tag (lvm.Escape) and one lvchange carries
// them all on its command line, so an unbounded Volume.set could pass
// ARG_MAX or fill the VG's 256 MiB metadata area, which stops every
// metadata change on the SR. The caps leave room for what xapi and its
// clients store (names, descriptions, a few keys) many times over.
const (
	MaxNameBytes        = 1024
	MaxDescriptionBytes = 4096
	MaxKeyBytes         = 256
	MaxValueBytes       = 4096
	// MaxVolumeMetaBytes bounds a volume's name, description, keys and
	// values together: about 48 KiB of tags at worst, so even 2,500
	// volumes at the limit stay far below the metadata area.
	MaxVolumeMetaBytes = 16384
)

// checkText refuses a value over its cap, naming the limit.
func checkText(op, what string, v string, max int) error {
	if len(v) > max {
		return host.NewError(host.KindInvalid, op, fmt.Sprintf("the %s is %d bytes; sanvol stores at most %d", what, len(v), max),
			fmt.Sprintf("give a %s of at most %d bytes", what, max), nil)
	}
	return nil
}

// checkNameDescription checks a name and a description of a volume or SR.
func checkNameDescription(op, name, description string) error {
	if err := checkText(op, "name", name, MaxNameBytes); err != nil {
		return err
	}
	return checkText(op, "description", description, MaxDescriptionBytes)
}

// metaBytes is what a volume's name, description and keys take, counted
// as stored (a key record holds its key and value).
func metaBytes(f map[string]string) int {
	n := 0
	for field, v := range f {
		if field == volFieldName || field == volFieldDescription || (len(field) > 1 && field[:1] == volFieldKeyPrefix) {
			n += len(v)
		}
	}
	return n
}

// checkVolumeTotal refuses a change of one field that would take the
// volume's metadata over MaxVolumeMetaBytes. Shrinking is always allowed.
func checkVolumeTotal(op string, tags []string, field string, value *string) error {
	f, _, err := lvm.DecodeFields(tags)
	if err != nil {
		return nil // the read path reports unreadable tags; a smaller value is no risk
	}
	before := metaBytes(f)
	after := before - len(f[field])
	if value != nil {
		after += len(*value)
	}
	if after > MaxVolumeMetaBytes && after > before {
		return host.NewError(host.KindInvalid, op,
			fmt.Sprintf("the volume's name, description, keys and values would take %d bytes; sanvol stores at most %d per volume", after, MaxVolumeMetaBytes),
			"remove keys the volume no longer needs (Volume.unset) or store shorter values", nil)
	}
	return nil
}

// extentsFor is the number of extents that hold size bytes, refusing a
// size whose rounding up would overflow int64 (size=MaxInt64 would
// otherwise become a negative extent count and a skipped zeroing).
func extentsFor(op string, size, extent int64) (int64, error) {
	if size < 0 {
		return 0, host.NewError(host.KindInvalid, op, fmt.Sprintf("size %d is negative", size), "give a size in bytes", nil)
	}
	if extent <= 0 {
		return 0, host.NewError(host.KindInternal, op, "attach record has no extent size", "unplug and plug the PBD", nil)
	}
	limit := math.MaxInt64 / extent // whole extents that fit in int64
	n := size / extent
	if size%extent != 0 || n == 0 {
		n++
	}
	if n > limit {
		return 0, host.NewError(host.KindInvalid, op,
			fmt.Sprintf("size %d bytes cannot be rounded up to whole %d-byte extents within 64 bits", size, extent),
			fmt.Sprintf("give a size of at most %d bytes", limit*extent), nil)
	}
	return n, nil
}

// truncate shortens a key for a message.
func truncate(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q…", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

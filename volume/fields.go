package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"sanvol/lvm"
)

// Tag fields (lvm.EncodeField) of an SR's VG. They are written by the one
// vgcreate that makes the VG, so a VG never exists without them.
const (
	srFieldUUID        = "U" // SR uuid: how the VG is recognised
	srFieldName        = "N"
	srFieldDescription = "D"
	srFieldType        = "T" // SR type (nvmetcp, iscsi-ng)
	srFieldVersion     = "V" // sanvol version that created it
)

// Tag fields of a volume's LV.
const (
	volFieldName        = "N"
	volFieldDescription = "D"
	volFieldSharable    = "S" // "true" when sharable; absent otherwise
	// volFieldInit marks an LV whose zeroing has not finished. Such an
	// LV is no volume yet: SR.ls and Volume.stat do not show it, and
	// once its creator is gone (its volinit lock is free) the master
	// removes it.
	volFieldInit = "I"
	// volFieldGrow records the size up to which the LV is known to be
	// zeroed while a resize runs. A repeated resize zeroes from there.
	volFieldGrow = "G"
	// Keys of Volume.set are fields "k<hash of the key>", valued
	// "<len(key)>:<key><value>" so any key and value round-trip.
	volFieldKeyPrefix = "k"
)

// keyField names the tag field of a Volume.set key. 64 bits of SHA-256
// make a collision between two keys of one volume practically impossible,
// and the key itself is stored in the value, so it is never guessed.
func keyField(k string) string {
	sum := sha256.Sum256([]byte(k))
	return volFieldKeyPrefix + hex.EncodeToString(sum[:8])
}

func keyValue(k, v string) string { return strconv.Itoa(len(k)) + ":" + k + v }

func parseKeyValue(s string) (k, v string, err error) {
	n, rest, ok := strings.Cut(s, ":")
	l, err2 := strconv.Atoi(n)
	if !ok || err2 != nil || l < 0 || l > len(rest) {
		return "", "", fmt.Errorf("malformed key record %q", s)
	}
	return rest[:l], rest[l:], nil
}

// volumeMeta is what a volume's tags say.
type volumeMeta struct {
	Name, Description string
	Sharable          bool
	Initializing      bool
	// Grow is set while a resize has not finished zeroing; GrowFrom is
	// the size up to which the LV is zeroed.
	Grow     bool
	GrowFrom int64
	Keys     map[string]string
}

func decodeVolumeTags(tags []string) (volumeMeta, error) {
	f, _, err := lvm.DecodeFields(tags)
	if err != nil {
		return volumeMeta{}, err
	}
	m := volumeMeta{Name: f[volFieldName], Description: f[volFieldDescription], Sharable: f[volFieldSharable] == "true", Keys: map[string]string{}}
	_, m.Initializing = f[volFieldInit]
	if g, ok := f[volFieldGrow]; ok {
		n, err := strconv.ParseInt(g, 10, 64)
		if err != nil {
			return volumeMeta{}, fmt.Errorf("malformed resize marker %q", g)
		}
		m.Grow, m.GrowFrom = true, n
	}
	for name, val := range f {
		if !strings.HasPrefix(name, volFieldKeyPrefix) {
			continue
		}
		k, v, err := parseKeyValue(val)
		if err != nil {
			return volumeMeta{}, err
		}
		if keyField(k) != name {
			return volumeMeta{}, fmt.Errorf("key record %q is stored under the wrong field %s", k, name)
		}
		m.Keys[k] = v
	}
	return m, nil
}

// srMeta is what a VG's tags say.
type srMeta struct {
	UUID, Name, Description, Type, Version string
}

// decodeSRTags returns the SR facts of a VG, and false if the VG is not a
// sanvol SR.
func decodeSRTags(tags []string) (srMeta, bool) {
	f, _, err := lvm.DecodeFields(tags)
	if err != nil || !IsUUID(f[srFieldUUID]) {
		return srMeta{}, false
	}
	return srMeta{UUID: f[srFieldUUID], Name: f[srFieldName], Description: f[srFieldDescription], Type: f[srFieldType], Version: f[srFieldVersion]}, true
}

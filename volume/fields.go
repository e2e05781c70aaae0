package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sanvol/sanvol/lvm"
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
	// volFieldKey is the volume's key, written by the lvcreate that
	// makes the LV. The collector of unfinished creates removes an LV
	// only when this tag and the LV name agree.
	volFieldKey = "K"
	// volFieldInit marks an LV whose zeroing has not finished. Such an
	// LV is no volume yet: SR.ls and Volume.stat do not show it. Its
	// value, "<unix seconds> <host id>", says when and where the create
	// started, which is what the collector judges (collectable).
	volFieldInit = "I"
	// volFieldGrow records, while a resize runs, the range it must zero:
	// "<from>:<to>:<lv uuid>" in bytes. A repeated resize zeroes it once
	// the mark has been checked against the LV (checkGrow).
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

// initMark is the value of volFieldInit.
type initMark struct {
	Time time.Time
	Host string // the creating host's id (Options.HostID); may be empty
}

func (m initMark) String() string { return strconv.FormatInt(m.Time.Unix(), 10) + " " + m.Host }

func parseInitMark(s string) (initMark, error) {
	t, h, ok := strings.Cut(s, " ")
	n, err := strconv.ParseInt(t, 10, 64)
	if !ok || err != nil || n <= 0 {
		return initMark{}, fmt.Errorf("create mark %q is not \"<unix time> <host>\"", s)
	}
	return initMark{Time: time.Unix(n, 0), Host: h}, nil
}

// growMark is the value of volFieldGrow: zero [From, To) of the LV LV.
type growMark struct {
	From, To int64
	LV       string
}

func (g growMark) String() string {
	return strconv.FormatInt(g.From, 10) + ":" + strconv.FormatInt(g.To, 10) + ":" + g.LV
}

func parseGrowMark(s string) (growMark, error) {
	p := strings.Split(s, ":")
	if len(p) == 3 {
		from, err1 := strconv.ParseInt(p[0], 10, 64)
		to, err2 := strconv.ParseInt(p[1], 10, 64)
		if err1 == nil && err2 == nil && p[2] != "" {
			return growMark{From: from, To: to, LV: p[2]}, nil
		}
	}
	return growMark{}, fmt.Errorf("resize mark %q is not \"<from>:<to>:<lv uuid>\"", s)
}

// volumeMeta is what a volume's tags say.
type volumeMeta struct {
	Name, Description string
	Sharable          bool
	// Key is the key tag; empty if absent.
	Key          string
	Initializing bool
	// Init is the create mark; InitErr says why it is unreadable.
	Init    initMark
	InitErr error
	// Grow is set while a resize has not finished zeroing; GrowFrom is
	// the size up to which the LV is zeroed, GrowTo the size the resize
	// grows it to, GrowLV the LV uuid the mark was written for. GrowErr
	// says why the mark is unreadable.
	Grow             bool
	GrowFrom, GrowTo int64
	GrowLV           string
	GrowErr          error
	Keys             map[string]string
	// Problems lists, one per field, what does not decode. The rest of
	// the meta holds what does.
	Problems []string
}

// decodeVolumeTags reads a volume's tags field by field: a damaged field
// costs only itself. The error is non-nil when anything was damaged; the
// meta is filled as far as the tags allow in every case.
func decodeVolumeTags(tags []string) (volumeMeta, error) {
	f, bad, _ := lvm.DecodeEachField(tags)
	m := volumeMeta{Name: f[volFieldName], Description: f[volFieldDescription], Sharable: f[volFieldSharable] == "true",
		Key: f[volFieldKey], Keys: map[string]string{}}
	for _, name := range slices.Sorted(maps.Keys(bad)) {
		m.Problems = append(m.Problems, bad[name].Error())
	}
	if v, ok := f[volFieldInit]; ok {
		m.Initializing = true
		if m.Init, m.InitErr = parseInitMark(v); m.InitErr != nil {
			m.Problems = append(m.Problems, m.InitErr.Error())
		}
	} else if bad[volFieldInit] != nil {
		m.Initializing, m.InitErr = true, bad[volFieldInit]
	}
	if v, ok := f[volFieldGrow]; ok {
		m.Grow = true
		g, err := parseGrowMark(v)
		m.GrowFrom, m.GrowTo, m.GrowLV, m.GrowErr = g.From, g.To, g.LV, err
		if err != nil {
			m.Problems = append(m.Problems, err.Error())
		}
	} else if bad[volFieldGrow] != nil {
		m.Grow, m.GrowErr = true, bad[volFieldGrow]
	}
	for _, name := range slices.Sorted(maps.Keys(f)) {
		if !strings.HasPrefix(name, volFieldKeyPrefix) {
			continue
		}
		k, v, err := parseKeyValue(f[name])
		if err == nil && keyField(k) != name {
			err = fmt.Errorf("key record %q is stored under the wrong field %s", k, name)
		}
		if err != nil {
			m.Problems = append(m.Problems, err.Error())
			continue
		}
		m.Keys[k] = v
	}
	if len(m.Problems) > 0 {
		return m, errors.New(strings.Join(m.Problems, "; "))
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
	// Field by field: a damaged name or description must not hide the
	// SR from SR.attach.
	f, _, _ := lvm.DecodeEachField(tags)
	if !IsUUID(f[srFieldUUID]) {
		return srMeta{}, false
	}
	return srMeta{UUID: f[srFieldUUID], Name: f[srFieldName], Description: f[srFieldDescription], Type: f[srFieldType], Version: f[srFieldVersion]}, true
}

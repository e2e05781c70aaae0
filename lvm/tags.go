package lvm

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// LVM accepts only [A-Za-z0-9_+.-/=!:&#] in a tag (lvm2
// lib/misc/lvm-string.c validate_tag), a tag may not start with '-', and
// older releases (RHEL 6 documentation, lvm2 2.02) limit a tag to 128
// characters where 2.03 allows 1024. sanvol stores arbitrary UTF-8 (names,
// descriptions, xapi keys) in tags, so every value is escaped into that
// alphabet and cut into chunks that fit the smaller limit.
//
// One field becomes one or more tags:
//
//	sv.<field>.<index>:<chunk>
//
// <field> is [A-Za-z0-9]+, <index> counts chunks from 0 and the value is
// the concatenation of the chunks in index order, unescaped. An empty value
// is one tag with an empty chunk, so "present but empty" differs from
// "absent". LVM keeps tags as a set (no order, no duplicates); the index
// both orders the chunks and keeps equal chunks of one value distinct.

// MaxTagLen is the longest tag sanvol writes: the limit of lvm2 2.02.
const MaxTagLen = 128

const tagPrefix = "sv."

// escapeChar introduces a byte written as two upper-case hex digits. It is
// in LVM's alphabet, so escaped text is still a valid tag.
const escapeChar = '&'

func passThrough(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("_+.-/=!:#", c) >= 0
}

// Escape maps any byte string into LVM's tag alphabet. It is exact for
// every input, including invalid UTF-8.
func Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if passThrough(c) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%c%02X", escapeChar, c)
	}
	return b.String()
}

// Unescape reverses Escape.
func Unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != escapeChar {
			b.WriteByte(c)
			continue
		}
		if i+3 > len(s) {
			return "", fmt.Errorf("truncated escape at offset %d in %q", i, s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q at offset %d", s[i:i+3], i)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

func validField(f string) bool {
	if f == "" {
		return false
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// EncodeField turns one field into its tags.
func EncodeField(field, value string) []string {
	if !validField(field) {
		// Field names are compile-time constants of sanvol; a bad one
		// is a programming error, not an input error.
		panic("lvm: invalid tag field name " + strconv.Quote(field))
	}
	enc := Escape(value)
	var tags []string
	for i := 0; ; i++ {
		head := tagPrefix + field + "." + strconv.Itoa(i) + ":"
		room := MaxTagLen - len(head)
		n := min(room, len(enc))
		// Keep an escape sequence in one chunk so that every tag is
		// readable on its own in `lvs -o tags`.
		if n < len(enc) {
			if j := strings.LastIndexByte(enc[:n], escapeChar); j >= 0 && j > n-3 {
				n = j
			}
		}
		tags = append(tags, head+enc[:n])
		enc = enc[n:]
		if enc == "" {
			return tags
		}
	}
}

// EncodeFields encodes several fields; the result is sorted so that the
// same fields always give the same command line.
func EncodeFields(fields map[string]string) []string {
	var tags []string
	for f, v := range fields {
		tags = append(tags, EncodeField(f, v)...)
	}
	sort.Strings(tags)
	return tags
}

// FieldTags returns the tags among tags that belong to field.
func FieldTags(tags []string, field string) []string {
	p := tagPrefix + field + "."
	var out []string
	for _, t := range tags {
		if strings.HasPrefix(t, p) {
			if _, _, ok := parseTag(t); ok {
				out = append(out, t)
			}
		}
	}
	return out
}

func parseTag(t string) (field string, index int, ok bool) {
	rest, found := strings.CutPrefix(t, tagPrefix)
	if !found {
		return "", 0, false
	}
	head, _, found := strings.Cut(rest, ":")
	if !found {
		return "", 0, false
	}
	f, idx, found := strings.Cut(head, ".")
	if !found || !validField(f) {
		return "", 0, false
	}
	n, err := strconv.Atoi(idx)
	if err != nil || n < 0 || strconv.Itoa(n) != idx {
		return "", 0, false
	}
	return f, n, true
}

// DecodeFields reassembles the fields found in tags. Tags that are not
// sanvol fields are returned in other. A field whose chunks are not
// exactly 0..n-1 or do not unescape is an error: the metadata was written
// by something else, and guessing would corrupt a name or a key.
func DecodeFields(tags []string) (fields map[string]string, other []string, err error) {
	fields, bad, other := DecodeEachField(tags)
	if len(bad) > 0 {
		names := make([]string, 0, len(bad))
		for f := range bad {
			names = append(names, f)
		}
		sort.Strings(names)
		return nil, nil, bad[names[0]]
	}
	return fields, other, nil
}

// DecodeEachField is DecodeFields that judges every field on its own:
// fields holds those that decode, bad the error of each that does not.
// Tags are written by anyone who can write the LUN, so one damaged field
// must not cost the others (a volume keeps its name when a key record is
// broken).
func DecodeEachField(tags []string) (fields map[string]string, bad map[string]error, other []string) {
	type chunk struct {
		i    int
		data string
	}
	parts := map[string][]chunk{}
	for _, t := range tags {
		f, i, ok := parseTag(t)
		if !ok {
			other = append(other, t)
			continue
		}
		_, data, _ := strings.Cut(t, ":")
		parts[f] = append(parts[f], chunk{i, data})
	}
	fields = make(map[string]string, len(parts))
	bad = map[string]error{}
next:
	for f, cs := range parts {
		sort.Slice(cs, func(a, b int) bool { return cs[a].i < cs[b].i })
		var b strings.Builder
		for want, c := range cs {
			if c.i != want {
				bad[f] = fmt.Errorf("tag field %q: chunk %d missing or duplicated", f, want)
				continue next
			}
			b.WriteString(c.data)
		}
		v, err := Unescape(b.String())
		if err != nil {
			bad[f] = fmt.Errorf("tag field %q: %w", f, err)
			continue
		}
		fields[f] = v
	}
	return fields, bad, other
}

// SplitTags splits LVM's comma-joined tag list (the lv_tags/vg_tags report
// field). Commas are not in the tag alphabet, so the split is exact.
func SplitTags(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

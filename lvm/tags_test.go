package lvm

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// validTag is lvm2's validate_tag plus the documented rule that a tag may
// not start with a hyphen, and the 2.02 length limit.
func validTag(t string) bool {
	if t == "" || t[0] == '-' || len(t) > MaxTagLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-+/=!:&#", c) >= 0) {
			return false
		}
	}
	return true
}

func roundTrip(t *testing.T, fields map[string]string) {
	t.Helper()
	tags := EncodeFields(fields)
	for _, tag := range tags {
		if !validTag(tag) {
			t.Fatalf("invalid LVM tag %q", tag)
		}
	}
	// LVM returns tags in its own order.
	rand.Shuffle(len(tags), func(i, j int) { tags[i], tags[j] = tags[j], tags[i] })
	got, other, err := DecodeFields(append(tags, "foreign_tag"))
	if err != nil {
		t.Fatal(err)
	}
	if len(other) != 1 || other[0] != "foreign_tag" {
		t.Fatalf("other = %q", other)
	}
	if len(got) != len(fields) {
		t.Fatalf("decoded %d fields, want %d", len(got), len(fields))
	}
	for f, v := range fields {
		if got[f] != v {
			t.Fatalf("field %s: got %q, want %q", f, got[f], v)
		}
	}
}

func TestTagCodecRoundTripsHardValues(t *testing.T) {
	desc4k := strings.Repeat("ünïcødé 🚀 \"quoted\" 'single' & = , ;\n", 4096/40+1)[:4096]
	roundTrip(t, map[string]string{
		"N":  "My disk with spaces",
		"D":  desc4k,
		"E":  "",
		"Q":  `a "quoted" \ back\slash, comma, and 'single'`,
		"U":  "🙂👍🏽 emoji and 日本語",
		"B":  string([]byte{0, 0xff, 0xfe, '&', '4', '1'}), // not UTF-8
		"A":  "&41",                                        // looks like an escape
		"k1": strings.Repeat("x", 1000),
	})
}

func TestTagCodecRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		b := make([]byte, r.IntN(600))
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		roundTrip(t, map[string]string{"V": string(b)})
	}
}

func TestTagCodecKeepsEscapesWhole(t *testing.T) {
	// Every tag must be readable alone: no chunk ends inside "&XX".
	for _, tag := range EncodeField("D", strings.Repeat("é", 300)) {
		_, data, _ := strings.Cut(tag, ":")
		if _, err := Unescape(data); err != nil {
			t.Fatalf("chunk %q: %v", tag, err)
		}
	}
}

func TestEmptyValueIsPresent(t *testing.T) {
	tags := EncodeField("N", "")
	if len(tags) != 1 || tags[0] != "sv.N.0:" {
		t.Fatalf("tags = %q", tags)
	}
	f, _, _ := DecodeFields(tags)
	if v, ok := f["N"]; !ok || v != "" {
		t.Fatalf("decoded %q %v", v, ok)
	}
}

func TestDecodeRefusesGaps(t *testing.T) {
	tags := EncodeField("D", strings.Repeat("a", 500))
	if len(tags) < 3 {
		t.Fatalf("expected several chunks, got %d", len(tags))
	}
	if _, _, err := DecodeFields(append(tags[:1:1], tags[2:]...)); err == nil {
		t.Fatal("a missing chunk was not noticed")
	}
	if _, _, err := DecodeFields([]string{"sv.N.0:&4"}); err == nil {
		t.Fatal("a truncated escape was not noticed")
	}
}

func TestFieldTags(t *testing.T) {
	tags := append(EncodeField("N", strings.Repeat("n", 300)), EncodeField("ND", "x")...)
	tags = append(tags, "sv.N.x:bad", "other")
	got := FieldTags(tags, "N")
	if len(got) != 3 {
		t.Fatalf("FieldTags = %q", got)
	}
}

func TestEscapeIsPrintableASCII(t *testing.T) {
	s := Escape("Ä😀\x00")
	if !utf8.ValidString(s) || strings.ContainsAny(s, "Ä😀\x00") {
		t.Fatalf("Escape = %q", s)
	}
	if s != "&C3&84&F0&9F&98&80&00" {
		t.Fatalf("Escape = %q", s)
	}
}

func TestSplitTags(t *testing.T) {
	if SplitTags("") != nil {
		t.Fatal("empty list")
	}
	if got := SplitTags("a,b"); len(got) != 2 || got[1] != "b" {
		t.Fatalf("SplitTags = %q", got)
	}
}

// One damaged field costs only itself.
func TestDecodeEachField(t *testing.T) {
	tags := append(EncodeFields(map[string]string{"N": "name", "D": "desc"}), "sv.K.1:x", "sv.V.0:&Z1", "other")
	f, bad, other := DecodeEachField(tags)
	if f["N"] != "name" || f["D"] != "desc" || len(f) != 2 {
		t.Fatalf("fields = %v", f)
	}
	if bad["K"] == nil || bad["V"] == nil || len(bad) != 2 {
		t.Fatalf("bad = %v", bad)
	}
	if len(other) != 1 || other[0] != "other" {
		t.Fatalf("other = %v", other)
	}
	if _, _, err := DecodeFields(tags); err == nil {
		t.Fatal("DecodeFields accepted damaged fields")
	}
}

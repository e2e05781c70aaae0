package labtarget

import (
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
	"regexp"
	"strings"
	"testing"
)

func TestWWIDFollowsLIOsNAAConstruction(t *testing.T) {
	// The first 25 hex digits of the serial follow LIO's company id; other
	// characters are skipped and a short serial is padded with zeros.
	cases := map[string]string{
		"0123456789abcdef0123456789abcdef": "360014050123456789abcdef012345678",
		"lab-00ff":                         "36001405ab00ff0000000000000000000",
	}
	for serial, want := range cases {
		got := (&ISCSITarget{Serial: serial}).WWID()
		if got != want {
			t.Errorf("serial %q: WWID %s, want %s", serial, got, want)
		}
		if len(got) != 33 {
			t.Errorf("serial %q: WWID %s has %d characters, multipath names have 33", serial, got, len(got))
		}
	}
}

func TestDHChapKeyIsWhatNvmeCliAccepts(t *testing.T) {
	k, err := GenerateDHChapKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k, "DHHC-1:00:") || !strings.HasSuffix(k, ":") {
		t.Fatalf("key %q is not in the DHHC-1 representation", k)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(k, "DHHC-1:00:"), ":"))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 36 {
		t.Fatalf("decoded key has %d bytes, want 32 + 4 CRC", len(raw))
	}
	if crc := binary.LittleEndian.Uint32(raw[32:]); crc != crc32.ChecksumIEEE(raw[:32]) {
		t.Fatalf("CRC %08x does not match the key", crc)
	}
}

func TestStableIdentities(t *testing.T) {
	uuidRe := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := stableID("uuid", "nqn.x", "1"), stableID("uuid", "nqn.x", "2")
	if a == b {
		t.Fatal("two namespaces got the same identity")
	}
	if a != stableID("uuid", "nqn.x", "1") {
		t.Fatal("identity is not stable across calls")
	}
	if u := uuidString(a); !uuidRe.MatchString(u) {
		t.Fatalf("%q is not an RFC 4122 UUID", u)
	}
	if n := nguidDashed(a); !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(n) {
		t.Fatalf("NGUID %q is not 128 bits in the dashed form nvmet parses", n)
	}
}

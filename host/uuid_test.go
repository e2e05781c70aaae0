package host

import (
	"regexp"
	"testing"
)

func TestNewUUID(t *testing.T) {
	v4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, err := NewUUID()
	if err != nil || !v4.MatchString(a) {
		t.Fatalf("%q, %v", a, err)
	}
	if b, _ := NewUUID(); a == b {
		t.Fatal("two equal UUIDs")
	}
}

func TestID(t *testing.T) {
	root := NewRoot(t.TempDir())
	if id := ID(root); id != "" {
		t.Fatalf("ID of a bare host = %q", id)
	}
	for _, d := range []string{"/etc", "/proc/sys/kernel/random"} {
		if err := root.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.WriteFile("/proc/sys/kernel/random/boot_id", []byte("8a9b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := root.WriteFile("/etc/machine-id", []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if id := ID(root); id != "boot:8a9b" {
		t.Fatalf("ID from the boot id = %q", id)
	}
	if err := root.WriteFile("/etc/machine-id", []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if id := ID(root); id != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("ID from machine-id = %q", id)
	}
	inv := "PRODUCT_BRAND='XCP-ng'\nINSTALLATION_UUID='3F1C9A52-0d1e-4b7a-9c11-5e2d7a6b8c90'\nCONTROL_DOMAIN_UUID='x'\n"
	if err := root.WriteFile("/etc/xensource-inventory", []byte(inv), 0o644); err != nil {
		t.Fatal(err)
	}
	if id := ID(root); id != "3f1c9a52-0d1e-4b7a-9c11-5e2d7a6b8c90" {
		t.Fatalf("ID from the inventory = %q", id)
	}
}

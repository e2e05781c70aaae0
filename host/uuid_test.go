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

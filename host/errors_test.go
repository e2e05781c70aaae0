package host

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorKindsMatchThroughWrapping(t *testing.T) {
	base := Errorf(KindNotFound, "Volume.stat", "volume abc not found", "run xe sr-scan", nil)
	wrapped := fmt.Errorf("outer: %w", base)
	if !errors.Is(wrapped, ErrNotFound) {
		t.Fatal("errors.Is(wrapped, ErrNotFound) = false")
	}
	if errors.Is(wrapped, ErrExists) {
		t.Fatal("errors.Is(wrapped, ErrExists) = true")
	}
	if got := KindOf(wrapped); got != KindNotFound {
		t.Fatalf("KindOf = %s", got)
	}
	want := "Volume.stat: volume abc not found. Fix: run xe sr-scan"
	if base.Error() != want {
		t.Fatalf("Error() = %q, want %q", base.Error(), want)
	}
}

func TestKindOfTimeout(t *testing.T) {
	err := &CmdError{Cmd: "nvme connect", Err: fmt.Errorf("%w after 1s", ErrTimeout)}
	if KindOf(err) != KindTimeout {
		t.Fatalf("KindOf = %s", KindOf(err))
	}
}

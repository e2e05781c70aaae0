package host

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorKindsMatchThroughWrapping(t *testing.T) {
	base := NewError(KindNotFound, "Volume.stat", "volume abc not found", "run xe sr-scan", nil)
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

// errors.Is on a kind answers for the outermost *Error only; other
// targets are still found anywhere in the chain.
func TestErrorIsMatchesTheOutermostKind(t *testing.T) {
	notFound := NewError(KindNotFound, "read secret", "no secret abc", "", ErrTimeout)
	auth := NewError(KindAuth, "SR.attach", "cannot read the CHAP secret", "", notFound)
	for _, tc := range []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"outer kind", auth, ErrAuth, true},
		{"inner kind is hidden", auth, ErrNotFound, false},
		{"inner kind hidden through fmt wrapping", fmt.Errorf("step: %w", auth), ErrNotFound, false},
		{"outer kind through fmt wrapping", fmt.Errorf("step: %w", auth), ErrAuth, true},
		{"a non-kind sentinel deep in the cause", auth, ErrTimeout, true},
		{"the inner error itself", auth, notFound, true},
		{"a kind nobody has", auth, ErrBusy, false},
		{"a host.Error inside a joined error keeps its kind", errors.Join(errors.New("x"), notFound), ErrNotFound, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errors.Is(tc.err, tc.target); got != tc.want {
				t.Fatalf("errors.Is(%v, %v) = %v, want %v", tc.err, tc.target, got, tc.want)
			}
		})
	}
	var inner *Error
	if !errors.As(auth, &inner) || inner != auth {
		t.Fatalf("errors.As finds %v, want the outermost", inner)
	}
	var ce *CmdError
	deep := NewError(KindInternal, "op", "msg", "", fmt.Errorf("w: %w", &CmdError{Cmd: "lvs", Err: ErrTimeout}))
	if !errors.As(NewError(KindAuth, "outer", "m", "", deep), &ce) || ce.Cmd != "lvs" {
		t.Fatalf("errors.As does not reach a *CmdError below two *Errors")
	}
	if KindOf(fmt.Errorf("w: %w", auth)) != KindAuth {
		t.Fatalf("KindOf = %s, want the outermost kind", KindOf(auth))
	}
}

// One piece of advice per message: the outer Fix wins, or the inner one
// is kept once when the outer has none.
func TestErrorAdviceIsGivenOnce(t *testing.T) {
	inner := NewError(KindNoSpace, "lock x", "cannot create /run/sanvol/locks", "free space on /run", errors.New("ENOSPC"))
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"outer fix wins",
			NewError(KindBusy, "SR.attach", "cannot take a lock", "retry later", inner),
			"SR.attach: cannot take a lock: lock x: cannot create /run/sanvol/locks: ENOSPC. Fix: retry later"},
		{"inner fix kept once",
			NewError(KindNoSpace, "SR.attach", "cannot take a lock", "", inner),
			"SR.attach: cannot take a lock: lock x: cannot create /run/sanvol/locks: ENOSPC. Fix: free space on /run"},
		{"through fmt wrapping",
			NewError(KindBusy, "SR.attach", "", "retry later", fmt.Errorf("step 2: %w", inner)),
			"SR.attach: step 2: lock x: cannot create /run/sanvol/locks: ENOSPC. Fix: retry later"},
		{"three levels, the middle without advice",
			NewError(KindAuth, "SR.create", "failed", "check the key", NewError(KindNoSpace, "mid", "m", "", inner)),
			"SR.create: failed: mid: m: lock x: cannot create /run/sanvol/locks: ENOSPC. Fix: check the key"},
		{"no advice anywhere",
			NewError(KindInternal, "a", "b", "", NewError(KindInternal, "c", "d", "", nil)),
			"a: b: c: d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Fatalf("Error() =\n %q\nwant\n %q", got, tc.want)
			}
		})
	}
}

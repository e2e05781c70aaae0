package host

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		trueAt  int // the call (1-based) on which done reports true; 0: never
		failAt  int // the call on which done returns boom; 0: never
		timeout time.Duration
		calls   int   // calls expected
		want    error // errors.Is target; nil: success
	}{
		{name: "done at once", trueAt: 1, timeout: time.Second, calls: 1},
		{name: "done on the third try", trueAt: 3, timeout: time.Second, calls: 3},
		{name: "done's error ends the wait as it is", failAt: 2, timeout: time.Second, calls: 2, want: boom},
		{name: "deadline", timeout: 30 * time.Millisecond, want: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			calls := 0
			err := Poll(ctx, 5*time.Millisecond, func(context.Context) (bool, error) {
				calls++
				if calls == tc.failAt {
					return false, boom
				}
				return calls == tc.trueAt, nil
			})
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Poll = %v, want %v", err, tc.want)
			}
			if tc.calls != 0 && calls != tc.calls {
				t.Fatalf("done called %d times, want %d", calls, tc.calls)
			}
			var te *TimeoutError
			if errors.As(err, &te) != errors.Is(tc.want, context.DeadlineExceeded) {
				t.Fatalf("Poll = %T %v: a *TimeoutError only when ctx ends", err, err)
			}
			if te != nil && (calls < 2 || te.Waited < 25*time.Millisecond || KindOf(err) != KindTimeout) {
				t.Fatalf("after %d calls: %v (waited %s, kind %s): want several tries, the wait and KindTimeout", calls, err, te.Waited, KindOf(err))
			}
		})
	}
}

// A caller whose ctx has already ended still gets one try: tryLock-style
// callers depend on it.
func TestPollTriesOnceOnAnEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	err := Poll(ctx, time.Hour, func(context.Context) (bool, error) { calls++; return calls == 1, nil })
	if err != nil || calls != 1 {
		t.Fatalf("Poll on an ended ctx = %v after %d calls, want success after 1", err, calls)
	}
	calls = 0
	err = Poll(ctx, time.Hour, func(context.Context) (bool, error) { calls++; return false, nil })
	var te *TimeoutError
	if !errors.As(err, &te) || !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("Poll on an ended ctx = %v after %d calls, want an interruption after 1", err, calls)
	}
	if !strings.Contains(err.Error(), "interrupted") || KindOf(err) == KindTimeout {
		t.Fatalf("a cancelled wait reads %q, kind %s: an interruption is not a timeout", err, KindOf(err))
	}
}

// Cancelling with a cause (a signal) reaches the caller through the error.
func TestPollCarriesTheCause(t *testing.T) {
	sig := errors.New("SIGTERM")
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel(sig) }()
	err := Poll(ctx, time.Millisecond, func(context.Context) (bool, error) { return false, nil })
	if !errors.Is(err, sig) {
		t.Fatalf("Poll = %v, want the cancel's cause", err)
	}
}

func TestPollBackoffDoublesUpToMost(t *testing.T) {
	var at []time.Time
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := PollBackoff(ctx, 10*time.Millisecond, 40*time.Millisecond, func(context.Context) (bool, error) {
		at = append(at, time.Now())
		return len(at) == 8, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Gaps of 10, 20, then 40 ms: each at least its interval. Uncapped
	// doubling would take 10+20+...+640 = 1270 ms; the cap keeps it near
	// 230 ms, and the bound between leaves room for a loaded machine.
	for i, want := range []time.Duration{10, 20, 40, 40, 40, 40, 40} {
		if g := at[i+1].Sub(at[i]); g < want*time.Millisecond {
			t.Fatalf("gap %d = %s, want at least %dms", i+1, g, want)
		}
	}
	if total := at[7].Sub(at[0]); total >= time.Second {
		t.Fatalf("eight tries took %s: the interval did not stop at most", total)
	}
}

package plugin

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

// A signal cancels the call's context; the call's error then says it was
// interrupted, under its own kind, with the step it cut short as cause.
func TestSignalInterruptsTheCall(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sig    syscall.Signal
		says   string
		result bool // the method finishes in spite of the signal
	}{
		{name: "SIGTERM", sig: syscall.SIGTERM, says: "terminated signal received"},
		{name: "SIGINT", sig: syscall.SIGINT, says: "interrupt signal received"},
		{name: "finished anyway", sig: syscall.SIGTERM, result: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			step := host.NewError(host.KindBusy, "SR.attach: lock", "another call holds the lock", "wait", context.Canceled)
			m := &Method{Name: "SR.attach", Run: func(ctx context.Context, _ *Call) (any, error) {
				if err := syscall.Kill(syscall.Getpid(), tc.sig); err != nil {
					return nil, err
				}
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
					return nil, errors.New("the signal did not cancel the context")
				}
				if tc.result {
					return "sr", nil
				}
				return nil, step
			}}
			res, err := runInterruptible(context.Background(), &Call{Target: Target{Method: m}})
			if tc.result {
				if err != nil || res != "sr" {
					t.Fatalf("a call that finished = %v, %v; want its result", res, err)
				}
				return
			}
			if host.KindOf(err) != host.KindInterrupted || !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted call = %v (kind %s), want Interrupted wrapping the step", err, host.KindOf(err))
			}
			doc := ErrorDocument("SR.attach", err)
			if doc.Params[0] != "Interrupted" || !strings.Contains(doc.Params[1], "the call was interrupted ("+tc.says+")") ||
				!strings.Contains(doc.Params[1], "another call holds the lock") || strings.Count(doc.Params[1], "Fix:") != 1 {
				t.Fatalf("error document %v: want Interrupted, the signal, the step and one piece of advice", doc.Params)
			}
		})
	}
}

// Without a signal, a call's own failure is untouched, even one caused by
// its caller's context ending (a deadline is not an interruption).
func TestNoSignalNoInterruption(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	want := host.NewError(host.KindNotFound, "Volume.stat", "no volume", "", nil)
	m := &Method{Name: "Volume.stat", Run: func(ctx context.Context, _ *Call) (any, error) {
		<-ctx.Done()
		return nil, want
	}}
	if _, err := runInterruptible(ctx, &Call{Target: Target{Method: m}}); err != want {
		t.Fatalf("runInterruptible = %v, want the method's own error", err)
	}
}

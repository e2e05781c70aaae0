package host

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// TimeoutError is what Poll returns when ctx ends before done reports
// true. Err is ctx's cause: context.DeadlineExceeded when a deadline
// passed, context.Canceled (or the cause given to the cancel) when the
// call was interrupted, so errors.Is tells the two apart.
type TimeoutError struct {
	Waited time.Duration // from the first check to giving up
	Err    error
}

func (e *TimeoutError) Error() string {
	if errors.Is(e.Err, context.DeadlineExceeded) {
		return fmt.Sprintf("gave up waiting after %s: %v", e.Waited.Round(time.Millisecond), e.Err)
	}
	return fmt.Sprintf("interrupted after waiting %s: %v", e.Waited.Round(time.Millisecond), e.Err)
}

func (e *TimeoutError) Unwrap() error { return e.Err }

// Poll calls done at once and then every `every` until done reports true or
// an error, or ctx ends. done runs before ctx is looked at, so a caller
// holding an already-ended ctx still gets exactly one try (a lock tried
// without waiting). Poll returns done's error as it is, and a *TimeoutError
// when ctx ends first.
func Poll(ctx context.Context, every time.Duration, done func(context.Context) (bool, error)) error {
	return PollBackoff(ctx, every, every, done)
}

// PollBackoff is Poll with an interval that starts at first and doubles up
// to most: for waits that usually end at once but may last long, such as a
// lock another call holds.
func PollBackoff(ctx context.Context, first, most time.Duration, done func(context.Context) (bool, error)) error {
	start := time.Now()
	every := first
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ok, err := done(ctx)
		if err != nil || ok {
			return err
		}
		if ctx.Err() != nil {
			return &TimeoutError{Waited: time.Since(start), Err: context.Cause(ctx)}
		}
		if timer == nil {
			timer = time.NewTimer(every)
		} else {
			timer.Reset(every)
		}
		select {
		case <-ctx.Done():
			return &TimeoutError{Waited: time.Since(start), Err: context.Cause(ctx)}
		case <-timer.C:
		}
		if every < most {
			every = min(2*every, most)
		}
	}
}

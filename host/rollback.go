package host

import (
	"context"
	"time"
)

// RollbackContext is the one rule for undoing a step that failed half-way
// (a connect, a login, an activation): the undo must run even though the
// call's ctx has ended, since an ended ctx (a deadline, SIGTERM) is often
// why the step failed, and it keeps ctx's values; but it gets its own
// deadline d, so that an undo stuck in the kernel cannot hang the call.
func RollbackContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

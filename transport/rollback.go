package transport

import (
	"context"
	"time"
)

// RollbackContext is the context an undo runs under: the call's values
// (logging, tracing) without its cancellation, since a failed or
// cancelled call must still disconnect what it connected, and with a
// deadline of its own, since an undo that hangs on a dead portal would
// hang the call it is cleaning up after. Every rollback of the engine and
// the transports takes its context from here.
func RollbackContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

package host

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A rollback runs after its call's ctx has ended, keeps the call's
// values, and ends at its own deadline.
func TestRollbackContext(t *testing.T) {
	type key struct{}
	call, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "dbg-1"))
	cancel()
	ctx, done := RollbackContext(call, 30*time.Millisecond)
	defer done()
	if ctx.Err() != nil || ctx.Value(key{}) != "dbg-1" {
		t.Fatalf("rollback ctx: err %v, value %v; want live with the call's value", ctx.Err(), ctx.Value(key{}))
	}
	err := Poll(ctx, 5*time.Millisecond, func(context.Context) (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("rollback wait = %v, want its own deadline", err)
	}
}

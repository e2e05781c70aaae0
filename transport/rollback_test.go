package transport

import (
	"context"
	"testing"
	"time"
)

type key struct{}

func TestRollbackContextOutlivesItsCaller(t *testing.T) {
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	cancel()
	ctx, done := RollbackContext(parent, time.Hour)
	defer done()
	if ctx.Err() != nil {
		t.Fatalf("rollback context cancelled with its caller: %v", ctx.Err())
	}
	if ctx.Value(key{}) != "v" {
		t.Error("rollback context lost the caller's values")
	}
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > time.Hour || time.Until(dl) < 59*time.Minute {
		t.Errorf("deadline %v, %v; want about an hour from now", dl, ok)
	}
}

func TestRollbackContextHasItsOwnDeadline(t *testing.T) {
	ctx, done := RollbackContext(context.Background(), time.Millisecond)
	defer done()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("rollback context never expired")
	}
}

package transport

import (
	"context"
	"time"

	"github.com/sanvol/sanvol/host"
)

// Lock takes the host-wide lock name, waiting at most wait: no lock wait
// of the engine or a transport is unbounded, so a call stuck while holding
// a lock costs the next one a Busy error, not a hang. holder describes who
// may hold it, for the error (host.LockError).
func Lock(ctx context.Context, l host.Locker, wait time.Duration, op, name, holder string) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	unlock, err := l.Lock(lctx, name)
	if err != nil {
		return nil, host.LockError(op, holder, err)
	}
	return unlock, nil
}

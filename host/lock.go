package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// LockDir is where sanvol keeps its lock files; /run is cleared at boot,
// which is right because nothing a lock protects survives a reboot either.
const LockDir = "/run/sanvol/locks"

// ErrLockTimeout is returned when a lock could not be taken in time.
var ErrLockTimeout = errors.New("timed out waiting for lock")

// Locker hands out host-wide exclusive locks by name.
type Locker interface {
	Lock(ctx context.Context, name string) (unlock func(), err error)
}

// FileLocker implements Locker with flock(2) on files under Root.
// flock is released by the kernel when the process dies, so a killed call
// never leaves a stale lock behind.
type FileLocker struct {
	Root Root
}

// Lock blocks until the named lock is held or ctx ends.
func (l FileLocker) Lock(ctx context.Context, name string) (func(), error) {
	dir := l.Root.Path(LockDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	path := filepath.Join(dir, name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	delay := 5 * time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w (%v)", name, ErrLockTimeout, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}

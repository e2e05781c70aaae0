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

// DefaultLockWait bounds a lock wait whose caller set no earlier deadline:
// the longest any caller waits today (volume's per-SR lock), so that no
// call can queue for ever behind one stuck in the kernel.
const DefaultLockWait = 5 * time.Minute

// FileLocker implements Locker with flock(2) on files under Root.
// flock is released by the kernel when the process dies, so a killed call
// never leaves a stale lock behind.
type FileLocker struct {
	Root Root
	// Wait bounds every lock wait; 0 means DefaultLockWait. A ctx with an
	// earlier deadline ends the wait sooner.
	Wait time.Duration
}

// Lock blocks until the named lock is held, ctx ends or Wait passes. Only
// contention ends in ErrLockTimeout; a lock that cannot be taken at all
// (the lock directory full, read-only or forbidden) is an *Error that says
// so at once, without waiting for the deadline. The lock is tried once
// even when ctx has already ended, which is how a caller asks "is it free
// now?".
func (l FileLocker) Lock(ctx context.Context, name string) (func(), error) {
	dir := l.Root.Path(LockDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, lockFailure(name, LockDir, "create the lock directory", err)
	}
	path := filepath.Join(dir, name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, lockFailure(name, filepath.Join(LockDir, name+".lock"), "open the lock file", err)
	}
	wait := l.Wait
	if wait <= 0 {
		wait = DefaultLockWait
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err = PollBackoff(ctx, 5*time.Millisecond, 100*time.Millisecond, func(context.Context) (bool, error) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return false, lockFailure(name, filepath.Join(LockDir, name+".lock"), "flock the lock file", err)
		}
		return false, nil
	})
	if te := (*TimeoutError)(nil); errors.As(err, &te) {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w (%v)", name, ErrLockTimeout, te.Err)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// lockFailure says why a lock could not be taken at all, by errno: these
// are faults of the host, not other sanvol calls, and waiting or retrying
// does not help.
func lockFailure(name, path, step string, err error) error {
	op := "lock " + name
	msg := "cannot " + step + " " + path
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return NewError(KindNoSpace, op, msg+": no space left", "free space on the file system holding "+LockDir+" (df -h /run; /run is a small tmpfs)", err)
	case errors.Is(err, syscall.EROFS):
		return NewError(KindInternal, op, msg+": the file system is read-only", "find out why "+LockDir+" is on a read-only file system (mount | grep /run; dmesg)", err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return NewError(KindInternal, op, msg+": permission denied", "sanvol runs as root from xapi; check the owner and mode of "+LockDir+" and any SELinux or AppArmor denial (dmesg)", err)
	}
	return NewError(KindInternal, op, msg, "check "+LockDir+" (ls -ld, df -h /run)", err)
}

// LockError turns a Locker's failure into the error of op: contention is
// Busy, naming holder (e.g. "another sanvol call on SR <uuid>"); anything
// else keeps the locker's own kind and message, since telling an admin to
// wait for another call when /run is full sends them the wrong way.
func LockError(op, holder string, err error) error {
	if errors.Is(err, ErrLockTimeout) {
		return NewError(KindBusy, op, holder+" holds the lock",
			"wait for it to finish (see the sanvol log) and retry", err)
	}
	return NewError(KindOf(err), op, "cannot take a lock", "", err)
}

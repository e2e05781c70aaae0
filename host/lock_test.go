package host

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Contention waits and ends in ErrLockTimeout, which LockError calls Busy.
func TestFileLockerContention(t *testing.T) {
	l := FileLocker{Root: NewRoot(t.TempDir())}
	unlock, err := l.Lock(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = l.Lock(ctx, "x")
	if !errors.Is(err, ErrLockTimeout) || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("second Lock = %v after %s", err, time.Since(start))
	}
	if e := LockError("SR.attach", "another sanvol call", err); !errors.Is(e, ErrBusy) || !strings.Contains(e.Error(), "another sanvol call holds the lock") {
		t.Fatalf("LockError = %v", e)
	}
	unlock()
	unlock2, err := l.Lock(context.Background(), "x")
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}

// A lock directory that cannot exist fails at once, says where, and is no
// contention.
func TestFileLockerBrokenDirectory(t *testing.T) {
	root := NewRoot(t.TempDir())
	if err := os.MkdirAll(root.Path("/run/sanvol"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A file where the directory should be: ENOTDIR on every call.
	if err := os.WriteFile(root.Path(LockDir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err := FileLocker{Root: root}.Lock(ctx, "x")
	if err == nil || errors.Is(err, ErrLockTimeout) || time.Since(start) > 5*time.Second {
		t.Fatalf("Lock = %v after %s", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), LockDir) {
		t.Fatalf("the error does not name the directory: %v", err)
	}
	if e := LockError("SR.attach", "another sanvol call", err); errors.Is(e, ErrBusy) || strings.Contains(e.Error(), "another sanvol call") {
		t.Fatalf("LockError blames another call: %v", e)
	}
}

// Each errno that is not contention says what it is, with its kind.
func TestLockFailureNamesTheCause(t *testing.T) {
	for _, c := range []struct {
		errno syscall.Errno
		kind  Kind
		says  string
	}{
		{syscall.ENOSPC, KindNoSpace, "no space left"},
		{syscall.EDQUOT, KindNoSpace, "no space left"},
		{syscall.EROFS, KindInternal, "read-only"},
		{syscall.EACCES, KindInternal, "permission denied"},
		{syscall.EPERM, KindInternal, "permission denied"},
		{syscall.EMFILE, KindInternal, "cannot open the lock file"},
	} {
		t.Run(c.errno.Error(), func(t *testing.T) {
			// The path is only the message's text: nothing is opened.
			cause := &fs.PathError{Op: "open", Path: LockDir + "/sr-x.lock", Err: c.errno}
			err := lockFailure("sr-x", LockDir+"/sr-x.lock", "open the lock file", cause)
			if KindOf(err) != c.kind || !strings.Contains(err.Error(), c.says) || !errors.Is(err, c.errno) {
				t.Errorf("%s %v", KindOf(err), err)
			}
			e := LockError("Volume.create", "another sanvol call", err)
			if KindOf(e) != c.kind || strings.Contains(e.Error(), "another sanvol call") {
				t.Errorf("LockError = %s %v", KindOf(e), e)
			}
		})
	}
}

// A wait is bounded even when the caller's ctx has no deadline.
func TestFileLockerWaitIsBounded(t *testing.T) {
	root := NewRoot(t.TempDir())
	unlock, err := FileLocker{Root: root}.Lock(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	start := time.Now()
	_, err = FileLocker{Root: root, Wait: 40 * time.Millisecond}.Lock(context.Background(), "x")
	if !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("Lock without a ctx deadline = %v", err)
	}
	if waited := time.Since(start); waited < 35*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("Lock gave up after %s, want about Wait (40ms)", waited)
	}
	if KindOf(err) != KindTimeout {
		t.Fatalf("KindOf(%v) = %s", err, KindOf(err))
	}
}

// An already-ended ctx still gets one try: taken when free, ErrLockTimeout
// at once when held. volume's tryLock depends on this.
func TestFileLockerTriesOnceOnAnEndedContext(t *testing.T) {
	l := FileLocker{Root: NewRoot(t.TempDir())}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	unlock, err := l.Lock(ended, "x")
	if err != nil {
		t.Fatalf("a free lock with an ended ctx: %v", err)
	}
	start := time.Now()
	if _, err := l.Lock(ended, "x"); !errors.Is(err, ErrLockTimeout) || time.Since(start) > time.Second {
		t.Fatalf("a held lock with an ended ctx = %v after %s, want ErrLockTimeout at once", err, time.Since(start))
	}
	unlock()
}

package host

import (
	"context"
	"errors"
	"strings"
)

// Kind classifies a failure so that callers decide with errors.Is and the
// plugin can name it in the error document (params[0]).
type Kind string

// The kinds of failure sanvol distinguishes.
const (
	KindInvalid     Kind = "InvalidArgument"      // bad device-config or argument
	KindNotFound    Kind = "NotFound"             // volume, VG, device, target absent
	KindExists      Kind = "AlreadyExists"        // creating something that is there
	KindNoSpace     Kind = "NoSpace"              // VG or device too small
	KindBusy        Kind = "Busy"                 // in use, locked
	KindNotMaster   Kind = "NotPoolMaster"        // metadata change off the master
	KindUnsupported Kind = "Unsupported"          // host lacks a kernel feature or tool
	KindAuth        Kind = "AuthenticationFailed" // CHAP / DH-HMAC-CHAP refused
	KindUnreachable Kind = "Unreachable"          // no path to the storage
	KindTimeout     Kind = "Timeout"              // a deadline passed
	KindInterrupted Kind = "Interrupted"          // SIGTERM or SIGINT stopped the call
	KindNotAttached Kind = "SRNotAttached"        // SR not plugged on this host
	KindUnimpl      Kind = "Unimplemented"        // method not built yet
	KindInternal    Kind = "InternalError"        // a bug or an unexpected tool answer
)

// Error is a failure that tells an admin what failed, where, and what to do.
type Error struct {
	Kind Kind
	Op   string // the step, e.g. "SR.attach: connect 127.0.0.1:4420"
	Msg  string // what went wrong
	Fix  string // what the admin should do; may be empty
	Err  error  // the cause, may be nil
}

// Error renders "op: msg: cause. Fix: fix". One piece of advice ends the
// sentence: the outermost Fix when it has one, else the nearest one below,
// which is then left out of the cause's text so it is not said twice.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	fix := e.Fix
	if e.Err != nil {
		if e.Msg != "" {
			b.WriteString(": ")
		}
		cause := e.Err.Error()
		if inner := (*Error)(nil); errors.As(e.Err, &inner) {
			if f := inner.advice(); f != "" {
				if i := strings.LastIndex(cause, fixSep+f); i >= 0 {
					cause = cause[:i] + cause[i+len(fixSep+f):]
				}
				if fix == "" {
					fix = f
				}
			}
		}
		b.WriteString(cause)
	}
	if fix != "" {
		b.WriteString(fixSep)
		b.WriteString(fix)
	}
	return b.String()
}

const fixSep = ". Fix: "

// advice is the Fix that e's text ends with: its own, else the nearest
// one in its cause.
func (e *Error) advice() string {
	if e.Fix != "" {
		return e.Fix
	}
	if inner := (*Error)(nil); errors.As(e.Err, &inner) {
		return inner.advice()
	}
	return ""
}

// Is answers errors.Is for kinds with the kind of this, the outermost,
// *Error only: an AuthenticationFailed that wraps a NotFound is not
// NotFound, since the caller deciding on it sees the outer kind in the
// error document too. Any other target (a command timeout, a context's
// error, a sentinel of another package) is looked for in the cause as
// errors.Is always does. *Error has no Unwrap for that reason: with one,
// errors.Is would ask the inner *Errors about kinds as well.
func (e *Error) Is(target error) bool {
	if k, ok := target.(kindSentinel); ok {
		return Kind(k) == e.Kind
	}
	return e.Err != nil && errors.Is(e.Err, target)
}

// As lets errors.As reach into the cause, as Unwrap would.
func (e *Error) As(target any) bool {
	return e.Err != nil && errors.As(e.Err, target)
}

type kindSentinel Kind

func (k kindSentinel) Error() string { return string(k) }

// Sentinels for errors.Is.
var (
	ErrInvalid     error = kindSentinel(KindInvalid)
	ErrNotFound    error = kindSentinel(KindNotFound)
	ErrExists      error = kindSentinel(KindExists)
	ErrNoSpace     error = kindSentinel(KindNoSpace)
	ErrBusy        error = kindSentinel(KindBusy)
	ErrNotMaster   error = kindSentinel(KindNotMaster)
	ErrUnsupported error = kindSentinel(KindUnsupported)
	ErrAuth        error = kindSentinel(KindAuth)
	ErrUnreachable error = kindSentinel(KindUnreachable)
	ErrNotAttached error = kindSentinel(KindNotAttached)
	ErrUnimpl      error = kindSentinel(KindUnimpl)
)

// NewError builds an *Error from its parts; it is not printf-style.
func NewError(kind Kind, op, msg, fix string, cause error) *Error {
	return &Error{Kind: kind, Op: op, Msg: msg, Fix: fix, Err: cause}
}

// KindOf returns the kind of the outermost *Error in the chain, or
// KindTimeout for a command, lock or Poll deadline, or KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, ErrTimeout) || errors.Is(err, ErrLockTimeout) {
		return KindTimeout
	}
	if te := (*TimeoutError)(nil); errors.As(err, &te) && errors.Is(te.Err, context.DeadlineExceeded) {
		return KindTimeout
	}
	return KindInternal
}

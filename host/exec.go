// Package host is the boundary between sanvol and the machine it runs on:
// the one place where processes are started, files under /sys, /dev, /etc
// and /run are touched, locks are taken and XenAPI is called. Everything
// above it takes these as constructor arguments so tests can use fakes.
package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Cmd is one external command. Secrets lists substrings that must never
// appear in a log line or an error message; they are replaced by "***".
type Cmd struct {
	Name    string
	Args    []string
	Timeout time.Duration
	Secrets []string
	// Env holds extra KEY=VALUE entries on top of the sanitised base
	// environment (PATH and LC_ALL=C).
	Env []string
}

// String is the redacted command line, safe for logs and error documents.
func (c Cmd) String() string {
	s := strings.Join(append([]string{c.Name}, c.Args...), " ")
	return Redact(s, c.Secrets)
}

// Redact replaces every non-empty secret in s.
func Redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}

// Result is what a finished command produced.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
	Elapsed  time.Duration
}

// Runner runs external commands. It is the single exec choke point of the
// product; packages below plugin/ receive one and never call os/exec.
type Runner interface {
	Run(ctx context.Context, c Cmd) (Result, error)
}

// DefaultTimeout bounds a command whose caller gave none: xapi has no
// timeout of its own, so an unbounded child would hang a VM start for ever.
const DefaultTimeout = 60 * time.Second

// abandonAfter is how long past its deadline a killed command may take
// to exit before Run stops waiting for it.
const abandonAfter = 3 * time.Second

// ErrTimeout is wrapped by errors from commands that hit their deadline.
var ErrTimeout = errors.New("command timed out")

// ErrNotInstalled is wrapped when the program does not exist on the host.
var ErrNotInstalled = errors.New("program not installed")

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Cmd    string // redacted command line
	Code   int
	Stderr string // redacted, trimmed
	Stdout string // redacted, trimmed
}

func (e *ExitError) Error() string {
	msg := e.Stderr
	if msg == "" {
		msg = e.Stdout
	}
	if msg == "" {
		msg = "no output"
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Cmd, e.Code, msg)
}

// CmdError wraps a failure to start or a timeout.
type CmdError struct {
	Cmd string
	Err error
}

func (e *CmdError) Error() string { return e.Cmd + ": " + e.Err.Error() }
func (e *CmdError) Unwrap() error { return e.Err }

// ExecRunner runs commands for real.
type ExecRunner struct {
	Log *zap.Logger
}

// NewExecRunner returns the production runner.
func NewExecRunner(log *zap.Logger) *ExecRunner {
	if log == nil {
		log = zap.NewNop()
	}
	return &ExecRunner{Log: log}
}

// Run starts the command with stdin closed, stdout and stderr captured
// (never inherited: xapi-storage-script waits for its pipes to close, so an
// inherited pipe would hang the call), LC_ALL=C and a deadline. On timeout
// the whole process group is killed.
func (r *ExecRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Env = append([]string{"PATH=" + strings.Join(ExecDirs(), ":"), "LC_ALL=C", "LANG=C"}, c.Env...)
	cmd.Stdin = nil
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		return nil
	}
	cmd.WaitDelay = 2 * time.Second

	start := time.Now()
	line := c.String()
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return Result{}, &CmdError{Cmd: line, Err: fmt.Errorf("%w: %s", ErrNotInstalled, c.Name)}
		}
		return Result{}, &CmdError{Cmd: line, Err: err}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout + abandonAfter):
		// SIGKILL went out at the deadline, but a child blocked in the
		// kernel (a hung nvme connect, I/O on a dead path) cannot die
		// until it leaves it. Stop waiting: the caller's deadline is what
		// keeps xapi from hanging. The goroutine reaps it when it can.
		r.Log.Error("command did not exit after SIGKILL; abandoned", zap.String("cmd", line), zap.Duration("timeout", timeout))
		return Result{Elapsed: time.Since(start), ExitCode: -1},
			&CmdError{Cmd: line, Err: fmt.Errorf("%w after %s (the process is stuck in the kernel and was abandoned)", ErrTimeout, timeout)}
	}
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	fields := []zap.Field{zap.String("cmd", line), zap.Int("rc", res.ExitCode), zap.Duration("elapsed", res.Elapsed)}
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		r.Log.Warn("command timed out", append(fields, zap.Duration("timeout", timeout))...)
		return res, &CmdError{Cmd: line, Err: fmt.Errorf("%w after %s", ErrTimeout, timeout)}
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.Log.Debug("command failed", append(fields, zap.String("stderr", Redact(string(res.Stderr), c.Secrets)))...)
			return res, &ExitError{
				Cmd:    line,
				Code:   res.ExitCode,
				Stderr: Redact(strings.TrimSpace(string(res.Stderr)), c.Secrets),
				Stdout: Redact(strings.TrimSpace(string(res.Stdout)), c.Secrets),
			}
		}
		return res, &CmdError{Cmd: line, Err: err}
	}
	r.Log.Debug("command ok", fields...)
	return res, nil
}

package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sanvol/sanvol/host"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// CallError is a method that failed the way xapi-storage-script sees it:
// either a well-formed error document, or SCRIPT_FAILED with the reason
// the daemon would give.
type CallError struct {
	Script   string
	ExitCode int
	Doc      schema.ErrorDoc
	Stderr   string
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%s failed (exit %d): %s %v", filepath.Base(e.Script), e.ExitCode, e.Doc.Code, e.Doc.Params)
}

// Outcome is everything a call produced, for tests that check the process
// contract itself (stdout exactly one JSON value, exit codes).
type Outcome struct {
	Script   string
	ExitCode int
	Stdout   []byte
	Stderr   []byte
	Elapsed  time.Duration
	// Signal names the signal that killed the process, as the daemon
	// (Core's Signal.to_string) spells it: "sigkill"; empty if it exited.
	Signal string
}

// FindMethod looks a method file up in a plugin directory the way the
// daemon does: case-insensitively, the lexicographically smallest name
// winning, and it must be an executable regular file after symlinks.
func FindMethod(dir, method string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("SCRIPT_MISSING: plugin directory %s: %w", dir, err)
	}
	for _, e := range entries { // ReadDir sorts by name
		if strings.EqualFold(e.Name(), method) {
			p := filepath.Join(dir, e.Name())
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() {
				return "", fmt.Errorf("SCRIPT_MISSING: %s is not a regular file", p)
			}
			if st.Mode().Perm()&0o111 == 0 {
				return "", fmt.Errorf("SCRIPT_NOT_EXECUTABLE: %s", p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("SCRIPT_MISSING: no %s in %s", method, dir)
}

// Run invokes a method file exactly as xapi-storage-script does (see
// host.RunMethod) and names a killing signal as the daemon does.
func Run(ctx context.Context, script string, stdin []byte) (Outcome, error) {
	r, err := host.RunMethod(ctx, script, stdin)
	out := Outcome{Script: script, ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr, Elapsed: r.Elapsed}
	if r.Signal != 0 {
		out.Signal = signalName(r.Signal)
	}
	return out, err
}

// signalName spells a signal as Core's Signal.to_string does ("sigkill"),
// which is what the daemon puts in SCRIPT_FAILED.
func signalName(sig syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGABRT: "sigabrt", syscall.SIGALRM: "sigalrm", syscall.SIGBUS: "sigbus",
		syscall.SIGFPE: "sigfpe", syscall.SIGHUP: "sighup", syscall.SIGILL: "sigill",
		syscall.SIGINT: "sigint", syscall.SIGKILL: "sigkill", syscall.SIGPIPE: "sigpipe",
		syscall.SIGQUIT: "sigquit", syscall.SIGSEGV: "sigsegv", syscall.SIGTERM: "sigterm",
		syscall.SIGUSR1: "sigusr1", syscall.SIGUSR2: "sigusr2", syscall.SIGXCPU: "sigxcpu",
	}
	if n, ok := names[sig]; ok {
		return n
	}
	return fmt.Sprintf("<unknown signal %d>", int(sig))
}

// Decode interprets an outcome as the daemon does (xen-api
// ocaml/xapi-storage-script/main.ml, fork_exec_rpc): killed by a signal
// is SCRIPT_FAILED "signalled"; exit 0 with one JSON value is success;
// non-zero with a complete error document is that error; anything else
// is SCRIPT_FAILED. The params are the daemon's, in its order.
func Decode(out Outcome) (json.RawMessage, error) {
	fail := func(doc schema.ErrorDoc) error {
		return &CallError{Script: out.Script, ExitCode: out.ExitCode, Doc: doc, Stderr: string(out.Stderr)}
	}
	if out.Signal != "" {
		return nil, fail(scriptFailed(out, "signalled", out.Signal))
	}
	if out.ExitCode == 0 {
		var v json.RawMessage
		if err := strictOneValue(out.Stdout, &v); err != nil {
			return nil, fail(schema.ErrorDoc{Code: "SCRIPT_FAILED", Params: []string{out.Script, "bad json on stdout", string(out.Stdout)}})
		}
		return v, nil
	}
	doc, ok := ParseErrorDoc(out.Stdout)
	if !ok {
		return nil, fail(scriptFailed(out, "non-zero exit and bad json on stdout", fmt.Sprint(out.ExitCode)))
	}
	return nil, fail(doc)
}

// scriptFailed is main.ml's fail_because: script, description, cause,
// and stdout twice (sic: the daemon passes stdout where stderr was meant).
func scriptFailed(out Outcome, description, cause string) schema.ErrorDoc {
	return schema.ErrorDoc{Code: "SCRIPT_FAILED", Params: []string{out.Script, description, cause, string(out.Stdout), string(out.Stdout)}}
}

func strictOneValue(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err == nil {
		return fmt.Errorf("more than one JSON value on stdout")
	}
	return nil
}

// ParseErrorDoc checks that stdout holds a complete error document with
// every mandatory key of the right type, as the daemon requires.
func ParseErrorDoc(b []byte) (schema.ErrorDoc, bool) {
	var raw struct {
		Code      *string   `json:"code"`
		Params    *[]string `json:"params"`
		Backtrace *struct {
			Error *string   `json:"error"`
			Files *[]string `json:"files"`
			Lines *[]int    `json:"lines"`
		} `json:"backtrace"`
	}
	if err := strictOneValue(b, &raw); err != nil {
		return schema.ErrorDoc{}, false
	}
	if raw.Code == nil || raw.Params == nil || raw.Backtrace == nil ||
		raw.Backtrace.Error == nil || raw.Backtrace.Files == nil || raw.Backtrace.Lines == nil {
		return schema.ErrorDoc{}, false
	}
	return schema.ErrorDoc{Code: *raw.Code, Params: *raw.Params, Backtrace: schema.Backtrace{
		Error: *raw.Backtrace.Error, Files: *raw.Backtrace.Files, Lines: *raw.Backtrace.Lines}}, true
}

// Invoke finds method in dir, runs it with args and decodes the result
// into result (which may be nil). A failed call returns a *CallError.
func Invoke(ctx context.Context, dir, method string, args any, result any) error {
	script, err := FindMethod(dir, method)
	if err != nil {
		return err
	}
	stdin, err := json.Marshal(args)
	if err != nil {
		return err
	}
	out, err := Run(ctx, script, stdin)
	if err != nil {
		return err
	}
	raw, err := Decode(out)
	if err != nil {
		return err
	}
	if result == nil {
		return nil
	}
	return json.Unmarshal(raw, result)
}

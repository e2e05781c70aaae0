package host

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// MethodRun is what one fork of a plugin method file produced.
type MethodRun struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
	Elapsed  time.Duration
	// Signal is the signal that killed the process, or 0 if it exited.
	Signal syscall.Signal
}

// RunMethod forks a plugin method file the way xapi-storage-script does
// (xen-api ocaml/xapi-storage-script/main.ml, fork_exec_rpc): argv[0] is
// the file's path, the only argument is --json, the arguments object is
// written to stdin, which is then closed, and stdout and stderr are read to
// EOF before the exit status is looked at. It is the one process start
// besides Runner's, for `sanvol call`, the simulator and the conformance
// suite; unlike Runner it feeds stdin, because that is the contract. The
// process runs in its own group and ctx's end kills it.
func RunMethod(ctx context.Context, script string, stdin []byte) (MethodRun, error) {
	return runForked(ctx, script, []string{"--json"}, bytes.NewReader(stdin), nil)
}

// RunHostPlugin forks a XenAPI host plugin the way xapi does for
// host.call_plugin (xen-api ocaml/xapi/xapi_plugins.ml call_plugin,
// Forkhelpers.execute_command_get_output): argv[0] is the plugin's path,
// the one argument is the XML-RPC call, there is no stdin, the
// environment is PATH alone (forkhelpers.ml default_path_env_pair), and
// stdout and stderr are read to EOF. For the simulator and the pool lab.
func RunHostPlugin(ctx context.Context, path, call string) (MethodRun, error) {
	return runForked(ctx, path, []string{call}, nil, []string{"PATH=/sbin:/usr/sbin:/bin:/usr/bin"})
}

func runForked(ctx context.Context, path string, args []string, stdin *bytes.Reader, env []string) (MethodRun, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	err := cmd.Run()
	out := MethodRun{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		out.ExitCode = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			out.Signal = ws.Signal()
		}
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return out, err
	}
	return out, nil
}

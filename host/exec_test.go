package host

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRunnerCapturesAndSetsLocale(t *testing.T) {
	r := NewExecRunner(nil)
	res, err := r.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", `echo "$LC_ALL"; echo err >&2; cat`}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// cat reads stdin: it must see EOF at once (stdin closed), not hang.
	if string(res.Stdout) != "C\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
}

func TestRunnerExitErrorIsRedacted(t *testing.T) {
	r := NewExecRunner(nil)
	_, err := r.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "echo bad key hunter2 >&2; exit 24", "--dhchap-secret=hunter2"}, Secrets: []string{"hunter2"}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 24 {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("secret leaked: %v", err)
	}
	if !strings.Contains(err.Error(), "--dhchap-secret=***") || !strings.Contains(err.Error(), "bad key ***") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunnerTimeoutKillsProcessGroup(t *testing.T) {
	r := NewExecRunner(nil)
	start := time.Now()
	// The grandchild keeps the pipes open; only a group kill ends it.
	_, err := r.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "sleep 30 & sleep 30"}, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) || KindOf(err) != KindTimeout {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestRunnerNotInstalled(t *testing.T) {
	_, err := NewExecRunner(nil).Run(context.Background(), Cmd{Name: "sanvol-no-such-tool"})
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("err = %v", err)
	}
}

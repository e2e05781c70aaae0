package nvme

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// The cause of a failed connect comes from the errno of a fabrics write
// and from nvme-cli's words, never from the text of a Go error.
func TestClassOf(t *testing.T) {
	fabrics := func(e syscall.Errno) error { return &fs.PathError{Op: "write", Path: devFabrics, Err: e} }
	cli := func(stderr string) error { return &host.ExitError{Cmd: "nvme connect", Code: 1, Stderr: stderr} }
	cases := []struct {
		name string
		err  error
		want connectClass
	}{
		{"key rejected", fabrics(syscall.EKEYREJECTED), connectAuth},
		{"no key", fabrics(syscall.ENOKEY), connectAuth},
		{"refused", fabrics(syscall.ECONNREFUSED), connectNoNetwork},
		{"tcp timeout", fabrics(syscall.ETIMEDOUT), connectNoNetwork},
		{"no route", fabrics(syscall.EHOSTUNREACH), connectNoNetwork},
		{"no iface", fabrics(syscall.ENODEV), connectNoDevice},
		{"bad option", fabrics(syscall.EINVAL), connectBadOptions},
		{"io error", fabrics(syscall.EIO), connectOther},
		{"cli auth", cli("Failed to write to /dev/nvme-fabrics: Key was rejected by service"), connectAuth},
		{"cli refused", cli("could not add new controller: Connection refused"), connectNoNetwork},
		{"cli option", cli("nvme: unrecognized option '--host-iface'"), connectBadOptions},
		// A Go error that merely says "refused" is not the kernel's answer.
		{"plain text", fmt.Errorf("connection refused"), connectOther},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classOf(c.err); got != c.want {
				t.Errorf("classOf(%v) = %d, want %d", c.err, got, c.want)
			}
		})
	}
}

// A portal that did not answer at the TCP level is marked as such, with
// the kernel's words kept, so allFailed skips its discovery log.
func TestUnreachablePortalIsMarked(t *testing.T) {
	p := Portal{Port: 4420}
	err := classifyConnect("op", p, Config{NQN: "nqn.x"}, &fs.PathError{Op: "write", Path: devFabrics, Err: syscall.ECONNREFUSED})
	if !errors.As(err, new(portalDown)) || !errors.Is(err, host.ErrUnreachable) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("refused connect = %v", err)
	}
	err = classifyConnect("op", p, Config{NQN: "nqn.x"}, &fs.PathError{Op: "write", Path: devFabrics, Err: syscall.EIO})
	if errors.As(err, new(portalDown)) {
		t.Errorf("a failed connect to a portal that answered is marked unreachable: %v", err)
	}
}

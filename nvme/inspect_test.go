package nvme

import (
	"context"
	"errors"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// After an attach, the read-only views see the subsystem and the paths
// the transport connected.
func TestInspectAttached(t *testing.T) {
	k := newFakeKernel(t)
	ctx := t.Context()
	if _, err := k.transport(nil).Attach(ctx, baseCfg()); err != nil {
		t.Fatalf("attach: %v", err)
	}
	// A transport of its own, as the doctor makes: no locker, no router.
	tr := New(Deps{Runner: k, Root: k.root})
	c, err := tr.ParseConfig(ctx, baseCfg())
	if err != nil {
		t.Fatal(err)
	}
	if c.IOPolicy != DefaultIOPolicy || len(c.Portals) != 2 || c.Portals[0].Iface != "" {
		t.Errorf("config %+v", c)
	}
	subs, err := tr.Subsystems()
	if err != nil || len(subs) != 1 || subs[0].NQN != testNQN || subs[0].IOPolicy != c.IOPolicy {
		t.Fatalf("subsystems %+v, %v", subs, err)
	}
	if got := k.read(subs[0].Dir() + "/iopolicy"); got != c.IOPolicy {
		t.Errorf("%s/iopolicy = %q", subs[0].Dir(), got)
	}
	ctrls, err := tr.Controllers()
	if err != nil || len(ctrls) != 2 {
		t.Fatalf("controllers %+v, %v", ctrls, err)
	}
	for _, ctrl := range ctrls {
		if ctrl.SubsysNQN != testNQN || ctrl.State != "live" {
			t.Errorf("controller %+v", ctrl)
		}
	}
}

// The pre-flight reads a device-config as attach does: a host name is
// refused, and nqn may be missing.
func TestParseConfigAsAttach(t *testing.T) {
	tr := New(Deps{Root: host.NewRoot(t.TempDir())})
	_, err := tr.ParseConfig(context.Background(), map[string]string{KeyTarget: "array.example"})
	var he *host.Error
	if !errors.As(err, &he) || he.Kind != host.KindInvalid {
		t.Fatalf("host name target: %v", err)
	}
	_, want := parseConfig(context.Background(), map[string]string{KeyTarget: "array.example"}, parseOpts{needNQN: true})
	if err.Error() != want.Error() {
		t.Errorf("ParseConfig says %q, attach says %q", err, want)
	}
	if _, err := tr.ParseConfig(context.Background(), map[string]string{KeyTarget: "10.0.0.1"}); err != nil {
		t.Errorf("without nqn: %v", err)
	}
}

func TestValidNQN(t *testing.T) {
	for nqn, want := range map[string]bool{
		testHostNQN:                   true,
		"nqn.2014-08.org.example:a b": false,
		"nqn.x,hostnqn=y":             false,
		"iqn.2003-01.org.example:x":   false,
	} {
		if ValidNQN(nqn) != want {
			t.Errorf("ValidNQN(%q) = %v", nqn, !want)
		}
	}
}

type versionRunner struct {
	out string
	err error
}

func (r versionRunner) Run(context.Context, host.Cmd) (host.Result, error) {
	return host.Result{Stdout: []byte(r.out)}, r.err
}

func TestCLIVersion(t *testing.T) {
	tr := New(Deps{Runner: versionRunner{out: "nvme version 2.3 (git 2.3)\nlibnvme version 1.3 (git 1.3)\n"}})
	if v, err := tr.CLIVersion(context.Background()); v != "2.3" || err != nil {
		t.Errorf("%q, %v", v, err)
	}
	tr = New(Deps{Runner: versionRunner{err: host.ErrNotInstalled}})
	if _, err := tr.CLIVersion(context.Background()); !errors.Is(err, host.ErrNotInstalled) {
		t.Errorf("not installed: %v", err)
	}
}

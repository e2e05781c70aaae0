package iscsi

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sanvol/sanvol/host"
)

// On XCP-ng 8.x iscsid is disabled by preset; the first attach starts it
// as sm does, says so in the log, and never touches the node database.
func TestAttachStartsIscsidLikeSm(t *testing.T) {
	f := newFakeHost(t)
	f.stopIscsid()
	core, logs := observer.New(zapcore.InfoLevel)
	tr := f.transport(nil)
	tr.log = zap.New(core)
	attach(t, tr, baseConfig())
	if got := f.commands("systemctl"); len(got) != 1 || got[0] != "systemctl start iscsid.service" {
		t.Errorf("systemctl calls %q, want one start of iscsid.service", got)
	}
	if f.sessionCount() != 2 {
		t.Errorf("%d sessions after starting iscsid, want 2", f.sessionCount())
	}
	if n := logs.FilterMessageSnippet("started it as sm does").Len(); n != 1 {
		t.Errorf("%d log lines about starting iscsid, want 1: %v", n, logs.All())
	}
	// A second attach finds it running: no more starts.
	attach(t, tr, baseConfig())
	if n := len(f.commands("systemctl")); n != 1 {
		t.Errorf("%d systemctl calls after a second attach, want 1", n)
	}
}

func TestProbeStartsIscsid(t *testing.T) {
	f := newFakeHost(t)
	f.stopIscsid()
	cfg := baseConfig()
	delete(cfg, "targetIQN")
	delete(cfg, KeySCSIid)
	cands, err := f.transport(nil).Probe(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if len(cands) == 0 || len(f.commands("systemctl")) != 1 {
		t.Errorf("%d candidates, systemctl %q", len(cands), f.commands("systemctl"))
	}
}

func TestAttachIscsidStartFailsNamesTheJournal(t *testing.T) {
	f := newFakeHost(t)
	f.stopIscsid()
	f.startFails = true
	_, err := f.transport(nil).Attach(context.Background(), baseConfig())
	var he *host.Error
	if !errors.As(err, &he) || he.Kind != host.KindUnsupported {
		t.Fatalf("error %v, want KindUnsupported", err)
	}
	if !strings.Contains(err.Error(), "systemctl start iscsid.service") || !strings.Contains(he.Fix, "journalctl -u iscsid") {
		t.Errorf("error %q, fix %q", err, he.Fix)
	}
	if f.sessionCount() != 0 || len(f.commands("iscsiadm")) != 0 {
		t.Errorf("%d sessions, iscsiadm %q after a failed start", f.sessionCount(), f.commands("iscsiadm"))
	}
}

// sm's restart path stops iscsid; a detach afterwards starts it again
// to log the sessions out instead of leaving them behind.
func TestDetachStartsIscsidToLogOut(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	attach(t, tr, baseConfig())
	f.stopIscsid()
	if err := tr.Detach(context.Background(), baseConfig(), nil); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if f.sessionCount() != 0 || len(f.commands("systemctl")) != 1 {
		t.Errorf("%d sessions left, systemctl %q", f.sessionCount(), f.commands("systemctl"))
	}
}

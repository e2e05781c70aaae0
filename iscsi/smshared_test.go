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

const smSR = "7d0b1c2e-1111-4a2b-9c3d-4e5f60718293"

// An lvmoiscsi SR attached here on the same IQN: SR.create refuses,
// before any login, and names the SR and what to do.
func TestPrepareRefusesIQNOfSMAPIv1SR(t *testing.T) {
	f := newFakeHost(t)
	f.write(SMRefDir+"/"+testIQN, smSR+"\n")
	_, err := f.transport(nil).Prepare(context.Background(), baseConfig())
	var he *host.Error
	if !errors.Is(err, host.ErrBusy) || !errors.As(err, &he) {
		t.Fatalf("prepare: %v, want a Busy error", err)
	}
	if !strings.Contains(he.Msg, smSR) || !strings.Contains(he.Msg, testIQN) || !strings.Contains(he.Fix, "another target IQN") {
		t.Errorf("error %q fix %q", he.Msg, he.Fix)
	}
	if n := len(f.commands("iscsiadm")); n != 0 {
		t.Errorf("%d iscsiadm calls before refusing", n)
	}
}

// sm's files for other IQNs, or none, change nothing.
func TestPrepareIgnoresOtherSMAPIv1IQNs(t *testing.T) {
	f := newFakeHost(t)
	f.write(SMRefDir+"/"+testIQN2, smSR+"\n")
	if _, err := f.transport(nil).Prepare(context.Background(), baseConfig()); err != nil {
		t.Fatalf("prepare: %v", err)
	}
}

// An SR that exists still attaches (its VMs must run), with a warning.
func TestAttachWarnsOfSMAPIv1SRSharingTheIQN(t *testing.T) {
	f := newFakeHost(t)
	f.write(SMRefDir+"/"+testIQN, smSR+"\n")
	core, logs := observer.New(zapcore.WarnLevel)
	tr := f.transport(nil)
	tr.log = zap.New(core)
	attach(t, tr, baseConfig())
	w := logs.FilterMessageSnippet("SMAPIv1 iSCSI SR shares this target IQN").All()
	if len(w) != 1 {
		t.Fatalf("warnings %v", logs.All())
	}
	if got := w[0].ContextMap()["sm_srs"]; got == nil || !strings.Contains(strings.Join(anyStrings(got), ","), smSR) {
		t.Errorf("sm_srs field %v", got)
	}
}

func anyStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, e := range l {
			out = append(out, e.(string))
		}
	}
	return out
}

// fakeSMAPIv1 answers the pool-wide lookup as XenAPI would.
type fakeSMAPIv1 struct {
	srs   map[string][]host.SMAPIv1SR // by IQN
	err   error
	calls int
}

func (f *fakeSMAPIv1) SMAPIv1ISCSISRsOn(_ context.Context, iqn string) ([]host.SMAPIv1SR, error) {
	f.calls++
	return f.srs[iqn], f.err
}

// An lvmoiscsi SR of the pool on the IQN, unplugged here (no sm reference
// file): SR.create still refuses, before any login, naming the SR.
func TestPrepareRefusesIQNOfSMAPIv1SRInThePool(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	pool := &fakeSMAPIv1{srs: map[string][]host.SMAPIv1SR{testIQN: {{UUID: smSR, Name: "sm LVM", Type: "lvmoiscsi", PBDs: 2}}}}
	tr.smapiv1 = pool
	_, err := tr.Prepare(context.Background(), baseConfig())
	var he *host.Error
	if !errors.Is(err, host.ErrBusy) || !errors.As(err, &he) {
		t.Fatalf("prepare: %v, want a Busy error", err)
	}
	for _, want := range []string{smSR, "sm LVM", "lvmoiscsi", testIQN, "logs out every session"} {
		if !strings.Contains(he.Msg, want) {
			t.Errorf("message %q lacks %q", he.Msg, want)
		}
	}
	if !strings.Contains(he.Fix, "another target IQN") || !strings.Contains(he.Fix, "xe pbd-list") {
		t.Errorf("fix %q", he.Fix)
	}
	if n := len(f.commands("iscsiadm")); n != 0 {
		t.Errorf("%d iscsiadm calls before refusing", n)
	}
}

// No SMAPIv1 SR on the IQN, or XenAPI not answering: SR.create goes on
// (the second with a warning that only the local files were read).
func TestPrepareWithThePoolsSMAPIv1SRsElsewhere(t *testing.T) {
	for _, pool := range []*fakeSMAPIv1{
		{srs: map[string][]host.SMAPIv1SR{testIQN2: {{UUID: smSR, Type: "iscsi", PBDs: 1}}}},
		{err: host.NewError(host.KindUnreachable, "x", "cannot log in to xapi", "", nil)},
	} {
		f := newFakeHost(t)
		core, logs := observer.New(zapcore.WarnLevel)
		tr := f.transport(nil)
		tr.log = zap.New(core)
		tr.smapiv1 = pool
		if _, err := tr.Prepare(context.Background(), baseConfig()); err != nil {
			t.Fatalf("prepare: %v", err)
		}
		if pool.calls != 1 {
			t.Errorf("%d pool lookups, want 1", pool.calls)
		}
		w := logs.FilterMessageSnippet("could not read the pool's SMAPIv1 iSCSI SRs").Len()
		if want := map[bool]int{true: 1, false: 0}[pool.err != nil]; w != want {
			t.Errorf("%d warnings, want %d: %v", w, want, logs.All())
		}
	}
}

package plugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// fakePBD is this host's PBD as xapi holds it, with the calls made.
type fakePBD struct {
	other   map[string]string
	version string
	err     error // answered by every call while set
	updates int
	reads   int
	// separated is the SRs SeparatePBDSecrets was asked about; changed
	// what it answers.
	separated []string
	changed   []string
}

func (f *fakePBD) SeparatePBDSecrets(_ context.Context, srUUID string) ([]string, error) {
	f.separated = append(f.separated, srUUID)
	if f.err != nil {
		return nil, f.err
	}
	return f.changed, nil
}

func (f *fakePBD) UpdatePBDOtherConfig(_ context.Context, _ string, set map[string]string, remove []string) error {
	f.updates++
	if f.err != nil {
		return f.err
	}
	for _, k := range remove {
		delete(f.other, k)
	}
	for k, v := range set {
		f.other[k] = v
	}
	return nil
}

func (f *fakePBD) XapiVersion(context.Context) (int, int, error) {
	f.reads++
	if f.err != nil {
		return 0, 0, f.err
	}
	return host.ParseXapiVersion(f.version)
}

const pathsSR = "0b9e2a4c-6f1d-4a57-9c3e-1d2f3a4b5c6d"

func newPathKeys(t *testing.T, f *fakePBD) (*pathKeys, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	return &pathKeys{root: host.NewRoot(t.TempDir()), xapi: f, log: zap.New(core)}, logs
}

func healthyStat(live, total int) volume.SRStat {
	return volume.SRStat{SR: "nvmetcp://" + pathsSR, UUID: pathsSR, Name: "lab", TotalSpace: 4 << 30, FreeSpace: 3 << 30,
		Health: volume.Healthy, HealthDetail: "detail",
		Paths: transport.Health{ID: "eui.00a1", Live: live, Total: total, Detail: "detail"}}
}

func TestSRStatDegradedIsHealthyAndPublished(t *testing.T) {
	f := &fakePBD{other: map[string]string{"unrelated": "x"}}
	p, _ := newPathKeys(t, f)
	out, err := p.srStat(context.Background(), healthyStat(1, 2))
	if err != nil || out.Health.State != schema.Healthy || out.Health.Message != "detail" || out.TotalSpace != 4<<30 {
		t.Fatalf("degraded SR.stat = %+v, %v", out, err)
	}
	want := map[string]string{"unrelated": "x", "multipathed": "true", "mpath-eui.00a1": "[1, 2]"}
	if len(f.other) != len(want) {
		t.Fatalf("other-config %v, want %v", f.other, want)
	}
	for k, v := range want {
		if f.other[k] != v {
			t.Fatalf("other-config %v, want %v", f.other, want)
		}
	}
}

func TestPathKeysWrittenOnlyOnChangeAndLoggedOnce(t *testing.T) {
	f := &fakePBD{other: map[string]string{}}
	p, logs := newPathKeys(t, f)
	ctx := context.Background()
	p.publish(ctx, pathsSR, transport.Health{ID: "eui.00a1", Live: 2, Total: 2}, true) // SR.attach
	for range 3 {
		if _, err := p.srStat(ctx, healthyStat(2, 2)); err != nil {
			t.Fatal(err)
		}
	}
	if f.updates != 1 {
		t.Fatalf("%d XenAPI updates for unchanged counts, want the attach's only", f.updates)
	}
	for range 3 {
		if _, err := p.srStat(ctx, healthyStat(1, 2)); err != nil {
			t.Fatal(err)
		}
	}
	if f.updates != 2 || f.other["mpath-eui.00a1"] != "[1, 2]" {
		t.Fatalf("after a path loss: %d updates, %v", f.updates, f.other)
	}
	if _, err := p.srStat(ctx, healthyStat(2, 2)); err != nil {
		t.Fatal(err)
	}
	if f.updates != 3 || f.other["mpath-eui.00a1"] != "[2, 2]" {
		t.Fatalf("after the restore: %d updates, %v", f.updates, f.other)
	}
	// An SR.stat without a path view (the transport could not read it)
	// changes nothing and logs no transition.
	unknown := healthyStat(0, 0)
	unknown.Paths = transport.Health{}
	if _, err := p.srStat(ctx, unknown); err != nil {
		t.Fatal(err)
	}
	if f.updates != 3 || f.other["mpath-eui.00a1"] != "[2, 2]" {
		t.Fatalf("after an SR.stat without a path view: %d updates, %v", f.updates, f.other)
	}
	changes := logs.FilterMessageSnippet("paths changed").All()
	if len(changes) != 2 || changes[0].Level != zap.WarnLevel || changes[1].Level != zap.InfoLevel ||
		!strings.Contains(changes[0].Message, "from 2 of 2 to 1 of 2") || !strings.Contains(changes[1].Message, "from 1 of 2 to 2 of 2") {
		t.Fatalf("transitions logged: %+v", changes)
	}
}

// The newer daemon runs calls in parallel: SR.stats that all see the same
// change write it once, without colliding in MAP_DUPLICATE_KEY.
func TestPathKeysParallelStats(t *testing.T) {
	f := &fakePBD{other: map[string]string{}}
	p, logs := newPathKeys(t, f)
	ctx := context.Background()
	p.publish(ctx, pathsSR, transport.Health{ID: "eui.00a1", Live: 2, Total: 2}, true)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := p.srStat(ctx, healthyStat(1, 2)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if f.updates != 2 || f.other["mpath-eui.00a1"] != "[1, 2]" {
		t.Fatalf("%d updates, %v", f.updates, f.other)
	}
	if n := logs.FilterMessageSnippet("paths changed").Len(); n != 1 {
		t.Fatalf("the change was logged %d times", n)
	}
}

func TestPathKeysRemovedOnDetach(t *testing.T) {
	f := &fakePBD{other: map[string]string{"keep": "1"}}
	p, _ := newPathKeys(t, f)
	ctx := context.Background()
	p.publish(ctx, pathsSR, transport.Health{ID: "eui.00a1", Live: 2, Total: 2}, true)
	p.unpublish(ctx, pathsSR)
	if len(f.other) != 1 || f.other["keep"] != "1" {
		t.Fatalf("other-config after detach: %v", f.other)
	}
	if _, err := os.Stat(filepath.Join(p.root.Dir, pathFile(pathsSR))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("path record left after detach: %v", err)
	}
	// A repeated detach finds nothing to do and does not call xapi.
	n := f.updates
	p.unpublish(ctx, pathsSR)
	if f.updates != n {
		t.Fatal("a repeated detach called xapi")
	}
}

func TestXenAPIFailureNeverFailsTheCall(t *testing.T) {
	f := &fakePBD{other: map[string]string{}, err: &host.XenAPIError{Method: "PBD.add_to_other_config", Code: "HOST_STILL_BOOTING"}}
	p, logs := newPathKeys(t, f)
	ctx := context.Background()
	out, err := p.srStat(ctx, healthyStat(1, 2))
	if err != nil || out.Health.State != schema.Healthy {
		t.Fatalf("SR.stat with xapi failing: %+v, %v", out, err)
	}
	if logs.FilterMessageSnippet("cannot publish").Len() != 1 {
		t.Fatalf("the failure was not logged: %v", logs.All())
	}
	// Not written, so the next SR.stat tries again and succeeds.
	f.err = nil
	if _, err := p.srStat(ctx, healthyStat(1, 2)); err != nil {
		t.Fatal(err)
	}
	if f.updates != 2 || f.other["mpath-eui.00a1"] != "[1, 2]" {
		t.Fatalf("retry: %d updates, %v", f.updates, f.other)
	}
	// Without any XenAPI at all, SR.stat still answers.
	p.xapi = nil
	if _, err := p.srStat(ctx, healthyStat(2, 2)); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachableOnlyToDaemonsThatDecodeIt(t *testing.T) {
	ctx := context.Background()
	down := volume.SRStat{SR: "nvmetcp://" + pathsSR, UUID: pathsSR, Health: volume.Unreachable, HealthDetail: "0 of 2 paths live",
		Paths: transport.Health{ID: "eui.00a1", Live: 0, Total: 2, Detail: "0 of 2 paths live"}}
	for _, c := range []struct {
		version     string
		unreachable bool
	}{{"24.18", true}, {"26.1", true}, {"25.0", true}, {"24.17", false}, {"1.249", false}} {
		t.Run("xapi "+c.version, func(t *testing.T) {
			f := &fakePBD{other: map[string]string{}, version: c.version}
			p, _ := newPathKeys(t, f)
			// The sizes of the last SR.stat that could read them.
			if _, err := p.srStat(ctx, healthyStat(2, 2)); err != nil {
				t.Fatal(err)
			}
			out, err := p.srStat(ctx, down)
			if !c.unreachable {
				if !errors.Is(err, host.ErrUnreachable) || !strings.Contains(err.Error(), "0 of 2 paths live") || !strings.Contains(err.Error(), "sanvol status") {
					t.Errorf("xapi %s: err = %v, want an Unreachable error document", c.version, err)
				}
				return
			}
			if err != nil || out.Health.State != schema.Unreachable || out.Health.Message != "0 of 2 paths live" ||
				out.TotalSpace != 4<<30 || out.FreeSpace != 3<<30 || out.Name != "lab" {
				t.Errorf("xapi %s: %+v, %v", c.version, out, err)
			}
			if err := schema.Ours().ValidateValue("res:SR.stat", out); err != nil {
				t.Errorf("xapi %s: %v", c.version, err)
			}
			if f.other["mpath-eui.00a1"] != "[0, 2]" {
				t.Errorf("xapi %s: other-config %v", c.version, f.other)
			}
			// The version is read once per boot.
			if _, err := p.srStat(ctx, down); err != nil || f.reads != 1 {
				t.Errorf("xapi %s: %d version reads, %v", c.version, f.reads, err)
			}
		})
	}
	// xapi does not answer: not cached, and an error document meanwhile.
	f := &fakePBD{other: map[string]string{}, err: errors.New("connection refused")}
	p, _ := newPathKeys(t, f)
	if _, err := p.srStat(ctx, down); !errors.Is(err, host.ErrUnreachable) {
		t.Fatalf("unknown daemon: %v", err)
	}
	f.err, f.version = nil, "24.18"
	if out, err := p.srStat(ctx, down); err != nil || out.Health.State != schema.Unreachable {
		t.Fatalf("once xapi answers: %+v, %v", out, err)
	}
}

// SR.attach's secret separation goes through the injected XenAPI, only on
// the master and only for a configuration with a secret, and never fails
// the call.
func TestSeparateSecretsUsesTheInjectedXenAPI(t *testing.T) {
	withSecret := map[string]string{"sr_uuid": strings.ToUpper(pathsSR), "chappassword_secret": "s-uuid"}
	for _, tc := range []struct {
		name    string
		role    string // pool.conf; "" for none (a stand-alone master)
		cfg     map[string]string
		err     error
		changed []string
		asked   bool
		log     string // a message expected in the log
	}{
		{name: "master with a secret", role: "master", cfg: withSecret, changed: []string{"pbd-2"}, asked: true, log: "gave PBDs their own copy of a shared secret"},
		{name: "stand-alone host", cfg: withSecret, asked: true},
		{name: "pool member", role: "slave:10.0.0.1", cfg: withSecret},
		{name: "no secret in the configuration", role: "master", cfg: map[string]string{"sr_uuid": pathsSR, "chappassword": "x"}},
		{name: "xapi unreachable", role: "master", cfg: withSecret, asked: true,
			err: host.NewError(host.KindUnreachable, "xapi", "no answer", "", nil), log: "xapi not reachable; PBD secrets left as they are"},
		{name: "xapi fails", role: "master", cfg: withSecret, asked: true,
			err: &host.XenAPIError{Method: "PBD.set_device_config", Code: "HOST_STILL_BOOTING"}, log: "could not give each PBD its own secret; removing a host from the pool may break the other hosts' next plug of this SR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := host.NewRoot(t.TempDir())
			if tc.role != "" {
				if err := root.WriteFileAtomic(host.PoolConf, []byte(tc.role), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f := &fakePBD{err: tc.err, changed: tc.changed}
			core, logs := observer.New(zap.DebugLevel)
			c := &Call{Deps: &Deps{Root: root, XenAPI: f}, Log: zap.New(core)}
			separateSecrets(context.Background(), c, tc.cfg)
			if asked := len(f.separated) > 0; asked != tc.asked {
				t.Fatalf("SeparatePBDSecrets asked: %v, want %v", asked, tc.asked)
			}
			if tc.asked && (len(f.separated) != 1 || f.separated[0] != pathsSR) {
				t.Fatalf("SeparatePBDSecrets asked about %v, want the lower-case SR uuid %s once", f.separated, pathsSR)
			}
			if tc.log != "" && logs.FilterMessage(tc.log).Len() != 1 {
				t.Fatalf("log lacks %q: %v", tc.log, logs.All())
			}
		})
	}
	// Without a XenAPI there is nothing to ask, and nothing breaks.
	c := &Call{Deps: &Deps{Root: host.NewRoot(t.TempDir())}, Log: zap.NewNop()}
	separateSecrets(context.Background(), c, withSecret)
}

package xapisim

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/plugin"
)

// hostLog records which host ran which method file, in order.
type hostLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *hostLog) exec(name string) func(context.Context, string, []byte) (plugin.Outcome, error) {
	return func(ctx context.Context, script string, stdin []byte) (plugin.Outcome, error) {
		l.mu.Lock()
		l.calls = append(l.calls, name+" "+filepath.Base(script))
		l.mu.Unlock()
		return plugin.Run(ctx, script, stdin)
	}
}

// take returns the calls so far whose method starts with one of prefixes,
// and forgets every call.
func (l *hostLog) take(prefixes ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, c := range l.calls {
		_, m, _ := strings.Cut(c, " ")
		for _, p := range prefixes {
			if strings.HasPrefix(m, p) {
				out = append(out, c)
				break
			}
		}
	}
	l.calls = nil
	return out
}

func TestPoolSimRoutesEachCallToItsHost(t *testing.T) {
	root := fakeRoot(t)
	ctx := context.Background()
	var log hostLog
	a, b := New(root, nil), New(root, nil)
	a.Exec, b.Exec = log.exec("A"), log.exec("B")
	pool := NewPoolSim(a, b)
	if !b.Member || a.Member {
		t.Fatal("the member Sim must be Member and the master not")
	}

	ps, err := pool.SRCreate(ctx, "fake", "pool SR", "", map[string]string{"target": "x"})
	if err != nil {
		t.Fatal(err)
	}
	// The master creates and plugs (with its second, health-check
	// SR.stat); the member only plugs.
	want := []string{"A Plugin.Query", "A SR.create", "A Plugin.Query", "A SR.attach", "A SR.stat", "A SR.stat",
		"B Plugin.Query", "B SR.attach", "B SR.stat"}
	if diff := cmp.Diff(want, log.take("Plugin", "SR.")); diff != "" {
		t.Fatalf("sr-create on the pool (-want +got):\n%s", diff)
	}

	// One XenAPI view: both hosts and both PBDs in the master's database.
	for i, s := range pool.Hosts {
		ref, rerr, ok := a.xenAPIRecords("host.get_by_uuid", rawParams(t, "session", s.HostUUID()))
		if !ok || rerr != nil {
			t.Fatalf("host %d unknown to the pool's database: %v", i, rerr)
		}
		recs, rerr, _ := a.xenAPIRecords("PBD.get_all_records_where", rawParams(t, "session", `field "host" = "`+ref.(string)+`"`))
		if rerr != nil || len(recs.(map[string]any)) != 1 {
			t.Fatalf("host %d's PBDs: %v %v", i, recs, rerr)
		}
	}

	if _, err := ps.Master().VDICreate(ctx, "d", "", 1<<20, false); err != nil {
		t.Fatal(err)
	}
	onlyOn(t, "vdi-create", "A ", log.take(""))

	att, err := ps.On(1).VMStart(ctx, "k1", "5")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"B Datapath.attach", "B Datapath.activate"}, log.take("Datapath")); diff != "" {
		t.Fatalf("vm-start on the member (-want +got):\n%s", diff)
	}

	moved, tm, err := ps.Migrate(ctx, att, 1, 0, "9")
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"A Datapath.attach", "B Datapath.deactivate", "A Datapath.activate", "B Datapath.deactivate", "B Datapath.detach"}
	if diff := cmp.Diff(want, log.take("Datapath")); diff != "" {
		t.Fatalf("live migration B → A in xenopsd's order (-want +got):\n%s", diff)
	}
	if moved.Domain != "9" || moved.Device != "/dev/fake" || tm.Activated.Before(tm.Deactivated) || tm.Deactivated.Before(tm.Suspended) {
		t.Fatalf("destination attachment %+v, timing %+v", moved, tm)
	}
	if err := ps.Master().VMShutdown(ctx, moved); err != nil {
		t.Fatal(err)
	}
	onlyOn(t, "vm-shutdown on the master", "A ", log.take(""))
}

// onlyOn fails unless every call ran on the host named by prefix.
func onlyOn(t *testing.T, what, prefix string, calls []string) {
	t.Helper()
	if len(calls) == 0 {
		t.Fatalf("%s made no call", what)
	}
	for _, c := range calls {
		if !strings.HasPrefix(c, prefix) {
			t.Fatalf("%s ran %q elsewhere than %q: %v", what, c, prefix, calls)
		}
	}
}

func rawParams(t *testing.T, ps ...string) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for _, p := range ps {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

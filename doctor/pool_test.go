package doctor

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// fakeXapi serves the JSON-RPC calls XenAPIPool makes on the local
// socket.
type fakeXapi struct {
	mu    sync.Mutex
	calls []string
	other map[string]map[string]string // host ref → other_config
}

func startXapi(t *testing.T, f *fakeXapi) host.Root {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, host.XapiSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Method string `json:"method"`
			Params []any  `json:"params"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, req.Method)
		reply := func(v any) { _ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": 1, "result": v}) }
		switch req.Method {
		case "session.login_with_password":
			reply("OpaqueRef:s")
		case "host.get_all_records":
			reply(map[string]any{
				"OpaqueRef:a": map[string]any{"uuid": selfUUID, "name_label": "xcp1", "address": "192.168.1.10", "iscsi_iqn": localIQN, "other_config": f.other["OpaqueRef:a"]},
				// An older xapi: the IQN only in other-config.
				"OpaqueRef:b": map[string]any{"uuid": otherUUID, "name_label": "xcp2", "address": "192.168.1.11", "other_config": f.other["OpaqueRef:b"]},
			})
		case "host.get_by_uuid":
			reply("OpaqueRef:a")
		case "host.remove_from_other_config":
			delete(f.other[req.Params[1].(string)], req.Params[2].(string))
			reply(nil)
		case "host.add_to_other_config":
			f.other[req.Params[1].(string)][req.Params[2].(string)] = req.Params[3].(string)
			reply(nil)
		default:
			reply(nil)
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return host.NewRoot(dir)
}

func TestXenAPIPool(t *testing.T) {
	f := &fakeXapi{other: map[string]map[string]string{
		"OpaqueRef:a": {},
		"OpaqueRef:b": {"iscsi_iqn": "iqn.2024-01.com.example:xcp2", otherConfigHostNQN: "nqn.2014-08.org.example:xcp2"},
	}}
	root := startXapi(t, f)
	p := NewXenAPIPool(host.NewXenAPI(root), root)
	ctx := context.Background()
	hosts, err := p.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].IQN != localIQN || hosts[1].IQN != "iqn.2024-01.com.example:xcp2" || hosts[1].HostNQN != "nqn.2014-08.org.example:xcp2" || hosts[0].Name != "xcp1" {
		t.Fatalf("hosts %+v", hosts)
	}
	if err := p.RecordHostNQN(ctx, selfUUID, localNQN); err != nil {
		t.Fatal(err)
	}
	if f.other["OpaqueRef:a"][otherConfigHostNQN] != localNQN {
		t.Fatalf("other_config %v", f.other)
	}
	if got := strings.Join(f.calls, " "); !strings.Contains(got, "host.remove_from_other_config host.add_to_other_config session.logout") {
		t.Errorf("calls %s", got)
	}
}

func TestXenAPIPoolWithoutXapi(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	_, err := NewXenAPIPool(host.NewXenAPI(root), root).Hosts(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no xapi socket at /var/lib/xcp/xapi") {
		t.Fatalf("err %v", err)
	}
}

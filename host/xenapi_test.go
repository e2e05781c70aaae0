package host

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// fakeXapi answers the JSON-RPC calls the secret lookup makes.
func fakeXapi(t *testing.T, secrets map[string]string) (Root, *[]string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, XapiSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Method string `json:"method"`
			Params []any  `json:"params"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		calls = append(calls, req.Method)
		reply := func(v any) { json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": 1, "result": v}) }
		switch req.Method {
		case "session.login_with_password":
			reply("OpaqueRef:session")
		case "secret.get_by_uuid":
			if _, ok := secrets[req.Params[1].(string)]; !ok {
				json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": 1,
					"error": map[string]any{"code": 1, "message": "UUID_INVALID", "data": []string{"secret", req.Params[1].(string)}}})
				return
			}
			reply("OpaqueRef:" + req.Params[1].(string))
		case "secret.get_value":
			reply(secrets[req.Params[1].(string)[len("OpaqueRef:"):]])
		case "session.logout":
			reply(nil)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewRoot(dir), &calls
}

func TestXenAPISecret(t *testing.T) {
	root, calls := fakeXapi(t, map[string]string{"u-1": "s3cret"})
	v, err := NewXenAPI(root).Secret(context.Background(), "u-1")
	if err != nil || v != "s3cret" {
		t.Fatalf("got %q, %v", v, err)
	}
	want := []string{"session.login_with_password", "secret.get_by_uuid", "secret.get_value", "session.logout"}
	if len(*calls) != len(want) {
		t.Fatalf("calls %v", *calls)
	}
	for i := range want {
		if (*calls)[i] != want[i] {
			t.Fatalf("calls %v", *calls)
		}
	}
}

func TestXenAPISecretMissing(t *testing.T) {
	root, calls := fakeXapi(t, nil)
	_, err := NewXenAPI(root).Secret(context.Background(), "nope")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	var xe *XenAPIError
	if !errors.As(err, &xe) || xe.Code != "UUID_INVALID" {
		t.Fatalf("err = %#v", err)
	}
	if (*calls)[len(*calls)-1] != "session.logout" {
		t.Fatalf("session leaked: %v", *calls)
	}
}

func TestXenAPIUnreachable(t *testing.T) {
	_, err := NewXenAPI(NewRoot(t.TempDir())).Secret(context.Background(), "u")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v", err)
	}
}

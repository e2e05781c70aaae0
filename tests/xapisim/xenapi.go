package xapisim

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ServeXenAPI answers, on a unix socket, the few XenAPI calls a plugin
// makes to xapi's local socket (/var/lib/xcp/xapi): logging in as root,
// reading the secrets xapi made from device-config passwords, and this
// host's, SRs' and PBDs' records (pbd.go). Other methods get
// MESSAGE_METHOD_UNKNOWN, as from a xapi that lacks them.
// stop closes the socket.
func (s *Sim) ServeXenAPI(socket string) (stop func() error, err error) {
	return serveUnix(socket, http.HandlerFunc(s.serveRPC))
}

// XenAPIHandler is the handler ServeXenAPI serves, for a listener of the
// caller's (a pool lab serves the master's to the other hosts over TCP).
func (s *Sim) XenAPIHandler() http.Handler { return http.HandlerFunc(s.serveRPC) }

// serveUnix serves h on a unix socket until stop is called.
func serveUnix(socket string, h http.Handler) (stop func() error, err error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		_ = os.Remove(socket)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}, nil
}

type rpcError struct {
	Message string   `json:"message"`
	Data    []string `json:"data"`
}

func (s *Sim) serveRPC(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Method string            `json:"method"`
		Params []json.RawMessage `json:"params"`
		ID     json.RawMessage   `json:"id"`
	}
	resp := map[string]any{"jsonrpc": "2.0"}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	resp["id"] = req.ID
	str := func(i int) string {
		var v string
		if i < len(req.Params) {
			_ = json.Unmarshal(req.Params[i], &v)
		}
		return v
	}
	const refPrefix = "OpaqueRef:secret-"
	switch req.Method {
	case "session.login_with_password":
		resp["result"] = "OpaqueRef:session-" + newUUID()
	case "session.logout":
		resp["result"] = ""
	case "secret.get_by_uuid":
		if _, ok := s.secret(str(1)); ok {
			resp["result"] = refPrefix + str(1)
		} else {
			resp["error"] = rpcError{Message: "UUID_INVALID", Data: []string{"secret", str(1)}}
		}
	case "secret.get_value":
		if v, ok := s.secret(strings.TrimPrefix(str(1), refPrefix)); ok {
			resp["result"] = v
		} else {
			resp["error"] = rpcError{Message: "HANDLE_INVALID", Data: []string{"secret", str(1)}}
		}
	case "host.call_plugin":
		// Outside the database lock: the plugin may run for a while.
		var args map[string]string
		if len(req.Params) > 4 {
			_ = json.Unmarshal(req.Params[4], &args)
		}
		res, rerr := s.callPlugin(r.Context(), str(0), str(1), str(2), str(3), args)
		if rerr != nil {
			resp["error"] = *rerr
		} else {
			resp["result"] = res
		}
	default:
		res, rerr, ok := s.xenAPIRecords(req.Method, req.Params)
		switch {
		case !ok:
			resp["error"] = rpcError{Message: "MESSAGE_METHOD_UNKNOWN", Data: []string{req.Method}}
		case rerr != nil:
			resp["error"] = *rerr
		default:
			resp["result"] = res
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

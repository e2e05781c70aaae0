package host

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// XapiSocket is xapi's local socket: root on the host may log in over it
// without a password, which is how SMAPIv1 reads CHAP secrets too.
const XapiSocket = "/var/lib/xcp/xapi"

// XenAPI is a minimal JSON-RPC client for the local xapi.
type XenAPI struct {
	client *http.Client
	// slow has no timeout of its own: host plugin calls (CallPlugin).
	slow *http.Client
	root Root
}

// NewXenAPI returns a client that talks to xapi over its local socket
// under root.
func NewXenAPI(root Root) *XenAPI {
	sock := root.Path(XapiSocket)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return &XenAPI{client: c, slow: slowClient(c), root: root}
}

// XenAPIError is an error answered by xapi.
type XenAPIError struct {
	Method string
	Code   string
	Params []string
}

func (e *XenAPIError) Error() string {
	return fmt.Sprintf("XenAPI %s: %s %v", e.Method, e.Code, e.Params)
}

// Call invokes one XenAPI method.
func (x *XenAPI) Call(ctx context.Context, method string, params ...any) (json.RawMessage, error) {
	return x.callWith(ctx, x.client, method, params...)
}

func (x *XenAPI) callWith(ctx context.Context, client *http.Client, method string, params ...any) (json.RawMessage, error) {
	if params == nil {
		params = []any{}
	}
	body, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost/jsonrpc", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, NewError(KindUnreachable, "XenAPI "+method, "cannot reach xapi on "+XapiSocket,
			"check that xapi is running on this host (systemctl status xapi)", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Message string          `json:"message"`
			Data    json.RawMessage `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("XenAPI %s: HTTP %d, undecodable answer: %w", method, resp.StatusCode, err)
	}
	if r.Error != nil {
		e := &XenAPIError{Method: method, Code: r.Error.Message}
		_ = json.Unmarshal(r.Error.Data, &e.Params)
		return nil, e
	}
	return r.Result, nil
}

// Session is a logged-in XenAPI session.
type Session struct {
	x   *XenAPI
	ref string
}

// Login opens a session as root over the local socket.
func (x *XenAPI) Login(ctx context.Context) (*Session, error) {
	res, err := x.Call(ctx, "session.login_with_password", "root", "", "1.0", "sanvol")
	if err != nil {
		return nil, err
	}
	var ref string
	if err := json.Unmarshal(res, &ref); err != nil {
		return nil, fmt.Errorf("XenAPI login: %w", err)
	}
	return &Session{x: x, ref: ref}, nil
}

// Call invokes a method with the session reference as first parameter.
func (s *Session) Call(ctx context.Context, method string, params ...any) (json.RawMessage, error) {
	return s.x.Call(ctx, method, append([]any{s.ref}, params...)...)
}

// Logout ends the session; xapi limits sessions, so never leak one.
func (s *Session) Logout(ctx context.Context) {
	_, _ = s.x.Call(ctx, "session.logout", s.ref)
}

// Secret resolves a XenAPI secret's value by its uuid.
func (x *XenAPI) Secret(ctx context.Context, uuid string) (string, error) {
	op := "resolve secret " + uuid
	s, err := x.Login(ctx)
	if err != nil {
		return "", NewError(KindUnreachable, op, "cannot log in to xapi", "check that xapi is running on this host", err)
	}
	defer s.Logout(ctx)
	res, err := s.Call(ctx, "secret.get_by_uuid", uuid)
	if err != nil {
		return "", NewError(KindNotFound, op, "no such secret",
			"the PBD's device-config names a secret that does not exist; re-create the PBD with the password (xe pbd-create … device-config:…password=…)", err)
	}
	var ref string
	if err := json.Unmarshal(res, &ref); err != nil {
		return "", err
	}
	res, err = s.Call(ctx, "secret.get_value", ref)
	if err != nil {
		return "", NewError(KindInternal, op, "cannot read the secret's value", "", err)
	}
	var v string
	if err := json.Unmarshal(res, &v); err != nil {
		return "", err
	}
	return v, nil
}

package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sanvol/sanvol/host"
)

// MaxRequest bounds what we read from stdin. xapi's largest request is a
// device-config map of a few KiB; anything near this size is not xapi.
const MaxRequest = 1 << 20

// argType is the wire type of one named argument.
type argType int

const (
	tString argType = iota
	tInt64
	tBool
	tDict // {string: string}
)

func (t argType) String() string {
	return [...]string{"string", "int64", "bool", "{string: string}"}[t]
}

type argSpec struct {
	Name string
	Type argType
}

// Args are decoded, type-checked request arguments.
type Args struct {
	strs  map[string]string
	ints  map[string]int64
	bools map[string]bool
	dicts map[string]map[string]string
}

// Str returns a string argument that the method's spec declared.
func (a Args) Str(name string) string { return a.strs[name] }

// Int returns an int64 argument that the method's spec declared.
func (a Args) Int(name string) int64 { return a.ints[name] }

// Bool returns a bool argument that the method's spec declared.
func (a Args) Bool(name string) bool { return a.bools[name] }

// Dict returns a dict argument that the method's spec declared (never nil).
func (a Args) Dict(name string) map[string]string {
	if d := a.dicts[name]; d != nil {
		return d
	}
	return map[string]string{}
}

func badRequest(method, msg string) error {
	return host.NewError(host.KindInvalid, method, msg,
		"this call did not come from xapi-storage-script as expected; check the arguments (see `sanvol call --help`)", nil)
}

// ReadRequest reads stdin to EOF, refusing more than MaxRequest bytes.
func ReadRequest(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxRequest+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRequest {
		return nil, fmt.Errorf("request larger than %d bytes", MaxRequest)
	}
	return b, nil
}

// DecodeArgs checks a request document against the method's argument
// specs: a JSON object, valid UTF-8, every declared argument present with
// the declared type. Unknown arguments are ignored, as the Python bindings
// do. Integers must be integer literals (or decimal strings, which rpclib
// accepts on input), never 1.0 or 1e9.
func DecodeArgs(method string, raw []byte, specs []argSpec) (Args, error) {
	args := Args{strs: map[string]string{}, ints: map[string]int64{}, bools: map[string]bool{}, dicts: map[string]map[string]string{}}
	if len(bytes.TrimSpace(raw)) == 0 {
		return args, badRequest(method, "empty request on stdin; expected a JSON object of named arguments")
	}
	if !utf8.Valid(raw) {
		return args, badRequest(method, "request on stdin is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		return args, badRequest(method, "request on stdin is not a JSON object: "+err.Error())
	}
	if obj == nil {
		return args, badRequest(method, "request on stdin is null; expected a JSON object of named arguments")
	}
	if _, err := dec.Token(); err != io.EOF {
		return args, badRequest(method, "trailing data after the JSON object on stdin")
	}
	for _, s := range specs {
		v, ok := lookup(obj, s.Name)
		if !ok {
			return args, badRequest(method, fmt.Sprintf("missing required argument %q (%s)", s.Name, s.Type))
		}
		if err := decodeArg(&args, s, v); err != nil {
			return args, badRequest(method, fmt.Sprintf("argument %q: %v", s.Name, err))
		}
	}
	return args, nil
}

// lookup matches the exact key first and then case-insensitively, as
// rpclib matches record keys.
func lookup(obj map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	if v, ok := obj[name]; ok {
		return v, true
	}
	for k, v := range obj {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

func decodeArg(a *Args, s argSpec, v json.RawMessage) error {
	v = bytes.TrimSpace(v)
	switch s.Type {
	case tString:
		var str string
		if len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &str) != nil {
			return fmt.Errorf("expected a string, got %s", abbrev(v))
		}
		a.strs[s.Name] = str
	case tBool:
		switch string(v) {
		case "true":
			a.bools[s.Name] = true
		case "false":
			a.bools[s.Name] = false
		default:
			return fmt.Errorf("expected true or false, got %s", abbrev(v))
		}
	case tInt64:
		lit := string(v)
		if len(v) > 0 && v[0] == '"' {
			if json.Unmarshal(v, &lit) != nil {
				return fmt.Errorf("expected an integer, got %s", abbrev(v))
			}
		}
		n, err := parseInt64(lit)
		if err != nil {
			return fmt.Errorf("expected an integer, got %s", abbrev(v))
		}
		a.ints[s.Name] = n
	case tDict:
		if len(v) == 0 || v[0] != '{' {
			return fmt.Errorf("expected an object of strings, got %s", abbrev(v))
		}
		var d map[string]json.RawMessage
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("expected an object of strings: %v", err)
		}
		out := make(map[string]string, len(d))
		for k, raw := range d {
			var str string
			raw = bytes.TrimSpace(raw)
			if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &str) != nil {
				return fmt.Errorf("value of key %q must be a string, got %s", k, abbrev(raw))
			}
			out[k] = str
		}
		a.dicts[s.Name] = out
	}
	return nil
}

// parseInt64 accepts only an optional minus sign and digits.
func parseInt64(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty")
	}
	for i, c := range s {
		if !(c >= '0' && c <= '9') && !(i == 0 && c == '-' && len(s) > 1) {
			return 0, fmt.Errorf("not an integer literal")
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if n == math.MinInt64 {
		return n, nil
	}
	return n, nil
}

func abbrev(v []byte) string {
	const max = 40
	if len(v) == 0 {
		return "nothing"
	}
	if len(v) > max {
		return string(v[:max]) + "…"
	}
	return string(v)
}

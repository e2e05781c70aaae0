package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

var createSpec = []argSpec{aDbg, aSR, aName, aDescription, {"size", tInt64}, {"sharable", tBool}}

func TestDecodeArgsAcceptsXapiRequest(t *testing.T) {
	// Key order as the codec emits it (reverse of declaration), plus an
	// argument we do not know, which must be ignored.
	raw := `{"sharable":false,"size":10737418240,"description":"","name":"disk 0 🦀","sr":"nvmetcp://u","dbg":"OpaqueRef:1","extra":[1]}`
	a, err := DecodeArgs("Volume.create", []byte(raw), createSpec)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{a.Str("dbg"), a.Str("sr"), a.Str("name"), a.Str("description"), a.Int("size"), a.Bool("sharable")}
	want := []any{"OpaqueRef:1", "nvmetcp://u", "disk 0 🦀", "", int64(10737418240), false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
}

func TestDecodeArgsInt64BeyondFloatPrecision(t *testing.T) {
	raw := `{"dbg":"d","sr":"s","name":"n","description":"","size":9007199254740993,"sharable":true}`
	a, err := DecodeArgs("Volume.create", []byte(raw), createSpec)
	if err != nil {
		t.Fatal(err)
	}
	if a.Int("size") != 9007199254740993 {
		t.Fatalf("size = %d, lost precision", a.Int("size"))
	}
}

func TestDecodeArgsDecimalStringInt(t *testing.T) {
	// rpclib accepts a decimal string for an integer on input.
	raw := `{"dbg":"d","sr":"s","name":"n","description":"","size":"42","sharable":true}`
	a, err := DecodeArgs("Volume.create", []byte(raw), createSpec)
	if err != nil || a.Int("size") != 42 {
		t.Fatalf("got %d, %v", a.Int("size"), err)
	}
}

func TestDecodeArgsCaseInsensitiveKeys(t *testing.T) {
	a, err := DecodeArgs("SR.stat", []byte(`{"DBG":"d","Sr":"x"}`), []argSpec{aDbg, aSR})
	if err != nil || a.Str("sr") != "x" {
		t.Fatalf("got %q, %v", a.Str("sr"), err)
	}
}

func TestDecodeArgsRejects(t *testing.T) {
	big := `{"dbg":"` + strings.Repeat("x", 100) + `"}`
	cases := map[string]struct {
		raw  string
		want string
	}{
		"empty":          {"", "empty request"},
		"blank":          {"  \n", "empty request"},
		"not json":       {"hello", "not a JSON object"},
		"array":          {"[1,2]", "not a JSON object"},
		"null":           {"null", "is null"},
		"trailing":       {`{"dbg":"d"} {}`, "trailing data"},
		"bad utf8":       {"{\"dbg\":\"\xff\"}", "not valid UTF-8"},
		"missing":        {`{"dbg":"d","sr":"s","name":"n","description":"","sharable":true}`, `missing required argument "size"`},
		"float size":     {`{"dbg":"d","sr":"s","name":"n","description":"","size":1.0,"sharable":true}`, `argument "size": expected an integer`},
		"exp size":       {`{"dbg":"d","sr":"s","name":"n","description":"","size":1e9,"sharable":true}`, `argument "size": expected an integer`},
		"overflow":       {`{"dbg":"d","sr":"s","name":"n","description":"","size":99999999999999999999,"sharable":true}`, `argument "size": expected an integer`},
		"string bool":    {`{"dbg":"d","sr":"s","name":"n","description":"","size":1,"sharable":"true"}`, `argument "sharable": expected true or false`},
		"number as name": {`{"dbg":"d","sr":"s","name":7,"description":"","size":1,"sharable":true}`, `argument "name": expected a string`},
		"null string":    {`{"dbg":"d","sr":null,"name":"n","description":"","size":1,"sharable":true}`, `argument "sr": expected a string`},
		"long":           {big[:50], "not a JSON object"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeArgs("Volume.create", []byte(c.raw), createSpec)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, host.ErrInvalid) {
				t.Fatalf("kind = %s", host.KindOf(err))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestDecodeArgsDict(t *testing.T) {
	spec := []argSpec{aDbg, aConfig}
	a, err := DecodeArgs("SR.attach", []byte(`{"dbg":"d","configuration":{"target":"10.0.0.1","chappassword_secret":"u"}}`), spec)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"target": "10.0.0.1", "chappassword_secret": "u"}, a.Dict("configuration")); diff != "" {
		t.Fatal(diff)
	}
	for _, bad := range []string{`{"dbg":"d","configuration":{"port":3260}}`, `{"dbg":"d","configuration":[]}`, `{"dbg":"d","configuration":null}`} {
		t.Run(bad, func(t *testing.T) {
			if _, err := DecodeArgs("SR.attach", []byte(bad), spec); err == nil {
				t.Errorf("accepted %s", bad)
			}
		})
	}
}

func TestReadRequestLimit(t *testing.T) {
	if _, err := ReadRequest(strings.NewReader(strings.Repeat(" ", MaxRequest+1))); err == nil {
		t.Fatal("accepted an oversized request")
	}
	b, err := ReadRequest(strings.NewReader(`{"dbg":"d"}`))
	if err != nil || string(b) != `{"dbg":"d"}` {
		t.Fatalf("got %q, %v", b, err)
	}
}

func FuzzDecodeArgs(f *testing.F) {
	for _, s := range []string{
		`{"sharable":false,"size":10737418240,"description":"","name":"disk0","sr":"nvmetcp://u","dbg":"OpaqueRef:1"}`,
		`{"dbg":"d","sr":"s","name":"n","description":"","size":"42","sharable":true}`,
		`{"dbg":"d","configuration":{"a":"b"}}`,
		``, `null`, `[]`, `{"size":1e9}`,
	} {
		f.Add([]byte(s))
	}
	specs := [][]argSpec{createSpec, {aDbg, aConfig}, {aDbg, aSR, aKey, {"new_size", tInt64}}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, spec := range specs {
			a, err := DecodeArgs("Fuzz", raw, spec)
			if err != nil {
				if !errors.Is(err, host.ErrInvalid) {
					t.Fatalf("error of kind %s: %v", host.KindOf(err), err)
				}
				continue
			}
			for _, s := range spec {
				if s.Type == tDict && a.Dict(s.Name) == nil {
					t.Fatal("nil dict")
				}
			}
		}
	})
}

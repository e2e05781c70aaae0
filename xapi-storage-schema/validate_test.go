package schema

import (
	"errors"
	"strings"
	"testing"
)

func mustLoad(t *testing.T, doc string) *Schema {
	t.Helper()
	s, err := Load([]byte(doc))
	if err != nil {
		t.Fatalf("Load(%s): %v", doc, err)
	}
	return s
}

// keywordCase validates doc against a one-definition schema {"$defs":{"t": schema}}.
type keywordCase struct {
	name   string
	schema string
	doc    string
	path   string // "" means the document must be accepted
	msg    string // substring of the error message
}

func runKeywordCases(t *testing.T, cases []keywordCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustLoad(t, `{"$defs":{"t":`+c.schema+`}}`)
			err := s.Validate("t", []byte(c.doc))
			if c.path == "" {
				if err != nil {
					t.Fatalf("want %s accepted, got %v", c.doc, err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a *ValidationError at %s, got %v", c.path, err)
			}
			if ve.Def != "t" || ve.Path != c.path || !strings.Contains(ve.Msg, c.msg) {
				t.Fatalf("got def %q path %q msg %q; want def t path %q msg containing %q", ve.Def, ve.Path, ve.Msg, c.path, c.msg)
			}
		})
	}
}

func TestType(t *testing.T) {
	runKeywordCases(t, []keywordCase{
		{"string ok", `{"type":"string"}`, `"x"`, "", ""},
		{"string rejects number", `{"type":"string"}`, `1`, "$", "expected string, got number 1"},
		{"null ok", `{"type":"null"}`, `null`, "", ""},
		{"null rejects empty object", `{"type":"null"}`, `{}`, "$", "expected null, got object"},
		{"null rejects string null", `{"type":"null"}`, `"null"`, "$", "expected null"},
		{"boolean ok", `{"type":"boolean"}`, `false`, "", ""},
		{"boolean rejects 0", `{"type":"boolean"}`, `0`, "$", "expected boolean"},
		{"object ok", `{"type":"object"}`, `{"a":1}`, "", ""},
		{"object rejects array", `{"type":"object"}`, `[]`, "$", "expected object, got array of 0"},
		{"array ok", `{"type":"array"}`, `[1,"a"]`, "", ""},
		{"array rejects null", `{"type":"array"}`, `null`, "$", "expected array, got null"},
		{"number accepts fraction", `{"type":"number"}`, `1.5`, "", ""},
		{"number accepts exponent", `{"type":"number"}`, `1e9`, "", ""},
		{"number accepts integer", `{"type":"number"}`, `7`, "", ""},
		{"integer ok", `{"type":"integer"}`, `-42`, "", ""},
		{"integer zero", `{"type":"integer"}`, `0`, "", ""},
		{"integer huge literal", `{"type":"integer"}`, `123456789012345678901234567890`, "", ""},
		{"integer rejects 1.0", `{"type":"integer"}`, `1.0`, "$", "expected integer, got number 1.0"},
		{"integer rejects 1e9", `{"type":"integer"}`, `1e9`, "$", "expected integer, got number 1e9"},
		{"integer rejects 1E9", `{"type":"integer"}`, `1E9`, "$", "expected integer"},
		{"integer rejects 10e-1", `{"type":"integer"}`, `10e-1`, "$", "expected integer"},
		{"integer rejects -0.0", `{"type":"integer"}`, `-0.0`, "$", "expected integer"},
		{"integer rejects decimal string", `{"type":"integer"}`, `"10"`, "$", "expected integer, got string"},
		{"type list", `{"type":["string","null"]}`, `null`, "", ""},
		{"type list rejects", `{"type":["string","null"]}`, `true`, "$", "expected string or null, got boolean true"},
		{"no type accepts anything", `{}`, `[{"a":null}]`, "", ""},
		{"true schema", `true`, `{"x":[1,2]}`, "", ""},
		{"false schema", `false`, `1`, "$", "no value is allowed here"},
	})
}

func TestRequiredPropertiesAdditional(t *testing.T) {
	obj := `{"type":"object","required":["a","b"],"properties":{"a":{"type":"string"},"b":{"type":"integer"},"gone":false},"additionalProperties":false}`
	open := `{"type":"object","properties":{"a":{"type":"string"}}}`
	typed := `{"type":"object","additionalProperties":{"type":"string"}}`
	runKeywordCases(t, []keywordCase{
		{"all present", obj, `{"b":1,"a":"x"}`, "", ""},
		{"missing required", obj, `{"a":"x"}`, "$", `missing required property "b"`},
		{"required reported in schema order", obj, `{}`, "$", `missing required property "a"`},
		{"property type", obj, `{"a":"x","b":"1"}`, "$.b", "expected integer, got string"},
		{"additional false", obj, `{"a":"x","b":1,"c":2}`, "$.c", `unknown property "c"`},
		{"property schema false", obj, `{"a":"x","b":1,"gone":2}`, "$.gone", `property "gone" is not allowed`},
		{"additional absent allows", open, `{"a":"x","z":[1]}`, "", ""},
		{"required absent allows empty", open, `{}`, "", ""},
		{"properties checked when present", open, `{"a":null}`, "$.a", "expected string, got null"},
		{"additional schema ok", typed, `{"k":"v","vdi-type":"user"}`, "", ""},
		{"additional schema rejects", typed, `{"k":"v","vdi-type":1}`, `$["vdi-type"]`, "expected string, got number 1"},
		{"object keywords ignore non-objects", `{"required":["a"]}`, `"s"`, "", ""},
	})
}

func TestItemsPrefixItemsMinItems(t *testing.T) {
	pair := `{"type":"array","prefixItems":[{"const":"Healthy"},{"type":"string"}],"items":false,"minItems":2}`
	runKeywordCases(t, []keywordCase{
		{"items schema ok", `{"type":"array","items":{"type":"string"}}`, `["a","b"]`, "", ""},
		{"items schema empty", `{"type":"array","items":{"type":"string"}}`, `[]`, "", ""},
		{"items schema rejects", `{"type":"array","items":{"type":"string"}}`, `["a",2]`, "$[1]", "expected string, got number 2"},
		{"pair ok", pair, `["Healthy",""]`, "", ""},
		{"pair too short", pair, `["Healthy"]`, "$", "array has 1 items, at least 2 required"},
		{"pair too long", pair, `["Healthy","",""]`, "$", "array has 3 items, at most 2 allowed"},
		{"pair first wrong", pair, `["Sick",""]`, "$[0]", `expected "Healthy", got string "Sick"`},
		{"pair second wrong", pair, `["Healthy",1]`, "$[1]", "expected string"},
		{"prefix without items allows more", `{"prefixItems":[{"type":"integer"}]}`, `[1,"x",null]`, "", ""},
		{"prefix shorter array allowed without minItems", `{"prefixItems":[{"type":"integer"},{"type":"integer"}]}`, `[1]`, "", ""},
		{"items after prefix", `{"prefixItems":[{"type":"integer"}],"items":{"type":"string"}}`, `[1,"a",2]`, "$[2]", "expected string"},
		{"minItems zero", `{"minItems":0}`, `[]`, "", ""},
	})
}

func TestConstEnum(t *testing.T) {
	runKeywordCases(t, []keywordCase{
		{"const string", `{"const":"5.0"}`, `"5.0"`, "", ""},
		{"const string rejects", `{"const":"5.0"}`, `"3.0"`, "$", `expected "5.0", got string "3.0"`},
		{"const string vs number", `{"const":"5"}`, `5`, "$", `expected "5"`},
		{"const true", `{"const":true}`, `true`, "", ""},
		{"const true rejects false", `{"const":true}`, `false`, "$", "expected true, got boolean false"},
		{"const null", `{"const":null}`, `null`, "", ""},
		{"const number equal by value", `{"const":1}`, `1.0`, "", ""},
		{"const number exponent", `{"const":100}`, `1e2`, "", ""},
		{"const number differs", `{"const":100}`, `101`, "$", "expected 100"},
		{"const object", `{"const":{"a":[1,"x"]}}`, `{"a":[1,"x"]}`, "", ""},
		{"const object differs", `{"const":{"a":[1,"x"]}}`, `{"a":[1,"y"]}`, "$", "expected object"},
		{"const object extra member", `{"const":{"a":1}}`, `{"a":1,"b":2}`, "$", "expected object"},
		{"enum ok", `{"enum":["VDI_CREATE","SR_PROBE"]}`, `"SR_PROBE"`, "", ""},
		{"enum rejects", `{"enum":["VDI_CREATE","SR_PROBE"]}`, `"SR_STATS"`, "$", `string "SR_STATS" is not one of ["VDI_CREATE", "SR_PROBE"]`},
		{"enum mixed", `{"enum":[null,2]}`, `2.00`, "", ""},
		{"enum is case-sensitive", `{"enum":["VDI_CREATE"]}`, `"vdi_create"`, "$", "is not one of"},
	})
}

func TestMinimumMaximum(t *testing.T) {
	i64 := `{"type":"integer","minimum":-9223372036854775808,"maximum":9223372036854775807}`
	runKeywordCases(t, []keywordCase{
		{"int64 max", i64, `9223372036854775807`, "", ""},
		{"int64 min", i64, `-9223372036854775808`, "", ""},
		{"above 2^53 exact", i64, `9007199254740993`, "", ""},
		{"int64 max+1", i64, `9223372036854775808`, "$", "9223372036854775808 is above the maximum 9223372036854775807"},
		{"int64 min-1", i64, `-9223372036854775809`, "$", "-9223372036854775809 is below the minimum -9223372036854775808"},
		{"far beyond", i64, `100000000000000000000000000000000000000000000`, "$", "above the maximum"},
		{"far below", i64, `-100000000000000000000000000000000000000000000`, "$", "below the minimum"},
		{"number bounds fraction in", `{"minimum":0.5,"maximum":1.5}`, `1.25`, "", ""},
		{"number bounds inclusive", `{"minimum":0.5,"maximum":1.5}`, `0.50`, "", ""},
		{"number bounds fraction out", `{"minimum":0.5,"maximum":1.5}`, `0.4999999999999999999999`, "$", "below the minimum 0.5"},
		{"number exponent out", `{"maximum":1000}`, `1.0001e3`, "$", "above the maximum 1000"},
		{"huge exponent", `{"maximum":1000}`, `1e999999999999999999999`, "$", "above the maximum"},
		{"tiny exponent", `{"minimum":0}`, `1e-999999999999999999999`, "", ""},
		{"negative zero", `{"minimum":0,"maximum":0}`, `-0`, "", ""},
		{"bounds ignore strings", `{"maximum":1}`, `"5"`, "", ""},
	})
}

func TestOneOf(t *testing.T) {
	variant := `{"oneOf":[
		{"type":"array","prefixItems":[{"const":"BlockDevice"},{"type":"object","required":["path"],"properties":{"path":{"type":"string"}}}],"items":false,"minItems":2},
		{"type":"array","prefixItems":[{"const":"Nbd"},{"type":"object","required":["uri"],"properties":{"uri":{"type":"string"}}}],"items":false,"minItems":2}]}`
	overlap := `{"oneOf":[{"type":"string"},{"const":"x"},{"type":"integer"}]}`
	runKeywordCases(t, []keywordCase{
		{"first alternative", variant, `["BlockDevice",{"path":"/dev/sda"}]`, "", ""},
		{"second alternative", variant, `["Nbd",{"uri":"nbd:unix:/s"}]`, "", ""},
		{"none: closest alternative's nested path", variant, `["Nbd",{"uri":5}]`, "$[1].uri", "expected string, got number 5 (no alternative of the oneOf at $ matches; closest is [1]; others: [0] $[0]: expected \"BlockDevice\""},
		{"none: unknown constructor", variant, `["File",{"path":"/x"}]`, "$[0]", `expected "BlockDevice", got string "File"`},
		{"exactly one of overlapping", overlap, `"y"`, "", ""},
		{"two match", overlap, `"x"`, "$", "matches oneOf alternatives [0 1]; exactly one must match"},
		{"third only", overlap, `3`, "", ""},
		{"none of overlapping", overlap, `null`, "$", "no alternative of the oneOf at $ matches"},
		{"description quoted", `{"description":"the rule","oneOf":[{"type":"string"}]}`, `1`, "$", "[rule: the rule]"},
	})
}

func TestRefAndNestedPaths(t *testing.T) {
	s := mustLoad(t, `{"$defs":{
		"name": {"type":"string"},
		"a~b/c": {"type":"integer"},
		"item": {"type":"object","properties":{"n":{"$ref":"#/$defs/name"},"v":{"$ref":"#/$defs/a~0b~1c"}}},
		"doc": {"type":"object","properties":{"list":{"type":"array","items":{"$ref":"#/$defs/item"}},"weird key":{"$ref":"#/$defs/name"}}},
		"alias": {"$ref":"#/$defs/doc","description":"refs keep their siblings' annotations"},
		"tight": {"$ref":"#/$defs/name","const":"x"}
	}}`)
	cases := []struct {
		def, doc, path, msg string
	}{
		{"doc", `{"list":[{"n":"a"},{"n":"b","v":1}]}`, "", ""},
		{"doc", `{"list":[{"n":"a"},{"n":2}]}`, "$.list[1].n", "expected string, got number 2"},
		{"doc", `{"list":[{"v":1.5}]}`, "$.list[0].v", "expected integer"},
		{"doc", `{"weird key":false}`, `$["weird key"]`, "expected string"},
		{"alias", `{"list":[{"n":null}]}`, "$.list[0].n", "expected string, got null"},
		{"tight", `"x"`, "", ""},
		{"tight", `"y"`, "$", `expected "x"`},
		{"tight", `1`, "$", "expected string"},
	}
	for _, c := range cases {
		t.Run(c.def+" "+c.doc, func(t *testing.T) {
			err := s.Validate(c.def, []byte(c.doc))
			if c.path == "" {
				if err != nil {
					t.Errorf("%s %s: %v", c.def, c.doc, err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Path != c.path || !strings.Contains(ve.Msg, c.msg) {
				t.Errorf("%s %s: got %v, want path %s msg %q", c.def, c.doc, err, c.path, c.msg)
			}
		})
	}
}

func TestBadDocuments(t *testing.T) {
	s := mustLoad(t, `{"$defs":{"t":{}}}`)
	for _, c := range []struct{ doc, msg string }{
		{``, "invalid JSON"},
		{`   `, "invalid JSON"},
		{`{"a":`, "invalid JSON"},
		{`[1 2]`, "invalid JSON"},
		{`{"a":1}{"b":2}`, "after top-level value"},
		{`{"a":1} x`, "invalid JSON at byte 9"},
		{`nul`, "invalid JSON"},
		{"\"\xff\"", "not valid UTF-8"},
		{`{"a":1,"a":2}`, `duplicate member "a"`},
		{strings.Repeat("[", maxDepth+2) + strings.Repeat("]", maxDepth+2), "nested deeper than"},
		{`01`, "invalid JSON"},
		{`NaN`, "invalid JSON"},
	} {
		t.Run(c.doc, func(t *testing.T) {
			err := s.Validate("t", []byte(c.doc))
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Path != "$" || !strings.Contains(ve.Msg, c.msg) {
				t.Errorf("%q: got %v, want a ValidationError at $ containing %q", c.doc, err, c.msg)
			}
		})
	}
	// Whitespace around the value is legal JSON (the daemon adds none, but
	// a trailing newline from a plugin is fine, spec §3.2).
	if err := s.Validate("t", []byte(" null\n")); err != nil {
		t.Errorf("trailing newline: %v", err)
	}
	if err := s.Validate("t", []byte(strings.Repeat("[", maxDepth)+strings.Repeat("]", maxDepth))); err != nil {
		t.Errorf("nesting at the limit: %v", err)
	}
}

func TestUnknownDef(t *testing.T) {
	err := Ours().Validate("req:Volume.frobnicate", []byte(`{}`))
	if !errors.Is(err, ErrUnknownDef) || !strings.Contains(err.Error(), "req:Volume.frobnicate") {
		t.Fatalf("got %v, want ErrUnknownDef naming the definition", err)
	}
	if Ours().Has("req:Volume.frobnicate") || !Ours().Has("res:Volume.stat") {
		t.Fatal("Has disagrees with the definitions")
	}
}

func TestLoadRejects(t *testing.T) {
	for _, c := range []struct{ doc, msg string }{
		{`[]`, "top level is not an object"},
		{`{"definitions":{}}`, `no "$defs" object`},
		{`{"$defs":{"t":{"pattern":"^a"}}}`, `unsupported keyword "pattern"`},
		{`{"$defs":{"t":{"properties":{"a":{"not":{}}}}}}`, `$defs/t/properties/a: unsupported keyword "not"`},
		{`{"$defs":{"t":{"$ref":"#/$defs/missing"}}}`, `$ref to undefined "missing"`},
		{`{"$defs":{"t":{"$ref":"other.json#/x"}}}`, `$ref must be a string`},
		{`{"$defs":{"t":{"type":"float"}}}`, `unknown type "float"`},
		{`{"$defs":{"t":{"type":["string",1]}}}`, `must be an array of strings`},
		{`{"$defs":{"t":{"required":"a"}}}`, `must be an array of strings`},
		{`{"$defs":{"t":{"minItems":1.5}}}`, `minItems must be a non-negative integer`},
		{`{"$defs":{"t":{"minItems":-1}}}`, `minItems must be a non-negative integer`},
		{`{"$defs":{"t":{"maximum":"9"}}}`, `maximum must be a number`},
		{`{"$defs":{"t":{"oneOf":[]}}}`, `oneOf must be a non-empty array`},
		{`{"$defs":{"t":{"enum":[]}}}`, `enum must be a non-empty array`},
		{`{"$defs":{"t":{"properties":[]}}}`, `properties must be an object`},
		{`{"$defs":{"t":3}}`, `a schema must be an object or a boolean`},
		{`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}}}`, `cycle`},
		{`{"$defs":{"a":{"oneOf":[{"type":"string"},{"$ref":"#/$defs/a"}]}}}`, `cycle`},
		{`{"$defs":{},"$defs":{}}`, `duplicate member`},
	} {
		t.Run(c.doc, func(t *testing.T) {
			_, err := Load([]byte(c.doc))
			var se *SchemaError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("Load(%s): got %v, want a SchemaError containing %q", c.doc, err, c.msg)
			}
		})
	}
	// Recursion through the document is fine: it ends with the document.
	s := mustLoad(t, `{"$defs":{"tree":{"type":"array","items":{"$ref":"#/$defs/tree"}}}}`)
	if err := s.Validate("tree", []byte(`[[],[[[]]]]`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate("tree", []byte(`[[],[[1]]]`)); err == nil || !strings.Contains(err.Error(), "$[1][0][0]") {
		t.Fatalf("got %v, want an error at $[1][0][0]", err)
	}
}

// A oneOf whose alternatives each recurse through the same child doubles
// the work per level; the step budget turns that into an error, not a hang.
func TestBudget(t *testing.T) {
	s := mustLoad(t, `{"$defs":{"t":{"oneOf":[
		{"type":"array","items":{"$ref":"#/$defs/t"}},
		{"type":"array","items":{"$ref":"#/$defs/t"}},
		{"type":"array","items":{"$ref":"#/$defs/t"}}]}}}`)
	doc := strings.Repeat("[", 40) + strings.Repeat("]", 40)
	err := s.Validate("t", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "too expensive") {
		t.Fatalf("got %v, want the budget error", err)
	}
}

func TestAnnotationsIgnored(t *testing.T) {
	s := mustLoad(t, `{"$schema":"x","title":"t","idl":{"anything":[1]},"$defs":{
		"t":{"description":"d","title":"t","$comment":"c","examples":[1],"default":2,"x-ocaml":"int64","x-lexical":"...","contentEncoding":"base64","type":"string"}}}`)
	if err := s.Validate("t", []byte(`"aGk="`)); err != nil {
		t.Fatal(err)
	}
	if got := s.Defs(); len(got) != 1 || got[0] != "t" {
		t.Fatalf("Defs() = %v", got)
	}
}

func TestDecimalCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"0", "-0", 0}, {"0.0", "0e5", 0}, {"1", "1.000", 0}, {"100", "1e2", 0}, {"0.001", "1e-3", 0},
		{"1", "2", -1}, {"-1", "-2", 1}, {"-1", "1", -1}, {"0", "-0.0001", 1},
		{"9223372036854775807", "9223372036854775808", -1}, {"12", "123", -1}, {"13", "123", -1},
		{"0.13", "0.123", 1}, {"1E+3", "999", 1}, {"00", "0", 0},
	} {
		t.Run(c.a+" vs "+c.b, func(t *testing.T) {
			if got := parseDecimal(c.a).cmp(parseDecimal(c.b)); got != c.want {
				t.Errorf("cmp(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
			}
		})
	}
	for in, want := range map[string]string{"-9223372036854775808": "-9223372036854775808", "1.5": "1.5", "0.05": "0.05", "-0": "0", "1e100": "0.1e101", "2.5e-50": "0.25e-49"} {
		t.Run(in, func(t *testing.T) {
			if got := parseDecimal(in).String(); got != want {
				t.Errorf("String(%s) = %s, want %s", in, got, want)
			}
		})
	}
}

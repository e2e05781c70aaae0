package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzSchema uses every keyword the validator implements, so that the
// fuzzer can mutate a schema as well as a document.
const fuzzSchema = `{"$defs":{
	"int": {"type":"integer","minimum":-9223372036854775808,"maximum":9223372036854775807},
	"v": {"oneOf":[
		{"type":"array","prefixItems":[{"const":"A"},{"$ref":"#/$defs/int"}],"items":false,"minItems":2},
		{"type":"array","prefixItems":[{"const":"B"},{"type":"object","required":["p"],"properties":{"p":{"type":"string"}},"additionalProperties":false}],"items":false,"minItems":2}]},
	"t": {"type":["object","null"],"required":["v"],"properties":{"v":{"$ref":"#/$defs/v"},"e":{"enum":["x",1,null]},"n":{"type":"number","maximum":1.5}},
		"additionalProperties":{"type":"array","items":{"$ref":"#/$defs/t"}}}
}}`

// FuzzValidate: the validator and the schema loader never panic or hang,
// whatever the document and schema, and they only ever fail with their
// own error types.
func FuzzValidate(f *testing.F) {
	for _, ex := range loadExamples(f) {
		f.Add(ex.doc, []byte(fuzzSchema))
	}
	for _, doc := range []string{`{"v":["A",1]}`, `{"v":["B",{"p":""}],"x":[null,{"v":["A",-0]}]}`, `[1e999999999]`, `{"a":{"a":{}}}`, "\"\\ud800\"", `"\u00e9"`} {
		f.Add([]byte(doc), []byte(fuzzSchema))
	}
	f.Add([]byte(`null`), []byte(`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"oneOf":[{"$ref":"#/$defs/a"}]}}}`))
	ours := Ours()
	f.Fuzz(func(t *testing.T, doc, schemaDoc []byte) {
		sameAsEncodingJSON(t, doc)
		validateAll(t, ours, doc)
		s, err := Load(schemaDoc)
		var se *SchemaError
		if err != nil && !errors.As(err, &se) {
			t.Fatalf("Load returned %T: %v", err, err)
		}
		if err == nil {
			validateAll(t, s, doc)
		}
	})
}

func validateAll(t *testing.T, s *Schema, doc []byte) {
	for _, d := range s.Defs() {
		err := s.Validate(d, doc)
		if err == nil {
			// Anything accepted must be JSON that encoding/json accepts too.
			if !json.Valid(doc) {
				t.Fatalf("%s accepted invalid JSON %q", d, doc)
			}
			continue
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Def != d || !strings.HasPrefix(ve.Path, "$") || ve.Msg == "" {
			t.Fatalf("%s: malformed error %T %v", d, err, err)
		}
	}
}

// sameAsEncodingJSON: our parser reads every document exactly as
// encoding/json does, except that it also refuses duplicate members and
// invalid UTF-8.
func sameAsEncodingJSON(t *testing.T, doc []byte) {
	ours, err := parseJSON(doc)
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var std any
	stdErr := dec.Decode(&std)
	// Decoder.More reports false before a stray ']' or '}', so `""}` would
	// pass as one value; json.Valid judges the whole document instead.
	if stdErr == nil && !json.Valid(doc) {
		stdErr = errors.New("trailing data")
	}
	if err != nil {
		if stdErr == nil && utf8.Valid(doc) && !strings.Contains(err.Error(), "duplicate member") && !strings.Contains(err.Error(), "nested deeper") {
			t.Fatalf("parseJSON refused %q that encoding/json reads: %v", doc, err)
		}
		return
	}
	if stdErr != nil {
		t.Fatalf("parseJSON accepted %q that encoding/json refuses: %v", doc, stdErr)
	}
	if !jsonEqual(ours, fromStd(std)) {
		t.Fatalf("parseJSON and encoding/json read %q differently", doc)
	}
}

func fromStd(v any) any {
	switch x := v.(type) {
	case map[string]any:
		o := &object{vals: map[string]any{}}
		for k, e := range x {
			o.keys = append(o.keys, k)
			o.vals[k] = fromStd(e)
		}
		return o
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = fromStd(e)
		}
		return out
	}
	return v
}

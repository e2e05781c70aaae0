package schema

// A validator for the small JSON-schema (draft 2020-12) subset that our
// schema.json and the contract's reference schema use. A general JSON-schema
// library is deliberately not a dependency: the subset is small, and rpclib's
// integer rule (no fraction, no exponent) differs from JSON Schema's, so a
// library would need patching anyway.

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

//go:embed schema.json
var oursJSON []byte

// ErrUnknownDef is wrapped by Validate when the schema has no definition of
// the requested name.
var ErrUnknownDef = errors.New("no such schema definition")

// maxDepth bounds the nesting of documents and schemas. Real documents nest
// at most five levels; the bound exists so that a hostile document cannot
// exhaust the stack (Go's stack overflow is fatal, not a panic).
const maxDepth = 512

// ValidationError says where and why a document does not match a definition.
type ValidationError struct {
	Def  string // definition validated against, e.g. "res:Volume.stat"
	Path string // JSONPath-like location in the document, e.g. `$.keys["vdi-type"]`
	Msg  string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("schema %s: %s: %s", e.Def, e.Path, e.Msg)
}

// SchemaError reports a schema document this validator cannot use: bad
// JSON, an unsupported keyword (refused rather than ignored, so a
// constraint is never silently dropped), or an unresolvable $ref.
type SchemaError struct {
	Where string // location in the schema, e.g. "$defs/volume/properties/uri"
	Msg   string
}

func (e *SchemaError) Error() string {
	if e.Where == "" {
		return "json schema: " + e.Msg
	}
	return fmt.Sprintf("json schema at %s: %s", e.Where, e.Msg)
}

// Schema is a loaded set of $defs. It is immutable and safe for concurrent use.
type Schema struct {
	defs  map[string]*node
	names []string
}

// Ours returns sanvol's embedded schema, parsed anew on each call (keep the
// result). The tests guarantee the embedded file loads.
func Ours() *Schema {
	s, err := Load(oursJSON)
	if err != nil {
		panic("embedded schema.json: " + err.Error())
	}
	return s
}

// Defs lists the definition names, sorted.
func (s *Schema) Defs() []string { return append([]string(nil), s.names...) }

// Has reports whether def is defined.
func (s *Schema) Has(def string) bool { _, ok := s.defs[def]; return ok }

// Validate checks one JSON document (e.g. a method's stdin or stdout)
// against the definition def ("req:Volume.create", "res:SR.stat",
// "plugin_error", "volume", ...). It returns nil, a *ValidationError (also
// for documents that are not valid JSON), or an error wrapping ErrUnknownDef.
func (s *Schema) Validate(def string, doc []byte) error {
	n, ok := s.defs[def]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownDef, def)
	}
	v, err := parseJSON(doc)
	if err != nil {
		return &ValidationError{Def: def, Path: "$", Msg: err.Error()}
	}
	// The budget stops a crafted schema/document pair from taking
	// exponential time through nested oneOf; real documents use a few
	// hundred steps.
	c := &checker{budget: 100_000 + 64*len(doc)}
	if e := c.check(n, v, nil); e != nil {
		return &ValidationError{Def: def, Path: e.closest().path.String(), Msg: e.String()}
	}
	return nil
}

// ValidateValue marshals v with encoding/json and validates the result.
func (s *Schema) ValidateValue(def string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("schema %s: marshal %T: %w", def, v, err)
	}
	return s.Validate(def, b)
}

// Load parses a schema document. Only its "$defs" are used; other top-level
// members (the reference schema's "interfaces", "wire", ...) are ignored.
func Load(b []byte) (*Schema, error) {
	root, err := parseJSON(b)
	if err != nil {
		return nil, &SchemaError{Msg: err.Error()}
	}
	obj, ok := root.(*object)
	if !ok {
		return nil, &SchemaError{Msg: "top level is not an object"}
	}
	rawDefs, ok := obj.vals["$defs"].(*object)
	if !ok {
		return nil, &SchemaError{Msg: `no "$defs" object`}
	}
	s := &Schema{defs: map[string]*node{}}
	for _, name := range rawDefs.keys {
		n, err := compile(rawDefs.vals[name], "$defs/"+name)
		if err != nil {
			return nil, err
		}
		s.defs[name] = n
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	if err := s.link(); err != nil {
		return nil, err
	}
	return s, nil
}

// ---- compiled schema ----

type node struct {
	where string // schema location, for SchemaError

	isBool  bool // a boolean schema: true accepts anything, false nothing
	boolVal bool

	ref     string
	refNode *node

	types []string

	props      map[string]*node
	required   []string
	additional *node // nil: any additional property is allowed

	prefixItems []*node
	items       *node // nil: no constraint on items after prefixItems
	minItems    int   // -1: absent

	hasConst bool
	constVal any
	enum     []any

	oneOf []*node
	desc  string // description, quoted in oneOf failures to explain the rule

	minimum, maximum *decimal
}

func knownType(t string) bool {
	switch t {
	case "null", "boolean", "object", "array", "number", "integer", "string":
		return true
	}
	return false
}

// annotation reports keywords that carry no constraint.
func annotation(k string) bool {
	switch k {
	case "description", "title", "$comment", "examples", "default", "$schema", "$id",
		"contentEncoding", "contentMediaType", "deprecated", "readOnly", "writeOnly":
		return true
	}
	return strings.HasPrefix(k, "x-")
}

func compile(v any, where string) (*node, error) {
	n := &node{where: where, minItems: -1}
	if b, ok := v.(bool); ok {
		n.isBool, n.boolVal = true, b
		return n, nil
	}
	obj, ok := v.(*object)
	if !ok {
		return nil, &SchemaError{Where: where, Msg: "a schema must be an object or a boolean"}
	}
	sub := func(k string, v any) (*node, error) { return compile(v, where+"/"+k) }
	for _, k := range obj.keys {
		val := obj.vals[k]
		var err error
		switch {
		case k == "$ref":
			s, ok := val.(string)
			if !ok || !strings.HasPrefix(s, "#/$defs/") {
				return nil, &SchemaError{Where: where, Msg: `$ref must be a string "#/$defs/<name>"`}
			}
			n.ref = strings.NewReplacer("~1", "/", "~0", "~").Replace(strings.TrimPrefix(s, "#/$defs/"))
		case k == "type":
			n.types, err = compileTypes(val, where)
		case k == "properties":
			p, ok := val.(*object)
			if !ok {
				return nil, &SchemaError{Where: where, Msg: "properties must be an object"}
			}
			n.props = map[string]*node{}
			for _, name := range p.keys {
				if n.props[name], err = sub("properties/"+name, p.vals[name]); err != nil {
					return nil, err
				}
			}
		case k == "required":
			n.required, err = compileStrings(val, where+"/required")
		case k == "additionalProperties":
			n.additional, err = sub(k, val)
		case k == "items":
			n.items, err = sub(k, val)
		case k == "prefixItems", k == "oneOf":
			arr, ok := val.([]any)
			if !ok || len(arr) == 0 {
				return nil, &SchemaError{Where: where, Msg: k + " must be a non-empty array"}
			}
			list := make([]*node, len(arr))
			for i, e := range arr {
				if list[i], err = sub(fmt.Sprintf("%s/%d", k, i), e); err != nil {
					return nil, err
				}
			}
			if k == "oneOf" {
				n.oneOf = list
			} else {
				n.prefixItems = list
			}
		case k == "minItems":
			num, ok := val.(json.Number)
			m, perr := strconv.Atoi(string(num))
			if !ok || perr != nil || m < 0 {
				return nil, &SchemaError{Where: where, Msg: "minItems must be a non-negative integer"}
			}
			n.minItems = m
		case k == "const":
			n.hasConst, n.constVal = true, val
		case k == "enum":
			arr, ok := val.([]any)
			if !ok || len(arr) == 0 {
				return nil, &SchemaError{Where: where, Msg: "enum must be a non-empty array"}
			}
			n.enum = arr
		case k == "minimum", k == "maximum":
			num, ok := val.(json.Number)
			if !ok {
				return nil, &SchemaError{Where: where, Msg: k + " must be a number"}
			}
			d := parseDecimal(string(num))
			if k == "minimum" {
				n.minimum = &d
			} else {
				n.maximum = &d
			}
		case k == "description":
			n.desc, _ = val.(string)
		case annotation(k):
		default:
			return nil, &SchemaError{Where: where, Msg: fmt.Sprintf("unsupported keyword %q", k)}
		}
		if err != nil {
			return nil, err
		}
	}
	return n, nil
}

func compileTypes(v any, where string) ([]string, error) {
	var ts []string
	if s, ok := v.(string); ok {
		ts = []string{s}
	} else {
		var err error
		if ts, err = compileStrings(v, where+"/type"); err != nil {
			return nil, err
		}
	}
	for _, t := range ts {
		if !knownType(t) {
			return nil, &SchemaError{Where: where, Msg: fmt.Sprintf("unknown type %q", t)}
		}
	}
	return ts, nil
}

func compileStrings(v any, where string) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, &SchemaError{Where: where, Msg: "must be an array of strings"}
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		if out[i], ok = e.(string); !ok {
			return nil, &SchemaError{Where: where, Msg: "must be an array of strings"}
		}
	}
	return out, nil
}

// link resolves every $ref and refuses cycles that do not consume any of
// the document (a $ref or oneOf chain leading back to itself), which would
// otherwise recurse for ever on any input.
func (s *Schema) link() error {
	var walk func(n *node) error
	walk = func(n *node) error {
		if n.ref != "" {
			t, ok := s.defs[n.ref]
			if !ok {
				return &SchemaError{Where: n.where, Msg: fmt.Sprintf("$ref to undefined %q", n.ref)}
			}
			n.refNode = t
		}
		for _, c := range n.children() {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	for _, name := range s.names {
		if err := walk(s.defs[name]); err != nil {
			return err
		}
	}
	const (
		unseen = iota
		active
		done
	)
	state := map[*node]int{}
	var visit func(n *node) error
	visit = func(n *node) error {
		switch state[n] {
		case active:
			return &SchemaError{Where: n.where, Msg: "$ref/oneOf cycle that never descends into the document"}
		case done:
			return nil
		}
		state[n] = active
		same := n.oneOf
		if n.refNode != nil {
			same = append([]*node{n.refNode}, same...)
		}
		for _, c := range same {
			if err := visit(c); err != nil {
				return err
			}
		}
		state[n] = done
		return nil
	}
	for _, name := range s.names {
		if err := visit(s.defs[name]); err != nil {
			return err
		}
	}
	return nil
}

func (n *node) children() []*node {
	var out []*node
	for _, c := range n.props {
		out = append(out, c)
	}
	out = append(out, n.prefixItems...)
	out = append(out, n.oneOf...)
	for _, c := range []*node{n.additional, n.items} {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

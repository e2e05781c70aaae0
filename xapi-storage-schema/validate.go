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
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
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

// ---- validation ----

// path is a linked list from a location up to the root, rendered only when
// an error is reported.
type path struct {
	up    *path
	key   string
	index int
	isKey bool
}

func (p *path) field(k string) *path { return &path{up: p, key: k, isKey: true} }
func (p *path) elem(i int) *path     { return &path{up: p, index: i} }

func (p *path) String() string {
	var segs []string
	for q := p; q != nil; q = q.up {
		switch {
		case !q.isKey:
			segs = append(segs, "["+strconv.Itoa(q.index)+"]")
		case isIdent(q.key):
			segs = append(segs, "."+q.key)
		default:
			segs = append(segs, "["+strconv.Quote(q.key)+"]")
		}
	}
	var b strings.Builder
	b.WriteString("$")
	for i := len(segs) - 1; i >= 0; i-- {
		b.WriteString(segs[i])
	}
	return b.String()
}

func (p *path) depth() int {
	d := 0
	for q := p; q != nil; q = q.up {
		d++
	}
	return d
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// verr is a validation failure. Messages are formatted only when the
// error reaches the caller: inside oneOf most failures are discarded, and
// formatting them eagerly made nested variants slow.
type verr struct {
	path   *path
	format string
	args   []any

	// A oneOf with no matching alternative: alts[best] is reported in
	// full, the others by their closest failure only, so that the message
	// stays linear in the schema's nesting.
	alts []*verr
	best int
	at   *path
	desc string
}

type checker struct{ budget int }

func fail(p *path, format string, args ...any) *verr {
	return &verr{path: p, format: format, args: args}
}

// closest follows the best alternatives down to a plain failure.
func (e *verr) closest() *verr {
	for e.alts != nil {
		e = e.alts[e.best]
	}
	return e
}

func (e *verr) String() string {
	if e.alts == nil {
		return fmt.Sprintf(e.format, e.args...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (no alternative of the oneOf at %s matches", e.alts[e.best], e.at)
	if e.desc != "" {
		fmt.Fprintf(&b, " [rule: %s]", e.desc)
	}
	fmt.Fprintf(&b, "; closest is [%d]", e.best)
	sep := "; others: "
	for i, a := range e.alts {
		if i != e.best {
			c := a.closest()
			fmt.Fprintf(&b, "%s[%d] %s: %s", sep, i, c.path, fmt.Sprintf(c.format, c.args...))
			sep = "; "
		}
	}
	b.WriteString(")")
	return b.String()
}

// check validates v against n. Keywords are checked so that cheap,
// discriminating ones (type, const) fail first: that keeps oneOf over
// variants fast and its error messages short.
func (c *checker) check(n *node, v any, p *path) *verr {
	c.budget--
	if c.budget < 0 {
		return fail(p, "validation too expensive for this schema and document")
	}
	if n.isBool {
		if !n.boolVal {
			return fail(p, "no value is allowed here")
		}
		return nil
	}
	if n.refNode != nil {
		if e := c.check(n.refNode, v, p); e != nil {
			return e
		}
	}
	if n.types != nil && !hasType(n.types, v) {
		return fail(p, "expected %s, got %s", strings.Join(n.types, " or "), describe(v))
	}
	if n.hasConst && !jsonEqual(n.constVal, v) {
		return fail(p, "expected %s, got %s", render(n.constVal), describe(v))
	}
	if n.enum != nil && !inEnum(n.enum, v) {
		return fail(p, "%s is not one of %s", describe(v), renderList(n.enum))
	}
	switch x := v.(type) {
	case *object:
		if e := c.checkObject(n, x, p); e != nil {
			return e
		}
	case []any:
		if e := c.checkArray(n, x, p); e != nil {
			return e
		}
	case json.Number:
		d := parseDecimal(string(x))
		if n.minimum != nil && d.cmp(*n.minimum) < 0 {
			return fail(p, "%s is below the minimum %s", x, n.minimum)
		}
		if n.maximum != nil && d.cmp(*n.maximum) > 0 {
			return fail(p, "%s is above the maximum %s", x, n.maximum)
		}
	}
	if n.oneOf != nil {
		return c.checkOneOf(n, v, p)
	}
	return nil
}

func (c *checker) checkObject(n *node, o *object, p *path) *verr {
	for _, r := range n.required {
		if _, ok := o.vals[r]; !ok {
			return fail(p, "missing required property %q", r)
		}
	}
	for _, k := range o.keys {
		if sub, ok := n.props[k]; ok {
			if sub.isBool && !sub.boolVal {
				return fail(p.field(k), "property %q is not allowed here", k)
			}
			if e := c.check(sub, o.vals[k], p.field(k)); e != nil {
				return e
			}
			continue
		}
		if n.additional == nil {
			continue
		}
		if n.additional.isBool && !n.additional.boolVal {
			return fail(p.field(k), "unknown property %q", k)
		}
		if e := c.check(n.additional, o.vals[k], p.field(k)); e != nil {
			return e
		}
	}
	return nil
}

func (c *checker) checkArray(n *node, a []any, p *path) *verr {
	if n.minItems >= 0 && len(a) < n.minItems {
		return fail(p, "array has %d items, at least %d required", len(a), n.minItems)
	}
	for i, v := range a {
		sub := n.items
		if i < len(n.prefixItems) {
			sub = n.prefixItems[i]
		}
		if sub == nil {
			continue
		}
		if sub.isBool && !sub.boolVal {
			return fail(p, "array has %d items, at most %d allowed", len(a), i)
		}
		if e := c.check(sub, v, p.elem(i)); e != nil {
			return e
		}
	}
	return nil
}

// checkOneOf requires exactly one alternative to match. When none does, the
// error of the alternative that got deepest into the document is reported
// (for a variant that is the one whose constructor name matched), with the
// others summarised so that nothing is hidden.
func (c *checker) checkOneOf(n *node, v any, p *path) *verr {
	var matched []int
	var errs []*verr
	for i, alt := range n.oneOf {
		e := c.check(alt, v, p)
		if e == nil {
			matched = append(matched, i)
			continue
		}
		if c.budget < 0 {
			return e
		}
		errs = append(errs, e)
	}
	switch len(matched) {
	case 1:
		return nil
	case 0:
		best := 0
		for i, e := range errs {
			if e.closest().path.depth() > errs[best].closest().path.depth() {
				best = i
			}
		}
		return &verr{alts: errs, best: best, at: p, desc: n.desc}
	default:
		return fail(p, "matches oneOf alternatives %v; exactly one must match", matched)
	}
}

func hasType(types []string, v any) bool {
	for _, t := range types {
		switch x := v.(type) {
		case nil:
			if t == "null" {
				return true
			}
		case bool:
			if t == "boolean" {
				return true
			}
		case string:
			if t == "string" {
				return true
			}
		case *object:
			if t == "object" {
				return true
			}
		case []any:
			if t == "array" {
				return true
			}
		case json.Number:
			// rpclib's rule, not JSON Schema's: 1.0 and 1e9 are floats.
			if t == "number" || t == "integer" && !strings.ContainsAny(string(x), ".eE") {
				return true
			}
		}
	}
	return false
}

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean " + strconv.FormatBool(x)
	case string:
		if len(x) > 40 {
			x = x[:40] + "..."
		}
		return "string " + strconv.Quote(x)
	case *object:
		return "object"
	case []any:
		return fmt.Sprintf("array of %d", len(x))
	case json.Number:
		s := string(x)
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return "number " + s
	}
	return fmt.Sprintf("%T", v)
}

func render(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case json.Number:
		return string(x)
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return "null"
	}
	return describe(v)
}

func renderList(vs []any) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = render(v)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func inEnum(enum []any, v any) bool {
	for _, e := range enum {
		if jsonEqual(e, v) {
			return true
		}
	}
	return false
}

// jsonEqual is JSON Schema equality: numbers compare by value (1 == 1.0),
// objects by their member sets.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case string:
		y, ok := b.(string)
		return ok && x == y
	case json.Number:
		y, ok := b.(json.Number)
		return ok && parseDecimal(string(x)).cmp(parseDecimal(string(y))) == 0
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case *object:
		y, ok := b.(*object)
		if !ok || len(x.keys) != len(y.keys) {
			return false
		}
		for k, xv := range x.vals {
			yv, ok := y.vals[k]
			if !ok || !jsonEqual(xv, yv) {
				return false
			}
		}
		return true
	}
	return false
}

// ---- exact decimal numbers ----

// decimal is an exact JSON number: value = ±0.digits × 10^exp, with no
// leading or trailing zeros in digits ("" is zero). Comparing these is
// exact for any length and, unlike big.Rat, never expands 1e999999999.
type decimal struct {
	neg    bool
	digits string
	exp    *big.Int
}

// parseDecimal expects the JSON number grammar, which parseJSON and
// compile have already enforced.
func parseDecimal(s string) decimal {
	d := decimal{exp: new(big.Int)}
	if strings.HasPrefix(s, "-") {
		d.neg, s = true, s[1:]
	}
	mant, expPart, _ := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	lead := len(all) - len(strings.TrimLeft(all, "0"))
	d.digits = strings.TrimRight(all[lead:], "0")
	if d.digits == "" {
		return decimal{exp: new(big.Int)}
	}
	if expPart != "" {
		if _, ok := d.exp.SetString(strings.TrimPrefix(expPart, "+"), 10); !ok {
			d.exp.SetInt64(0)
		}
	}
	d.exp.Add(d.exp, big.NewInt(int64(len(intPart)-lead)))
	return d
}

func (d decimal) sign() int {
	switch {
	case d.digits == "":
		return 0
	case d.neg:
		return -1
	}
	return 1
}

func (d decimal) cmp(o decimal) int {
	if ds, os := d.sign(), o.sign(); ds != os || ds == 0 {
		switch {
		case ds < os:
			return -1
		case ds > os:
			return 1
		}
		return 0
	}
	m := d.exp.Cmp(o.exp)
	if m == 0 {
		m = strings.Compare(d.digits, o.digits)
	}
	if d.neg {
		return -m
	}
	return m
}

func (d decimal) String() string {
	if d.digits == "" {
		return "0"
	}
	sign := ""
	if d.neg {
		sign = "-"
	}
	// Plain notation for the magnitudes schemas use (int64 bounds);
	// scientific notation beyond, so a hostile exponent cannot make a
	// message huge.
	if d.exp.IsInt64() {
		e, n := d.exp.Int64(), int64(len(d.digits))
		switch {
		case e >= n && e <= 40:
			return sign + d.digits + strings.Repeat("0", int(e-n))
		case e > 0 && e < n:
			return sign + d.digits[:e] + "." + d.digits[e:]
		case e <= 0 && e > -40:
			return sign + "0." + strings.Repeat("0", int(-e)) + d.digits
		}
	}
	return sign + "0." + d.digits + "e" + d.exp.String()
}

// ---- JSON parsing ----

// object keeps member order so that errors name the first offending member
// in document order, deterministically.
type object struct {
	keys []string
	vals map[string]any
}

// parseJSON decodes exactly one JSON value with numbers kept as their
// literal text. It rejects invalid UTF-8 (encoding/json would silently
// replace it), duplicate member names (decoders disagree on which one
// wins), trailing data and nesting beyond maxDepth.
//
// encoding/json checks the grammar (json.Valid, fast and strict); the
// small parser below then only splits a known-valid document. Decoder.Token
// would do both but costs about a microsecond per token.
func parseJSON(b []byte) (any, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("invalid JSON: not valid UTF-8")
	}
	if !json.Valid(b) {
		var v any
		err := json.Unmarshal(b, &v)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, err)
		}
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	p := &parser{b: b}
	return p.value(0)
}

// parser walks a document that json.Valid accepted, so it need not check
// the grammar or bounds again.
type parser struct {
	b []byte
	i int
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) (any, error) {
	p.ws()
	switch p.b[p.i] {
	case '{':
		if depth >= maxDepth {
			return nil, fmt.Errorf("invalid JSON: nested deeper than %d levels", maxDepth)
		}
		p.i++
		o := &object{vals: map[string]any{}}
		p.ws()
		if p.b[p.i] == '}' {
			p.i++
			return o, nil
		}
		for {
			p.ws()
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			if _, dup := o.vals[k]; dup {
				return nil, fmt.Errorf("invalid JSON: duplicate member %q", k)
			}
			p.ws()
			p.i++ // ':'
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			o.keys = append(o.keys, k)
			o.vals[k] = v
			p.ws()
			p.i++ // ',' or '}'
			if p.b[p.i-1] == '}' {
				return o, nil
			}
		}
	case '[':
		if depth >= maxDepth {
			return nil, fmt.Errorf("invalid JSON: nested deeper than %d levels", maxDepth)
		}
		p.i++
		a := []any{}
		p.ws()
		if p.b[p.i] == ']' {
			p.i++
			return a, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			p.ws()
			p.i++ // ',' or ']'
			if p.b[p.i-1] == ']' {
				return a, nil
			}
		}
	case '"':
		return p.str()
	case 't':
		p.i += 4
		return true, nil
	case 'f':
		p.i += 5
		return false, nil
	case 'n':
		p.i += 4
		return nil, nil
	}
	start := p.i
	for p.i < len(p.b) && strings.IndexByte("+-0123456789.eE", p.b[p.i]) >= 0 {
		p.i++
	}
	return json.Number(p.b[start:p.i]), nil
}

// str reads a string token; only strings with escapes go through
// encoding/json to be unescaped.
func (p *parser) str() (string, error) {
	start := p.i
	p.i++
	escaped := false
	for p.b[p.i] != '"' {
		if p.b[p.i] == '\\' {
			escaped = true
			p.i++
		}
		p.i++
	}
	p.i++
	raw := p.b[start:p.i]
	if !escaped {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("invalid JSON: string at byte %d: %v", start, err)
	}
	return s, nil
}

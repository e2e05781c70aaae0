package schema

// Checking a decoded document against the compiled schema: the walk, its
// error paths, and the rendering of values in messages.

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

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

package schema

// The JSON reader the validator uses: literal numbers, member order kept.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

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

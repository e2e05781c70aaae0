package schema

// Exact JSON numbers, so that bounds and enums compare any literal exactly.

import (
	"math/big"
	"strings"
)

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

package validate

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
)

// The limits of JSON data the gateway stores or publishes: payload, payload_json, data,
// data_json, snapshot state, schema text. Every writer enforces them, so that whatever
// is accepted can be read back by every reader (as a google.protobuf.Struct, by
// PostgreSQL's jsonb, by the merge-patch fold). README "Limits of stored data" says the
// same to callers.
const (
	// MaxDepth is the deepest nesting of objects and arrays: the top-level object is
	// depth 1.
	MaxDepth = 64
	// MaxDecimals bounds the digits after a number's decimal point once its exponent
	// is applied (1.5e-3 has 4): 400 holds every float64 written with 17 significant
	// digits (5e-324 has 324).
	MaxDecimals = 400
	// MaxExponent bounds the written exponent of a number literal (1e400, 0e-400).
	MaxExponent = 400
)

// The rules, in the words errors use. They never quote the data: positions are byte
// offsets into the caller's JSON (or depths in a Struct), never keys or values.
const (
	ruleSyntax    = "is not valid JSON"
	ruleObject    = "must be a JSON object"
	ruleDepth     = "nests objects and arrays deeper than 64 levels"
	ruleNumber    = "holds a number out of range: numbers must be float64 values (magnitude at most 1.7976931348623157e308; a non-zero number at least 5e-324) with at most 400 digits after the decimal point once the exponent is applied, and an exponent between -400 and 400"
	ruleNaN       = "holds a NaN or infinite number, which JSON cannot represent"
	ruleNUL       = "holds the character U+0000 in a string or key, which cannot be stored"
	ruleUTF8      = "holds a string or key that is not valid UTF-8"
	ruleSurrogate = "holds a \\u escape of a lone UTF-16 surrogate (\\ud800-\\udfff must come as a high-low pair)"
	ruleDupKey    = "repeats a key within one object"
)

// JSONObject checks that b is one JSON object within the limits above: valid JSON (RFC
// 8259), nesting at most MaxDepth, numbers finite float64s (see ruleNumber), strings and
// keys valid UTF-8 without U+0000 and without lone surrogate escapes, and no key twice in
// one object. The error names field and the byte offset of the first violation.
func JSONObject(field string, b []byte) error {
	return checkJSON(field, b, true)
}

// JSONValue is JSONObject for any JSON value at the top level.
func JSONValue(field string, b []byte) error {
	return checkJSON(field, b, false)
}

// scanners are reused: the key stack is their only allocation.
var scanners = sync.Pool{New: func() any { return &jsonScanner{keys: make([]key, 0, 32)} }}

func checkJSON(field string, b []byte, object bool) error {
	s := scanners.Get().(*jsonScanner)
	*s = jsonScanner{b: b, keys: s.keys[:0]}
	defer func() {
		clear(s.keys[:cap(s.keys)]) // drop references into b
		*s = jsonScanner{keys: s.keys[:0]}
		scanners.Put(s)
	}()
	s.space()
	if object && (s.i >= len(b) || b[s.i] != '{') {
		if s.i >= len(b) || !validStart(b[s.i]) {
			return Errorf(field, "%s", ruleObject)
		}
		// Another JSON value: say "must be an object", but only for valid JSON.
		if s.value(0) && s.end() {
			return Errorf(field, "%s", ruleObject)
		}
		return s.err(field)
	}
	if !s.value(0) || !s.end() {
		return s.err(field)
	}
	return nil
}

func validStart(c byte) bool {
	return c == '{' || c == '[' || c == '"' || c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n'
}

// jsonScanner is a recursive-descent JSON validator: one pass, no allocation except for
// the keys of large objects or keys written with escapes (to find repeated keys).
type jsonScanner struct {
	b    []byte
	i    int
	rule string // the rule broken (ruleSyntax when empty)
	at   int    // where
	keys []key  // the keys of the objects being scanned (a stack)
}

type key struct {
	raw     []byte // the key's bytes between the quotes
	escaped bool   // raw holds escapes: compare decoded
}

func (s *jsonScanner) fail(rule string, at int) bool {
	if s.rule == "" {
		s.rule, s.at = rule, at
	}
	return false
}

func (s *jsonScanner) err(field string) error {
	rule := s.rule
	if rule == "" {
		rule, s.at = ruleSyntax, s.i
	}
	return Errorf(field, "%s (at byte %d)", rule, s.at)
}

func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end reports whether only whitespace follows.
func (s *jsonScanner) end() bool {
	s.space()
	if s.i != len(s.b) {
		return s.fail(ruleSyntax, s.i)
	}
	return true
}

// value scans one value at nesting depth (the containers around it).
func (s *jsonScanner) value(depth int) bool {
	s.space()
	if s.i >= len(s.b) {
		return s.fail(ruleSyntax, s.i)
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(depth + 1)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.fail(ruleSyntax, s.i)
}

func (s *jsonScanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.fail(ruleSyntax, s.i)
	}
	s.i += len(lit)
	return true
}

func (s *jsonScanner) object(depth int) bool {
	if depth > MaxDepth {
		return s.fail(ruleDepth, s.i)
	}
	s.i++ // {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	base := len(s.keys)
	defer func() { s.keys = s.keys[:base] }()
	var many map[string]struct{} // the keys, once the object has many
	for {
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return s.fail(ruleSyntax, s.i)
		}
		at := s.i
		raw, escaped, ok := s.str()
		if !ok {
			return false
		}
		k := key{raw: raw, escaped: escaped}
		switch {
		case many != nil:
			d := string(k.decoded())
			if _, dup := many[d]; dup {
				return s.fail(ruleDupKey, at)
			}
			many[d] = struct{}{}
		case len(s.keys)-base >= 16:
			many = make(map[string]struct{}, 32)
			for _, o := range s.keys[base:] {
				many[string(o.decoded())] = struct{}{}
			}
			d := string(k.decoded())
			if _, dup := many[d]; dup {
				return s.fail(ruleDupKey, at)
			}
			many[d] = struct{}{}
		default:
			for _, o := range s.keys[base:] {
				if o.equal(k) {
					return s.fail(ruleDupKey, at)
				}
			}
			s.keys = append(s.keys, k)
		}
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return s.fail(ruleSyntax, s.i)
		}
		s.i++
		if !s.value(depth) {
			return false
		}
		s.space()
		if s.i >= len(s.b) {
			return s.fail(ruleSyntax, s.i)
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return s.fail(ruleSyntax, s.i)
		}
	}
}

func (s *jsonScanner) array(depth int) bool {
	if depth > MaxDepth {
		return s.fail(ruleDepth, s.i)
	}
	s.i++ // [
	s.space()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return true
	}
	for {
		if !s.value(depth) {
			return false
		}
		s.space()
		if s.i >= len(s.b) {
			return s.fail(ruleSyntax, s.i)
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return s.fail(ruleSyntax, s.i)
		}
	}
}

// str scans a string starting at its opening quote and returns its raw bytes (between
// the quotes) and whether they hold escapes.
func (s *jsonScanner) str() (raw []byte, escaped, ok bool) {
	start := s.i
	s.i++ // "
	ascii := true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw = s.b[start+1 : s.i]
			if !ascii && !utf8.Valid(raw) {
				return nil, false, s.fail(ruleUTF8, start)
			}
			s.i++
			return raw, escaped, true
		case c == '\\':
			escaped = true
			if !s.escape() {
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, s.fail(ruleSyntax, s.i)
		default:
			if c >= utf8.RuneSelf {
				ascii = false
			}
			s.i++
		}
	}
	return nil, false, s.fail(ruleSyntax, s.i)
}

// escape scans one escape sequence at s.i (the backslash).
func (s *jsonScanner) escape() bool {
	at := s.i
	if s.i+1 >= len(s.b) {
		return s.fail(ruleSyntax, s.i)
	}
	switch s.b[s.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.i += 2
		return true
	case 'u':
	default:
		return s.fail(ruleSyntax, s.i)
	}
	r, ok := hex4(s.b, s.i+2)
	if !ok {
		return s.fail(ruleSyntax, s.i)
	}
	s.i += 6
	switch {
	case r == 0:
		return s.fail(ruleNUL, at)
	case r >= 0xDC00 && r <= 0xDFFF:
		return s.fail(ruleSurrogate, at)
	case r >= 0xD800 && r <= 0xDBFF:
		if s.i+1 >= len(s.b) || s.b[s.i] != '\\' || s.b[s.i+1] != 'u' {
			return s.fail(ruleSurrogate, at)
		}
		lo, ok := hex4(s.b, s.i+2)
		if !ok {
			return s.fail(ruleSyntax, s.i)
		}
		if lo < 0xDC00 || lo > 0xDFFF {
			return s.fail(ruleSurrogate, at)
		}
		s.i += 6
	}
	return true
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// number scans a number literal and checks its range: a finite float64 that does not
// round to zero, with at most MaxDecimals digits after the point once the exponent is
// applied (the scale PostgreSQL's numeric keeps, and writes out in full: the rule holds
// for the text jsonb gives back too), and a written exponent within ±MaxExponent. Only
// literals near the ends of float64's range are parsed.
func (s *jsonScanner) number() bool {
	start := s.i
	b := s.b
	if b[s.i] == '-' {
		s.i++
	}
	intDigits := 0    // digits of the integer part, when it is not 0
	fracDigits := 0   // digits after the point
	leadingZeros := 0 // zeros after the point before the first other digit, when intDigits is 0
	nonZero := false  // a digit other than 0 in the mantissa
	switch {
	case s.i < len(b) && b[s.i] == '0':
		s.i++
	case s.i < len(b) && b[s.i] >= '1' && b[s.i] <= '9':
		nonZero = true
		for s.i < len(b) && b[s.i] >= '0' && b[s.i] <= '9' {
			intDigits++
			s.i++
		}
	default:
		return s.fail(ruleSyntax, s.i)
	}
	if s.i < len(b) && b[s.i] == '.' {
		s.i++
		if s.i >= len(b) || b[s.i] < '0' || b[s.i] > '9' {
			return s.fail(ruleSyntax, s.i)
		}
		for s.i < len(b) && b[s.i] >= '0' && b[s.i] <= '9' {
			if b[s.i] != '0' {
				nonZero = true
			} else if !nonZero {
				leadingZeros++
			}
			fracDigits++
			s.i++
		}
	}
	exp := 0
	if s.i < len(b) && (b[s.i] == 'e' || b[s.i] == 'E') {
		s.i++
		neg := false
		if s.i < len(b) && (b[s.i] == '+' || b[s.i] == '-') {
			neg = b[s.i] == '-'
			s.i++
		}
		if s.i >= len(b) || b[s.i] < '0' || b[s.i] > '9' {
			return s.fail(ruleSyntax, s.i)
		}
		for s.i < len(b) && b[s.i] >= '0' && b[s.i] <= '9' {
			if exp <= MaxExponent {
				exp = exp*10 + int(b[s.i]-'0')
			}
			s.i++
		}
		if exp > MaxExponent {
			return s.fail(ruleNumber, start)
		}
		if neg {
			exp = -exp
		}
	}
	if fracDigits-exp > MaxDecimals {
		return s.fail(ruleNumber, start)
	}
	if !nonZero {
		return true // zero
	}
	// The magnitude lies in [10^lo, 10^hi).
	hi, lo := intDigits+exp, intDigits-1+exp
	if intDigits == 0 {
		hi, lo = exp-leadingZeros, exp-leadingZeros-1
	}
	switch {
	case lo >= 309 || hi <= -324: // beyond 1.8e308, or below the smallest float64
		return s.fail(ruleNumber, start)
	case lo >= -307 && hi <= 308: // within the normal range
		return true
	}
	f, err := strconv.ParseFloat(string(b[start:s.i]), 64)
	if err != nil || math.IsInf(f, 0) || f == 0 {
		return s.fail(ruleNumber, start)
	}
	return true
}

// decoded is the key with its escapes decoded (only called for keys that have them, or
// when comparing many keys).
func (k key) decoded() []byte {
	if !k.escaped {
		return k.raw
	}
	out := make([]byte, 0, len(k.raw))
	for i := 0; i < len(k.raw); {
		c := k.raw[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch k.raw[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, _ := hex4(k.raw, i+2)
			i += 6
			if r >= 0xD800 && r <= 0xDBFF { // a checked pair
				lo, _ := hex4(k.raw, i+2)
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
				i += 6
			}
			out = utf8.AppendRune(out, r)
			continue
		default: // " \ /
			out = append(out, k.raw[i+1])
		}
		i += 2
	}
	return out
}

func (k key) equal(o key) bool {
	if !k.escaped && !o.escaped {
		return bytes.Equal(k.raw, o.raw)
	}
	return bytes.Equal(k.decoded(), o.decoded())
}

// Struct checks a google.protobuf.Struct against the same limits as JSONObject: nesting
// at most MaxDepth, no NaN or infinite number, strings and keys valid UTF-8 without
// U+0000. The error names field and the depth of the first violation.
func Struct(field string, st *structpb.Struct) error {
	return checkStruct(field, st, 1)
}

// The errors of Struct's rules, with an empty field, for encoders that check a Struct
// as they go (event.AppendStructJSON): the same words for the same rule.

// StructTooDeep is the nesting rule's error.
func StructTooDeep() *Error { return Errorf("", "%s", ruleDepth) }

// StructNaN is the error of a NaN or infinite number at depth.
func StructNaN(depth int) *Error { return Errorf("", "%s (at depth %d)", ruleNaN, depth) }

// StructNUL is the error of a U+0000 in a string or key at depth.
func StructNUL(depth int) *Error { return Errorf("", "%s (at depth %d)", ruleNUL, depth) }

// StructBadUTF8 is the error of invalid UTF-8 in a string or key at depth.
func StructBadUTF8(depth int) *Error { return Errorf("", "%s (at depth %d)", ruleUTF8, depth) }

func checkStruct(field string, st *structpb.Struct, depth int) error {
	if depth > MaxDepth {
		return Errorf(field, "%s", ruleDepth)
	}
	for k, v := range st.GetFields() {
		if err := checkString(field, k, depth); err != nil {
			return err
		}
		if err := checkValue(field, v, depth); err != nil {
			return err
		}
	}
	return nil
}

func checkValue(field string, v *structpb.Value, depth int) error {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return checkString(field, k.StringValue, depth)
	case *structpb.Value_NumberValue:
		if math.IsNaN(k.NumberValue) || math.IsInf(k.NumberValue, 0) {
			return Errorf(field, "%s (at depth %d)", ruleNaN, depth)
		}
	case *structpb.Value_StructValue:
		return checkStruct(field, k.StructValue, depth+1)
	case *structpb.Value_ListValue:
		if depth+1 > MaxDepth {
			return Errorf(field, "%s", ruleDepth)
		}
		for _, e := range k.ListValue.GetValues() {
			if err := checkValue(field, e, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkString(field, s string, depth int) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 {
			return Errorf(field, "%s (at depth %d)", ruleNUL, depth)
		}
		if c >= utf8.RuneSelf {
			if !utf8.ValidString(s[i:]) {
				return Errorf(field, "%s (at depth %d)", ruleUTF8, depth)
			}
			if strings.IndexByte(s[i:], 0) >= 0 {
				return Errorf(field, "%s (at depth %d)", ruleNUL, depth)
			}
			return nil
		}
	}
	return nil
}

// JSONDepth is the deepest nesting of objects and arrays in b, assumed to be valid JSON
// (as PostgreSQL's jsonb gives it back): the top-level object is depth 1.
func JSONDepth(b []byte) int {
	depth, deepest := 0, 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '{', '[':
			depth++
			deepest = max(deepest, depth)
		case '}', ']':
			depth--
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		}
	}
	return deepest
}

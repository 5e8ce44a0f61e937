package event

import (
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

// IsJSONObject reports whether b is one JSON object the gateway may store or publish:
// validate.JSONObject's rules (nesting, number range, UTF-8, no U+0000, no lone
// surrogate, no repeated key). Writers should call validate.JSONObject to get the
// field and rule in their error.
func IsJSONObject(b []byte) bool {
	return validate.JSONObject("", b) == nil
}

// AppendStructJSON appends s as compact JSON with sorted keys (the bytes encoding/json
// gives for s.AsMap()), without building the intermediate map. It enforces
// validate.Struct's rules as it goes (nesting, NaN and infinities, UTF-8, U+0000): a
// violation is a *validate.Error with an empty field, for the caller to prefix
// (validate.Prefix).
func AppendStructJSON(dst []byte, s *structpb.Struct) ([]byte, error) {
	return appendStructJSON(dst, s, 1)
}

func appendStructJSON(dst []byte, s *structpb.Struct, depth int) ([]byte, error) {
	if depth > validate.MaxDepth {
		return nil, validate.StructTooDeep()
	}
	fields := s.GetFields()
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	var err error
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		if dst, err = appendJSONString(dst, k, depth); err != nil {
			return nil, err
		}
		dst = append(dst, ':')
		if dst, err = appendValueJSON(dst, fields[k], depth); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// appendValueJSON appends v, a value inside depth containers.
func appendValueJSON(dst []byte, v *structpb.Value, depth int) ([]byte, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return appendJSONString(dst, k.StringValue, depth)
	case *structpb.Value_NumberValue:
		return appendJSONNumber(dst, k.NumberValue, depth)
	case *structpb.Value_BoolValue:
		return strconv.AppendBool(dst, k.BoolValue), nil
	case *structpb.Value_StructValue:
		return appendStructJSON(dst, k.StructValue, depth+1)
	case *structpb.Value_ListValue:
		if depth+1 > validate.MaxDepth {
			return nil, validate.StructTooDeep()
		}
		dst = append(dst, '[')
		var err error
		for i, e := range k.ListValue.GetValues() {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendValueJSON(dst, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	default: // null, or an unset kind
		return append(dst, "null"...), nil
	}
}

// appendJSONNumber formats like encoding/json (ES6 number-to-string).
func appendJSONNumber(dst []byte, f float64, depth int) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, validate.StructNaN(depth)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(dst) - start
		if n >= 4 && dst[len(dst)-4] == 'e' && dst[len(dst)-3] == '-' && dst[len(dst)-2] == '0' {
			dst[len(dst)-2] = dst[len(dst)-1]
			dst = dst[:len(dst)-1]
		}
	}
	return dst, nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s for JSON: ", \ and control characters escaped. U+0000 and
// invalid UTF-8 are refused (validate.Struct's rules).
func appendJSONString(dst []byte, s string, depth int) ([]byte, error) {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case 0:
				return nil, validate.StructNUL(depth)
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return nil, validate.StructBadUTF8(depth)
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), nil
}

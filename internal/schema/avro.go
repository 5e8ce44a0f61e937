package schema

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/eventgw/eventgw/internal/validate"
)

// coerce turns a decoded JSON value (from encoding/json with UseNumber, or from
// structpb.AsMap) into the Go value hamba/avro encodes for schema s. Errors name the
// field path and the expected type, never the value (it may be health data), and never
// a key the caller chose: a path holds the schema's field names (the schema's own
// words), and a map's values are "<map path>.*" whatever their key.
func coerce(s avro.Schema, v any, path string) (any, error) {
	switch s := s.(type) {
	case *avro.RecordSchema:
		m, ok := v.(map[string]any)
		if !ok {
			return nil, mismatch(path, "an object", v)
		}
		out := make(map[string]any, len(s.Fields()))
		for _, f := range s.Fields() {
			fp := join(path, f.Name())
			fv, present := m[f.Name()]
			if !present {
				if f.HasDefault() {
					continue // hamba writes the default
				}
				if isNullable(f.Type()) {
					out[f.Name()] = nil
					continue
				}
				return nil, validate.Errorf(fp, "is required by the schema")
			}
			cv, err := coerce(f.Type(), fv, fp)
			if err != nil {
				return nil, err
			}
			out[f.Name()] = cv
		}
		if len(m) > len(out) {
			for k := range m {
				if _, known := out[k]; !known && s.Fields() != nil && !hasField(s, k) {
					return nil, validate.Errorf(orPayload(path), "holds a key that is not a field of the schema %s (its fields: %s)", s.FullName(), fieldNames(s))
				}
			}
		}
		return out, nil
	case *avro.UnionSchema:
		if v == nil {
			if isNullable(s) {
				return nil, nil
			}
			return nil, validate.Errorf(orPayload(path), "must not be null")
		}
		var nonNull []avro.Schema
		for _, t := range s.Types() {
			if t.Type() != avro.Null {
				nonNull = append(nonNull, t)
			}
		}
		var firstErr error
		for _, t := range nonNull {
			cv, err := coerce(t, v, path)
			if err == nil {
				// hamba picks a union's branch by the Go type, except for logical types
				// (an int64 is "long", never "long.timestamp-micros"): those are named.
				if p, ok := t.(*avro.PrimitiveSchema); len(nonNull) == 1 && (!ok || p.Logical() == nil) {
					return cv, nil
				}
				return map[string]any{unionName(t): cv}, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		if len(nonNull) == 1 {
			return nil, firstErr
		}
		return nil, mismatch(path, "one of the union's types", v)
	case *avro.RefSchema:
		return coerce(s.Schema(), v, path)
	case *avro.EnumSchema:
		str, ok := v.(string)
		if !ok {
			return nil, mismatch(path, "a string (enum "+s.FullName()+")", v)
		}
		for _, sym := range s.Symbols() {
			if sym == str {
				return str, nil
			}
		}
		return nil, validate.Errorf(orPayload(path), "is not a symbol of enum %s", s.FullName())
	case *avro.ArraySchema:
		arr, ok := v.([]any)
		if !ok {
			return nil, mismatch(path, "an array", v)
		}
		out := make([]any, len(arr))
		for i, e := range arr {
			cv, err := coerce(s.Items(), e, path+"["+strconv.Itoa(i)+"]")
			if err != nil {
				return nil, err
			}
			out[i] = cv
		}
		return out, nil
	case *avro.MapSchema:
		m, ok := v.(map[string]any)
		if !ok {
			return nil, mismatch(path, "an object (map)", v)
		}
		out := make(map[string]any, len(m))
		for k, e := range m {
			cv, err := coerce(s.Values(), e, join(path, "*"))
			if err != nil {
				return nil, err
			}
			out[k] = cv
		}
		return out, nil
	case *avro.FixedSchema:
		str, ok := v.(string)
		if !ok || len(str) != s.Size() {
			return nil, validate.Errorf(orPayload(path), "must be a string of exactly %d bytes (fixed %s)", s.Size(), s.FullName())
		}
		// hamba encodes a fixed from a [size]byte array only.
		arr := reflect.New(reflect.ArrayOf(s.Size(), reflect.TypeFor[byte]())).Elem()
		reflect.Copy(arr, reflect.ValueOf([]byte(str)))
		return arr.Interface(), nil
	case *avro.PrimitiveSchema:
		return coercePrimitive(s, v, path)
	case *avro.NullSchema:
		if v != nil {
			return nil, mismatch(path, "null", v)
		}
		return nil, nil
	}
	return nil, validate.Errorf(orPayload(path), "has a schema type the gateway cannot encode from JSON (%s)", s.Type())
}

func coercePrimitive(s *avro.PrimitiveSchema, v any, path string) (any, error) {
	var logical avro.LogicalType
	if ls := s.Logical(); ls != nil {
		logical = ls.Type()
	}
	switch s.Type() {
	case avro.Boolean:
		b, ok := v.(bool)
		if !ok {
			return nil, mismatch(path, "a boolean", v)
		}
		return b, nil
	case avro.Int:
		if logical == avro.Date {
			if str, ok := v.(string); ok {
				t, err := time.Parse(time.DateOnly, str)
				if err != nil {
					return nil, validate.Errorf(orPayload(path), "must be a date such as 2024-01-31 or a day number")
				}
				return int32(t.Unix() / 86400), nil
			}
		}
		n, ok := integer(v)
		if !ok || n < math.MinInt32 || n > math.MaxInt32 {
			return nil, mismatch(path, "a 32-bit integer", v)
		}
		return int32(n), nil
	case avro.Long:
		if str, ok := v.(string); ok && (logical == avro.TimestampMillis || logical == avro.TimestampMicros) {
			t, err := time.Parse(time.RFC3339Nano, str)
			if err != nil {
				return nil, validate.Errorf(orPayload(path), "must be an RFC 3339 timestamp or epoch number")
			}
			if logical == avro.TimestampMillis {
				return t.UnixMilli(), nil
			}
			return t.UnixMicro(), nil
		}
		n, ok := integer(v)
		if !ok {
			return nil, mismatch(path, "an integer", v)
		}
		if logical == avro.TimeMicros {
			// hamba reads an int64 for time-micros as a time.Duration (nanoseconds).
			if n > math.MaxInt64/int64(time.Microsecond) || n < math.MinInt64/int64(time.Microsecond) {
				return nil, mismatch(path, "a time of day in microseconds", v)
			}
			return time.Duration(n) * time.Microsecond, nil
		}
		return n, nil
	case avro.Float:
		f, ok := number(v)
		if !ok {
			return nil, mismatch(path, "a number", v)
		}
		if math.Abs(f) > math.MaxFloat32 {
			// It would be stored as an infinity, which JSON cannot give back.
			return nil, validate.Errorf(orPayload(path), "is beyond the range of an Avro float (±3.4028234663852886e38)")
		}
		return float32(f), nil
	case avro.Double:
		f, ok := number(v)
		if !ok {
			return nil, mismatch(path, "a number", v)
		}
		return f, nil
	case avro.String:
		str, ok := v.(string)
		if !ok {
			return nil, mismatch(path, "a string", v)
		}
		if logical == avro.UUID {
			if err := validate.UUID(orPayload(path), str); err != nil {
				return nil, err
			}
		}
		return str, nil
	case avro.Bytes:
		if logical == avro.Decimal {
			return nil, validate.Errorf(orPayload(path), "is a decimal: the gateway does not encode decimals from JSON; use a double or a string")
		}
		str, ok := v.(string)
		if !ok {
			return nil, mismatch(path, "a string (bytes)", v)
		}
		return []byte(str), nil
	default:
		return nil, validate.Errorf(orPayload(path), "has an unsupported schema type %s", s.Type())
	}
}

func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	case float64:
		if n != math.Trunc(n) || n < math.MinInt64 || n > math.MaxInt64 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case float64:
		return n, true
	}
	return 0, false
}

func mismatch(path, want string, v any) error {
	return validate.Errorf(orPayload(path), "must be %s, not %s", want, jsonKind(v))
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func isNullable(s avro.Schema) bool {
	if u, ok := s.(*avro.UnionSchema); ok {
		return u.Nullable() || hasNull(u)
	}
	return s.Type() == avro.Null
}

func hasNull(u *avro.UnionSchema) bool {
	for _, t := range u.Types() {
		if t.Type() == avro.Null {
			return true
		}
	}
	return false
}

// fieldNames lists a record's fields (at most 20), for errors.
func fieldNames(r *avro.RecordSchema) string {
	var b strings.Builder
	for i, f := range r.Fields() {
		if i == 20 {
			b.WriteString(", …")
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.Name())
	}
	return b.String()
}

func hasField(r *avro.RecordSchema, name string) bool {
	for _, f := range r.Fields() {
		if f.Name() == name {
			return true
		}
	}
	return false
}

// unionName is the branch name hamba expects in a union wrapper map.
func unionName(s avro.Schema) string {
	if n, ok := s.(avro.NamedSchema); ok {
		return n.FullName()
	}
	if p, ok := s.(*avro.PrimitiveSchema); ok && p.Logical() != nil {
		return string(p.Type()) + "." + string(p.Logical().Type())
	}
	return string(s.Type())
}

func join(path, name string) string {
	if path == "" {
		return "payload." + name
	}
	return path + "." + name
}

func orPayload(path string) string {
	if path == "" {
		return "payload"
	}
	return path
}

// frame prepends the Confluent wire-format header (magic 0, big-endian schema id).
func frame(id int, avroBytes []byte) []byte {
	out := make([]byte, 5+len(avroBytes))
	binary.BigEndian.PutUint32(out[1:5], uint32(id))
	copy(out[5:], avroBytes)
	return out
}

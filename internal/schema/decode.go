package schema

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
)

// ErrNotAvro is a value that does not start with the Confluent wire-format header.
var ErrNotAvro = fmt.Errorf("value is not in Confluent wire format")

// UndecodableError is a value the registry's schema cannot decode. Retrying will not
// help; it names the schema id, never the value.
type UndecodableError struct{ SchemaID int }

func (e *UndecodableError) LogSafe() {}
func (e *UndecodableError) Error() string {
	return fmt.Sprintf("the value does not decode with schema id %d", e.SchemaID)
}

// IsWireFormat reports whether value starts like Confluent wire format (magic byte 0
// and a 4-byte schema id).
func IsWireFormat(value []byte) bool { return len(value) >= 5 && value[0] == 0 }

// DecodeJSON decodes a Confluent-framed Avro value into the JSON object it was
// published from. Schemas this sidecar has not seen are fetched from the registry by
// id once and kept; an unreachable registry answers an *UnavailableError (retry later).
func (r *Registry) DecodeJSON(ctx context.Context, value []byte) ([]byte, error) {
	if !IsWireFormat(value) {
		return nil, ErrNotAvro
	}
	id := int(binary.BigEndian.Uint32(value[1:5]))
	s, err := r.byIDOrFetch(ctx, id)
	if err != nil {
		return nil, err
	}
	var v any
	if err := avro.Unmarshal(s, value[5:], &v); err != nil {
		return nil, &UndecodableError{SchemaID: id}
	}
	out, err := json.Marshal(jsonValue(s, v))
	if err != nil {
		return nil, &UndecodableError{SchemaID: id}
	}
	return out, nil
}

func (r *Registry) byIDOrFetch(ctx context.Context, id int) (avro.Schema, error) {
	r.mu.RLock()
	s := r.byID[id]
	r.mu.RUnlock()
	if s != nil {
		return s, nil
	}
	var text string
	if err := r.call(ctx, fmt.Sprintf("fetch schema %d", id), func(c *srclient.SchemaRegistryClient) error {
		rs, err := c.GetSchema(id)
		if err != nil {
			return err
		}
		text = rs.Schema()
		return nil
	}); err != nil {
		return nil, err
	}
	parsed, err := avro.Parse(text)
	if err != nil {
		return nil, &UndecodableError{SchemaID: id}
	}
	r.mu.Lock()
	r.byID[id] = parsed
	r.mu.Unlock()
	return parsed, nil
}

// jsonValue turns hamba/avro's generic decoding of schema s back into the JSON shape
// the payload was published in: union values unwrapped, NaN and infinities as null,
// dates as 2006-01-02, timestamps as RFC 3339, times of day as numbers of their unit,
// bytes and fixed as the string they were published as.
func jsonValue(s avro.Schema, v any) any {
	switch s := s.(type) {
	case *avro.RecordSchema:
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		for _, f := range s.Fields() {
			if fv, ok := m[f.Name()]; ok {
				m[f.Name()] = jsonValue(f.Type(), fv)
			}
		}
		return m
	case *avro.RefSchema:
		return jsonValue(s.Schema(), v)
	case *avro.ArraySchema:
		if arr, ok := v.([]any); ok {
			for i := range arr {
				arr[i] = jsonValue(s.Items(), arr[i])
			}
		}
		return v
	case *avro.MapSchema:
		if m, ok := v.(map[string]any); ok {
			for k := range m {
				m[k] = jsonValue(s.Values(), m[k])
			}
		}
		return v
	case *avro.UnionSchema:
		if v == nil {
			return nil
		}
		// A branch hamba could not resolve to a Go type comes wrapped as {name: value}.
		if m, ok := v.(map[string]any); ok && len(m) == 1 {
			for name, inner := range m {
				for _, t := range s.Types() {
					if unionName(t) == name {
						return jsonValue(t, inner)
					}
				}
			}
		}
		for _, t := range s.Types() {
			if t.Type() != avro.Null {
				return jsonValue(t, v)
			}
		}
		return v
	}
	if rv := reflect.ValueOf(v); s.Type() == avro.Fixed && rv.Kind() == reflect.Array && rv.Type().Elem().Kind() == reflect.Uint8 {
		b := make([]byte, rv.Len())
		reflect.Copy(reflect.ValueOf(b), rv)
		v = b
	}
	if b, ok := v.([]byte); ok && (s.Type() == avro.Bytes || s.Type() == avro.Fixed) {
		// Encode takes bytes and fixed as a JSON string's bytes: they come back as that
		// string. Bytes that are not UTF-8 (another producer's) come as base64.
		if utf8.Valid(b) {
			return string(b)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	if p, ok := s.(*avro.PrimitiveSchema); ok && p.Logical() != nil {
		// Logical types in the form Encode takes them: what a subscriber gets can be
		// published again as it is.
		switch x := v.(type) {
		case time.Time:
			if p.Logical().Type() == avro.Date {
				return x.UTC().Format(time.DateOnly)
			}
			return x.UTC().Format(time.RFC3339Nano)
		case time.Duration:
			if p.Logical().Type() == avro.TimeMillis {
				return x.Milliseconds()
			}
			return x.Microseconds()
		}
	}
	switch f := v.(type) {
	case float64:
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil
		}
	case float32:
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return nil
		}
	}
	return v
}

package validate

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzJSONObject checks the write rule "accepted implies readable back": JSON that
// JSONObject accepts is valid JSON, nests at most MaxDepth, holds no repeated key, is
// readable as a google.protobuf.Struct, and stays acceptable after PostgreSQL's jsonb
// has rewritten its numbers (jsonb gives numbers back in plain decimal notation).
func FuzzJSONObject(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":[1,2.5,-0,1e2,"x",true,null,{"b":{}}]}`, `{"n":1.7976931348623157e308}`, `{"n":5e-324}`,
		`{"n":0e-400}`, `{"n":1.5e-300}`, `{"s":"\ud83d\ude00\u00e9\"\\"}`, `{"a":1,"\u0061":2}`, `{"s":"\ud800"}`,
		`{"n":1e400}`, `{"n":1e-400}`, nestJSONForTest(64), nestJSONForTest(65), `{"a":"\u0000"}`, "{\"a\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := JSONObject("payload_json", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "payload_json: ") {
				t.Fatalf("error does not name the field: %v", err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		if d := JSONDepth(b); d > MaxDepth || d < 1 {
			t.Fatalf("accepted depth %d", d)
		}
		st := &structpb.Struct{}
		if err := st.UnmarshalJSON(b); err != nil {
			t.Fatalf("accepted %q, not readable as a Struct: %v", b, err)
		}
		if err := Struct("payload", st); err != nil {
			t.Fatalf("accepted %q, its Struct refused: %v", b, err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		// As jsonb gives it back: numbers in plain decimal, keys deduplicated.
		pg, err := json.Marshal(expandNumbers(t, v))
		if err != nil {
			t.Fatal(err)
		}
		if err := JSONObject("stored", pg); err != nil {
			t.Fatalf("accepted %q, but not as jsonb gives it back (%s): %v", b, pg, err)
		}
	})
}

func nestJSONForTest(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + `{}` + strings.Repeat(`}`, depth-1)
}

// expandNumbers rewrites every number as PostgreSQL's numeric prints it: no exponent,
// as many digits after the point as the literal's scale (digits after its point minus
// its exponent, at least 0).
func expandNumbers(t *testing.T, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = expandNumbers(t, e)
		}
	case []any:
		for i, e := range x {
			x[i] = expandNumbers(t, e)
		}
	case json.Number:
		return json.Number(pgNumeric(t, string(x)))
	}
	return v
}

func pgNumeric(t *testing.T, lit string) string {
	mant, exp := lit, 0
	if i := strings.IndexAny(lit, "eE"); i >= 0 {
		mant = lit[:i]
		e, ok := new(big.Int).SetString(strings.TrimPrefix(lit[i+1:], "+"), 10)
		if !ok {
			t.Fatalf("exponent of %q", lit)
		}
		exp = int(e.Int64())
	}
	scale := 0
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		scale = len(mant) - i - 1
	}
	scale = max(0, scale-exp)
	r, ok := new(big.Rat).SetString(lit)
	if !ok {
		t.Fatalf("number %q", lit)
	}
	s := r.FloatString(scale)
	if strings.HasPrefix(s, "-") && strings.Trim(s, "-0.") == "" {
		s = s[1:] // numeric has no negative zero
	}
	return s
}

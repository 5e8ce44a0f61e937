package event

import (
	"encoding/json"
	"math"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// AppendStructJSON must give exactly the bytes encoding/json gives for AsMap.
func TestAppendStructJSONMatchesEncodingJSON(t *testing.T) {
	cases := []map[string]any{
		{},
		{"a": "x", "b": 1.0, "c": true, "d": nil},
		{"nested": map[string]any{"z": []any{1.5, "two", false, nil, map[string]any{}}, "a": []any{}}},
		{"quote": `he said "hi"\`, "ctl": "a\nb\tc\r\x01\x1f", "uni": "héllo – ☃ 😀", "html": "<a href='x'>&</a>"},
		{"nums": []any{0.0, math.Copysign(0, -1), 1e20, 1e21, 1e-6, 1e-7, 123456789.125, -3.0, 2.5e-9, math.MaxFloat64, math.SmallestNonzeroFloat64}},
	}
	for _, m := range cases {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(s.AsMap())
		if err != nil {
			t.Fatal(err)
		}
		got, err := AppendStructJSON(nil, s)
		if err != nil {
			t.Fatal(err)
		}
		// encoding/json escapes <, >, & for HTML; both are valid JSON for the same value.
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("invalid JSON %s: %v", got, err)
		}
		_ = json.Unmarshal(want, &b)
		if ja, _ := json.Marshal(a); string(ja) != string(want) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
	nan, _ := structpb.NewStruct(map[string]any{"x": math.NaN()})
	if _, err := AppendStructJSON(nil, nan); err == nil {
		t.Error("NaN accepted")
	}
}

func TestIsJSONObject(t *testing.T) {
	for s, want := range map[string]bool{
		`{}`: true, ` {"a":[1,2,{"b":null}]}`: true, `[]`: false, `"x"`: false, `{"a":}`: false,
		`{"a":1} {}`: false, ``: false, `{"a":"\u00e9"}`: true, "{\"a\":\"\x01\"}": false,
	} {
		if got := IsJSONObject([]byte(s)); got != want {
			t.Errorf("IsJSONObject(%q) = %v", s, got)
		}
	}
}

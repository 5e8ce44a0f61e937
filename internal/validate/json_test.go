package validate

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

func nest(open, close string, n int, inner string) string {
	return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
}

// The one rule for JSON data: each case is accepted or refused with the named rule.
func TestJSONObjectRules(t *testing.T) {
	cases := []struct {
		in   string
		rule string // "" accepted
	}{
		{`{}`, ""},
		{` {"a":[1,2,{"b":null}],"c":true,"d":false,"e":"x"} `, ""},
		{`{"a":"\u00e9\ud83d\ude00 é 😀","b":"\"\\\/\b\f\n\r\t"}`, ""},
		{`{"big":123456789012345678901234567890,"max":1.7976931348623157e308,"min":-1.7976931348623157e308,"tiny":5e-324,"z":0e-400,"neg":-0,"e":1E+2}`, ""},
		{nest(`{"a":`, `}`, 63, `{}`), ""},           // 64 levels
		{`{"a":` + nest(`[`, `]`, 63, ``) + `}`, ""}, // 64 levels
		{nest(`{"a":`, `}`, 64, `{}`), ruleDepth},
		{`{"a":` + nest(`[`, `]`, 64, ``) + `}`, ruleDepth},
		{nest(`{"a":`, `}`, 400, `{}`), ruleDepth},
		{`{"n":1e400}`, ruleNumber},
		{`{"n":-1e309}`, ruleNumber},
		{`{"n":1.8e308}`, ruleNumber},
		{`{"n":1e-400}`, ruleNumber},
		{`{"n":2e-324}`, ruleNumber},
		{`{"n":0e-401}`, ruleNumber},
		{`{"n":1` + strings.Repeat("0", 309) + `}`, ruleNumber},
		{`{"n":1` + strings.Repeat("0", 308) + `}`, ""},
		{`{"n":0.` + strings.Repeat("0", 400) + `}`, ""},
		{`{"n":0.` + strings.Repeat("0", 401) + `}`, ruleNumber},
		{`{"n":1.` + strings.Repeat("1", 350) + `e-50}`, ""},
		{`{"n":1.` + strings.Repeat("1", 351) + `e-50}`, ruleNumber},
		{`{"n":0.` + strings.Repeat("0", 323) + `5}`, ""},
		{`{"n":0.` + strings.Repeat("0", 324) + `1}`, ruleNumber},
		{`{"n":1.` + strings.Repeat("1", 1000) + `e400}`, ruleNumber},
		{`{"s":"a\u0000b"}`, ruleNUL},
		{`{"a\u0000":1}`, ruleNUL},
		{"{\"s\":\"\xff\"}", ruleUTF8},
		{"{\"\xed\xa0\x80\":1}", ruleUTF8}, // an encoded surrogate is not UTF-8
		{`{"s":"\ud800"}`, ruleSurrogate},
		{`{"s":"\ud800x"}`, ruleSurrogate},
		{`{"s":"\udc00\ud800"}`, ruleSurrogate},
		{`{"s":"\ud800\u0041"}`, ruleSurrogate},
		{`{"a":1,"a":2}`, ruleDupKey},
		{`{"a":1,"\u0061":2}`, ruleDupKey},
		{`{"a":{"x":1},"b":{"x":1}}`, ""},
		{`{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k\u0031":1}`, ruleDupKey},
		{`[]`, ruleObject},
		{`"x"`, ruleObject},
		{``, ruleObject},
		{`{"a":}`, ruleSyntax},
		{`{"a":1} {}`, ruleSyntax},
		{`{"a":01}`, ruleSyntax},
		{`{"a":1.}`, ruleSyntax},
		{`{"a":"\x"}`, ruleSyntax},
		{"{\"a\":\"\x01\"}", ruleSyntax},
		{`{"a":tru}`, ruleSyntax},
		{`{"a":1,}`, ruleSyntax},
		{`[1`, ruleSyntax},
	}
	for _, c := range cases {
		err := JSONObject("payload_json", []byte(c.in))
		switch {
		case c.rule == "" && err != nil:
			t.Errorf("%.80q refused: %v", c.in, err)
		case c.rule != "" && err == nil:
			t.Errorf("%.80q accepted, want %q", c.in, c.rule)
		case c.rule != "" && !strings.Contains(err.Error(), c.rule):
			t.Errorf("%.80q: %v, want %q", c.in, err, c.rule)
		case err != nil && !strings.HasPrefix(err.Error(), "payload_json: "):
			t.Errorf("%.80q: %v does not name the field", c.in, err)
		}
		// What is accepted is valid JSON that a Struct can hold.
		if err == nil {
			if !json.Valid([]byte(c.in)) {
				t.Errorf("%.80q accepted but not valid JSON", c.in)
			}
			if err := new(structpb.Struct).UnmarshalJSON([]byte(c.in)); err != nil {
				t.Errorf("%.80q accepted but not readable as a Struct: %v", c.in, err)
			}
		}
	}
}

// Errors give a byte position, never the data.
func TestJSONErrorsQuoteNoData(t *testing.T) {
	for _, in := range []string{`{"SECRET":1e999}`, `{"SECRET":1,"SECRET":2}`, `{"SECRET":"\u0000"}`, `{"SECRET"}`} {
		err := JSONObject("data", []byte(in))
		if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "at byte") {
			t.Errorf("%s: %v", in, err)
		}
	}
}

func TestStructRules(t *testing.T) {
	mk := func(v *structpb.Value) *structpb.Struct {
		return &structpb.Struct{Fields: map[string]*structpb.Value{"k": v}}
	}
	deep := func(n int) *structpb.Struct {
		s := &structpb.Struct{}
		for range n - 1 {
			s = mk(structpb.NewStructValue(s))
		}
		return s
	}
	list := func(n int) *structpb.Struct { // a Struct holding n-1 nested lists
		v := structpb.NewListValue(&structpb.ListValue{})
		for range n - 2 {
			v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
		}
		return mk(v)
	}
	cases := []struct {
		s    *structpb.Struct
		rule string
	}{
		{deep(64), ""},
		{list(64), ""},
		{deep(65), ruleDepth},
		{list(65), ruleDepth},
		{mk(structpb.NewNumberValue(math.MaxFloat64)), ""},
		{mk(structpb.NewNumberValue(math.NaN())), ruleNaN},
		{mk(structpb.NewNumberValue(math.Inf(-1))), ruleNaN},
		{mk(structpb.NewStringValue("a\x00b")), ruleNUL},
		{&structpb.Struct{Fields: map[string]*structpb.Value{"a\x00": structpb.NewNullValue()}}, ruleNUL},
		{mk(structpb.NewStringValue("é\xff")), ruleUTF8},
		{mk(structpb.NewStringValue("é😀")), ""},
	}
	for i, c := range cases {
		err := Struct("state", c.s)
		switch {
		case c.rule == "" && err != nil:
			t.Errorf("case %d refused: %v", i, err)
		case c.rule != "" && (err == nil || !strings.Contains(err.Error(), c.rule) || !strings.HasPrefix(err.Error(), "state: ")):
			t.Errorf("case %d: %v, want state: %q", i, err, c.rule)
		}
	}
}

func TestCanonicalUUID(t *testing.T) {
	for in, want := range map[string]string{
		"6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a": "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a",
		"6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A": "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a",
		"6f1c2a9e-8D1B-4a4e-9f0e-2b9c1d3e4f5A": "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a",
	} {
		if got, err := CanonicalUUID("tenant_id", in); err != nil || got != want {
			t.Errorf("%s: %q %v", in, got, err)
		}
	}
	for _, in := range []string{
		"", "00000000-0000-0000-0000-000000000000", "{6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a}",
		"urn:uuid:6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "6f1c2a9e8d1b4a4e9f0e2b9c1d3e4f5a",
		"6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5g", "6f1c2a9e-8d1b-4a4e-9f0e_2b9c1d3e4f5a",
	} {
		if got, err := CanonicalUUID("tenant_id", in); err == nil {
			t.Errorf("%q accepted as %q", in, got)
		} else if in != "" && strings.Contains(err.Error(), in) {
			t.Errorf("error quotes the input: %v", err)
		}
	}
	if got, err := CanonicalUUIDOrNil("tenant_id", "00000000-0000-0000-0000-000000000000"); err != nil || got != "00000000-0000-0000-0000-000000000000" {
		t.Errorf("nil tenant for dead letters: %q %v", got, err)
	}
}

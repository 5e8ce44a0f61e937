package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

func TestMergePatchRFC7386(t *testing.T) {
	// The examples of RFC 7386 appendix A, plus nested deletion and big numbers.
	cases := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
		{`{"id":9007199254740993}`, `{"n":1.50}`, `{"id":9007199254740993,"n":1.50}`},
	}
	for i, c := range cases {
		var a fastjson.Arena
		got := mergePatch(&a, fastjson.MustParse(c.target), fastjson.MustParse(c.patch)).MarshalTo(nil)
		if string(got) != c.want {
			t.Errorf("case %d: %s + %s = %s, want %s", i, c.target, c.patch, got, c.want)
		}
	}
}

// A fold starts from the snapshot, applies each event in order, and is {} when the
// result is not an object.
func TestFoldJSON(t *testing.T) {
	l := &Loaded{
		Snapshot: &Snapshot{State: []byte(`{"name":{"first":"Ada","last":"L"},"age":36}`)},
		Tail: []StoredEvent{
			{Data: []byte(`{"name":{"last":"Lovelace"},"phone":"+47 1"}`)},
			{Data: []byte(`{"age":null,"allergies":["penicillin"]}`)},
			{Data: []byte(`{"phone":"+47 2"}`)},
		},
	}
	got, err := FoldJSON(l)
	if want := `{"name":{"first":"Ada","last":"Lovelace"},"phone":"+47 2","allergies":["penicillin"]}`; err != nil || string(got) != want {
		t.Errorf("fold: %s (%v), want %s", got, err, want)
	}
	if got, err := FoldJSON(&Loaded{}); err != nil || string(got) != `{}` {
		t.Errorf("empty fold: %s (%v)", got, err)
	}
	if got, err := FoldJSON(&Loaded{Tail: []StoredEvent{{Data: []byte(`[1]`)}}}); err != nil || string(got) != `{}` {
		t.Errorf("a fold to a non-object: %s (%v), want {}", got, err)
	}
	if _, err := FoldJSON(&Loaded{Tail: []StoredEvent{{EventID: "e1", Data: []byte(`{`)}}}); err == nil {
		t.Error("malformed event data was folded")
	}
}

// Data stored before the write-time limits, nested deeper than fastjson parses (300),
// still folds (by encoding/json), numbers kept as written; data no parser reads is an
// *UnfoldableError that names the version, never the data.
func TestFoldJSONLegacyData(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 400) + `1` + strings.Repeat(`}`, 400)
	big := `1` + strings.Repeat("0", 400) // 1e400 as jsonb gives it back
	l := &Loaded{
		Snapshot: &Snapshot{Version: 3, State: []byte(`{"deep":` + deep + `,"keep":"x"}`)},
		Tail: []StoredEvent{
			{EventID: "e4", Version: 4, Data: []byte(`{"big":` + big + `,"keep":null}`)},
			{EventID: "e5", Version: 5, Data: []byte(`{"n":9007199254740993}`)},
		},
	}
	got, err := FoldJSON(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"big":` + big + `,"deep":` + deep + `,"n":9007199254740993}`
	if string(got) != want {
		t.Errorf("fold of legacy data: %.200s…", got)
	}
	_, err = FoldJSON(&Loaded{Tail: []StoredEvent{{EventID: "e1", Version: 1, Data: []byte(`{"a":1}`)}, {EventID: "e2", Version: 2, Data: []byte(`{"SECRET":`)}}})
	var ue *UnfoldableError
	if !errors.As(err, &ue) || ue.Version != 2 || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("unparseable data: %v", err)
	}
}

package store

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

// FuzzFoldJSON fuzzes the JSON merge-patch fold with the rule "accepted implies
// readable back": a snapshot and events that the writers accepted (validate.JSONObject)
// always fold, into a state the same rule accepts and a Struct can hold, equal to RFC
// 7386 applied to decoded values, and the encoding/json fallback agrees with it.
func FuzzFoldJSON(f *testing.F) {
	f.Add([]byte(`{"name":{"first":"Ada","last":"L"},"age":36}`), []byte(`{"name":{"last":"Lovelace"},"phone":"+47 1"}`), []byte(`{"age":null,"allergies":["penicillin"]}`))
	f.Add([]byte(`{"a":[1,2]}`), []byte(`{"a":{"b":null,"c":{"d":1e308}}}`), []byte(`{"a":null}`))
	f.Add([]byte(`{"id":9007199254740993,"n":1.50}`), []byte(`{"\u00e9":"\ud83d\ude00","n":0e-400}`), []byte(`{"":{"":{}}}`))
	f.Add([]byte(`{}`), []byte(`{"a":{"b":{"c":{"d":null}}}}`), []byte(`{"a":{"b":{"c":"x"}}}`))
	f.Fuzz(func(t *testing.T, snapshot, p1, p2 []byte) {
		for _, b := range [][]byte{snapshot, p1, p2} {
			if validate.JSONObject("data", b) != nil {
				return // no writer stores it
			}
		}
		l := &Loaded{Snapshot: &Snapshot{Version: 1, State: snapshot}, Tail: []StoredEvent{{Version: 2, Data: p1}, {Version: 3, Data: p2}}}
		got, err := FoldJSON(l)
		if err != nil {
			t.Fatalf("accepted data does not fold: %v", err)
		}
		if err := validate.JSONObject("state", got); err != nil {
			t.Fatalf("folded state %s is refused by the JSON rule: %v", got, err)
		}
		if err := new(structpb.Struct).UnmarshalJSON(got); err != nil {
			t.Fatalf("folded state %s is not readable as a Struct: %v", got, err)
		}
		want := decode(t, snapshot)
		for _, p := range [][]byte{p1, p2} {
			want = mergeAny(want, decode(t, p))
		}
		if !reflect.DeepEqual(decode(t, got), want) {
			t.Fatalf("fold %s, RFC 7386 gives %v", got, want)
		}
		slow, err := foldSlow(l)
		if err != nil || !reflect.DeepEqual(decode(t, slow), want) {
			t.Fatalf("the encoding/json fold %s (%v) disagrees", slow, err)
		}
	})
}

func decode(t *testing.T, b []byte) any {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

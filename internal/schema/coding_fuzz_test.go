package schema

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

// FuzzAvroCoding fuzzes the Avro payload coding with the rule "accepted implies
// readable back": a payload_json that passes the JSON rule and the schema encodes to
// Confluent wire format that DecodeJSON (what a subscriber gets) turns back into JSON
// the rule accepts, readable as a Struct, and encoding that JSON again gives the same
// bytes. A refusal is always a *validate.Error that quotes no value.
func FuzzAvroCoding(f *testing.F) {
	for _, s := range []string{
		`{"result_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","status":"FINAL","value":5.25,"count":9007199254740993,"collected_on":"2024-03-01","reported_at":"2024-03-01T10:00:00Z","flags":{"abnormal":true},"codes":["A1","B2"],"ref":"x-1","lab":{"name":"Central","site":3}}`,
		`{"result_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","status":"PRELIMINARY","value":-1e308,"count":-1,"collected_on":19000,"reported_at":1700000000000,"flags":{},"codes":[],"note":"é","ref":7,"lab":{"name":"","site":-2147483648}}`,
		`{"result_id":"x","status":"NOPE","value":"1","count":1.5,"collected_on":"2024-13-01","reported_at":"yesterday","flags":{"k":1},"codes":[1],"ref":true,"lab":{}}`,
		`{"result_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","status":"FINAL","value":5e-324,"count":9223372036854775807,"collected_on":-719162,"reported_at":"9999-12-31T23:59:59.999Z","flags":{"\u00e9":false},"codes":["\ud83d\ude00"],"ref":null,"lab":{"name":"L","site":2147483647},"extra":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"d":"2024-02-29","tm":45296789,"tu":45296789012,"ts":"2024-02-29T12:34:56.789Z","tsu":"2024-02-29T12:34:56.789012Z","f":1.5,"b":"bytes é","x":"abcd","u":1}`))
	f.Add([]byte(`{"d":-1,"tm":0,"tu":-1,"ts":-1,"tsu":null,"f":3.4e38,"b":"","x":"\u00e9\u00e9","u":"s"}`))
	r := &Registry{byID: map[int]avro.Schema{}, byType: map[string]*Schema{}}
	var schemas []*Schema
	for id, text := range map[int]string{42: labSchema, 43: logicalSchema} {
		parsed, err := avro.Parse(text)
		if err != nil {
			f.Fatal(err)
		}
		r.byID[id] = parsed
		schemas = append(schemas, &Schema{ID: id, Subject: "s", avro: parsed})
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if validate.JSONObject("payload_json", payload) != nil {
			return // refused before the schema (event.Normalize)
		}
		for _, s := range schemas {
			roundTrip(t, r, s, payload)
		}
	})
}

const logicalSchema = `{"type":"record","name":"T","fields":[
 {"name":"d","type":{"type":"int","logicalType":"date"}},
 {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
 {"name":"tu","type":{"type":"long","logicalType":"time-micros"}},
 {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"tsu","type":["null",{"type":"long","logicalType":"timestamp-micros"}]},
 {"name":"f","type":"float"},
 {"name":"b","type":"bytes"},
 {"name":"x","type":{"type":"fixed","name":"F4","size":4}},
 {"name":"u","type":["null","int","string"],"default":null}]}`

func roundTrip(t *testing.T, r *Registry, s *Schema, payload []byte) {
	b, err := s.Encode(payload, nil)
	if err != nil {
		var ve *validate.Error
		if !errors.As(err, &ve) {
			t.Fatalf("refusal is not a *validate.Error: %T %v", err, err)
		}
		return
	}
	{
		js, err := r.DecodeJSON(context.Background(), b)
		if err != nil {
			t.Fatalf("encoded %q, cannot decode it: %v", payload, err)
		}
		if err := validate.JSONObject("decoded", js); err != nil {
			t.Fatalf("decoded %s, which the JSON rule refuses: %v", js, err)
		}
		if err := new(structpb.Struct).UnmarshalJSON(js); err != nil {
			t.Fatalf("decoded %s, not readable as a Struct: %v", js, err)
		}
		again, err := s.Encode(js, nil)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded %s encodes differently (%v)", js, err)
		}
	}
}

// Logical types come back in the form Encode takes: a subscriber can publish what it
// got again.
func TestDecodeLogicalTypesRoundTrip(t *testing.T) {
	parsed, err := avro.Parse(`{"type":"record","name":"T","fields":[
	 {"name":"d","type":{"type":"int","logicalType":"date"}},
	 {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
	 {"name":"tu","type":{"type":"long","logicalType":"time-micros"}},
	 {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
	 {"name":"tsu","type":["null",{"type":"long","logicalType":"timestamp-micros"}]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	s := &Schema{ID: 7, avro: parsed}
	r := &Registry{byID: map[int]avro.Schema{7: parsed}}
	b, err := s.Encode([]byte(`{"d":"2024-02-29","tm":45296789,"tu":45296789012,"ts":"2024-02-29T12:34:56.789Z","tsu":"2024-02-29T12:34:56.789012Z"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	js, err := r.DecodeJSON(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"d":"2024-02-29","tm":45296789,"ts":"2024-02-29T12:34:56.789Z","tsu":"2024-02-29T12:34:56.789012Z","tu":45296789012}`
	if string(js) != want {
		t.Errorf("decoded %s\nwant    %s", js, want)
	}
	if again, err := s.Encode(js, nil); err != nil || !bytes.Equal(again, b) {
		t.Errorf("encoded again: %v", err)
	}
}

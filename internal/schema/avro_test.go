package schema

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

const labSchema = `{"type":"record","name":"LabResult","namespace":"healthtech.clinical","fields":[
 {"name":"result_id","type":{"type":"string","logicalType":"uuid"}},
 {"name":"status","type":{"type":"enum","name":"Status","symbols":["PRELIMINARY","FINAL"]}},
 {"name":"value","type":"double"},
 {"name":"count","type":"long"},
 {"name":"collected_on","type":{"type":"int","logicalType":"date"}},
 {"name":"reported_at","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"flags","type":{"type":"map","values":"boolean"}},
 {"name":"codes","type":{"type":"array","items":"string"}},
 {"name":"note","type":["null","string"],"default":null},
 {"name":"ref","type":["null","int","string"],"default":null},
 {"name":"lab","type":{"type":"record","name":"Lab","fields":[{"name":"name","type":"string"},{"name":"site","type":"int"}]}}]}`

func mustSchema(t *testing.T, text string) *Schema {
	t.Helper()
	s, err := avro.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return &Schema{ID: 42, Subject: "s", avro: s}
}

func TestEncodeRoundTrip(t *testing.T) {
	s := mustSchema(t, labSchema)
	payload := `{"result_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","status":"FINAL","value":5.25,"count":9007199254740993,
	 "collected_on":"2024-03-01","reported_at":"2024-03-01T10:00:00Z","flags":{"abnormal":true},"codes":["A1","B2"],
	 "ref":"x-1","lab":{"name":"Central","site":3}}`
	b, err := s.Encode([]byte(payload), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != 0 || binary.BigEndian.Uint32(b[1:5]) != 42 {
		t.Fatalf("header % x", b[:5])
	}
	var got map[string]any
	if err := avro.Unmarshal(s.avro, b[5:], &got); err != nil {
		t.Fatal(err)
	}
	if got["count"] != int64(9007199254740993) {
		t.Errorf("long lost precision: %v", got["count"])
	}
	if got["status"] != "FINAL" || got["value"] != 5.25 || got["note"] != nil {
		t.Errorf("decoded %v", got)
	}
	if lab, _ := got["lab"].(map[string]any); lab["site"] != 3 {
		t.Errorf("nested record %v", got["lab"])
	}
	// The same through a Struct (numbers are float64 there).
	st, err := structpb.NewStruct(map[string]any{
		"result_id": "1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d", "status": "PRELIMINARY",
		"value": 1.0, "count": 2.0, "collected_on": 19000.0, "reported_at": 1.7e12, "flags": map[string]any{}, "codes": []any{},
		"ref": 7.0, "lab": map[string]any{"name": "L", "site": 1.0},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Encode(nil, st); err != nil {
		t.Fatalf("struct payload: %v", err)
	}
}

func TestEncodeErrorsNameTheFieldNotTheValue(t *testing.T) {
	s := mustSchema(t, labSchema)
	base := `"result_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","value":1,"count":1,"collected_on":1,"reported_at":1,"flags":{},"codes":[],"lab":{"name":"n","site":1}`
	for name, tc := range map[string]struct {
		payload string
		field   string
	}{
		"enum":         {`{` + base + `,"status":"SECRET-VALUE"}`, "payload.status"},
		"missing":      {`{"status":"FINAL"}`, "payload.result_id"},
		"nested":       {`{` + strings.Replace(base, `"site":1`, `"site":"SECRET-VALUE"`, 1) + `,"status":"FINAL"}`, "payload.lab.site"},
		"map value":    {`{` + strings.Replace(base, `"flags":{}`, `"flags":{"SECRET-KEY":"SECRET-VALUE"}`, 1) + `,"status":"FINAL"}`, "payload.flags.*"},
		"array item":   {`{` + strings.Replace(base, `"codes":[]`, `"codes":[1]`, 1) + `,"status":"FINAL"}`, "payload.codes[0]"},
		"date":         {`{` + strings.Replace(base, `"collected_on":1`, `"collected_on":"SECRET-VALUE"`, 1) + `,"status":"FINAL"}`, "payload.collected_on"},
		"int overflow": {`{` + strings.Replace(base, `"site":1`, `"site":3000000000`, 1) + `,"status":"FINAL"}`, "payload.lab.site"},
		"union":        {`{` + base + `,"status":"FINAL","ref":true}`, "payload.ref"},
		"unknown":      {`{` + base + `,"status":"FINAL","SECRET-KEY":1}`, "payload"},
		"unknown deep": {`{` + strings.Replace(base, `"site":1`, `"site":1,"SECRET-KEY":2`, 1) + `,"status":"FINAL"}`, "payload.lab"},
		"null":         {`{` + strings.Replace(base, `"value":1`, `"value":null`, 1) + `,"status":"FINAL"}`, "payload.value"},
	} {
		_, err := s.Encode([]byte(tc.payload), nil)
		var ve *validate.Error
		if !errors.As(err, &ve) {
			t.Errorf("%s: %v, want a validation error", name, err)
			continue
		}
		if ve.Field != tc.field {
			t.Errorf("%s: field %q, want %q (%v)", name, ve.Field, tc.field, err)
		}
		// Neither the value nor a key the caller chose: field paths hold the schema's
		// own field names.
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: the error quotes the caller's data: %v", name, err)
		}
	}
}

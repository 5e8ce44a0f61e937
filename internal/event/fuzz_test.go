package event

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

// FuzzNormalize fuzzes the checks of a published event (ids, event type, timestamp,
// metadata, payload) with the rule "accepted implies readable back": what Normalize
// accepts has canonical ids, a type and metadata a consumer can route by, a time that
// RFC 3339 (ce_time) carries and gives back, and a payload a Struct can hold.
func FuzzNormalize(f *testing.F) {
	f.Add("", "patient.created", "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "prm-service", "ward", "a", int64(0), int32(0), []byte(`{"a":1}`))
	f.Add("0B8F7F0E-3F36-4A8C-9C77-8A1B2C3D4E5F", "clinical.lab_result.v2", "6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A", "", "x1", "é", int64(253402300799), int32(999999999), []byte(`{"n":1e308}`))
	f.Add("{0b8f7f0e-3f36-4a8c-9c77-8a1b2c3d4e5f}", "Patient.Created", "00000000-0000-0000-0000-000000000000", "a b", "Bad-Key", "a\x00", int64(253402300800), int32(0), []byte(`{"n":1e400}`))
	f.Add("urn:uuid:0b8f7f0e-3f36-4a8c-9c77-8a1b2c3d4e5f", "patient.", "6f1c2a9e8d1b4a4e9f0e2b9c1d3e4f5a", "s", "tenantid", "\xff", int64(-62135596801), int32(-1), []byte(`{"s":"\ud800"}`))
	f.Fuzz(func(t *testing.T, id, typ, tenant, source, mdKey, mdVal string, sec int64, nsec int32, payload []byte) {
		e := Event{ID: id, Type: typ, TenantID: tenant, Source: source, PayloadJSON: payload, Metadata: map[string]string{mdKey: mdVal}}
		if sec != 0 || nsec != 0 {
			e.Time = time.Unix(sec, int64(nsec))
		}
		now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
		err := e.Normalize("svc", Limits{MaxEventBytes: 1 << 20}, now)
		if err != nil {
			if _, ok := err.(*validate.Error); !ok {
				t.Fatalf("not a *validate.Error: %T %v", err, err)
			}
			// Errors never echo a metadata key or value.
			if len(mdKey) > 3 && strings.Contains(err.Error(), mdKey) && !reserved[mdKey] {
				t.Fatalf("error echoes the metadata key: %v", err)
			}
			return
		}
		for _, u := range []string{e.ID, e.TenantID} {
			p, err := uuid.Parse(u)
			if err != nil || p.String() != u || p == uuid.Nil {
				t.Fatalf("accepted id %q is not canonical", u)
			}
		}
		if id != "" && !strings.EqualFold(id, e.ID) {
			t.Fatalf("id %q became %q", id, e.ID)
		}
		if !validate.IsEventType(e.Type) || len(e.Type) > 100 {
			t.Fatalf("accepted event type %q", e.Type)
		}
		ts := e.Time.UTC().Format(time.RFC3339Nano)
		back, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || !back.Equal(e.Time) || len(ts) < 20 || ts[4] != '-' {
			t.Fatalf("time %v is not carried by ce_time %q: %v", e.Time, ts, err)
		}
		for k, v := range e.Metadata {
			if !isExtensionName(k) || reserved[k] || !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("accepted metadata %q=%q", k, v)
			}
		}
		if err := new(structpb.Struct).UnmarshalJSON(e.PayloadJSON); err != nil {
			t.Fatalf("accepted payload %q is not readable as a Struct: %v", e.PayloadJSON, err)
		}
		if hs := e.Headers(""); len(hs) < 8 {
			t.Fatalf("%d headers", len(hs))
		}
	})
}

// FuzzStructJSON fuzzes the Struct → JSON coding: AppendStructJSON accepts exactly
// what validate.Struct accepts, and what it writes is accepted JSON that reads back as
// the same Struct.
func FuzzStructJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,"x",true,null,{"b":-0.5}]}`, `{"s":"\u00e9 \ud83d\ude00 \" \\ \n"}`, `{"n":1e308,"m":5e-324,"k":123456789012345678}`} {
		f.Add([]byte(s), "", 0)
	}
	f.Add([]byte(`{"a":{}}`), "a\x00b", 70)
	f.Add([]byte(`{}`), "\xffé", 1)
	f.Fuzz(func(t *testing.T, js []byte, str string, depth int) {
		st := &structpb.Struct{}
		if st.UnmarshalJSON(js) != nil {
			return
		}
		// Add a string (any bytes: Go callers are not held to proto's UTF-8) at a depth.
		depth = min(max(depth, 0), 80)
		inner := &structpb.Struct{Fields: map[string]*structpb.Value{"s": {Kind: &structpb.Value_StringValue{StringValue: str}}}}
		for range depth {
			inner = &structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewStructValue(inner)}}
		}
		if st.Fields == nil {
			st.Fields = map[string]*structpb.Value{}
		}
		st.Fields["added"] = structpb.NewStructValue(inner)

		out, err := AppendStructJSON(nil, st)
		verr := validate.Struct("payload", st)
		if (err == nil) != (verr == nil) {
			t.Fatalf("AppendStructJSON %v, validate.Struct %v", err, verr)
		}
		if err != nil {
			return
		}
		if err := validate.JSONObject("payload_json", out); err != nil {
			t.Fatalf("wrote %q, which the JSON rule refuses: %v", out, err)
		}
		back := &structpb.Struct{}
		if err := back.UnmarshalJSON(out); err != nil {
			t.Fatalf("wrote %q, not readable: %v", out, err)
		}
		again, err := AppendStructJSON(nil, back)
		if err != nil || string(again) != string(out) {
			t.Fatalf("not the same after a round trip:\n%s\n%s", out, again)
		}
	})
}

// FuzzStoredMetadata: a metadata key and value AppendEvents accepts as an extension
// (lowercase letters, digits and _, CheckStoredMetadataKey) are publishable through the
// outbox: SetStoredMetadata makes an envelope Normalize accepts. (Keys that fill
// envelope attributes, such as correlation_id, are checked at append time by
// Normalize itself.)
func FuzzStoredMetadata(f *testing.F) {
	for _, k := range []string{"ward", "correlation_id", "user_id", "tenant_id", "clinical_trial_site", "a_b_c_d_e_f_g_h_i_j_k_l_m", "_", "x1"} {
		f.Add(k, "v")
	}
	f.Add("ward", strings.Repeat("é", 512))
	f.Fuzz(func(t *testing.T, k, v string) {
		if _, envelope := storedEnvelope[k]; envelope || !storedKey(k) || CheckStoredMetadataKey(k) != nil || validate.Text("metadata", v, maxMetadataValue) != nil {
			return
		}
		e := Event{Type: "patient.updated", TenantID: "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", PayloadJSON: []byte(`{}`)}
		e.SetStoredMetadata(map[string]string{k: v})
		if err := e.Normalize("svc", Limits{MaxEventBytes: 1024}, time.Unix(1, 0)); err != nil {
			t.Fatalf("stored metadata %q=%q is not publishable: %v", k, v, err)
		}
	})
}

// storedKey is AppendEvents' key form (server.validMetaKey).
func storedKey(k string) bool {
	if k == "" || len(k) > 40 || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

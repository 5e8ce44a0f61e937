package redact_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

const secret = "Jane-Doe-1984"

// The errors of the libraries on paths that carry event data quote it; Describe keeps
// their class and code and drops their text. The gateway's own errors keep their text.
func TestDescribeDropsQuotedData(t *testing.T) {
	_, fjErr := fastjson.Parse(`{"name":"` + secret + `"`)
	pjErr := new(structpb.Struct).UnmarshalJSON([]byte(`{"name":` + secret + `}`))
	jsErr := json.Unmarshal([]byte(`{"name":`+secret+`}`), new(any))
	_, numErr := strconv.ParseFloat(secret, 64)
	for _, tc := range []struct {
		name string
		err  error
		want []string // substrings of the description
	}{
		{"fastjson", fmt.Errorf("snapshot state: %w", fjErr), []string{"*fmt.wrapError"}},
		{"protojson", pjErr, nil},
		{"encoding/json", jsErr, []string{"*json.SyntaxError"}},
		{"strconv", numErr, []string{"*strconv.NumError"}},
		{"pgx", fmt.Errorf("insert: %w", &pgconn.PgError{Code: "22P05", Message: "unsupported Unicode escape", Detail: secret, Where: "JSON data, line 1: " + secret}), []string{"SQLSTATE 22P05"}},
		{"store", fmt.Errorf("load: %w", &store.DBError{Op: "append", Code: "23505", Constraint: "stored_events_pkey"}), []string{"append: postgres 23505 (constraint stored_events_pkey)"}},
		{"sentinel", fmt.Errorf("x: %w", store.ErrNotFound), []string{"aggregate not found"}},
		{"validate", validate.Errorf("payload.lab", "is not a field"), []string{"payload.lab: is not a field"}},
		{"context", fmt.Errorf("read: %w", context.DeadlineExceeded), []string{"context deadline exceeded"}},
		{"errno", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), []string{"connection refused"}},
		{"joined", errors.Join(errors.New(secret), store.ErrNotFound), []string{"aggregate not found"}},
	} {
		got := redact.Describe(tc.err)
		if strings.Contains(got, secret) || got == "" {
			t.Errorf("%s: %q", tc.name, got)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q, want %q in it", tc.name, got, w)
			}
		}
	}
	if redact.Describe(nil) != "" {
		t.Error("nil described")
	}
}

package deadletter_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// The store's failed_events queries, on the rows the writer leaves (inserted here
// directly so that failed_at can be chosen: ties included).

const otherTenant = "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"

func insertRow(t *testing.T, f *store.FailedEvents, tenantID, typ, sub string, at time.Time) string {
	t.Helper()
	id := uuid.NewString()
	ok, err := f.Insert(context.Background(), &store.FailedEvent{
		ID: id, TenantID: tenantID, EventID: uuid.NewString(), EventType: typ, Payload: []byte(`{"n":1}`),
		ErrorType: "E", ErrorMessage: "m", FailedAt: at, Subscription: sub, Topic: "healthtech.patient.events",
		Partition: 0, Offset: 1, DLQTopic: "healthtech.dlq.patient", RecordKey: []byte("k"), RecordValue: []byte(`{"n":1}`),
		RecordHeaders: []store.RecordHeader{{Key: "ce_id", Value: []byte("x")}, {Key: "empty", Value: nil}},
	})
	if err != nil || !ok {
		t.Fatalf("insert: %v %v", ok, err)
	}
	return id
}

// listAll pages through flt with pageSize and returns the ids in order; it fails on a
// page over the size or a repeated id.
func listAll(t *testing.T, f *store.FailedEvents, flt store.FailedFilter, pageSize int) []string {
	t.Helper()
	flt.PageSize = pageSize
	var ids []string
	seen := map[string]bool{}
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("paging does not end")
		}
		rows, next, err := f.List(ctxT(t), flt)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) > pageSize {
			t.Fatalf("page of %d rows, size %d", len(rows), pageSize)
		}
		for _, r := range rows {
			if seen[r.ID] {
				t.Fatalf("row %s listed twice", r.ID)
			}
			seen[r.ID] = true
			ids = append(ids, r.ID)
		}
		if next == "" {
			return ids
		}
		flt.PageToken = next
	}
}

func TestFailedEventsListFiltersAndPages(t *testing.T) {
	e := newEnv(t)
	f := e.failed
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	type rec struct {
		id, typ, sub string
		at           time.Time
		resolved     bool
	}
	var mine []rec
	for i := range 23 {
		typ, sub := "patient.created", "billing"
		if i%3 == 0 {
			typ = "appointment.booked"
		}
		if i%2 == 0 {
			sub = "audit"
		}
		// Pairs of rows share a failed_at: paging must order ties by id.
		at := base.Add(time.Duration(i/2) * time.Minute)
		mine = append(mine, rec{id: insertRow(t, f, tenant, typ, sub, at), typ: typ, sub: sub, at: at})
	}
	insertRow(t, f, otherTenant, "patient.created", "billing", base)
	for _, i := range []int{4, 11} {
		if err := f.Resolve(ctxT(t), tenant, mine[i].id); err != nil {
			t.Fatal(err)
		}
		mine[i].resolved = true
	}
	// Newest first, ties by id descending.
	slices.SortFunc(mine, func(a, b rec) int {
		if c := b.at.Compare(a.at); c != 0 {
			return c
		}
		return -compareUUID(a.id, b.id)
	})
	want := func(keep func(rec) bool) []string {
		var out []string
		for _, r := range mine {
			if keep(r) {
				out = append(out, r.id)
			}
		}
		return out
	}
	cases := []struct {
		name string
		flt  store.FailedFilter
		keep func(rec) bool
	}{
		{"unresolved", store.FailedFilter{}, func(r rec) bool { return !r.resolved }},
		{"with resolved", store.FailedFilter{IncludeResolved: true}, func(rec) bool { return true }},
		{"event type", store.FailedFilter{EventType: "appointment.booked"}, func(r rec) bool { return !r.resolved && r.typ == "appointment.booked" }},
		{"subscription", store.FailedFilter{Subscription: "billing", IncludeResolved: true}, func(r rec) bool { return r.sub == "billing" }},
		{
			"time range", store.FailedFilter{FailedAfter: base.Add(2 * time.Minute), FailedBefore: base.Add(7 * time.Minute)},
			func(r rec) bool {
				return !r.resolved && !r.at.Before(base.Add(2*time.Minute)) && r.at.Before(base.Add(7*time.Minute))
			},
		},
		{"none", store.FailedFilter{EventType: "lab.ordered"}, func(rec) bool { return false }},
	}
	for _, c := range cases {
		for _, size := range []int{1, 4, 7, 100} {
			t.Run(fmt.Sprintf("%s/page %d", c.name, size), func(t *testing.T) {
				flt := c.flt
				flt.TenantID = tenant
				got := listAll(t, f, flt, size)
				if w := want(c.keep); !slices.Equal(got, w) {
					t.Errorf("listed\n%v\nwant\n%v", got, w)
				}
			})
		}
	}

	// A row dead-lettered while a client pages is newer: it does not shift the pages.
	rows, next, err := f.List(ctxT(t), store.FailedFilter{TenantID: tenant, PageSize: 5})
	if err != nil || next == "" || len(rows) != 5 {
		t.Fatalf("first page: %d rows, next %q, %v", len(rows), next, err)
	}
	insertRow(t, f, tenant, "patient.created", "billing", time.Now())
	rest := listAll(t, f, store.FailedFilter{TenantID: tenant, PageToken: next}, 5)
	if w := want(func(r rec) bool { return !r.resolved })[5:]; !slices.Equal(rest, w) {
		t.Errorf("pages after a concurrent insert:\n%v\nwant\n%v", rest, w)
	}

	// Rows come back whole.
	rows, _, err = f.List(ctxT(t), store.FailedFilter{TenantID: otherTenant, PageSize: 10})
	if err != nil || len(rows) != 1 {
		t.Fatalf("other tenant: %v %v", rows, err)
	}
	r := rows[0]
	if r.TenantID != otherTenant || r.EventType != "patient.created" || string(r.Payload) != `{"n": 1}` || r.ErrorType != "E" ||
		r.ErrorMessage != "m" || !r.FailedAt.Equal(base) || r.Subscription != "billing" || r.Topic != "healthtech.patient.events" ||
		r.Partition != 0 || r.Offset != 1 || r.DLQTopic != "healthtech.dlq.patient" || r.Retried || r.Resolved {
		t.Errorf("row %+v", r)
	}

	// Malformed tokens are the caller's mistake.
	for _, tok := range []string{"x", "!!!", next[:len(next)-2], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		_, _, err := f.List(ctxT(t), store.FailedFilter{TenantID: tenant, PageSize: 5, PageToken: tok})
		var ve *validate.Error
		if !errors.As(err, &ve) || ve.Field != "page_token" {
			t.Errorf("token %q: %v, want a validate error on page_token", tok, err)
		}
	}
}

func compareUUID(a, b string) int {
	ua, ub := uuid.MustParse(a), uuid.MustParse(b)
	return slices.Compare(ua[:], ub[:])
}

func TestFailedEventsRetryableMarkAndResolve(t *testing.T) {
	e := newEnv(t)
	f := e.failed
	now := time.Now()
	a1 := insertRow(t, f, tenant, "patient.created", "s", now)
	a2 := insertRow(t, f, tenant, "patient.created", "s", now)
	b1 := insertRow(t, f, otherTenant, "patient.created", "s", now)

	rows, err := f.Retryable(ctxT(t), tenant, []string{a2, a1})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].ID != a2 || rows[1].ID != a1 || !rows[0].HasRecord || string(rows[0].RecordKey) != "k" ||
		string(rows[0].RecordValue) != `{"n":1}` || len(rows[0].RecordHeaders) != 2 ||
		rows[0].RecordHeaders[0].Key != "ce_id" || string(rows[0].RecordHeaders[0].Value) != "x" ||
		rows[0].RecordHeaders[1].Key != "empty" || rows[0].RecordHeaders[1].Value != nil {
		t.Fatalf("retryable rows %+v", rows)
	}
	// Another tenant's row and an unknown id are not found.
	for _, ids := range [][]string{{a1, b1}, {uuid.NewString()}} {
		if _, err := f.Retryable(ctxT(t), tenant, ids); !errors.Is(err, store.ErrFailedEventNotFound) {
			t.Errorf("retryable %v: %v, want not found", ids, err)
		}
	}
	if err := f.Resolve(ctxT(t), tenant, b1); !errors.Is(err, store.ErrFailedEventNotFound) {
		t.Errorf("resolve of another tenant's row: %v", err)
	}

	if err := f.MarkRetried(ctxT(t), tenant, []string{a1, b1}); err != nil {
		t.Fatal(err)
	}
	if err := f.MarkRetried(ctxT(t), tenant, []string{a1}); err != nil {
		t.Fatal(err)
	}
	got := readRow(t, e.pool, a1)
	if !got.Retried || got.RetriesPublished != 2 {
		t.Errorf("after two retries: retried %v, retries_published %d", got.Retried, got.RetriesPublished)
	}
	if got := readRow(t, e.pool, b1); got.Retried || got.RetriesPublished != 0 {
		t.Errorf("another tenant's row marked retried")
	}

	if err := f.Resolve(ctxT(t), tenant, a1); err != nil {
		t.Fatal(err)
	}
	var first time.Time
	if err := e.pool.QueryRow(ctxT(t), `SELECT resolved_at FROM failed_events WHERE id = $1`, a1).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := f.Resolve(ctxT(t), tenant, a1); err != nil {
		t.Fatalf("resolving again: %v", err)
	}
	var again time.Time
	if err := e.pool.QueryRow(ctxT(t), `SELECT resolved_at FROM failed_events WHERE id = $1`, a1).Scan(&again); err != nil {
		t.Fatal(err)
	}
	if !again.Equal(first) {
		t.Errorf("resolved_at moved from %v to %v", first, again)
	}
	if _, err := f.Retryable(ctxT(t), tenant, []string{a2, a1}); !errors.Is(err, store.ErrFailedEventResolved) {
		t.Errorf("retryable with a resolved row: %v", err)
	}
}

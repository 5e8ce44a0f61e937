package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventgw/eventgw/internal/store"
)

// Pages bounded by bytes: each page stops at the event that brings it to the budget
// (so it holds less than the budget plus one event, and a single bigger event makes a
// page alone), the next page continues after it, and every event comes once, in order,
// also with a row limit and a replay limit across cut pages.
func TestPagesBoundedInBytes(t *testing.T) {
	pool := newPool(t)
	ev := store.NewEvents(pool)
	ctx := context.Background()
	tenant, agg := uuid.NewString(), uuid.NewString()
	const budget = 20 << 10
	var want []string
	for i := range 300 {
		n := 10
		switch {
		case i%50 == 7:
			n = 3 * budget // over the budget: alone
		case i%7 == 0:
			n = 6 << 10
		}
		id := uuid.NewString()
		req := store.AppendRequest{
			TenantID: tenant, AggregateType: "Patient", AggregateID: agg, Expected: store.ExpectAny,
			Events: []store.NewEvent{{ID: id, Type: "patient.updated", Data: []byte(fmt.Sprintf(`{"i":%d,"s":"%s"}`, i, strings.Repeat("x", n))), OccurredAt: time.Now()}},
		}
		if _, err := ev.Append(ctx, req); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	check := func(what string, lim store.PageLimit, limit int, read func(func([]store.StoredEvent) error) error) {
		t.Helper()
		var got []string
		pages := 0
		err := read(func(page []store.StoredEvent) error {
			pages++
			if len(page) > lim.Rows {
				t.Errorf("%s: page of %d rows, over %d", what, len(page), lim.Rows)
			}
			size := 0
			for i := range page {
				if i > 0 && size >= budget {
					t.Errorf("%s: page goes on after reaching %d bytes", what, size)
				}
				size += store.EventBytes(&page[i])
				got = append(got, page[i].EventID)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != strings.Join(want[:limit], ",") {
			t.Fatalf("%s: %d events, want the first %d appended, once each and in order", what, len(got), limit)
		}
		if pages < 10 {
			t.Errorf("%s: %d pages", what, pages)
		}
	}
	for _, lim := range []store.PageLimit{{Rows: 1000, Bytes: budget}, {Rows: 3, Bytes: budget}} {
		check(fmt.Sprintf("ReadAggregatePages %+v", lim), lim, len(want), func(fn func([]store.StoredEvent) error) error {
			return ev.ReadAggregatePages(ctx, tenant, agg, 1, lim, fn)
		})
		check(fmt.Sprintf("ReplayPages %+v", lim), lim, len(want), func(fn func([]store.StoredEvent) error) error {
			return ev.ReplayPages(ctx, store.ReplayFilter{TenantID: tenant}, lim, fn)
		})
		check(fmt.Sprintf("ReplayPages %+v limit 123", lim), lim, 123, func(fn func([]store.StoredEvent) error) error {
			return ev.ReplayPages(ctx, store.ReplayFilter{TenantID: tenant, Limit: 123}, lim, fn)
		})
	}
}

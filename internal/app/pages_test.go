package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
)

// TestBigEventsStreamInBoundedPages: ReadAggregate and ReplayEvents pages are bounded in
// bytes, not only in rows. An aggregate of big events (strings near 700 KiB, objects
// of 40,000 keys whose Structs are larger than their JSON, events of 2.5 MiB, small
// ones between) streams to a client with gRPC's default 4 MiB receive limit, in both
// data modes: every message stays within the page budget unless it holds one event, and
// every event comes exactly once, in order. (With pages of 500 or 1000 rows the first
// message was tens of MiB and the client refused it.)
func TestBigEventsStreamInBoundedPages(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.MaxEventBytes = 3 << 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tenant, agg := "3b1e4f5a-9c2d-4e6f-8a7b-1c2d3e4f5a6b", "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"
	var want []string
	appendJSON := func(data string) {
		t.Helper()
		r, err := s.store.AppendEvents(ctx, appendReq(tenant, agg, anyVersion, &eventgwv1.NewEvent{
			EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(data)},
		}))
		if err != nil {
			t.Fatalf("append %d: %v", len(want)+1, err)
		}
		want = append(want, r.GetEventIds()...)
	}
	var keys strings.Builder
	for k := range 40000 {
		if k > 0 {
			keys.WriteByte(',')
		}
		fmt.Fprintf(&keys, `"k%d":%d`, k, k)
	}
	for i := range 12 {
		switch {
		case i%6 == 5:
			appendJSON(`{"note":"` + strings.Repeat("n", 5<<19) + `"}`) // 2.5 MiB: alone in its message
		case i%3 == 1:
			appendJSON("{" + keys.String() + "}")
		default:
			appendJSON(`{"note":"` + strings.Repeat("x", 700<<10) + `"}`)
		}
		for j := range 5 {
			appendJSON(fmt.Sprintf(`{"i":%d,"j":%d}`, i, j))
		}
	}
	const budget = 1 << 20
	check := func(what string, msgs [][]*eventgwv1.StoredEvent, size func(int) int) {
		t.Helper()
		var got []string
		seen := map[string]bool{}
		for m, evs := range msgs {
			if n := size(m); n > budget && len(evs) > 1 {
				t.Errorf("%s: message %d holds %d events in %d bytes, over the %d-byte page", what, m, len(evs), n, budget)
			}
			for _, e := range evs {
				if seen[e.GetEventId()] {
					t.Fatalf("%s: event %s sent twice", what, e.GetEventId())
				}
				seen[e.GetEventId()] = true
				got = append(got, e.GetEventId())
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("%s: %d events (in another order or with some missing), want the %d appended in order", what, len(got), len(want))
		}
		if len(msgs) < 10 {
			t.Errorf("%s: %d messages for %d big events", what, len(msgs), len(want)/6)
		}
	}
	for _, asJSON := range []bool{false, true} {
		mode := fmt.Sprintf("data_as_json=%v", asJSON)
		rs, err := s.store.ReadAggregate(ctx, &eventgwv1.ReadAggregateRequest{TenantId: tenant, AggregateId: agg, DataAsJson: asJSON}, grpc.MaxCallRecvMsgSize(4<<20))
		if err != nil {
			t.Fatal(err)
		}
		var msgs [][]*eventgwv1.StoredEvent
		var sizes []int
		for {
			r, err := rs.Recv()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("ReadAggregate %s: %v", mode, err)
				}
				break
			}
			msgs, sizes = append(msgs, r.GetEvents()), append(sizes, proto.Size(r))
		}
		check("ReadAggregate "+mode, msgs, func(m int) int { return sizes[m] })

		ps, err := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenant, DataAsJson: asJSON}, grpc.MaxCallRecvMsgSize(4<<20))
		if err != nil {
			t.Fatal(err)
		}
		msgs, sizes = nil, nil
		for {
			r, err := ps.Recv()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("ReplayEvents %s: %v", mode, err)
				}
				break
			}
			msgs, sizes = append(msgs, r.GetEvents()), append(sizes, proto.Size(r))
		}
		check("ReplayEvents "+mode, msgs, func(m int) int { return sizes[m] })
		// A limit counts events across cut pages.
		ps, err = s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenant, DataAsJson: asJSON, Limit: 40})
		if err != nil {
			t.Fatal(err)
		}
		if got := drain(t, ps.Recv); len(got) != 40 || got[39].GetEventId() != want[39] {
			t.Errorf("ReplayEvents %s limit 40: %d events", mode, len(got))
		}
	}
}

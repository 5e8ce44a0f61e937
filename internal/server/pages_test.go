package server

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/store"
)

// sendPages splits a page into messages of at most the budget as encoded (the
// response message itself is measured), keeps every event once and in order, and
// sends an event larger than the budget alone.
func TestSendPagesBoundsMessages(t *testing.T) {
	const budget = 64 << 10
	var page []store.StoredEvent
	sizes := []int{100, 30 << 10, 30 << 10, 30 << 10, 200 << 10, 10, 10, 63 << 10, 5, 100 << 10}
	for i, n := range sizes {
		page = append(page, store.StoredEvent{
			EventID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Version: int64(i + 1), Type: "patient.updated",
			Data: []byte(`{"k":"` + strings.Repeat("x", n) + `"}`),
		})
	}
	for _, asJSON := range []bool{false, true} {
		var got []int64
		msgs := 0
		err := sendPages(page, asJSON, budget, func(evs []*eventgwv1.StoredEvent) error {
			msgs++
			size := proto.Size(&eventgwv1.ReplayEventsResponse{Events: evs})
			if size > budget && len(evs) > 1 {
				t.Errorf("asJSON=%v: a message of %d events is %d bytes, over %d", asJSON, len(evs), size, budget)
			}
			for _, e := range evs {
				got = append(got, e.GetVersion())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(sizes) {
			t.Fatalf("asJSON=%v: %d events sent, want %d", asJSON, len(got), len(sizes))
		}
		for i, v := range got {
			if v != int64(i+1) {
				t.Fatalf("asJSON=%v: versions %v, want 1..%d in order", asJSON, got, len(sizes))
			}
		}
		if msgs < 5 {
			t.Errorf("asJSON=%v: %d messages: the page was not split", asJSON, msgs)
		}
	}
}

package server

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mustStruct(t *testing.T, v map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(v)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The budgets count requestCost: it must not be below what a decoded request really
// holds on the heap, whatever its shape (flat or deep Structs, long lists, metadata,
// raw JSON), or the budgets would not bound memory.
func TestRequestCostBoundsTheHeap(t *testing.T) {
	nested := func(depth int) map[string]any {
		var v any = 1.0
		for range depth {
			v = map[string]any{"a": v}
		}
		return v.(map[string]any)
	}
	flat := map[string]any{}
	for i := range 50 {
		flat[fmt.Sprint("field", i)] = float64(i)
	}
	list := make([]any, 300)
	for i := range list {
		list[i] = true
	}
	strs := map[string]any{"name": strings.Repeat("x", 4000), "l": []any{"a", "bb", "ccc"}}
	ev := func(data any) *eventgwv1.Event {
		e := &eventgwv1.Event{EventType: "patient.created", TenantId: "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", SourceService: "prm"}
		switch d := data.(type) {
		case []byte:
			e.Data = &eventgwv1.Event_PayloadJson{PayloadJson: d}
		case map[string]any:
			e.Data = &eventgwv1.Event_Payload{Payload: mustStruct(t, d)}
		}
		return e
	}
	md := map[string]string{}
	for i := range 32 {
		md[fmt.Sprint("k", i)] = strings.Repeat("v", 100)
	}
	withMeta := ev([]byte(`{"a":1}`))
	withMeta.Metadata = md
	cases := map[string]proto.Message{
		"json":        &eventgwv1.PublishStreamRequest{Events: []*eventgwv1.Event{ev([]byte(`{"patient_id":"p-1","name":"Jane"}`))}},
		"json big":    &eventgwv1.PublishRequest{Event: ev([]byte(`{"a":"` + strings.Repeat("y", 100000) + `"}`))},
		"flat struct": &eventgwv1.PublishBatchRequest{Events: []*eventgwv1.Event{ev(flat), ev(flat)}},
		"deep struct": &eventgwv1.PublishStreamRequest{Events: []*eventgwv1.Event{ev(nested(200))}},
		"list":        &eventgwv1.PublishRequest{Event: ev(map[string]any{"l": list})},
		"strings":     &eventgwv1.PublishRequest{Event: ev(strs)},
		"metadata":    &eventgwv1.PublishStreamRequest{Events: []*eventgwv1.Event{withMeta}},
		"append": &eventgwv1.AppendEventsRequest{TenantId: "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", Events: []*eventgwv1.NewEvent{
			{EventType: "patient.created", Body: &eventgwv1.NewEvent_Data{Data: mustStruct(t, nested(100))}},
			{EventType: "patient.created", Body: &eventgwv1.NewEvent_Data{Data: mustStruct(t, flat)}},
			{EventType: "patient.created", Metadata: md, Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"a":1}`)}},
		}},
		"snapshot": &eventgwv1.SaveSnapshotRequest{State: mustStruct(t, map[string]any{"l": list, "n": nested(50)})},
	}
	const copies = 200
	for name, m := range cases {
		wire, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]proto.Message, copies)
		before := heapAlloc()
		for i := range out {
			out[i] = m.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(wire, out[i]); err != nil {
				t.Fatal(err)
			}
		}
		heap := float64(heapAlloc()-before) / copies
		cost := float64(requestCost(out[0]))
		runtime.KeepAlive(out)
		t.Logf("%-12s wire %7d heap %8.0f cost %8.0f (%.2f× heap)", name, len(wire), heap, cost, cost/heap)
		if cost < heap {
			t.Errorf("%s: cost %.0f is below the %.0f bytes a decoded request holds", name, cost, heap)
		}
	}
}

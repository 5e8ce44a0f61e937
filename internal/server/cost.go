package server

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// Heap costs of decoded protobuf values, measured on Go 1.26 and rounded up (see
// TestRequestCostBoundsTheHeap): a message struct, a field set in it (a oneof wrapper,
// a pointer), a string or bytes header, a Go map and each entry, a slice element.
const (
	costMessage  = 96
	costField    = 16
	costString   = 16
	costMap      = 320
	costMapEntry = 64
	costElem     = 16
	// costPublished is what one event costs once encoded for Kafka: the producer
	// message, its CloudEvents headers and its share of the producer's batch.
	costPublished = 1536
)

// requestCost estimates the memory a decoded request holds, and for events the Kafka
// messages made of them too: the unit of the byte budgets.
func requestCost(m proto.Message) int64 {
	switch r := m.(type) {
	case *eventgwv1.PublishStreamRequest:
		return costMessage + eventsCost(r.GetEvents())
	case *eventgwv1.PublishBatchRequest:
		return costMessage + eventsCost(r.GetEvents())
	case *eventgwv1.PublishRequest:
		return costMessage + eventCost(r.GetEvent())
	}
	return msgCost(m.ProtoReflect())
}

func eventsCost(evs []*eventgwv1.Event) int64 {
	c := int64(len(evs)) * costElem
	for _, e := range evs {
		c += eventCost(e)
	}
	return c
}

func eventCost(e *eventgwv1.Event) int64 {
	if e == nil {
		return 0
	}
	c := int64(costMessage+costPublished) + 10*costString + int64(len(e.GetEventId())+len(e.GetEventType())+
		len(e.GetTenantId())+len(e.GetSourceService())+len(e.GetSourceUserId())+len(e.GetCorrelationId())+
		len(e.GetCausationId())+len(e.GetPartitionKey()))
	if e.GetTime() != nil {
		c += costMessage
	}
	if md := e.GetMetadata(); len(md) > 0 {
		c += costMap
		for k, v := range md {
			// Kept as a map entry and again as a Kafka header.
			c += costMapEntry + 2*(2*costString+int64(len(k)+len(v)))
		}
	}
	switch d := e.GetData().(type) {
	case *eventgwv1.Event_PayloadJson:
		// The bytes go to Kafka as they are (or encoded to Avro, no larger).
		c += costField + costString + 2*int64(len(d.PayloadJson))
	case *eventgwv1.Event_Payload:
		heap, text := structCost(d.Payload)
		c += costField + heap + text // the Struct, and its JSON or Avro encoding
	}
	return c
}

// structCost is the heap of a Struct and the length of its JSON text.
func structCost(s *structpb.Struct) (heap, text int64) {
	if s == nil {
		return 0, 0
	}
	heap, text = costMessage+costMap, 2
	for k, v := range s.GetFields() {
		h, t := valueCost(v)
		heap += costMapEntry + costString + int64(len(k)) + h
		text += int64(len(k)) + 4 + t
	}
	return heap, text
}

func valueCost(v *structpb.Value) (heap, text int64) {
	heap = costMessage + costField
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return heap + costString + int64(len(k.StringValue)), int64(len(k.StringValue)) + 2
	case *structpb.Value_StructValue:
		h, t := structCost(k.StructValue)
		return heap + h, t
	case *structpb.Value_ListValue:
		heap += costMessage + costString
		text = 2
		for _, e := range k.ListValue.GetValues() {
			h, t := valueCost(e)
			heap += costElem + h
			text += t + 1
		}
		return heap, text
	default: // number, bool, null
		return heap, 24
	}
}

// msgCost walks any message (the requests other than publishes: appends, snapshots,
// saga contexts...), Structs included.
func msgCost(m protoreflect.Message) int64 {
	if s, ok := m.Interface().(*structpb.Struct); ok {
		h, _ := structCost(s)
		return h
	}
	c := int64(costMessage)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		c += costField
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				c += costElem + valCost(fd, l.Get(i))
			}
		case fd.IsMap():
			c += costMap
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				c += costMapEntry + costString + int64(len(k.String())) + valCost(fd.MapValue(), mv)
				return true
			})
		default:
			c += valCost(fd, v)
		}
		return true
	})
	return c
}

func valCost(fd protoreflect.FieldDescriptor, v protoreflect.Value) int64 {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return msgCost(v.Message())
	case protoreflect.StringKind:
		return costString + int64(len(v.String()))
	case protoreflect.BytesKind:
		return costString + int64(len(v.Bytes()))
	default: // numbers, bools, enums: in the message struct
		return 0
	}
}

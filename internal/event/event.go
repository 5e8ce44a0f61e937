package event

import (
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

// Event is one event to publish.
type Event struct {
	ID       string
	Type     string
	TenantID string
	// Exactly one of Payload and PayloadJSON is set.
	Payload       *structpb.Struct
	PayloadJSON   []byte
	Source        string
	UserID        string
	CorrelationID string
	CausationID   string
	Metadata      map[string]string
	PartitionKey  string
	Time          time.Time
	// Subject is the CloudEvents subject (the aggregate id for store events).
	Subject string
	// Extra headers beyond the envelope (store events: aggregate type and version).
	Extra []Header
}

// Header is one extra Kafka header.
type Header struct {
	Key   string
	Value string
}

// Limits bounds what an event may hold.
type Limits struct {
	MaxEventBytes int
}

const (
	maxMetadata      = 32
	maxMetadataKey   = 20
	maxMetadataValue = 1024
	maxIDLen         = 255
)

// reserved are the CloudEvents attributes the envelope sets itself.
var reserved = map[string]bool{
	"id": true, "type": true, "source": true, "time": true, "specversion": true,
	"tenantid": true, "correlationid": true, "causationid": true, "userid": true,
	"subject": true, "datacontenttype": true, "dataschema": true,
	"aggregatetype": true, "aggregateversion": true,
}

// Normalize fills defaults (id, time, source, correlation id), puts the ids in
// canonical form and checks every field. The returned error is a *validate.Error; it
// never quotes payload data or a client's metadata key.
func (e *Event) Normalize(defaultSource string, lim Limits, now time.Time) error {
	if e.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		e.ID = id.String()
	} else {
		id, err := validate.CanonicalUUID("event_id", e.ID)
		if err != nil {
			return err
		}
		e.ID = id
	}
	if err := validate.EventType("event_type", e.Type); err != nil {
		return err
	}
	tenant, err := validate.CanonicalUUID("tenant_id", e.TenantID)
	if err != nil {
		return err
	}
	e.TenantID = tenant
	switch {
	case e.Payload == nil && e.PayloadJSON == nil:
		return validate.Errorf("payload", "is required (payload as a JSON object, or payload_json as bytes)")
	case e.PayloadJSON != nil:
		if len(e.PayloadJSON) > lim.MaxEventBytes {
			return validate.Errorf("payload_json", "is %d bytes, over the %d-byte limit (--max-event-bytes)", len(e.PayloadJSON), lim.MaxEventBytes)
		}
		if err := validate.JSONObject("payload_json", e.PayloadJSON); err != nil {
			return err
		}
	default:
		if err := validate.Struct("payload", e.Payload); err != nil {
			return err
		}
	}
	if e.Source == "" {
		e.Source = defaultSource
	}
	if err := validate.Name("source_service", e.Source, 100, false); err != nil {
		return err
	}
	if err := validate.Text("source_user_id", e.UserID, maxIDLen); err != nil {
		return err
	}
	if err := validate.Text("correlation_id", e.CorrelationID, maxIDLen); err != nil {
		return err
	}
	if e.CorrelationID == "" {
		e.CorrelationID = e.ID
	}
	if err := validate.Text("causation_id", e.CausationID, maxIDLen); err != nil {
		return err
	}
	if err := validate.Text("partition_key", e.PartitionKey, maxIDLen); err != nil {
		return err
	}
	if err := checkMetadata(e.Metadata); err != nil {
		return err
	}
	if e.Time.IsZero() {
		e.Time = now
	} else if err := validate.Time("time", e.Time); err != nil {
		return err
	}
	return nil
}

// checkMetadata checks a published event's metadata (CloudEvents extensions). Errors
// say which rule a key broke, never the key: a client's key may hold anything.
func checkMetadata(md map[string]string) error {
	if len(md) > maxMetadata {
		return validate.Errorf("metadata", "has %d entries, over the limit of %d", len(md), maxMetadata)
	}
	for k, v := range md {
		if !isExtensionName(k) {
			return validate.Errorf("metadata", "a key is not 1-%d lowercase letters or digits (a CloudEvents extension name)", maxMetadataKey)
		}
		if reserved[k] {
			// k is one of the gateway's own attribute names, not the client's words.
			return validate.Errorf("metadata", "key %q is set by the gateway itself", k)
		}
		if err := validate.Text("metadata", v, maxMetadataValue); err != nil {
			return validate.Errorf("metadata", "a value is longer than %d bytes or holds control characters", maxMetadataValue)
		}
	}
	return nil
}

// storedEnvelope are the event store's metadata keys that fill envelope attributes of
// the published event; every other key becomes the extension ce_<key without "_">.
var storedEnvelope = map[string]func(e *Event, v string){
	"correlation_id": func(e *Event, v string) { e.CorrelationID = v },
	"causation_id":   func(e *Event, v string) { e.CausationID = v },
	"user_id":        func(e *Event, v string) { e.UserID = v },
	"source_user_id": func(e *Event, v string) { e.UserID = v },
	"source_service": func(e *Event, v string) { e.Source = v },
}

// SetStoredMetadata applies an appended event's metadata to e (the event published
// for it through the outbox): see storedEnvelope.
func (e *Event) SetStoredMetadata(meta map[string]string) {
	for k, v := range meta {
		if set, ok := storedEnvelope[k]; ok {
			set(e, v)
			continue
		}
		if e.Metadata == nil {
			e.Metadata = make(map[string]string, len(meta))
		}
		e.Metadata[strings.ReplaceAll(k, "_", "")] = v
	}
}

// CheckStoredMetadataKey checks, at append time, that metadata key k (lowercase
// letters, digits and _) can be published by SetStoredMetadata: as an extension it must
// be short enough and not an attribute the gateway sets itself. Errors say which rule
// the key broke, never the key.
func CheckStoredMetadataKey(k string) error {
	if _, ok := storedEnvelope[k]; ok {
		return nil
	}
	ext := strings.ReplaceAll(k, "_", "")
	switch {
	case ext == "":
		return validate.Errorf("metadata", "a key has no letters or digits")
	case len(ext) > maxMetadataKey:
		return validate.Errorf("metadata", "a key is published as a CloudEvents extension (ce_ + the key without _), which must be at most %d characters", maxMetadataKey)
	case reserved[ext]:
		return validate.Errorf("metadata", "a key is published as the CloudEvents attribute ce_%s, which the gateway sets itself", ext)
	}
	return nil
}

// Key is the Kafka record key: the partition key, or the tenant id.
func (e *Event) Key() string {
	if e.PartitionKey != "" {
		return e.PartitionKey
	}
	return e.TenantID
}

func isExtensionName(k string) bool {
	if k == "" || len(k) > maxMetadataKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

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

// Normalize fills defaults (id, time, source, correlation id) and checks every field.
// The returned error is a *validate.Error; it never quotes payload data.
func (e *Event) Normalize(defaultSource string, lim Limits, now time.Time) error {
	if e.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		e.ID = id.String()
	} else if err := validate.UUID("event_id", e.ID); err != nil {
		return err
	}
	if err := validate.EventType("event_type", e.Type); err != nil {
		return err
	}
	if err := validate.UUID("tenant_id", e.TenantID); err != nil {
		return err
	}
	switch {
	case e.Payload == nil && e.PayloadJSON == nil:
		return validate.Errorf("payload", "is required (payload as a JSON object, or payload_json as bytes)")
	case e.PayloadJSON != nil:
		if len(e.PayloadJSON) > lim.MaxEventBytes {
			return validate.Errorf("payload_json", "is %d bytes, over the %d-byte limit (--max-event-bytes)", len(e.PayloadJSON), lim.MaxEventBytes)
		}
		if !IsJSONObject(e.PayloadJSON) {
			return validate.Errorf("payload_json", "must be a JSON object")
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
	if len(e.Metadata) > maxMetadata {
		return validate.Errorf("metadata", "has %d entries, over the limit of %d", len(e.Metadata), maxMetadata)
	}
	for k, v := range e.Metadata {
		if !isExtensionName(k) {
			return validate.Errorf("metadata", "key %q must be 1-%d lowercase letters or digits (a CloudEvents extension name)", truncate(k, 40), maxMetadataKey)
		}
		if reserved[k] {
			return validate.Errorf("metadata", "key %q is set by the gateway itself", k)
		}
		if err := validate.Text("metadata."+k, v, maxMetadataValue); err != nil {
			return err
		}
	}
	if e.Time.IsZero() {
		e.Time = now
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
// be short enough and not an attribute the gateway sets itself.
func CheckStoredMetadataKey(k string) error {
	if _, ok := storedEnvelope[k]; ok {
		return nil
	}
	ext := strings.ReplaceAll(k, "_", "")
	switch {
	case ext == "":
		return validate.Errorf("metadata", "key %q has no letters or digits", k)
	case len(ext) > maxMetadataKey:
		return validate.Errorf("metadata", "key %q is published as the CloudEvents extension ce_%s, which is over %d characters", k, truncate(ext, 40), maxMetadataKey)
	case reserved[ext]:
		return validate.Errorf("metadata", "key %q is published as the CloudEvents attribute ce_%s, which the gateway sets itself", k, ext)
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

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

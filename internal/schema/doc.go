// Package schema registers Avro schemas for event types with a Confluent-compatible
// Schema Registry (through srclient), remembers them in PostgreSQL, and turns JSON
// payloads into Confluent wire format (magic byte 0, 4-byte schema id, Avro binary),
// refusing payloads that do not match with the path of the offending field.
package schema

// Package schema registers Avro schemas for event types with a Confluent-compatible
// Schema Registry (through srclient), remembers them in PostgreSQL, and turns JSON
// payloads into Confluent wire format (magic byte 0, 4-byte schema id, Avro binary),
// refusing payloads that do not match with the path of the offending field.
//
// The registry is needed only to register a schema, to decode a value whose schema id
// this sidecar has not seen, and to re-seed it with the stored schemas: publishing
// with known schemas never calls it, so it keeps working while the registry is down.
// Registry calls take their caller's context, go through the schema-registry breaker,
// and fail with *UnavailableError (errors.Is ErrUnavailable) when it cannot answer.
package schema

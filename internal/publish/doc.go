// Package publish is the publish pipeline behind EventService: it checks each event,
// routes it to its domain topic (created on first use), encodes the payload (Avro in
// Confluent wire format when the event type has a schema, JSON otherwise), wraps it in
// the CloudEvents envelope and waits for Kafka's acks=all acknowledgement.
package publish

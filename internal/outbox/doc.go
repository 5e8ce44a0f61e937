// Package outbox relays the event store's transactional outbox to Kafka.
//
// Every append writes one event_outbox row per event in its own transaction, tagged with
// shard = hash(aggregate id) mod Shards. A sidecar owns a shard while it holds the
// shard's session advisory lock on a dedicated connection; only the owner publishes the
// shard, in position order (= version order per aggregate), and deletes rows once Kafka
// acknowledged them. The owner is woken at once: by the appending handler in the same
// sidecar, by NOTIFY from other sidecars, and by a one-second poll as a fallback. When
// Kafka is down the rows wait and are retried with backoff; when a sidecar dies its
// connection closes, the locks are released and another sidecar takes its shards over
// (events it published but had not yet deleted are published again: at least once).
package outbox

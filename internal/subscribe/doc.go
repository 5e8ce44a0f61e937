// Package subscribe turns Kafka consumer groups into Subscribe streams: each stream is
// one member of the consumer group named by its subscription, so streams with the same
// name, on this sidecar or others, share the partitions (sarama, cooperative-sticky
// rebalancing: a member joining or leaving moves only the partitions that change owner).
//
// Delivery and acknowledgement. Every record read is held until it is acknowledged,
// filtered out or dead-lettered; a partition's offset is marked (and committed by
// sarama every second and when the partition is released) only up to the first record
// still held, so nothing is skipped: at-least-once. An Ack is answered only after Kafka
// confirmed the commit of the offsets it moved (commit.go; Unavailable if Kafka keeps
// refusing it), and the records finished beyond the commit point are
// written in the commit's metadata (see ahead.go), so a partition's next owner, after a
// rebalance or a crash, delivers again only what was in flight. A stream holds at most
// max_in_flight deliveries not yet acknowledged. Records read ahead wait in the stream
// (bounded in count and bytes); past the bound the stream pauses fetching from Kafka
// and resumes as acknowledgements free room, so a slow client slows the fetching and
// nothing grows without bound.
//
// Ordering. With key ordering (the default), records of one partition with the same
// Kafka key form a queue: only its head is delivered, and the next one once the head is
// acknowledged or dead-lettered; different keys run in parallel. A nacked or expired
// head stays the head while it waits for its redelivery, so its key stays in order and
// other keys go on. Partition ordering is the same with one queue per partition; none
// delivers everything as soon as there is room.
//
// Failure. A nack with retry, or an ack deadline passing, redelivers the record (after
// an exponential backoff with jitter for nacks) and counts an attempt; after
// max_attempts, or a nack with dead-letter, the record goes to the dead-letter topic
// and failed_events, and only then may the offset pass it. A failed hand-off is tried
// again; the offset waits.
//
// Rebalances. When a partition is revoked (or the stream ends), its records are
// dropped from the stream without being marked: acknowledgements of them are answered
// as stale and can no longer move the offset; the new owner delivers them again.
// Offsets marked before the revoke are committed by sarama before the partition is
// released. So the duplicates a rebalance causes are the deliveries that were in flight.
package subscribe

// Package outbox relays appended events to Kafka: the transactional outbox.
//
// The appended rows of stored_events are the outbox — they are written in the append's
// own transaction — and outbox_cursor records the position up to which Kafka has
// acknowledged them. One sidecar at a time is the relay: the one holding a session
// advisory lock on a dedicated connection. It reads events after the cursor in position
// order, but only below pg_snapshot_xmin(pg_current_snapshot()) << 10, so an event that
// commits late with a lower position can never be passed over; it publishes them
// (key = aggregate id, so an aggregate's events keep their order in one partition),
// waits for the acks=all acknowledgement and moves the cursor.
//
// The relay is woken at once: by the appending handler in the same sidecar, or by a
// NOTIFY that another sidecar sends after its append commits (never inside the append:
// NOTIFY serializes commits); a one-second poll is the fallback. When Kafka is down the
// cursor waits and the relay retries with backoff; appends go on. When the relay's
// sidecar dies its connection closes, the lock is released and another sidecar takes
// over from the cursor (events published but not yet recorded are published again: at
// least once). A transaction left open elsewhere in the cluster holds the relay (and
// replay) below its position until it ends; outbox_publish_lag_seconds shows it.
package outbox

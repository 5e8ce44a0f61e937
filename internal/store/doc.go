// Package store is the sidecar's PostgreSQL layer: the migrations runner, registered
// schemas, and (with the event store) stored events, snapshots, the outbox and
// failed_events.
package store

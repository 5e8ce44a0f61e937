// Package store is the sidecar's PostgreSQL layer: the migrations runner, registered
// schemas, stored events, snapshots, the outbox, the publish queue and failed_events.
//
// Errors. Every exported function and method that talks to PostgreSQL runs its
// statements inside Do, so callers see this package's classes and never a pgx type:
// *UnavailableError (PostgreSQL unreachable, gone mid-call, shutting down or starting
// up, or the postgres breaker open; retriable, and OutcomeUnknown when a write may have
// committed), *ConcurrencyError (40001, 40P01: retriable, nothing written), *DBError
// (any other PostgreSQL error: a bug; its text is the call, SQLSTATE and constraint,
// never the message, DETAIL or WHERE, which may quote health data), the caller's context error, or
// the sentinels and typed errors of errors.go. With a breaker (NewBreaker, WithBreaker)
// the calls of a PostgreSQL that is down fail at once instead of each waiting for a
// connection; the pool reconnects by itself when it is back.
package store

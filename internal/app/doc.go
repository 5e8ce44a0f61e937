// Package app builds the sidecar from its config — dev stack, pgx pool, migrations,
// Kafka client and producer, registry, gRPC and HTTP servers — pushing each closer on
// a stack that unwinds in reverse on failure or shutdown, and runs it.
package app

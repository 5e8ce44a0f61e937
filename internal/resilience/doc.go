// Package resilience holds the circuit breakers and retry policies of the guide's
// "Circuit Breaker & Resilience" section: one breaker per outbound dependency (Kafka
// producing, the Schema Registry, PostgreSQL) with failure threshold 5, success
// threshold 2, 60 s open timeout and 3 half-open trial calls, exported as
// circuit_breaker_state, circuit_breaker_failures_total and
// circuit_breaker_successes_total; and retries with exponential backoff and jitter,
// bounded by the call's deadline. It imports no domain package: what counts as a
// dependency's failure is decided by the error classes of the package that owns it.
package resilience

// Package resilience will hold the circuit breakers and retry policies of the guide's
// "Circuit Breaker & Resilience" section (failure threshold 5, success threshold 2,
// 60 s open timeout, 3 half-open requests) with their circuit_breaker_* metrics. It is
// empty until that issue lands.
package resilience

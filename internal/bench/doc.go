// Package bench measures the gateway against the direct baselines the issues name (raw
// sarama for publishing), side by side in one run against the same brokers, and prints
// events/s, p50/p99 and the gateway/direct ratios.
package bench

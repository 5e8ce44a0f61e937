// Package kafka owns the sidecar's Kafka connections: the idempotent acks=all producer
// whose acknowledgements are routed back to each waiting call, topic routing
// (<prefix>.<domain>.events, DLQ <prefix>.dlq.<domain>) and topic creation with the
// guide's settings.
package kafka

// Package event is the gateway's event model: the checks every published event passes
// and its CloudEvents Kafka binding (binary mode: envelope in ce_* headers, payload as
// the record value).
package event

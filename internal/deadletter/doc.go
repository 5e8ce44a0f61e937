// Package deadletter writes dead letters: an event that failed processing goes to its
// <prefix>.dlq.<domain> topic, with headers saying where it came from and why, and to
// a failed_events row; in that order, before the subscription's offset may pass it.
package deadletter

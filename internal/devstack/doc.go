// Package devstack starts the embedded default stack of the sidecar — an in-process
// kfake Kafka cluster, an srfake Schema Registry served over HTTP and a private
// PostgreSQL cluster made with the machine's initdb/pg_ctl — for `eventgw serve --dev`
// and for the tests.
package devstack

// Package redact describes errors for the log by class and code, never by their text.
//
// Driver, JSON-parser, protojson and Avro errors quote the input they refused ("invalid
// input syntax for type uuid: \"…\"", "cannot parse JSON: …; unparsed tail: \"…\"",
// "invalid google.protobuf.Value: …"), and that input may be health data. So a log line
// never holds an error's Error() unless the error says its text is safe: the gateway's
// own error types implement Safe (their texts are built from ids, codes, field names
// and fixed words), and a few standard errors are safe by nature (context errors, EOF,
// errno-like integer codes). Of every other error only its Go type is logged.
package redact

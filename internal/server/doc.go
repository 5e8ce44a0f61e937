// Package server is the gRPC edge: thin handlers that validate, translate to the
// internal packages and back, and the one function (rewriteError) that maps errors to
// gRPC status codes.
package server

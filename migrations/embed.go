// Package migrations holds the forward-only, versioned SQL migrations of the sidecar's
// PostgreSQL database, embedded so the binary applies them at start.
package migrations

import "embed"

// FS holds the *.sql migrations (goose format).
//
//go:embed *.sql
var FS embed.FS

// Package validate holds the input checks shared by every RPC (ids, names, sizes) and
// the error type that carries a bad field to the gRPC edge as InvalidArgument.
package validate

import (
	"fmt"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Error says which field of a request is bad and why, in words a caller can act on.
// It never holds the field's value: values may be health data.
type Error struct {
	Field  string
	Reason string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// LogSafe marks the text as loggable (redact.Safe): it names a field and a rule, never
// the field's value.
func (e *Error) LogSafe() {}

// Errorf builds an *Error for field.
func Errorf(field, format string, args ...any) *Error {
	return &Error{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Prefix returns err with its field prefixed by prefix (for nested fields), or err
// itself when it is not an *Error.
func Prefix(prefix string, err error) error {
	if e, ok := err.(*Error); ok { //nolint:errorlint // only direct *Error values are re-labelled
		f := prefix
		if e.Field != "" {
			f = prefix + "." + e.Field
		}
		return &Error{Field: f, Reason: e.Reason}
	}
	return err
}

// UUID checks that s is a UUID in canonical 8-4-4-4-12 form.
func UUID(field, s string) error {
	if s == "" {
		return Errorf(field, "is required (a UUID)")
	}
	if len(s) != 36 {
		return Errorf(field, "must be a UUID such as 6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a")
	}
	if _, err := uuid.Parse(s); err != nil {
		return Errorf(field, "must be a UUID such as 6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a")
	}
	return nil
}

// OptionalUUID is UUID for a field that may be empty.
func OptionalUUID(field, s string) error {
	if s == "" {
		return nil
	}
	return UUID(field, s)
}

// EventType checks ^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$ and at most 100 bytes.
func EventType(field, s string) error {
	if s == "" {
		return Errorf(field, "is required, such as \"patient.created\"")
	}
	if len(s) > 100 {
		return Errorf(field, "is longer than 100 characters")
	}
	if !IsEventType(s) {
		return Errorf(field, "must be lowercase dot-separated words such as \"patient.created\" (each word starts with a letter; letters, digits and _ only)")
	}
	return nil
}

// IsEventType reports whether s matches ^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$.
func IsEventType(s string) bool {
	segs := 0
	start := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case start:
			if c < 'a' || c > 'z' {
				return false
			}
			start = false
			segs++
		case c == '.':
			start = true
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		default:
			return false
		}
	}
	return !start && segs >= 2
}

// Name checks an identifier-like name: 1..max bytes of [A-Za-z0-9._-].
func Name(field, s string, max int, required bool) error {
	if s == "" {
		if required {
			return Errorf(field, "is required")
		}
		return nil
	}
	if len(s) > max {
		return Errorf(field, "is longer than %d characters", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return Errorf(field, "may hold only letters, digits, '.', '_' and '-'")
		}
	}
	return nil
}

// Text checks free text: at most max bytes, valid UTF-8 and no control characters.
func Text(field, s string, max int) error {
	if len(s) > max {
		return Errorf(field, "is longer than %d bytes", max)
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return Errorf(field, "must not contain control characters")
		}
		ascii = ascii && s[i] < utf8.RuneSelf
	}
	if !ascii && !utf8.ValidString(s) {
		return Errorf(field, "must be valid UTF-8")
	}
	return nil
}

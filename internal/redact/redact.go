package redact

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"strings"

	"go.uber.org/zap"
)

// Safe is implemented by errors whose Error() text holds no caller data: it may be
// logged as it is. LogSafe does nothing; it marks the type.
type Safe interface {
	error
	LogSafe()
}

// Sentinel is a sentinel error whose text is safe to log (use it like errors.New).
func Sentinel(text string) error { return &sentinel{text} }

type sentinel struct{ s string }

func (e *sentinel) Error() string { return e.s }
func (e *sentinel) LogSafe()      {}

// Error is the zap field "error" with Describe(err).
func Error(err error) zap.Field { return zap.String("error", Describe(err)) }

// Describe says what err is without quoting data: the texts of the Safe errors in its
// chain (and of the standard errors known to be safe), the Go types of the others.
// Example: `*fmt.wrapError: append: postgres 22P05` for fmt.Errorf("…: %w", dbErr).
func Describe(err error) string {
	if err == nil {
		return ""
	}
	var parts []string
	describe(err, &parts, 0)
	return strings.Join(parts, ": ")
}

func describe(err error, parts *[]string, depth int) {
	for err != nil {
		if depth > 16 {
			*parts = append(*parts, "…")
			return
		}
		depth++
		if safeText(err) {
			*parts = append(*parts, err.Error())
			return
		}
		if pe, ok := err.(interface{ SQLState() string }); ok {
			// A driver's PostgreSQL error (pgconn.PgError): its code, not its message.
			*parts = append(*parts, fmt.Sprintf("%T (SQLSTATE %s)", err, pe.SQLState()))
		} else {
			*parts = append(*parts, fmt.Sprintf("%T", err))
		}
		switch u := err.(type) { //nolint:errorlint // walking the tree by hand
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			var subs []string
			for _, e := range u.Unwrap() {
				var p []string
				describe(e, &p, depth)
				subs = append(subs, strings.Join(p, ": "))
			}
			*parts = append(*parts, "["+strings.Join(subs, "; ")+"]")
			return
		default:
			return
		}
	}
}

func safeText(err error) bool {
	if _, ok := err.(Safe); ok { //nolint:errorlint // this node only
		return true
	}
	switch err { //nolint:errorlint // these exact values
	case context.Canceled, context.DeadlineExceeded, io.EOF, io.ErrUnexpectedEOF:
		return true
	}
	// Integer error codes (syscall.Errno, sarama.KError, …) have fixed texts.
	k := reflect.TypeOf(err).Kind()
	return k >= reflect.Int && k <= reflect.Uintptr
}

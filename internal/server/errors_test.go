package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// netErr is a network failure as the drivers report it: a refused or reset TCP
// connection to some dependency.
func netErr(op string, errno syscall.Errno) error {
	return &net.OpError{
		Op: op, Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432},
		Err: os.NewSyscallError(op, errno),
	}
}

// storeCall is the error a store call answers when its statement fails with err.
func storeCall(access store.Access, err error) error {
	return store.Do(context.Background(), nil, access, "append", func(context.Context) error { return err })
}

// openBreaker is a breaker of dependency name, opened by failures.
func openBreaker(t *testing.T, name string) *resilience.Breaker {
	t.Helper()
	b := resilience.NewBreaker(name, "svc", resilience.DefaultSettings(), resilience.ClassifyRetriable,
		resilience.NewMetrics(prometheus.NewRegistry()), zap.NewNop())
	for range resilience.DefaultSettings().FailureThreshold {
		_ = b.Do(func() error { return &schema.UnavailableError{Op: "x", Err: errors.New("down")} })
	}
	if b.State() != resilience.Open {
		t.Fatalf("%s breaker did not open", name)
	}
	return b
}

// registryDown is what a registry call answers when nothing listens at the
// registry's address (a real srclient call over HTTP, not a constructed error).
func registryDown(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	r := schema.NewRegistry("http://"+addr, nil, zap.NewNop(), schema.WithRetry(resilience.RetryPolicy{MaxTries: 1}))
	defer func() { _ = r.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = r.Register(ctx, "patient.created", "healthtech.patient.events",
		`{"type":"record","name":"P","fields":[{"name":"a","type":"string"}]}`)
	if err == nil {
		t.Fatal("register with no registry succeeded")
	}
	return err
}

func TestRewriteErrorByClass(t *testing.T) {
	pgOpen := openBreaker(t, store.BreakerName)
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		// want must be in the message; never must not (driver text, payload text, a
		// wrong dependency).
		want  string
		never []string
	}{
		{"validation", fmt.Errorf("publish: %w", validate.Errorf("event.tenant_id", "must be a UUID")), codes.InvalidArgument, "tenant_id", nil},
		{"version conflict", &store.ConflictError{AggregateID: "a1", Current: 7, Expected: "5"}, codes.Aborted, "current version is 7", nil},
		{"aggregate not found", fmt.Errorf("load: %w", store.ErrNotFound), codes.NotFound, "aggregate not found", nil},
		{"failed event not found", fmt.Errorf("%w: x", store.ErrFailedEventNotFound), codes.NotFound, "failed event not found", nil},
		{"failed event resolved", store.ErrFailedEventResolved, codes.FailedPrecondition, "resolved", nil},
		{"event id taken", store.ErrEventIDTaken, codes.AlreadyExists, "already stored", nil},
		{"partial duplicate", store.ErrPartialDuplicate, codes.AlreadyExists, "already stored", nil},
		{"aggregate type mismatch", &store.TypeMismatchError{Stored: "Patient"}, codes.FailedPrecondition, "Patient", nil},
		{"snapshot version", fmt.Errorf("%w: too old", store.ErrSnapshotVersion), codes.FailedPrecondition, "snapshot", nil},
		{"schema incompatible", fmt.Errorf("%w: subject s", schema.ErrIncompatible), codes.FailedPrecondition, "not compatible", nil},
		{"serialization failure 40001", &store.ConcurrencyError{Op: "append", Code: "40001"}, codes.Aborted, "retry", []string{"40001"}},
		{"deadlock 40P01", &store.ConcurrencyError{Op: "append", Code: "40P01"}, codes.Aborted, "retry", nil},
		{"append queue full", fmt.Errorf("append: %w", store.ErrAppendQueueFull), codes.ResourceExhausted, "--append-queue-bytes", nil},

		{"registry network failure", registryDown(t), codes.Unavailable, "schema registry", []string{"database", "refused", "127.0.0.1"}},
		{
			"registry network failure, constructed", &schema.UnavailableError{Op: "fetch schema 3", Err: netErr("dial", syscall.ECONNREFUSED)},
			codes.Unavailable, "schema registry",
			[]string{"database", "refused"},
		},
		{
			"kafka down and the queue refused", fmt.Errorf("events[0]: %w", publish.ErrNotQueued),
			codes.Unavailable, "both unavailable",
			[]string{"internal"},
		},
		{
			"broker network failure", &kafka.UnavailableError{Err: netErr("dial", syscall.ECONNREFUSED)},
			codes.Unavailable, "kafka",
			[]string{"database", "refused", "127.0.0.1"},
		},
		{
			"broker reset, wrapped", fmt.Errorf("publish batch: %w", &kafka.UnavailableError{Err: netErr("read", syscall.ECONNRESET)}),
			codes.Unavailable, "kafka",
			[]string{"database", "reset"},
		},
		{"producer closed", fmt.Errorf("send: %w", kafka.ErrClosed), codes.Unavailable, "shutting down", []string{"database"}},
		{"postgres breaker open", storeCallThrough(pgOpen), codes.Unavailable, "postgres circuit breaker is open", []string{"database unavailable"}},
		{"kafka breaker open", &resilience.OpenError{Dependency: "kafka", RetryIn: 30 * time.Second}, codes.Unavailable, "kafka circuit breaker is open", nil},
		{
			"registry breaker open", &schema.UnavailableError{Op: "register schema", Err: &resilience.OpenError{Dependency: schema.BreakerName}},
			codes.Unavailable, "schema-registry circuit breaker is open",
			[]string{"database"},
		},
		{
			"store read, connection refused", storeCall(store.ReadOnly, netErr("dial", syscall.ECONNREFUSED)),
			codes.Unavailable, "database unavailable: retry later",
			[]string{"refused", "127.0.0.1", "outcome"},
		},
		{
			"store write, connection reset", storeCall(store.ReadWrite, netErr("read", syscall.ECONNRESET)),
			codes.Unavailable, "outcome of the write is unknown",
			[]string{"reset", "127.0.0.1"},
		},
		{
			"store unavailable, wrapped", fmt.Errorf("saga: %w", storeCall(store.ReadOnly, netErr("dial", syscall.ECONNREFUSED))),
			codes.Unavailable, "database unavailable", nil,
		},

		{"deadline", fmt.Errorf("append: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "outcome is unknown", []string{"Kafka"}},
		{"cancelled", fmt.Errorf("append: %w", context.Canceled), codes.Canceled, "cancelled", nil},
		{"status passes through", status.Error(codes.ResourceExhausted, "too many"), codes.ResourceExhausted, "too many", nil},
		{"unknown", errors.New("fold: unexpected value Jane Doe"), codes.Internal, "internal error", []string{"Jane"}},
		{"unclassified PostgreSQL error", &store.DBError{Op: "append", Code: "23502"}, codes.Internal, "internal error", []string{"23502", "null"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(rewriteError(tc.err))
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("%v → %v %q, want %v with %q", tc.err, st.Code(), st.Message(), tc.code, tc.want)
			}
			for _, n := range tc.never {
				if strings.Contains(st.Message(), n) {
					t.Errorf("%v → message %q holds %q", tc.err, st.Message(), n)
				}
			}
			if code, msg := statusCode(tc.err); code != st.Code() || msg != st.Message() {
				t.Errorf("statusCode answers %v %q, rewriteError %v %q", code, msg, st.Code(), st.Message())
			}
		})
	}
	if rewriteError(nil) != nil {
		t.Error("nil is not nil")
	}
}

func storeCallThrough(b *resilience.Breaker) error {
	return store.Do(context.Background(), b, store.ReadOnly, "read aggregate", func(context.Context) error { return nil })
}

// The details a caller acts on: the current version of a conflict, the field of bad
// input.
func TestRewriteErrorDetails(t *testing.T) {
	st := status.Convert(rewriteError(&store.ConflictError{AggregateID: "a1", Current: 7, Expected: "5"}))
	var vc *eventgwv1.VersionConflict
	for _, d := range st.Details() {
		if v, ok := d.(*eventgwv1.VersionConflict); ok {
			vc = v
		}
	}
	if vc == nil || vc.GetAggregateId() != "a1" || vc.GetCurrentVersion() != 7 {
		t.Errorf("conflict details %v", st.Details())
	}
	st = status.Convert(rewriteError(validate.Errorf("event.tenant_id", "must be a UUID")))
	if len(st.Details()) != 1 {
		t.Errorf("validation details %v", st.Details())
	}
}

// An internal error answers "internal error" and keeps its cause for the log only; a
// PostgreSQL error's cause is its SQLSTATE, message and constraint.
func TestInternalErrorCause(t *testing.T) {
	err := rewriteError(fmt.Errorf("save: %w", &store.DBError{Op: "append", Code: "23514", Constraint: "positive_version"}))
	if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("%v", st)
	}
	if got := logCause(err); !strings.Contains(got, "23514") || !strings.Contains(got, "positive_version") {
		t.Errorf("logCause %q", got)
	}
	if logCause(status.Error(codes.NotFound, "x")) != "" {
		t.Error("a non-internal error has a cause")
	}
}

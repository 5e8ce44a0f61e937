package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Settings are the guide's four breaker settings.
type Settings struct {
	// FailureThreshold: consecutive failures that open the breaker.
	FailureThreshold int
	// SuccessThreshold: successes while half-open that close it.
	SuccessThreshold int
	// Timeout: time spent open before going half-open.
	Timeout time.Duration
	// HalfOpenMaxRequests: trial calls allowed at once while half-open.
	HalfOpenMaxRequests int
}

// DefaultSettings are the guide's defaults: 5, 2, 60 s, 3.
func DefaultSettings() Settings {
	return Settings{FailureThreshold: 5, SuccessThreshold: 2, Timeout: 60 * time.Second, HalfOpenMaxRequests: 3}
}

// Validate says which setting is out of range.
func (s Settings) Validate() error {
	switch {
	case s.FailureThreshold < 1:
		return errors.New("failure_threshold must be at least 1")
	case s.SuccessThreshold < 1:
		return errors.New("success_threshold must be at least 1")
	case s.HalfOpenMaxRequests < s.SuccessThreshold:
		return errors.New("half_open_max_requests must be at least success_threshold")
	case s.Timeout <= 0:
		return errors.New("timeout must be positive")
	}
	return nil
}

// State is a breaker's state, with the values of the circuit_breaker_state metric.
type State int

const (
	Closed   State = 0
	Open     State = 1
	HalfOpen State = 2
)

func (s State) String() string {
	switch s {
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "closed"
}

// ErrOpen is returned, wrapped in an *OpenError, by a breaker that refuses a call.
var ErrOpen = errors.New("circuit breaker open")

// OpenError names the dependency whose breaker refused a call. It is retriable.
type OpenError struct {
	Dependency string
	RetryIn    time.Duration
}

// LogSafe marks the text as loggable (redact.Safe): a breaker's name and state.
func (e *OpenError) LogSafe() {}

func (e *OpenError) Error() string {
	if e.RetryIn > 0 {
		return fmt.Sprintf("%s circuit breaker is open (next trial in %v)", e.Dependency, e.RetryIn.Round(time.Second))
	}
	return e.Dependency + " circuit breaker is open (trial calls in progress)"
}
func (e *OpenError) Unwrap() error   { return ErrOpen }
func (e *OpenError) Retriable() bool { return true }

// Metrics are the guide's breaker metrics, labelled service and dependency.
type Metrics struct {
	state     *prometheus.GaugeVec
	failures  *prometheus.CounterVec
	successes *prometheus.CounterVec
}

// NewMetrics registers circuit_breaker_state, circuit_breaker_failures_total and
// circuit_breaker_successes_total on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "circuit_breaker_state",
			Help: "Circuit breaker state per dependency: 0 closed, 1 open, 2 half-open.",
		}, []string{"service", "dependency"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuit_breaker_failures_total",
			Help: "Calls to a dependency that failed for a reason of the dependency's (a network or broker error, a timeout).",
		}, []string{"service", "dependency"}),
		successes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuit_breaker_successes_total",
			Help: "Calls to a dependency that it answered (a refusal of the caller's input counts: the dependency worked).",
		}, []string{"service", "dependency"}),
	}
	reg.MustRegister(m.state, m.failures, m.successes)
	return m
}

// Outcome classifies a call's error for a breaker.
type Outcome int

const (
	// Success: the dependency answered (nil error, or a refusal of the caller's input,
	// a version conflict, a not-found).
	Success Outcome = iota
	// Failure: the dependency failed (network, broker, timeout, server unavailable).
	Failure
	// Ignore: says nothing about the dependency (the caller cancelled).
	Ignore
)

// Classifier decides what an error says about the dependency. It decides by error
// class (types and sentinels from the package that owns the dependency), never by text.
type Classifier func(error) Outcome

// Breaker guards one outbound dependency.
//
// It is failsafe-go's count-based breaker: sony/gobreaker (v2.4) ties the successes that
// close a half-open breaker to the number of trial calls it lets through (both are its
// MaxRequests), so it cannot express the guide's success_threshold 2 with
// half_open_max_requests 3; failsafe-go's success-threshold ratio (2 of 3) does.
type Breaker struct {
	name     string
	cb       circuitbreaker.CircuitBreaker[any]
	classify Classifier
	failures prometheus.Counter
	succ     prometheus.Counter
}

// NewBreaker builds the breaker of dependency name. Each state change is logged once and
// set on the state gauge.
func NewBreaker(name, service string, s Settings, classify Classifier, m *Metrics, log *zap.Logger) *Breaker {
	if s.Validate() != nil {
		s = DefaultSettings()
	}
	gauge := m.state.WithLabelValues(service, name)
	gauge.Set(float64(Closed))
	b := &Breaker{
		name: name, classify: classify,
		failures: m.failures.WithLabelValues(service, name),
		succ:     m.successes.WithLabelValues(service, name),
	}
	b.cb = circuitbreaker.NewBuilder[any]().
		WithFailureThreshold(uint(s.FailureThreshold)).
		WithSuccessThresholdRatio(uint(s.SuccessThreshold), uint(s.HalfOpenMaxRequests)).
		WithDelay(s.Timeout).
		OnStateChanged(func(e circuitbreaker.StateChangedEvent) {
			to := fromLib(e.NewState)
			gauge.Set(float64(to))
			log.Warn("circuit breaker state changed", zap.String("dependency", name),
				zap.Stringer("from", fromLib(e.OldState)), zap.Stringer("to", to))
		}).
		Build()
	return b
}

func fromLib(s circuitbreaker.State) State {
	switch s {
	case circuitbreaker.OpenState:
		return Open
	case circuitbreaker.HalfOpenState:
		return HalfOpen
	}
	return Closed
}

// Name is the dependency the breaker guards.
func (b *Breaker) Name() string { return b.name }

// State is the breaker's state now (an open breaker whose timeout passed reads
// half-open).
func (b *Breaker) State() State {
	st := fromLib(b.cb.State())
	if st == Open && b.cb.RemainingDelay() <= 0 {
		return HalfOpen // failsafe-go moves on at the next permit asked for
	}
	return st
}

// Allow asks for a permit: nil, or an *OpenError. Every permitted call must be followed
// by exactly one Done with its outcome.
func (b *Breaker) Allow() error {
	if b.cb.TryAcquirePermit() {
		return nil
	}
	return &OpenError{Dependency: b.name, RetryIn: b.cb.RemainingDelay()}
}

// Done records a permitted call's error (nil for success).
func (b *Breaker) Done(err error) {
	o := Success
	if err != nil && b.classify != nil {
		o = b.classify(err)
	}
	switch o {
	case Failure:
		b.failures.Inc()
		b.cb.RecordFailure()
	case Ignore:
		// The permit must still be given back; a caller's cancellation is no evidence
		// either way, and counting it as a success is the harmless choice.
		b.cb.RecordSuccess()
	default:
		b.succ.Inc()
		b.cb.RecordSuccess()
	}
}

// Do runs f if the breaker allows it and records its outcome.
func (b *Breaker) Do(f func() error) error {
	if err := b.Allow(); err != nil {
		return err
	}
	err := f()
	b.Done(err)
	return err
}

// Retriable reports whether err says to try again: it (or an error it wraps) has a
// Retriable() bool method that says so.
func Retriable(err error) bool {
	var r interface{ Retriable() bool }
	return errors.As(err, &r) && r.Retriable()
}

// ClassifyRetriable is the usual classifier: a retriable error is the dependency's
// failure, a cancellation says nothing, anything else is an answer.
func ClassifyRetriable(err error) Outcome {
	switch {
	case err == nil:
		return Success
	case errors.Is(err, context.Canceled):
		return Ignore
	case errors.Is(err, context.DeadlineExceeded), Retriable(err):
		return Failure
	}
	return Success
}

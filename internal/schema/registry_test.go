package schema_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m) }

const (
	topic     = "healthtech.patient.events"
	created   = `{"type":"record","name":"PatientCreated","fields":[{"name":"name","type":"string"}]}`
	updated   = `{"type":"record","name":"PatientUpdated","fields":[{"name":"field","type":"string"}]}`
	discharge = `{"type":"record","name":"PatientDischarged","fields":[{"name":"ward","type":"int"}]}`
)

// registryServer serves an srfake registry on an address of its own that survives a
// stop: stop closes the listener and every connection (a registry that is down), start
// serves again on the same address, with another registry when given one (the dev
// registry after a restart, which forgot everything).
type registryServer struct {
	t    *testing.T
	addr string

	mu  sync.Mutex
	reg *srfake.Registry
	srv *http.Server
}

func newRegistryServer(t *testing.T) *registryServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &registryServer{t: t, addr: l.Addr().String(), reg: srfake.NewRegistry()}
	s.serve(l)
	t.Cleanup(s.stop)
	return s
}

func (s *registryServer) url() string { return "http://" + s.addr }

func (s *registryServer) serve(l net.Listener) {
	s.srv = &http.Server{Handler: s.reg.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
}

func (s *registryServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
}

func (s *registryServer) start(fresh *srfake.Registry) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if fresh != nil {
		s.reg = fresh
	}
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.serve(l)
}

func (s *registryServer) registry() *srfake.Registry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reg
}

func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// fastRetry keeps the tests' failing calls short; the policy's behaviour is the
// resilience package's to test.
var fastRetry = schema.WithRetry(resilience.RetryPolicy{Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxTries: 3})

func breaker(reg prometheus.Registerer) *resilience.Breaker {
	s := resilience.DefaultSettings()
	s.Timeout = 200 * time.Millisecond // the guide's 60 s would make the test wait a minute
	return schema.NewBreaker("svc", s, resilience.NewMetrics(reg), zap.NewNop())
}

// metric is the value of a circuit_breaker_* series of the registry's breaker.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "dependency" && l.GetValue() == schema.BreakerName {
					if m.GetGauge() != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func isUnavailable(err error) bool {
	var ue *schema.UnavailableError
	return errors.As(err, &ue) && errors.Is(err, schema.ErrUnavailable) && resilience.Retriable(err)
}

// With the registry down, publishing with a schema already known still encodes and a
// value of a known schema id still decodes (neither calls the registry); a schema never
// seen fails with Unavailable, whether registered or met as an unknown id while
// decoding; the same schema registered again is answered from memory. Five failed
// calls open the breaker (counted in circuit_breaker_failures_total), which then
// refuses without calling; once the registry is back, registering works again and the
// breaker closes.
func TestRegistryDownKeepsCachedSchemas(t *testing.T) {
	srv := newRegistryServer(t)
	metrics := prometheus.NewRegistry()
	b := breaker(metrics)
	r := schema.NewRegistry(srv.url(), newPool(t), zap.NewNop(), schema.WithBreaker(b), fastRetry)
	t.Cleanup(func() { _ = r.Close() })
	ctx := callCtx(t)
	known, err := r.Register(ctx, "patient.created", topic, created)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := known.Encode([]byte(`{"name":"a"}`), nil)
	if err != nil {
		t.Fatal(err)
	}

	srv.stop()
	s := r.Lookup("patient.created")
	if s == nil || s.ID != known.ID {
		t.Fatalf("Lookup with the registry down: %+v", s)
	}
	if b, err := s.Encode([]byte(`{"name":"b"}`), nil); err != nil || int(binary.BigEndian.Uint32(b[1:5])) != known.ID {
		t.Fatalf("encode with the registry down: %v", err)
	}
	if js, err := r.DecodeJSON(ctx, wire); err != nil || string(js) != `{"name":"a"}` {
		t.Fatalf("decode of a known schema id with the registry down: %s, %v", js, err)
	}
	if got, err := r.Register(ctx, "patient.created", topic, created); err != nil || got != known {
		t.Fatalf("the known schema registered again with the registry down: %v, %v", got, err)
	}
	if metric(t, metrics, "circuit_breaker_failures_total") != 1 || b.State() != resilience.Closed {
		t.Fatalf("after 1 failed call: failures %v, breaker %v", metric(t, metrics, "circuit_breaker_failures_total"), b.State())
	}
	unknownID := append([]byte{0, 0, 0, 0x7f, 0xff}, 2, 'x')
	failing := []func() error{
		func() error { _, err := r.Register(ctx, "patient.updated", topic, updated); return err },
		func() error { _, err := r.DecodeJSON(ctx, unknownID); return err },
		func() error { _, err := r.Register(ctx, "patient.discharged", topic, discharge); return err },
		func() error { _, err := r.Register(ctx, "patient.updated", topic, updated); return err },
	}
	for i, f := range failing {
		if err := f(); !isUnavailable(err) {
			t.Fatalf("call %d with the registry down: %v, want a retriable *schema.UnavailableError", i, err)
		}
	}
	if b.State() != resilience.Open || metric(t, metrics, "circuit_breaker_state") != 1 ||
		metric(t, metrics, "circuit_breaker_failures_total") != 5 {
		t.Fatalf("after 5 failed calls: breaker %v, gauge %v, failures %v; want open, 1, 5", b.State(),
			metric(t, metrics, "circuit_breaker_state"), metric(t, metrics, "circuit_breaker_failures_total"))
	}
	_, err = r.Register(ctx, "patient.updated", topic, updated)
	var oe *resilience.OpenError
	if !isUnavailable(err) || !errors.As(err, &oe) || oe.Dependency != schema.BreakerName {
		t.Fatalf("with the breaker open: %v", err)
	}
	if metric(t, metrics, "circuit_breaker_failures_total") != 5 {
		t.Error("a refused call counted as a failure")
	}
	if s, err := known.Encode([]byte(`{"name":"c"}`), nil); err != nil || s == nil {
		t.Fatalf("encode with the breaker open: %v", err)
	}

	srv.start(nil)
	var got *schema.Schema
	for deadline := time.Now().Add(20 * time.Second); ; {
		if got, err = r.Register(ctx, "patient.updated", topic, updated); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("register after the registry came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.Lookup("patient.updated") != got {
		t.Error("the registered schema is not looked up")
	}
	if _, err := r.Register(ctx, "patient.discharged", topic, discharge); err != nil {
		t.Fatal(err)
	}
	if b.State() != resilience.Closed || metric(t, metrics, "circuit_breaker_state") != 0 {
		t.Errorf("after two successes: breaker %v, gauge %v", b.State(), metric(t, metrics, "circuit_breaker_state"))
	}
}

// A sidecar whose registry is unreachable when it starts still loads the schemas
// PostgreSQL holds and publishes with them; Load says the re-seeding is pending with a
// retriable error, and RunReseed finishes it once the registry answers: a registry that
// forgot everything gets the schemas again, and an id it now answers differently
// replaces the stored one in memory and in PostgreSQL.
func TestLoadWithoutRegistryThenReseed(t *testing.T) {
	srv := newRegistryServer(t)
	pool := newPool(t)
	ctx := callCtx(t)
	first := schema.NewRegistry(srv.url(), pool, zap.NewNop(), fastRetry)
	t.Cleanup(func() { _ = first.Close() })
	old, err := first.Register(ctx, "patient.created", topic, created)
	if err != nil {
		t.Fatal(err)
	}

	srv.stop()
	r := schema.NewRegistry(srv.url(), pool, zap.NewNop(), fastRetry)
	t.Cleanup(func() { _ = r.Close() })
	if err := r.Load(ctx); !isUnavailable(err) {
		t.Fatalf("Load with the registry down: %v, want a retriable *schema.UnavailableError", err)
	}
	s := r.Lookup("patient.created")
	if s == nil || s.ID != old.ID || r.Unseeded() != 1 {
		t.Fatalf("after Load with the registry down: schema %+v, %d unseeded", s, r.Unseeded())
	}
	if _, err := s.Encode([]byte(`{"name":"a"}`), nil); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	rctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { done <- r.RunReseed(rctx, 20*time.Millisecond) }()
	// The registry comes back having forgotten everything, and another schema has
	// taken the old id.
	fresh := srfake.NewRegistry()
	if _, _, err := fresh.RegisterSchema("other-subject", sr.Schema{Schema: discharge, Type: sr.TypeAvro}); err != nil {
		t.Fatal(err)
	}
	srv.start(fresh)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RunReseed did not finish after the registry came back")
	}
	if r.Unseeded() != 0 {
		t.Fatalf("%d schemas still unseeded", r.Unseeded())
	}
	ss, ok := srv.registry().GetSchema(schema.Subject(topic, "patient.created"), 1)
	if !ok {
		t.Fatal("the registry did not get the stored schema again")
	}
	now := r.Lookup("patient.created")
	if ss.ID == old.ID || now.ID != ss.ID || s.ID != old.ID {
		t.Fatalf("ids: stored %d, registry now %d, looked up %d, the earlier *Schema %d", old.ID, ss.ID, now.ID, s.ID)
	}
	stored, err := store.NewSchemas(pool).All(ctx)
	if err != nil || len(stored) != 1 || stored[0].SchemaID != ss.ID {
		t.Fatalf("stored schemas %+v, %v; want id %d", stored, err, ss.ID)
	}
}

// Registry calls carry their caller's context: a registry that never answers holds a
// call only until the caller's deadline (not the client's much longer timeout), the
// request is abandoned on the registry's side too, and Ping honours its context alike.
func TestRegistryCallsHonourTheContext(t *testing.T) {
	reg := srfake.New()
	t.Cleanup(reg.Close)
	abandoned := make(chan struct{}, 16)
	reg.Intercept(func(_ http.ResponseWriter, req *http.Request) bool {
		<-req.Context().Done() // never answers; the client going away ends the request
		abandoned <- struct{}{}
		return true
	})
	r := schema.NewRegistry(reg.URL(), nil, zap.NewNop(), fastRetry, schema.WithTimeout(10*time.Minute))
	t.Cleanup(func() { _ = r.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := r.Register(ctx, "patient.created", topic, created)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("register against a registry that never answers: %v, want the caller's deadline", err)
	}
	<-abandoned

	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err = r.DecodeJSON(ctx, []byte{0, 0, 0, 0, 9, 2, 'x'})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("decode of an unknown id: %v, want the caller's deadline", err)
	}
	<-abandoned

	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	err = r.Ping(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, schema.ErrUnavailable) {
		t.Fatalf("ping: %v, want unavailable with the caller's deadline", err)
	}
	<-abandoned
	reg.ClearInterceptors()
	if err := r.Ping(context.Background()); err != nil {
		t.Fatalf("ping of a registry that answers: %v", err)
	}
}

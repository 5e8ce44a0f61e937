package schema

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	neturl "net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riferrei/srclient"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

var (
	// ErrIncompatible: the registry refused a schema as incompatible with the subject's
	// earlier versions.
	ErrIncompatible = errors.New("schema is not compatible with the registered versions")
	// ErrUnavailable: the registry could not be reached (every *UnavailableError is one).
	ErrUnavailable = errors.New("schema registry unavailable")
)

// UnavailableError says the registry could not be reached, did not answer within the
// client's timeout, answered 5xx or 429, or its breaker refused the call. It is
// retriable, and errors.Is(err, ErrUnavailable) holds.
type UnavailableError struct {
	// Op names the registry call ("register schema", "fetch schema 7").
	Op string
	// Err is the cause: a network error, an HTTP status, the breaker's
	// *resilience.OpenError.
	Err error
}

// LogSafe marks the text as loggable (redact.Safe): the operation and a network error or
// HTTP status; the registry URL in it has no password (net/http strips it).
func (e *UnavailableError) LogSafe() {}

func (e *UnavailableError) Error() string {
	return "schema registry unavailable (" + e.Op + "): " + e.Err.Error()
}
func (e *UnavailableError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }
func (e *UnavailableError) Retriable() bool { return true }

// Schema is a registered Avro schema of an event type.
type Schema struct {
	EventType    string
	Subject      string
	ID           int
	Version      int
	Text         string
	RegisteredAt time.Time
	// Ref is the ce_dataschema value: the registry's URL of the schema.
	Ref string

	avro avro.Schema
}

// Encode validates payload (a JSON object as bytes, or a Struct) against the schema and
// returns it in Confluent wire format.
func (s *Schema) Encode(payloadJSON []byte, payload *structpb.Struct) ([]byte, error) {
	var v any
	if payload != nil {
		v = payload.AsMap()
	} else {
		dec := json.NewDecoder(bytes.NewReader(payloadJSON))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, validate.Errorf("payload_json", "is not valid JSON")
		}
	}
	cv, err := coerce(s.avro, v, "")
	if err != nil {
		return nil, err
	}
	b, err := avro.Marshal(s.avro, cv)
	if err != nil {
		// coerce accepted it, so this is a gap in coerce: say which schema, not the value.
		return nil, validate.Errorf("payload", "does not match schema %s (id %d)", s.Subject, s.ID)
	}
	return frame(s.ID, b), nil
}

// BreakerName is the dependency name of the registry's breaker.
const BreakerName = "schema-registry"

// NewBreaker builds the schema-registry circuit breaker: a call that fails with an
// *UnavailableError or runs past its caller's deadline is the registry's failure, a
// cancellation says nothing, and any answer (a schema, 404, 409, 422) is a success.
func NewBreaker(service string, s resilience.Settings, m *resilience.Metrics, log *zap.Logger) *resilience.Breaker {
	return resilience.NewBreaker(BreakerName, service, s, resilience.ClassifyRetriable, m, log)
}

// DefaultTimeout bounds one HTTP request to the registry (the caller's context may end
// it sooner).
const DefaultTimeout = 10 * time.Second

// Registry registers schemas and keeps the latest one per event type in memory.
//
// Only registering a schema, fetching one by id to decode a consumed value, and
// re-seeding talk to the registry; Lookup, List and Schema.Encode use the memory alone,
// so publishing with the schemas already known keeps working while the registry is
// down. Every registry call carries its caller's context (srclient v0.7.2 takes none:
// each call gets a client whose transport sends with that context, so nothing outlives
// the caller), goes through the schema-registry breaker, and retries transient
// failures with backoff within the caller's deadline.
type Registry struct {
	url       string
	shownURL  string // url without a password, for errors
	refBase   string // url without user or password, for ce_dataschema
	transport http.RoundTripper
	timeout   time.Duration
	breaker   *resilience.Breaker
	retry     resilience.RetryPolicy
	schemas   *store.Schemas
	log       *zap.Logger

	mu     sync.RWMutex
	byType map[string]*Schema
	// byID holds every schema seen by id (registered here, loaded, or fetched to
	// decode a consumed event), for DecodeJSON.
	byID   map[int]avro.Schema
	seedMu sync.Mutex // one Reseed at a time; guards unseeded
	// unseeded are loaded schemas not yet confirmed in the registry (see Reseed);
	// nUnseeded is its length, read without waiting for a Reseed.
	unseeded  []*Schema
	nUnseeded atomic.Int64
}

// Option configures a Registry.
type Option func(*registryOptions)

type registryOptions struct {
	breaker   *resilience.Breaker
	retry     resilience.RetryPolicy
	timeout   time.Duration
	storeOpts []store.Option
	security  registrySecurity // security.go
}

// WithBreaker guards registry calls with b (NewBreaker); nil means no breaker.
func WithBreaker(b *resilience.Breaker) Option {
	return func(o *registryOptions) { o.breaker = b }
}

// WithStoreOptions configures the event_schemas store (e.g. store.WithBreaker).
func WithStoreOptions(opts ...store.Option) Option {
	return func(o *registryOptions) { o.storeOpts = append(o.storeOpts, opts...) }
}

// WithRetry replaces resilience.DefaultRetry for transient registry failures.
func WithRetry(p resilience.RetryPolicy) Option {
	return func(o *registryOptions) { o.retry = p }
}

// WithTimeout bounds one HTTP request (DefaultTimeout).
func WithTimeout(d time.Duration) Option {
	return func(o *registryOptions) { o.timeout = d }
}

// NewRegistry talks to the registry at url and keeps schemas in pool's event_schemas.
func NewRegistry(url string, pool *pgxpool.Pool, log *zap.Logger, opts ...Option) *Registry {
	o := registryOptions{retry: resilience.DefaultRetry(), timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	url = strings.TrimRight(url, "/")
	shown, refBase := "the schema registry", url // an unparseable URL is never shown
	if u, err := neturl.Parse(url); err == nil {
		shown = u.Redacted()
		u.User = nil
		refBase = u.String()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &Registry{
		url: url, shownURL: shown, refBase: refBase, transport: o.security.transport(tr), timeout: o.timeout, breaker: o.breaker, retry: o.retry,
		schemas: store.NewSchemas(pool, o.storeOpts...), log: log,
		byType: map[string]*Schema{}, byID: map[int]avro.Schema{},
	}
}

// Close closes the registry client's idle connections.
func (r *Registry) Close() error {
	if t, ok := r.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// Subject is the registry subject of an event type's schemas: "<topic>-<event type>"
// (topic-record-name strategy with the event type as the record name).
func Subject(topic, eventType string) string { return topic + "-" + eventType }

// boundTransport sends srclient's requests with the caller's context and notes how
// the registry answered (srclient builds its requests without a context, and reports a
// 5xx with a body that is not JSON only as text).
type boundTransport struct {
	ctx    context.Context
	base   http.RoundTripper
	status int  // the last HTTP status answered
	netErr bool // a request got no answer
}

func (t *boundTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req.WithContext(t.ctx))
	if err != nil {
		t.netErr = true
		return nil, err
	}
	t.status = resp.StatusCode
	return resp, nil
}

// call runs one registry operation f: srclient bound to ctx, through the breaker, with
// transient failures retried within ctx's deadline (the breaker counts the operation
// once, after its retries).
func (r *Registry) call(ctx context.Context, op string, f func(*srclient.SchemaRegistryClient) error) error {
	attempt := func(ctx context.Context) error {
		t := &boundTransport{ctx: ctx, base: r.transport}
		c := srclient.NewSchemaRegistryClient(r.url, srclient.WithClient(&http.Client{Transport: t, Timeout: r.timeout}))
		c.CodecCreationEnabled(false) // hamba/avro encodes; goavro codecs would be unused
		c.CachingEnabled(false)       // the Registry keeps what it needs
		return classify(ctx, op, t, f(c))
	}
	if r.breaker == nil {
		return r.retry.Do(ctx, attempt)
	}
	if err := r.breaker.Allow(); err != nil {
		return &UnavailableError{Op: op, Err: err}
	}
	err := r.retry.Do(ctx, attempt)
	r.breaker.Done(err)
	return err
}

// classify turns an error of a registry call into this package's classes, by what the
// transport saw and the registry's error codes, never by text.
func classify(ctx context.Context, op string, t *boundTransport, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: %w", op, cerr)
	}
	var se srclient.Error
	isSE := errors.As(err, &se)
	switch {
	case t.netErr:
		return &UnavailableError{Op: op, Err: err}
	case t.status >= 500 || t.status == http.StatusTooManyRequests:
		return &UnavailableError{Op: op, Err: fmt.Errorf("HTTP %d", t.status)}
	case isSE && srCode(se.Code) == 409:
		return fmt.Errorf("%w: %s", ErrIncompatible, se.Message)
	case isSE && srCode(se.Code) == 422:
		return validate.Errorf("schema", "refused by the registry: %s", se.Message)
	}
	return err // an answer: our own error, or a refusal (404, 401) the caller judges
}

// srCode is the HTTP status of a registry error code (40401 → 404).
func srCode(code int) int {
	for code >= 1000 {
		code /= 10
	}
	return code
}

func isNotFound(err error) bool {
	var se srclient.Error
	return errors.As(err, &se) && srCode(se.Code) == 404
}

// Ping checks that the registry answers, within ctx. It does not go through the
// breaker: it is a probe of the registry itself (readiness).
func (r *Registry) Ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/subjects", nil)
	if err != nil {
		return fmt.Errorf("schema registry URL: %w", err)
	}
	resp, err := (&http.Client{Transport: r.transport, Timeout: r.timeout}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w at %s: %w", ErrUnavailable, r.shownURL, ctx.Err())
		}
		return &UnavailableError{Op: "ping " + r.shownURL, Err: err}
	}
	_ = resp.Body.Close()
	if resp.StatusCode >= 500 {
		return &UnavailableError{Op: "ping " + r.shownURL, Err: fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	return nil
}

// Register checks text, registers it under the event type's subject (the registry
// checks compatibility with earlier versions) and remembers it. While the registry is
// unavailable, a schema never registered fails with an *UnavailableError; the schema
// the event type already has, registered again, is answered from memory.
func (r *Registry) Register(ctx context.Context, eventType, topic, text string) (*Schema, error) {
	// The text is stored (PostgreSQL, the registry) and parsed again at every start:
	// it must be JSON within the gateway's limits (no U+0000, nesting at most
	// validate.MaxDepth), which also bounds the Avro parser's recursion.
	if err := validate.JSONValue("schema", []byte(text)); err != nil {
		return nil, err
	}
	parsed, err := avro.Parse(text)
	if err != nil {
		return nil, validate.Errorf("schema", "is not a valid Avro schema: %v", err)
	}
	if parsed.Type() != avro.Record {
		return nil, validate.Errorf("schema", "must be an Avro record (the payload is a JSON object)")
	}
	subject := Subject(topic, eventType)
	var id, version int
	err = r.call(ctx, "register schema", func(c *srclient.SchemaRegistryClient) error {
		// Ask before registering, so an incompatible schema gets a clear answer even
		// from registries that would only say 409.
		versions, err := c.GetSchemaVersions(subject)
		switch {
		case err != nil && !isNotFound(err):
			return err
		case err == nil && len(versions) > 0:
			ok, err := c.IsSchemaCompatible(subject, text, "latest", srclient.Avro)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: subject %s (latest version %d)", ErrIncompatible, subject, versions[len(versions)-1])
			}
		}
		rs, err := c.CreateSchema(subject, text, srclient.Avro)
		if err != nil {
			return err
		}
		id, version = rs.ID(), rs.Version()
		if version == 0 {
			// srclient's CreateSchema answers only the id; read the version back.
			if got, err := c.LookupSchema(subject, text, srclient.Avro); err == nil {
				version = got.Version()
			}
		}
		return nil
	})
	if err != nil {
		if cur := r.Lookup(eventType); errors.Is(err, ErrUnavailable) && cur != nil && cur.Subject == subject && cur.Text == text {
			return cur, nil
		}
		return nil, err
	}
	s := &Schema{
		EventType: eventType, Subject: subject, ID: id, Version: version, Text: text,
		avro: parsed, Ref: r.ref(id),
	}
	s.RegisteredAt, err = r.schemas.Save(ctx, store.StoredSchema{
		Subject: s.Subject, Version: s.Version, EventType: s.EventType, SchemaID: s.ID, Text: s.Text,
	})
	if err != nil {
		return nil, fmt.Errorf("remember schema: %w", err)
	}
	r.put(s)
	r.log.Info("registered schema", zap.String("event_type", eventType), zap.String("subject", subject),
		zap.Int("schema_id", s.ID), zap.Int("version", s.Version))
	return s, nil
}

// ref is the ce_dataschema of schema id: the registry's URL of it, without the
// credentials the configured URL may hold (the header goes to every consumer).
func (r *Registry) ref(id int) string { return fmt.Sprintf("%s/schemas/ids/%d", r.refBase, id) }

func (r *Registry) put(s *Schema) {
	r.mu.Lock()
	r.byID[s.ID] = s.avro
	if cur, ok := r.byType[s.EventType]; !ok || cur.Version <= s.Version || cur.Subject != s.Subject {
		r.byType[s.EventType] = s
	}
	r.mu.Unlock()
}

// Lookup returns the latest schema of an event type, or nil. It never calls the
// registry.
func (r *Registry) Lookup(eventType string) *Schema {
	r.mu.RLock()
	s := r.byType[eventType]
	r.mu.RUnlock()
	return s
}

// List returns the latest schema of each event type with the prefix, sorted.
func (r *Registry) List(prefix string) []*Schema {
	r.mu.RLock()
	out := make([]*Schema, 0, len(r.byType))
	for t, s := range r.byType {
		if strings.HasPrefix(t, prefix) {
			out = append(out, s)
		}
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].EventType < out[j].EventType })
	return out
}

// Load reads the remembered schemas into memory, with the ids PostgreSQL holds, then
// re-seeds the registry with them (the dev registry forgets everything on restart; ids
// the registry answers replace stored ones).
//
// A registry that cannot be reached does not undo the loading: the schemas stay in
// memory, so publishing with them works, and Load answers a retriable error
// (errors.Is(err, ErrUnavailable)) that a caller may log and go on; Reseed (or
// RunReseed) finishes the re-seeding once the registry answers. A failure to read
// PostgreSQL, or a stored schema that no longer parses, is an error to stop on.
func (r *Registry) Load(ctx context.Context) error {
	stored, err := r.schemas.All(ctx)
	if err != nil {
		return fmt.Errorf("load schemas: %w", err)
	}
	all := make([]*Schema, 0, len(stored))
	for _, st := range stored {
		parsed, err := avro.Parse(st.Text)
		if err != nil {
			return fmt.Errorf("stored schema %s v%d no longer parses: %w", st.Subject, st.Version, err)
		}
		all = append(all, &Schema{
			EventType: st.EventType, Subject: st.Subject, ID: st.SchemaID, Version: st.Version, Text: st.Text,
			RegisteredAt: st.RegisteredAt, Ref: r.ref(st.SchemaID), avro: parsed,
		})
	}
	for _, s := range all {
		r.put(s)
	}
	r.seedMu.Lock()
	r.unseeded = all
	r.nUnseeded.Store(int64(len(all)))
	r.seedMu.Unlock()
	if len(all) > 0 {
		r.log.Info("loaded schemas", zap.Int("schemas", len(all)))
	}
	return r.Reseed(ctx)
}

// Unseeded is the number of loaded schemas not yet confirmed in the registry.
func (r *Registry) Unseeded() int { return int(r.nUnseeded.Load()) }

// Reseed makes sure the registry has every loaded schema that is not yet confirmed
// there: each is looked up, registered again when the registry does not know it, and
// its id updated (in memory and PostgreSQL) when the registry answers another. It
// stops at the first failure, keeping the rest for the next call; a registry that
// cannot be reached is a retriable error (errors.Is(err, ErrUnavailable)).
func (r *Registry) Reseed(ctx context.Context) error {
	r.seedMu.Lock()
	defer r.seedMu.Unlock()
	reseeded := 0
	for len(r.unseeded) > 0 {
		s := r.unseeded[0]
		var id int
		created := false
		err := r.call(ctx, "re-seed schema "+s.Subject, func(c *srclient.SchemaRegistryClient) error {
			got, err := c.LookupSchema(s.Subject, s.Text, srclient.Avro)
			if isNotFound(err) { // 40401 subject, 40403 schema not found
				got, err = c.CreateSchema(s.Subject, s.Text, srclient.Avro)
				created = err == nil
			}
			if err != nil {
				return err
			}
			id = got.ID()
			return nil
		})
		if err == nil && id != s.ID {
			if err = r.schemas.SetID(ctx, s.Subject, s.Version, id); err == nil {
				moved := *s // published *Schema values are never changed in place
				moved.ID, moved.Ref = id, r.ref(id)
				r.put(&moved)
			}
		}
		if err != nil {
			return fmt.Errorf("re-seed %d stored schemas into the registry: %w", len(r.unseeded), err)
		}
		if created {
			reseeded++
		}
		r.unseeded = r.unseeded[1:]
		r.nUnseeded.Store(int64(len(r.unseeded)))
	}
	if reseeded > 0 {
		r.log.Info("re-seeded schemas into the registry", zap.Int("schemas", reseeded))
	}
	return nil
}

// RunReseed calls Reseed every `every` until no loaded schema awaits re-seeding or ctx
// ends; it always answers nil. Run it when Load answered ErrUnavailable.
func (r *Registry) RunReseed(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for r.Unseeded() > 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, every)
		err := r.Reseed(cctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Debug("schema re-seeding still failing", redact.Error(err))
		}
	}
	return nil
}

package schema

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riferrei/srclient"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/eventgw/eventgw/internal/validate"
)

var (
	// ErrIncompatible: the registry refused a schema as incompatible with the subject's
	// earlier versions.
	ErrIncompatible = errors.New("schema is not compatible with the registered versions")
	// ErrUnavailable: the registry could not be reached.
	ErrUnavailable = errors.New("schema registry unavailable")
)

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

// Registry registers schemas and keeps the latest one per event type in memory.
type Registry struct {
	client *srclient.SchemaRegistryClient
	url    string
	pool   *pgxpool.Pool
	log    *zap.Logger

	mu     sync.RWMutex
	byType map[string]*Schema
	// byID holds every schema seen by id (registered here, loaded, or fetched to
	// decode a consumed event), for DecodeJSON.
	byID map[int]avro.Schema
}

// NewRegistry talks to the registry at url and keeps schemas in pool's event_schemas.
func NewRegistry(url string, pool *pgxpool.Pool, log *zap.Logger) *Registry {
	c := srclient.NewSchemaRegistryClient(strings.TrimRight(url, "/"),
		srclient.WithClient(&http.Client{Timeout: 10 * time.Second}))
	c.CodecCreationEnabled(false) // hamba/avro encodes; goavro codecs would be unused
	return &Registry{client: c, url: strings.TrimRight(url, "/"), pool: pool, log: log, byType: map[string]*Schema{}, byID: map[int]avro.Schema{}}
}

// Subject is the registry subject of an event type's schemas: "<topic>-<event type>"
// (topic-record-name strategy with the event type as the record name).
func Subject(topic, eventType string) string { return topic + "-" + eventType }

// Ping checks that the registry answers.
func (r *Registry) Ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/subjects", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %w", ErrUnavailable, r.url, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%w at %s: HTTP %d", ErrUnavailable, r.url, resp.StatusCode)
	}
	return nil
}

// Register checks text, registers it under the event type's subject (the registry
// checks compatibility with earlier versions) and remembers it.
func (r *Registry) Register(ctx context.Context, eventType, topic, text string) (*Schema, error) {
	parsed, err := avro.Parse(text)
	if err != nil {
		return nil, validate.Errorf("schema", "is not a valid Avro schema: %v", err)
	}
	if parsed.Type() != avro.Record {
		return nil, validate.Errorf("schema", "must be an Avro record (the payload is a JSON object)")
	}
	subject := Subject(topic, eventType)
	// Ask before registering, so an incompatible schema gets a clear answer even from
	// registries that would only say 409.
	if versions, err := r.client.GetSchemaVersions(subject); err == nil && len(versions) > 0 {
		ok, err := r.client.IsSchemaCompatible(subject, text, "latest", srclient.Avro)
		if err != nil {
			return nil, r.registryErr(err)
		}
		if !ok {
			return nil, fmt.Errorf("%w: subject %s (latest version %d)", ErrIncompatible, subject, versions[len(versions)-1])
		}
	}
	rs, err := r.client.CreateSchema(subject, text, srclient.Avro)
	if err != nil {
		return nil, r.registryErr(err)
	}
	s := &Schema{
		EventType: eventType, Subject: subject, ID: rs.ID(), Version: rs.Version(), Text: text,
		RegisteredAt: time.Now().UTC(), avro: parsed, Ref: fmt.Sprintf("%s/schemas/ids/%d", r.url, rs.ID()),
	}
	if s.Version == 0 {
		// srclient's CreateSchema answers only the id; read the version back.
		if got, err := r.client.LookupSchema(subject, text, srclient.Avro); err == nil {
			s.Version = got.Version()
		}
	}
	err = r.pool.QueryRow(ctx, `INSERT INTO event_schemas (subject, version, event_type, schema_id, schema)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (subject, version) DO UPDATE SET schema_id = EXCLUDED.schema_id, schema = EXCLUDED.schema
		RETURNING registered_at`, s.Subject, s.Version, s.EventType, s.ID, s.Text).Scan(&s.RegisteredAt)
	if err != nil {
		return nil, fmt.Errorf("remember schema: %w", err)
	}
	r.put(s)
	r.log.Info("registered schema", zap.String("event_type", eventType), zap.String("subject", subject),
		zap.Int("schema_id", s.ID), zap.Int("version", s.Version))
	return s, nil
}

func (r *Registry) put(s *Schema) {
	r.mu.Lock()
	r.byID[s.ID] = s.avro
	if cur, ok := r.byType[s.EventType]; !ok || cur.Version <= s.Version || cur.Subject != s.Subject {
		r.byType[s.EventType] = s
	}
	r.mu.Unlock()
}

func (r *Registry) registryErr(err error) error {
	var se srclient.Error
	if errors.As(err, &se) {
		switch {
		case se.Code == 409 || se.Code/100 == 409: // 409, 40901
			return fmt.Errorf("%w: %s", ErrIncompatible, se.Message)
		case se.Code == 422 || se.Code/100 == 422: // 422, 42201 invalid schema
			return validate.Errorf("schema", "refused by the registry: %s", se.Message)
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Lookup returns the latest schema of an event type, or nil.
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

// Load reads the remembered schemas and makes sure the registry has them (the dev
// registry forgets everything on restart); ids the registry answers replace stored ones.
func (r *Registry) Load(ctx context.Context) error {
	rows, err := r.pool.Query(ctx, `SELECT subject, version, event_type, schema_id, schema, registered_at
		FROM event_schemas ORDER BY subject, version`)
	if err != nil {
		return fmt.Errorf("load schemas: %w", err)
	}
	var all []*Schema
	for rows.Next() {
		s := &Schema{}
		if err := rows.Scan(&s.Subject, &s.Version, &s.EventType, &s.ID, &s.Text, &s.RegisteredAt); err != nil {
			rows.Close()
			return fmt.Errorf("load schemas: %w", err)
		}
		all = append(all, s)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load schemas: %w", err)
	}
	reseeded := 0
	for _, s := range all {
		if s.avro, err = avro.Parse(s.Text); err != nil {
			return fmt.Errorf("stored schema %s v%d no longer parses: %w", s.Subject, s.Version, err)
		}
		got, err := r.client.LookupSchema(s.Subject, s.Text, srclient.Avro)
		if err != nil {
			var se srclient.Error
			if !errors.As(err, &se) || (se.Code != 404 && se.Code/100 != 404) { // 40401 subject, 40403 schema not found
				return r.registryErr(err)
			}
			if got, err = r.client.CreateSchema(s.Subject, s.Text, srclient.Avro); err != nil {
				return r.registryErr(err)
			}
			reseeded++
		}
		if got.ID() != s.ID {
			s.ID = got.ID()
			if _, err := r.pool.Exec(ctx, `UPDATE event_schemas SET schema_id = $1 WHERE subject = $2 AND version = $3`,
				s.ID, s.Subject, s.Version); err != nil {
				return fmt.Errorf("update schema id: %w", err)
			}
		}
		s.Ref = fmt.Sprintf("%s/schemas/ids/%d", r.url, s.ID)
		r.put(s)
	}
	if len(all) > 0 {
		r.log.Info("loaded schemas", zap.Int("schemas", len(all)), zap.Int("reseeded", reseeded))
	}
	return nil
}

package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/resilience"
)

// StoredSchema is an event_schemas row: a schema version registered through this
// sidecar, kept so that it can be re-seeded into a registry that forgot it.
type StoredSchema struct {
	Subject   string
	Version   int
	EventType string
	// SchemaID is the id the registry last answered for it.
	SchemaID     int
	Text         string
	RegisteredAt time.Time
}

// Schemas is the event_schemas table.
type Schemas struct {
	pool    *pgxpool.Pool
	breaker *resilience.Breaker
}

// NewSchemas uses pool.
func NewSchemas(pool *pgxpool.Pool, opts ...Option) *Schemas {
	return &Schemas{pool: pool, breaker: buildOptions(opts).breaker}
}

// Save stores s (its subject and version again: the id and text are replaced) and
// answers when it was first registered.
func (r *Schemas) Save(ctx context.Context, s StoredSchema) (registeredAt time.Time, err error) {
	err = Do(ctx, r.breaker, ReadWrite, "save schema", func(ctx context.Context) error {
		return r.pool.QueryRow(ctx, `INSERT INTO event_schemas (subject, version, event_type, schema_id, schema)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (subject, version) DO UPDATE SET schema_id = EXCLUDED.schema_id, schema = EXCLUDED.schema
			RETURNING registered_at`, s.Subject, s.Version, s.EventType, s.SchemaID, s.Text).Scan(&registeredAt)
	})
	return registeredAt, err
}

// All answers every stored schema, by subject and version.
func (r *Schemas) All(ctx context.Context) (all []StoredSchema, err error) {
	err = Do(ctx, r.breaker, ReadOnly, "load schemas", func(ctx context.Context) error {
		all = all[:0]
		rows, err := r.pool.Query(ctx, `SELECT subject, version, event_type, schema_id, schema, registered_at
			FROM event_schemas ORDER BY subject, version`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s StoredSchema
			if err := rows.Scan(&s.Subject, &s.Version, &s.EventType, &s.SchemaID, &s.Text, &s.RegisteredAt); err != nil {
				return err
			}
			all = append(all, s)
		}
		return rows.Err()
	})
	return all, err
}

// SetID records the id the registry now answers for a stored schema version.
func (r *Schemas) SetID(ctx context.Context, subject string, version, id int) error {
	return Do(ctx, r.breaker, ReadWrite, "update schema id", func(ctx context.Context) error {
		_, err := r.pool.Exec(ctx, `UPDATE event_schemas SET schema_id = $1 WHERE subject = $2 AND version = $3`,
			id, subject, version)
		return err
	})
}

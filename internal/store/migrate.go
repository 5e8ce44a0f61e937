package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/eventgw/eventgw/migrations"
)

// Migrate applies every pending migration. A Postgres session advisory lock makes it
// safe for several sidecars starting at once: one migrates, the others wait.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (applied int, err error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	applied, err = migrateDB(ctx, db)
	if err == nil {
		return applied, nil
	}
	var dbe *DBError
	if c := classify(ctx, ReadWrite, "migrate", err); !errors.As(c, &dbe) {
		return applied, c
	}
	// A migration PostgreSQL refused: goose's account names the migration and the
	// statement (the driver's text carries no DETAIL), without the driver's types.
	return applied, errors.New(err.Error())
}

func migrateDB(ctx context.Context, db *sql.DB) (int, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return 0, fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithSessionLocker(locker))
	if err != nil {
		return 0, fmt.Errorf("migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("apply migrations: %w", err)
	}
	return len(res), nil
}

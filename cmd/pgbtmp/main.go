package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/eventgw/eventgw/internal/devstack"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	ctx := context.Background()
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: "/tmp/pgb/pg"})
	if err != nil { panic(err) }
	defer pg.Stop()
	devstack.CreateDatabase(ctx, pg.DSN("postgres"), "b")
	pool, _ := pgxpool.New(ctx, pg.DSN("b"))
	if _, err := store.Migrate(ctx, pool); err != nil { panic(err) }
	fmt.Println(pg.DSN("b"))
	os.WriteFile("/tmp/pgb/dsn", []byte(pg.DSN("b")), 0644)
	time.Sleep(time.Hour)
}

package testenv

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eventgw/eventgw/internal/devstack"
)

// PGControl is a private PostgreSQL cluster of one test that the test stops and starts
// again (the shared cluster cannot be: every test of the binary uses it).
type PGControl struct {
	t  testing.TB
	pg *devstack.Postgres

	mu   sync.Mutex
	down bool
}

// StoppablePostgres starts a private cluster for one test, without fsync as the shared
// one (a clean stop loses nothing; a test that kills the server and counts what
// survived wants DurablePostgres). It is stopped and removed when the test ends.
func StoppablePostgres(t testing.TB) *PGControl {
	t.Helper()
	dir, err := os.MkdirTemp("", "eventgw-test-pg-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: dir + "/pg", Fast: true})
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("start a private PostgreSQL: %v", err)
	}
	c := &PGControl{t: t, pg: p}
	t.Cleanup(func() {
		c.mu.Lock()
		down := c.down
		c.mu.Unlock()
		if !down {
			_ = p.Stop()
		}
		_ = os.RemoveAll(dir)
	})
	return c
}

// DSN is a connection string for a database of the cluster ("postgres" exists).
func (c *PGControl) DSN(database string) string { return c.pg.DSN(database) }

// Stop shuts the server down cleanly (pg_ctl stop -m fast: sessions are ended with
// 57P01) and waits until it is gone.
func (c *PGControl) Stop() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.pg.Stop(); err != nil {
		c.t.Fatal(err)
	}
	c.down = true
}

// Kill stops the server as a crash would (pg_ctl stop -m immediate).
func (c *PGControl) Kill() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.pg.Kill(); err != nil {
		c.t.Fatal(err)
	}
	c.down = true
}

// Start starts the stopped server again on the same port and data, and waits until it
// accepts connections.
func (c *PGControl) Start() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.pg.Restart(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.down = false
}

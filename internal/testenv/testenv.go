// Package testenv gives tests real dependencies: a private PostgreSQL cluster per test
// binary with a fresh database per test, an in-process kfake cluster and an srfake
// registry per test. EVENTGW_TEST_DATABASE_URL and EVENTGW_TEST_KAFKA_BROKERS point the
// same suites at a real PostgreSQL / Kafka instead.
package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/goleak"

	"github.com/eventgw/eventgw/internal/devstack"
)

var (
	pgOnce  sync.Once
	pg      *devstack.Postgres
	pgDir   string
	pgErr   error
	adminDB string
	dbSeq   atomic.Int64
)

// Main runs a package's tests and stops the shared PostgreSQL cluster afterwards.
// Use it as: func TestMain(m *testing.M) { testenv.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	stopPostgres()
	os.Exit(code)
}

// MainNoLeaks is Main for packages that start goroutines: after the tests, goroutines
// still running (goleak.Find, less those opts ignore) fail the package.
func MainNoLeaks(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	stopPostgres()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines outlived the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func stopPostgres() {
	if pg != nil {
		_ = pg.Stop()
		_ = os.RemoveAll(pgDir)
	}
}

func adminDSN(t testing.TB) string {
	t.Helper()
	if dsn := os.Getenv("EVENTGW_TEST_DATABASE_URL"); dsn != "" {
		return dsn
	}
	pgOnce.Do(func() {
		pgDir, pgErr = os.MkdirTemp("", "eventgw-test-pg-")
		if pgErr != nil {
			return
		}
		if pgErr = os.Chmod(pgDir, 0o755); pgErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pg, pgErr = devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: pgDir + "/pg", Fast: true})
		if pgErr == nil {
			adminDB = pg.DSN("postgres")
		}
	})
	if pgErr != nil {
		t.Fatalf("start the test PostgreSQL: %v", pgErr)
	}
	return adminDB
}

// Postgres returns the shared private cluster (nil with EVENTGW_TEST_DATABASE_URL).
func Postgres(t testing.TB) *devstack.Postgres {
	adminDSN(t)
	return pg
}

// NewDatabase creates an empty database for this test and returns its URL. It is
// dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin := adminDSN(t)
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := devstack.CreateDatabase(ctx, admin, name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return withDatabase(admin, name)
}

func withDatabase(dsn, name string) string {
	// postgres://user@host:port/db?params → swap the path.
	rest, params, _ := strings.Cut(dsn, "?")
	i := strings.LastIndex(rest, "/")
	if i < len("postgres://") {
		return dsn
	}
	out := rest[:i+1] + name
	if params != "" {
		out += "?" + params
	}
	return out
}

// Kafka is a Kafka cluster for one test.
type Kafka struct {
	Brokers []string
	// Cluster is the kfake cluster (nil against a real Kafka).
	Cluster *kfake.Cluster
}

// NewKafka starts a 3-broker kfake cluster closed when the test ends, or uses
// EVENTGW_TEST_KAFKA_BROKERS.
func NewKafka(t testing.TB) *Kafka {
	t.Helper()
	if b := os.Getenv("EVENTGW_TEST_KAFKA_BROKERS"); b != "" {
		return &Kafka{Brokers: strings.Split(b, ",")}
	}
	c, err := devstack.StartKafka(0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(c.Close) })
	return &Kafka{Brokers: c.ListenAddrs(), Cluster: c}
}

// NewRegistry starts an srfake Schema Registry over HTTP for one test.
func NewRegistry(t testing.TB) *srfake.Registry {
	t.Helper()
	r := srfake.New()
	t.Cleanup(r.Close)
	return r
}

// DurablePostgres starts a private cluster with PostgreSQL's durable defaults (fsync,
// synchronous commit) for one test, stopped and removed when it ends: for tests that
// crash the server and expect nothing acknowledged to be lost.
func DurablePostgres(t testing.TB) *devstack.Postgres {
	t.Helper()
	dir, err := os.MkdirTemp("", "eventgw-test-pg-durable-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: dir + "/pg"})
	if err != nil {
		t.Fatalf("start a durable PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		_ = p.Stop()
		_ = os.RemoveAll(dir)
	})
	return p
}

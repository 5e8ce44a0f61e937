package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// Options configures the embedded stack.
type Options struct {
	// KafkaPorts are the broker ports on 127.0.0.1 (one per broker); a 0 picks a free one.
	KafkaPorts []int
	// RegistryAddr is where the Schema Registry listens ("127.0.0.1:0" for a free port).
	RegistryAddr string
	// DataDir holds the PostgreSQL cluster, in DataDir/pg.
	DataDir string
	// PostgresPort for the private cluster; 0 picks a free one.
	PostgresPort int
	// Database to create in the cluster.
	Database string
	// FastPostgres turns off fsync (tests only).
	FastPostgres bool
}

// Stack is the running embedded default stack.
type Stack struct {
	Kafka       *kfake.Cluster
	Registry    *srfake.Registry
	Postgres    *Postgres
	RegistryURL string
	DatabaseURL string

	regSrv *http.Server
}

// Start brings up Kafka, the registry and PostgreSQL. On error, whatever was started
// is stopped again.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	s := &Stack{}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	if s.Kafka, err = StartKafka(opts.KafkaPorts...); err != nil {
		return nil, err
	}
	if s.Registry, s.RegistryURL, s.regSrv, err = startRegistry(opts.RegistryAddr); err != nil {
		return nil, err
	}
	s.Postgres, err = StartPostgres(ctx, PostgresOptions{
		Dir:  filepath.Join(opts.DataDir, "pg"),
		Port: opts.PostgresPort,
		Fast: opts.FastPostgres,
	})
	if err != nil {
		return nil, err
	}
	db := opts.Database
	if db == "" {
		db = "eventgw"
	}
	if err := CreateDatabase(ctx, s.Postgres.DSN("postgres"), db); err != nil {
		return nil, err
	}
	s.DatabaseURL = s.Postgres.DSN(db)
	return s, nil
}

// devSegmentBytes is the dev cluster's log segment size.
const devSegmentBytes = 4 << 20

// StartKafka starts an in-process kfake cluster with one broker per port (3 brokers on
// free ports when none are given).
func StartKafka(ports ...int) (*kfake.Cluster, error) {
	if len(ports) == 0 {
		ports = []int{0, 0, 0}
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(len(ports)),
		kfake.Ports(ports...),
		kfake.ClusterID("eventgw-dev"),
		// The 12-partition default of the guide for topics made by other tools.
		kfake.DefaultNumPartitions(12),
		// kfake keeps its log in memory and grows the active segment by doubling; at
		// its 100 MiB default, re-copying that buffer cost a quarter of a core at 200k
		// events/s. Small segments are reused from the Go heap instead.
		kfake.BrokerConfigs(map[string]string{"log.segment.bytes": strconv.Itoa(devSegmentBytes)}),
	)
	if err != nil {
		return nil, fmt.Errorf("start kfake on ports %v: %w", ports, err)
	}
	return c, nil
}

func startRegistry(addr string) (*srfake.Registry, string, *http.Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, "", nil, fmt.Errorf("schema registry listen on %s: %w", addr, err)
	}
	reg := srfake.NewRegistry()
	srv := &http.Server{Handler: reg.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return reg, "http://" + l.Addr().String(), srv, nil
}

// Brokers is the bootstrap list of the dev Kafka cluster.
func (s *Stack) Brokers() []string { return s.Kafka.ListenAddrs() }

// Close stops everything the stack started, in reverse order.
func (s *Stack) Close() error {
	var errs []error
	if s.Postgres != nil {
		errs = append(errs, s.Postgres.Stop())
	}
	if s.regSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, s.regSrv.Shutdown(ctx))
		cancel()
	}
	if s.Kafka != nil {
		s.Kafka.Close()
	}
	return errors.Join(errs...)
}

// CreateDatabase creates database name unless it exists, connecting with adminDSN.
func CreateDatabase(ctx context.Context, adminDSN, name string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	// CREATE DATABASE takes no parameters: quote the identifier.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: a racing creator won
			return nil
		}
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

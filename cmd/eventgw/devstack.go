package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/devstack"
)

const devstackUsage = `Usage: eventgw devstack [flags]

Runs only the embedded stack of serve --dev (in-process Kafka with 3 brokers, the
Schema Registry, a private PostgreSQL) until SIGINT/SIGTERM, so that several sidecars,
one per local service, share it as pods share a cluster. It prints the EVENTGW_*
settings a sidecar needs on stdout (one KEY=value a line) and where each part listens
on stderr; then run each sidecar without --dev, on its own --grpc-addr and --http-addr:

  eventgw devstack > .eventgw/devstack.env &
  set -a; . .eventgw/devstack.env; set +a
  eventgw serve --service-name prm-service --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:9090

The dev Kafka and registry keep nothing on disk: restart the sidecars after
restarting the devstack (they re-register their schemas when they start).

devstack flags (the dev-* flags and --data-dir of serve, with the same defaults):
`

// devstackFlags are the serve flags devstack takes, with serve's defaults.
var devstackFlags = []string{"dev-kafka-ports", "dev-registry-addr", "dev-postgres-port", "data-dir"}

// newDevstackFlags defines devstack's flags, setting cfg's dev fields and database.
func newDevstackFlags(cfg *config.Config, database *string) *flag.FlagSet {
	serveFS := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(serveFS)
	fs := flag.NewFlagSet("devstack", flag.ContinueOnError)
	for _, name := range devstackFlags {
		f := serveFS.Lookup(name)
		fs.Var(f.Value, f.Name, f.Usage)
	}
	fs.StringVar(database, "database", "eventgw", "database created in the PostgreSQL cluster for the sidecars")
	return fs
}

func runDevstack(args []string, stdout, stderr io.Writer) int {
	var cfg config.Config
	database := new(string)
	fs := newDevstackFlags(&cfg, database)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, devstackUsage); fs.PrintDefaults() }
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ports, err := cfg.DevPorts()
	if err != nil {
		fmt.Fprintln(stderr, "eventgw devstack:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	stack, err := devstack.Start(sctx, devstack.Options{
		KafkaPorts: ports, RegistryAddr: cfg.DevRegistryAddr, DataDir: cfg.DataDir,
		PostgresPort: cfg.DevPostgresPort, Database: *database,
	})
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "eventgw devstack: cannot start:", err)
		return 1
	}
	brokers := strings.Join(stack.Brokers(), ",")
	fmt.Fprintf(stderr, `
  eventgw devstack is ready (Ctrl-C stops it)
    Kafka brokers    %s   (in-process kfake, %d brokers; starts empty after a restart)
    Schema Registry  %s   (in memory)
    PostgreSQL       %s   (data in %s)

  Each sidecar takes these settings (printed on stdout) and runs without --dev, on its
  own --grpc-addr and --http-addr.

`, brokers, len(ports), stack.RegistryURL, config.RedactURL(stack.DatabaseURL), cfg.DataDir)
	fmt.Fprintf(stdout, "EVENTGW_KAFKA_BROKERS=%s\nEVENTGW_SCHEMA_REGISTRY_URL=%s\nEVENTGW_DATABASE_URL=%s\n",
		brokers, stack.RegistryURL, stack.DatabaseURL)
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}

	<-ctx.Done()
	stop()
	// A second signal forces exit; PostgreSQL is stopped in the meantime.
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		fmt.Fprintln(stderr, "eventgw devstack: second signal: exiting now")
		os.Exit(1)
	}()
	fmt.Fprintln(stderr, "eventgw devstack: stopping")
	if err := stack.Close(); err != nil {
		fmt.Fprintln(stderr, "eventgw devstack: stop:", err)
		return 1
	}
	return 0
}

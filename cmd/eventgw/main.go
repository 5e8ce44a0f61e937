// Command eventgw is the event-gateway sidecar.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/eventgw/eventgw/internal/app"
	"github.com/eventgw/eventgw/internal/config"
)

const usage = `eventgw — event-gateway sidecar: publish and subscribe to Kafka events, event-sourced
aggregates in PostgreSQL and sagas, over gRPC on localhost.

Usage:
  eventgw serve [flags]     run the sidecar (--dev: with the embedded Kafka, registry and PostgreSQL)
  eventgw devstack [flags]  run only the embedded Kafka, registry and PostgreSQL, shared by several sidecars
  eventgw inject [flags]    the Kubernetes admission webhook that injects the sidecar (--render: into a manifest)
  eventgw bench [flags]     measure publishing through the sidecar against sarama directly
  eventgw help              this text

Every flag can also be set as an environment variable EVENTGW_<FLAG>, such as
EVENTGW_GRPC_ADDR=unix:///run/eventgw.sock; a flag given on the command line wins.

serve flags:
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var cfg config.Config
	serveFS := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(serveFS)
	printUsage := func() {
		fmt.Fprint(os.Stderr, usage)
		serveFS.SetOutput(os.Stderr)
		serveFS.PrintDefaults()
	}
	if len(args) == 0 {
		printUsage()
		return 2
	}
	switch args[0] {
	case "serve":
		serveFS.Usage = printUsage
		if err := config.Parse(serveFS, args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		return serve(cfg, serveFS)
	case "bench":
		return runBench(args[1:])
	case "devstack":
		return runDevstack(args[1:], os.Stdout, os.Stderr)
	case "inject":
		return runInject(args[1:], os.Stdout, os.Stderr)
	case "help", "-h", "--help", "-help":
		printUsage()
		return 0
	default:
		fmt.Fprintf(os.Stderr, "eventgw: unknown command %q\n\n", args[0])
		printUsage()
		return 2
	}
}

func serve(cfg config.Config, fs *flag.FlagSet) int {
	log, err := newLogger(cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "eventgw:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	log.Debug("config", zap.Strings("settings", cfg.Redacted(fs)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// A second signal forces exit.
		<-ctx.Done()
		stop()
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		log.Warn("second signal: exiting now")
		os.Exit(1)
	}()

	a, err := app.Build(ctx, cfg, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		fmt.Fprintln(os.Stderr, "eventgw: cannot start:", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		log.Error("stopped with error", zap.Error(err))
		return 1
	}
	return 0
}

func newLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var zc zap.Config
	if format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.DisableStacktrace = true
	} else {
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.TimeKey = "time"
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	return zc.Build()
}

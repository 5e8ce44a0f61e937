package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/deadletter"
	"github.com/eventgw/eventgw/internal/devstack"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/outbox"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/server"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/subscribe"
)

// App is a built sidecar.
type App struct {
	cfg    config.Config
	log    *zap.Logger
	closer closeStack

	Stack    *devstack.Stack // nil without --dev
	Pool     *pgxpool.Pool
	Producer *kafka.Producer
	Router   *kafka.Router
	Schemas  *schema.Registry
	Registry *prometheus.Registry
	Events   *store.Events
	Relay    *outbox.Relay
	Subs     *subscribe.Manager
	// Fallback queues publishes in PostgreSQL while Kafka is unavailable.
	Fallback *publish.Fallback
	Breakers *Breakers

	snapshots *store.Snapshotter
	kafkaMu   sync.Mutex
	kafka     sarama.Client // nil until Kafka was reachable
	kcfg      *sarama.Config
	topics    *kafka.Topics

	grpcSrv     *grpc.Server
	health      *health.Server
	httpSrv     *http.Server
	grpcLis     net.Listener
	loopLis     net.Listener // --grpc-loopback-addr (nil without)
	httpLis     net.Listener
	pprofSrv    *http.Server
	pprofLis    net.Listener
	brokers     []string
	registry    string
	databaseURL string
	tenants     []string // --tenants (nil: any tenant)
	tracer      trace.Tracer
}

type closeStack []func() error

func (s *closeStack) push(f func() error) { *s = append(*s, f) }

func (s *closeStack) unwind() error {
	var errs []error
	for i := len(*s) - 1; i >= 0; i-- {
		errs = append(errs, (*s)[i]())
	}
	*s = nil
	return errors.Join(errs...)
}

// Build constructs everything cfg describes. On error, what was started is stopped.
func Build(ctx context.Context, cfg config.Config, log *zap.Logger) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: log, Registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			_ = a.closer.unwind()
		}
	}()
	a.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kafka.BridgeLogger(log)

	a.brokers, a.registry, a.databaseURL = cfg.Brokers(), cfg.SchemaRegistryURL, cfg.DatabaseURL
	a.tenants, _ = cfg.TenantList()
	out, err := buildOutbound(&cfg.Security) // TLS, SASL, credentials from files
	if err != nil {
		return nil, err
	}
	if err := a.startTracing(ctx); err != nil {
		return nil, err
	}
	if cfg.Dev {
		ports, _ := cfg.DevPorts()
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		a.Stack, err = devstack.Start(sctx, devstack.Options{
			KafkaPorts: ports, RegistryAddr: cfg.DevRegistryAddr, DataDir: cfg.DataDir,
			PostgresPort: cfg.DevPostgresPort, Database: "eventgw",
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("start the embedded dev stack: %w", err)
		}
		a.closer.push(a.Stack.Close)
		a.brokers, a.registry = a.Stack.Brokers(), a.Stack.RegistryURL
		if a.databaseURL == "" {
			a.databaseURL = a.Stack.DatabaseURL
		}
	}

	// PostgreSQL.
	pcfg, err := pgxpool.ParseConfig(a.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("--database-url is not a valid PostgreSQL URL")
	}
	pcfg.MaxConns = int32(cfg.DBMaxConns)
	if out.dbPassword != "" {
		pcfg.ConnConfig.Password = out.dbPassword
	}
	// A server that hangs rather than refusing connections must fail calls too (and
	// count on the PostgreSQL breaker), not only run into callers' deadlines.
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > 5*time.Second {
		pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	a.Pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	a.closer.push(func() error { a.Pool.Close(); return nil })
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = a.Pool.Ping(pctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("postgres at %s is unreachable: %w", config.RedactURL(a.databaseURL), err)
	}
	n, err := store.Migrate(ctx, a.Pool)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		log.Info("applied migrations", zap.Int("count", n))
	}
	if err := store.CheckPositions(ctx, a.Pool); err != nil {
		return nil, err
	}

	// Kafka. An unreachable cluster does not stop the sidecar: publishes are queued in
	// PostgreSQL and Kafka is connected to in the background (see Run).
	routes, _ := cfg.RouteMap()
	retention, _ := cfg.RetentionMap()
	a.Router = kafka.NewRouter(cfg.TopicPrefix, routes)
	a.Router.SetCacheLimit(cfg.MaxEventTypes)
	settings := kafka.DefaultTopicSettings()
	settings.Partitions = int32(cfg.Partitions)
	settings.MaxReplication = int16(cfg.Replication)
	settings.MinInsyncReplicas = int16(cfg.MinInsyncReplicas)
	settings.DefaultRetention = cfg.Retention
	settings.MaxMessageBytes = kafka.MaxMessageBytes(cfg.MaxEventBytes)
	settings.MaxTopics = cfg.MaxTopics
	for d, r := range retention {
		settings.Retention[d] = r
	}
	a.kcfg = kafka.ProducerConfig("eventgw-"+cfg.ServiceName, kafka.MaxMessageBytes(cfg.MaxEventBytes))
	out.kafka.Apply(a.kcfg) // the producer's, and the admin's and health's client
	topics := kafka.NewDetachedTopics(settings, log)
	a.topics = topics
	a.Producer = kafka.NewDetachedProducer(log)
	a.closer.push(a.closeKafka)
	a.closer.push(a.Producer.Close)
	if err := a.connectKafka(); err != nil {
		log.Warn("kafka is unreachable; starting anyway: publishes are queued in PostgreSQL until it is",
			zap.Strings("brokers", a.brokers), zap.Error(err))
	}

	m := metrics.New(a.Registry)
	m.SetLabelLimits(cfg.MetricsMaxServices, cfg.MetricsMaxEventTypes, cfg.MetricsMaxSubscriptions)
	a.Breakers = newBreakers(cfg, a.Registry, log)
	pg := store.WithBreaker(a.Breakers.Postgres)

	// Schema Registry. Unreachable, the sidecar starts with the schemas kept in
	// PostgreSQL and re-seeds the registry when it answers (see Run).
	a.Schemas = schema.NewRegistry(a.registry, a.Pool, log,
		append([]schema.Option{schema.WithBreaker(a.Breakers.Registry), schema.WithStoreOptions(pg)}, out.registry...)...)
	a.closer.push(a.Schemas.Close)
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = a.Schemas.Load(lctx)
	cancel()
	if err != nil {
		if !errors.Is(err, schema.ErrUnavailable) {
			return nil, err // PostgreSQL, or a stored schema that no longer parses
		}
		log.Warn("schema registry unreachable; starting with the schemas stored in PostgreSQL", zap.Error(err))
	}

	queue := store.NewPublishQueue(a.Pool, instanceName(cfg.ServiceName), pg)
	a.closer.push(queue.Close)
	startTop, err := store.MaxQueuedPosition(ctx, a.Pool)
	if err != nil {
		return nil, err
	}
	a.Fallback = publish.NewFallback(queue, a.Breakers.Kafka, startTop, a.Registry, log)
	pub := publish.New(publish.Config{
		DefaultSource:  cfg.ServiceName,
		Limits:         event.Limits{MaxEventBytes: cfg.MaxEventBytes},
		MaxBatch:       cfg.MaxBatch,
		RequireSchemas: cfg.RequireSchemas,
		Domains:        cfg.DomainSet(),
		Timeout:        cfg.PublishTimeout,
	}, a.Router, topics, a.Producer, a.Schemas, m, log).WithFallback(a.Fallback)

	failed := store.NewFailedEvents(a.Pool, pg)
	dlq := deadletter.New(deadletter.Config{
		Producer: a.Producer, Topics: topics, Router: a.Router, Failed: failed, Metrics: m,
		Service: cfg.ServiceName, Log: log,
	})
	a.Subs = subscribe.NewManager(subscribe.Config{
		Brokers: a.brokers, ClientID: "eventgw-" + cfg.ServiceName, Service: cfg.ServiceName,
		Router: a.Router, Topics: topics, Decoder: a.Schemas, DeadLetters: dlq, Metrics: m, Log: log,
		MaxHeldBytes: cfg.SubscribeMaxHeldBytes, BudgetBytes: cfg.SubscribeBudgetBytes, SessionTimeout: cfg.SubscribeSessionTimeout,
		Tenants: tenantSet(a.tenants), Security: out.kafka, Tracer: a.tracer,
	})
	a.closer.push(a.Subs.Close)

	a.Events = store.NewEvents(a.Pool, pg)
	a.Relay = outbox.New(a.Pool, pub, a.Registry, log)
	a.Relay.Tracer = a.tracer
	a.Fallback.OnQueued = a.Relay.Kick
	a.snapshots = store.NewSnapshotter(a.Events, int64(cfg.SnapshotEvery), log)
	sagas, err := a.buildSagas(ctx, pub, m)
	if err != nil {
		return nil, err
	}
	limits := server.NewLimiter(server.Budgets{
		Stream: int64(cfg.PublishStreamBudgetBytes), Streams: int64(cfg.PublishBudgetBytes),
		Unary: int64(cfg.UnaryBudgetBytes), MaxRequest: int64(cfg.RequestBytes()),
	}, a.Registry)
	access, err := a.access()
	if err != nil {
		return nil, err
	}
	a.grpcSrv, a.health = server.NewGRPC(server.Options{
		MaxRecvBytes: cfg.RequestBytes(), MaxConcurrentStreams: uint32(cfg.GRPCMaxConcurrentStreams), Limiter: limits,
		Registerer: a.Registry, Log: log, Access: access,
	}, server.Services{
		Events:     server.NewEventService(pub, a.Schemas, a.Router, cfg.PublishTimeout, log).WithSubscriptions(a.Subs).WithLimiter(limits),
		Sagas:      sagas,
		DeadLetter: server.NewDeadLetterService(failed, dlq, pub, a.Producer, topics, a.Router, m, cfg.ServiceName),
		EventStore: server.NewEventStoreService(a.Events, store.NewAppender(a.Events, cfg.AppendSlots).WithMaxBytes(int64(cfg.AppendQueueBytes)), a.snapshots, pub, a.Relay, outbox.ToEvent,
			cfg.MaxBatch, cfg.MaxEventBytes),
	})
	a.httpSrv = server.NewHTTP(a.Registry, a.readiness())

	if a.grpcLis, err = a.listenGRPC(cfg.GRPCAddr); err != nil {
		return nil, err
	}
	guard := server.NewGuard(server.GuardOptions{
		MaxConns: cfg.GRPCMaxConnections, StreamWindow: server.StreamWindow, RecvTimeout: cfg.GRPCRecvTimeout,
		MaxReceiving: int64(cfg.GRPCMaxReceivingBytes), MaxPartial: 2*cfg.GRPCMaxConcurrentStreams + 16,
		Registerer: a.Registry, Log: log,
	})
	a.grpcLis = guard.Listener(a.grpcLis)
	a.closer.push(func() error { _ = a.grpcLis.Close(); return nil })
	if cfg.GRPCLoopbackAddr != "" {
		if a.loopLis, err = listen(cfg.GRPCLoopbackAddr); err != nil {
			return nil, err
		}
		a.loopLis = guard.Listener(a.loopLis) // one bound on connections over both
		a.closer.push(func() error { _ = a.loopLis.Close(); return nil })
	}
	if a.httpLis, err = listen(cfg.HTTPAddr); err != nil {
		return nil, err
	}
	a.closer.push(func() error { _ = a.httpLis.Close(); return nil })
	if cfg.PprofAddr != "" {
		if a.pprofLis, err = listen(cfg.PprofAddr); err != nil {
			return nil, err
		}
		a.pprofSrv = newPprofServer()
		a.closer.push(func() error { return a.pprofSrv.Close() })
	}
	return a, nil
}

// PprofAddr is where profiles are served ("" without --pprof-addr).
func (a *App) PprofAddr() string {
	if a.pprofLis == nil {
		return ""
	}
	return a.pprofLis.Addr().String()
}

func listen(addr string) (net.Listener, error) {
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, addr = "unix", path
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
	}
	l, err := (&net.ListenConfig{}).Listen(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// GRPCAddr is the address gRPC listens on (useful with port 0).
func (a *App) GRPCAddr() string { return a.grpcLis.Addr().String() }

// HTTPAddr is the address of /metrics, /healthz and /readyz.
func (a *App) HTTPAddr() string { return a.httpLis.Addr().String() }

// Run serves until ctx ends, then shuts down: health goes NOT_SERVING, in-flight calls
// get the grace period, the producer flushes and waits for its acknowledgements, and
// everything built is closed in reverse order.
func (a *App) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.grpcSrv.Serve(a.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	if a.loopLis != nil {
		g.Go(func() error {
			if err := a.grpcSrv.Serve(a.loopLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("grpc (--grpc-loopback-addr): %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		if err := a.httpSrv.Serve(a.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	if a.pprofSrv != nil {
		go func() { _ = a.pprofSrv.Serve(a.pprofLis) }()
	}
	// The outbox relay and the snapshotter outlive the gRPC server a little: they stop
	// after it, before the producer they publish through is closed.
	bgCtx, bgStop := context.WithCancel(context.Background())
	var bg errgroup.Group
	bg.Go(func() error { return a.Relay.Run(bgCtx) })
	bg.Go(func() error { return a.snapshots.Run(bgCtx) })
	bg.Go(func() error { return a.runSagas(bgCtx) })
	bg.Go(func() error { return a.Fallback.Run(bgCtx) })
	bg.Go(func() error { a.keepConnectingKafka(bgCtx); return nil })
	bg.Go(func() error { _ = a.Schemas.RunReseed(bgCtx, 5*time.Second); return nil })
	bg.Go(func() error { a.runHealth(bgCtx); return nil })
	server.SetServing(a.health, true)
	a.logReady()
	g.Go(func() error {
		<-gctx.Done()
		a.log.Info("shutting down", zap.Duration("grace", a.cfg.ShutdownGrace))
		server.SetServing(a.health, false)
		// Subscribe streams never end by themselves: end them first (their members
		// leave the group, committing what was acknowledged).
		_ = a.Subs.Close()
		// Nor do PollTasks streams: they end with Unavailable, their workers keep the
		// tasks they hold (leased; they may answer through another sidecar) and poll
		// another sidecar, which also gets what they never took.
		a.shutdownSagas()
		done := make(chan struct{})
		go func() { a.grpcSrv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(a.cfg.ShutdownGrace):
			a.log.Warn("grace period over: ending the calls still running")
			a.grpcSrv.Stop()
		}
		hctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return a.httpSrv.Shutdown(hctx)
	})
	err := g.Wait()
	bgStop()
	_ = bg.Wait()
	if cerr := a.closer.unwind(); cerr != nil {
		a.log.Warn("shutdown", zap.Error(cerr))
	}
	a.log.Info("stopped")
	return err
}

func (a *App) logReady() {
	fields := []zap.Field{
		zap.String("grpc", a.cfg.GRPCAddr), zap.String("grpc_listening", a.GRPCAddr()),
		zap.String("grpc_loopback", a.GRPCLoopbackAddr()),
		zap.String("http", "http://"+a.HTTPAddr()+"/metrics"),
		zap.Strings("kafka_brokers", a.brokers),
		zap.String("schema_registry", config.RedactURL(a.registry)),
		zap.String("postgres", config.RedactURL(a.databaseURL)),
	}
	if a.Stack != nil {
		fields = append(fields, zap.String("data_dir", a.cfg.DataDir),
			zap.String("note", "dev Kafka and the dev registry keep nothing on disk: Kafka starts empty after a restart; PostgreSQL data survives"))
	}
	a.log.Info("eventgw is ready", fields...)
	if a.Stack != nil && a.cfg.LogFormat == "console" {
		fmt.Fprintf(os.Stderr, `
  eventgw (dev) is ready
    gRPC             %s
    metrics/health   http://%s/metrics  /healthz  /readyz
    Kafka brokers    %s   (in-process kfake, 3 brokers; starts empty after a restart)
    Schema Registry  %s
    PostgreSQL       %s   (data in %s)

`, a.GRPCAddr(), a.HTTPAddr(), strings.Join(a.brokers, ","), config.RedactURL(a.registry), config.RedactURL(a.databaseURL), a.cfg.DataDir)
	}
}

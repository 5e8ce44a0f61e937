// Package config holds the sidecar's settings: flags, each also settable as an
// EVENTGW_<FLAG> environment variable, with documented defaults.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"

	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/resilience"
)

// Config is everything `eventgw serve` can be told.
type Config struct {
	GRPCAddr string
	HTTPAddr string
	// PprofAddr, when set, serves net/http/pprof there (loopback only).
	PprofAddr string
	LogFormat string
	LogLevel  string

	Dev             bool
	DevKafkaPorts   string
	DevRegistryAddr string
	DevPostgresPort int
	DataDir         string

	KafkaBrokers      string
	SchemaRegistryURL string
	DatabaseURL       string
	DBMaxConns        int

	ServiceName       string
	TopicPrefix       string
	Routes            string
	Domains           string
	Partitions        int
	Replication       int
	MinInsyncReplicas int
	Retention         time.Duration
	DomainRetention   string

	MaxBatch        int
	MaxEventBytes   int
	MaxRequestBytes int
	RequireSchemas  bool
	PublishTimeout  time.Duration
	ShutdownGrace   time.Duration
	SnapshotEvery   int
	AppendSlots     int

	SubscribeSessionTimeout time.Duration
	SubscribeMaxHeldBytes   int
	SubscribeBudgetBytes    int64

	// Memory bounds (README "Memory"): what callers can make the sidecar hold.
	PublishStreamBudgetBytes int
	PublishBudgetBytes       int
	UnaryBudgetBytes         int
	GRPCMaxConnections       int
	GRPCMaxConcurrentStreams int
	GRPCRecvTimeout          time.Duration
	GRPCMaxReceivingBytes    int
	AppendQueueBytes         int
	// What callers can make the sidecar grow: topics, the router's cache and the label
	// values of metrics.
	MaxTopics               int
	MaxEventTypes           int
	MetricsMaxServices      int
	MetricsMaxEventTypes    int
	MetricsMaxSubscriptions int

	// The guide's circuit breaker settings, one breaker per dependency.
	BreakerFailureThreshold    int
	BreakerSuccessThreshold    int
	BreakerTimeout             time.Duration
	BreakerHalfOpenMaxRequests int

	// Security: TLS, the API token, the tenant allow-list (security.go).
	Security
}

// Register defines the serve flags on fs.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "127.0.0.1:50051", "gRPC listen address: host:port, or unix:///path/to.sock")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:9090", "HTTP listen address for /metrics, /healthz, /readyz")
	fs.StringVar(&c.PprofAddr, "pprof-addr", "", "serve Go's net/http/pprof profiles on this loopback address, such as 127.0.0.1:6060 (off when empty)")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")

	fs.BoolVar(&c.Dev, "dev", false, "run the embedded default stack: in-process Kafka (3 brokers), Schema Registry and a private PostgreSQL")
	fs.StringVar(&c.DevKafkaPorts, "dev-kafka-ports", "19092,19093,19094", "with --dev: broker ports on 127.0.0.1, one per broker (0 = a free port)")
	fs.StringVar(&c.DevRegistryAddr, "dev-registry-addr", "127.0.0.1:18081", "with --dev: Schema Registry listen address")
	fs.IntVar(&c.DevPostgresPort, "dev-postgres-port", 15432, "with --dev: private PostgreSQL port on 127.0.0.1 (0 = a free port)")
	fs.StringVar(&c.DataDir, "data-dir", "./.eventgw", "with --dev: folder for the private PostgreSQL cluster (data survives restarts)")

	fs.StringVar(&c.KafkaBrokers, "kafka-brokers", "", "Kafka bootstrap brokers, comma-separated host:port (required without --dev)")
	fs.StringVar(&c.SchemaRegistryURL, "schema-registry-url", "", "Confluent-compatible Schema Registry URL (required without --dev)")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "PostgreSQL URL, postgres://user:pass@host:5432/db (required without --dev)")
	fs.IntVar(&c.DBMaxConns, "db-max-conns", 16, "PostgreSQL connection pool size")

	fs.StringVar(&c.ServiceName, "service-name", "eventgw", "name of the service this sidecar serves: default ce_source and metrics service label")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", "healthtech", "topic prefix: events go to <prefix>.<domain>.events, failures to <prefix>.dlq.<domain>")
	fs.StringVar(&c.Routes, "routes", "", "topic overrides, comma-separated <event type or domain>=<topic>")
	fs.StringVar(&c.Domains, "domains", "", "comma-separated domains events may have (empty: any)")
	fs.IntVar(&c.Partitions, "topic-partitions", 12, "partitions of topics the gateway creates")
	fs.IntVar(&c.Replication, "topic-replication", 3, "replication factor of created topics (capped at the broker count)")
	fs.IntVar(&c.MinInsyncReplicas, "topic-min-insync-replicas", 2, "min.insync.replicas of created topics (capped at the replication factor)")
	fs.DurationVar(&c.Retention, "topic-retention", 30*24*time.Hour, "retention of created topics")
	fs.StringVar(&c.DomainRetention, "domain-retention", "clinical=2160h", "retention per domain, comma-separated <domain>=<duration>")

	fs.IntVar(&c.MaxBatch, "max-batch", 1000, "most events in one PublishBatch or PublishStream request")
	fs.IntVar(&c.MaxEventBytes, "max-event-bytes", 1<<20, "largest event payload in bytes (as sent and as encoded)")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", 0, "largest gRPC request message in bytes (0: --max-event-bytes + --max-batch × 2 KiB, room for one event at the limit or a full batch of 2 KiB events)")
	fs.BoolVar(&c.RequireSchemas, "require-schemas", false, "refuse events whose type has no registered schema")
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", 30*time.Second, "deadline of a publish call that brings none")
	fs.IntVar(&c.AppendSlots, "append-slots", 1, "appends written at once; concurrent appends wait and are written together in one statement (group commit)")
	fs.IntVar(&c.SnapshotEvery, "snapshot-every", 100, "write an aggregate snapshot automatically every this many events (0: never)")
	fs.DurationVar(&c.SubscribeSessionTimeout, "subscribe-session-timeout", 10*time.Second, "consumer group session timeout: how long the partitions of a subscriber that vanished (a killed sidecar) wait before moving to the others")
	fs.IntVar(&c.SubscribeMaxHeldBytes, "subscribe-max-held-bytes", 64<<20, "bytes of events one Subscribe stream may hold (delivered and read ahead); past it the stream stops fetching until acks free room")
	fs.Int64Var(&c.SubscribeBudgetBytes, "subscribe-budget-bytes", 256<<20, "bytes of events all Subscribe streams together may hold; at it every stream stops fetching until acks bring the total under half of it")
	fs.IntVar(&c.PublishStreamBudgetBytes, "publish-stream-budget-bytes", 16<<20, "memory one PublishStream may hold in requests received and not yet answered; at it the stream stops reading until answers free room")
	fs.IntVar(&c.PublishBudgetBytes, "publish-budget-bytes", 128<<20, "memory all PublishStreams together may hold in requests received and not yet answered; streams stop reading at 3/4 of it, and a request that would pass it is answered RESOURCE_EXHAUSTED")
	fs.IntVar(&c.UnaryBudgetBytes, "unary-budget-bytes", 64<<20, "memory the unary calls being handled may hold in their requests; past it new calls are answered RESOURCE_EXHAUSTED")
	fs.IntVar(&c.GRPCMaxConnections, "grpc-max-connections", 32, "gRPC connections served at once; further ones wait to be accepted")
	fs.IntVar(&c.GRPCMaxConcurrentStreams, "grpc-max-concurrent-streams", 64, "gRPC calls (streams) at once on one connection; a client queues further ones")
	fs.DurationVar(&c.GRPCRecvTimeout, "grpc-recv-timeout", 15*time.Second, "longest a request message may take to arrive once the sidecar has asked for it; a connection with a message unfinished longer is closed")
	fs.IntVar(&c.GRPCMaxReceivingBytes, "grpc-max-receiving-bytes", 64<<20, "bytes of request messages being received at once, over all connections; past it the connection with the oldest unfinished message is closed")
	fs.IntVar(&c.AppendQueueBytes, "append-queue-bytes", 32<<20, "bytes of appends waiting for a statement (group commit); past it AppendEvents answers RESOURCE_EXHAUSTED")
	fs.IntVar(&c.MaxTopics, "max-topics", 100, "topics this sidecar publishes to or creates (event, dead-letter and replay topics); an event of a further new domain is refused with InvalidArgument")
	fs.IntVar(&c.MaxEventTypes, "max-event-types", 10000, "event types whose topic the router remembers (further ones are routed without being remembered)")
	fs.IntVar(&c.MetricsMaxServices, "metrics-max-services", metrics.DefaultMaxServices, "distinct service label values (source_service of requests) in metrics; further ones are counted as \"other\"")
	fs.IntVar(&c.MetricsMaxEventTypes, "metrics-max-event-types", metrics.DefaultMaxEventTypes, "distinct event_type label values in metrics; further ones are counted as \"other\"")
	fs.IntVar(&c.MetricsMaxSubscriptions, "metrics-max-subscriptions", metrics.DefaultMaxSubscriptions, "distinct subscription label values in metrics; further ones are counted as \"other\"")
	fs.IntVar(&c.BreakerFailureThreshold, "breaker-failure-threshold", 5, "circuit breakers: consecutive failures of a dependency (Kafka, registry, PostgreSQL) that open its breaker")
	fs.IntVar(&c.BreakerSuccessThreshold, "breaker-success-threshold", 2, "circuit breakers: successful trial calls that close a half-open breaker")
	fs.DurationVar(&c.BreakerTimeout, "breaker-timeout", 60*time.Second, "circuit breakers: time open before trial calls are let through (half-open)")
	fs.IntVar(&c.BreakerHalfOpenMaxRequests, "breaker-half-open-max-requests", 3, "circuit breakers: trial calls at once while half-open")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 15*time.Second, "time in-flight calls get to finish on SIGINT/SIGTERM")
	c.register(fs) // security.go
}

// Parse reads args, then EVENTGW_* environment variables for flags not given.
func Parse(fs *flag.FlagSet, args []string) error {
	return ff.Parse(fs, args, ff.WithEnvVarPrefix("EVENTGW"))
}

// Validate checks the settings and that non-dev mode names its dependencies.
func (c *Config) Validate() error {
	var errs []error
	if !c.Dev {
		var missing []string
		if c.KafkaBrokers == "" {
			missing = append(missing, "--kafka-brokers (EVENTGW_KAFKA_BROKERS)")
		}
		if c.SchemaRegistryURL == "" {
			missing = append(missing, "--schema-registry-url (EVENTGW_SCHEMA_REGISTRY_URL)")
		}
		if c.DatabaseURL == "" {
			missing = append(missing, "--database-url (EVENTGW_DATABASE_URL)")
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Errorf("missing %s; or run with --dev for the embedded default stack", strings.Join(missing, ", ")))
		}
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		errs = append(errs, fmt.Errorf("--log-format must be json or console"))
	}
	if _, err := c.DevPorts(); err != nil {
		errs = append(errs, err)
	}
	if c.PprofAddr != "" && !isLoopback(c.PprofAddr) {
		errs = append(errs, fmt.Errorf("--pprof-addr must be a loopback address (127.0.0.1:<port>, [::1]:<port> or localhost:<port>): profiles show the process's memory"))
	}
	if err := c.BreakerSettings().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--breaker-*: %w", err))
	}
	if _, err := c.RouteMap(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.RetentionMap(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxBatch < 1 || c.MaxEventBytes < 1 || c.AppendSlots < 1 || c.Partitions < 1 || c.Replication < 1 || c.MinInsyncReplicas < 1 {
		errs = append(errs, fmt.Errorf("--max-batch, --max-event-bytes and the topic settings must be positive"))
	}
	if c.MaxRequestBytes != 0 && c.MaxRequestBytes < c.MaxEventBytes+4096 {
		errs = append(errs, fmt.Errorf("--max-request-bytes must exceed --max-event-bytes"))
	}
	errs = append(errs, c.validateBounds()...)
	errs = append(errs, c.validateSecurity()...)
	return errors.Join(errs...)
}

// DevPorts parses --dev-kafka-ports.
func (c *Config) DevPorts() ([]int, error) {
	var ports []int
	for _, p := range splitList(c.DevKafkaPorts) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("--dev-kafka-ports: %q is not a port", p)
		}
		ports = append(ports, n)
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("--dev-kafka-ports: give at least one port")
	}
	return ports, nil
}

// RouteMap parses --routes.
func (c *Config) RouteMap() (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range splitList(c.Routes) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--routes: %q is not <event type or domain>=<topic>", kv)
		}
		m[k] = v
	}
	return m, nil
}

// RetentionMap parses --domain-retention.
func (c *Config) RetentionMap() (map[string]time.Duration, error) {
	m := map[string]time.Duration{}
	for _, kv := range splitList(c.DomainRetention) {
		k, v, ok := strings.Cut(kv, "=")
		d, err := time.ParseDuration(v)
		if !ok || k == "" || err != nil || d <= 0 {
			return nil, fmt.Errorf("--domain-retention: %q is not <domain>=<duration such as 2160h>", kv)
		}
		m[k] = d
	}
	return m, nil
}

// DomainSet parses --domains.
func (c *Config) DomainSet() map[string]bool {
	m := map[string]bool{}
	for _, d := range splitList(c.Domains) {
		m[d] = true
	}
	return m
}

// Brokers parses --kafka-brokers.
func (c *Config) Brokers() []string { return splitList(c.KafkaBrokers) }

// Redacted returns the settings as name=value lines with secrets hidden.
func (c *Config) Redacted(fs *flag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *flag.Flag) {
		v := redactFlag(f.Name, f.Value.String()) // security.go
		out = append(out, f.Name+"="+v)
	})
	sort.Strings(out)
	return out
}

// RedactURL hides the password of a URL (and of key=value DSNs).
func RedactURL(s string) string {
	if s == "" {
		return s
	}
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	fields := strings.Fields(s)
	for i, f := range fields {
		if strings.HasPrefix(f, "password=") {
			fields[i] = "password=xxxxx"
		}
	}
	return strings.Join(fields, " ")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// BreakerSettings are the circuit breaker flags.
func (c *Config) BreakerSettings() resilience.Settings {
	return resilience.Settings{
		FailureThreshold: c.BreakerFailureThreshold, SuccessThreshold: c.BreakerSuccessThreshold,
		Timeout: c.BreakerTimeout, HalfOpenMaxRequests: c.BreakerHalfOpenMaxRequests,
	}
}

// isLoopback reports whether addr is host:port with a loopback host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

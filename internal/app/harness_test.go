package app_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/app"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const tenantA = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"

// lockedBuffer collects every log line of a sidecar.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Sync() error { return nil }

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type sidecar struct {
	t        *testing.T
	app      *app.App
	conn     *grpc.ClientConn
	events   eventgwv1.EventServiceClient
	kafka    *testenv.Kafka
	logs     *lockedBuffer
	stop     context.CancelFunc
	done     chan error
	dbURL    string
	registry string
	deps     deps
	store    eventgwv1.EventStoreServiceClient
}

func defaultConfig(t *testing.T) config.Config {
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.LogLevel = "debug"
	cfg.ShutdownGrace = 5 * time.Second
	return cfg
}

// startSidecar runs a sidecar against a fresh database, a 3-broker kfake cluster and an
// srfake registry; mutate adjusts the config first.
func startSidecar(t *testing.T, mutate func(*config.Config)) *sidecar {
	t.Helper()
	return startOn(t, newDeps(t), mutate)
}

// deps are the services a sidecar uses; several sidecars may share them.
type deps struct {
	kafka    *testenv.Kafka
	registry string
	dbURL    string
}

func newDeps(t *testing.T) deps {
	return deps{kafka: testenv.NewKafka(t), registry: testenv.NewRegistry(t).URL(), dbURL: testenv.NewDatabase(t)}
}

// startOn runs a sidecar on d.
func startOn(t *testing.T, d deps, mutate func(*config.Config)) *sidecar {
	t.Helper()
	cfg := defaultConfig(t)
	cfg.KafkaBrokers = joinComma(d.kafka.Brokers)
	cfg.SchemaRegistryURL = d.registry
	cfg.DatabaseURL = d.dbURL
	if mutate != nil {
		mutate(&cfg)
	}
	s := runSidecar(t, cfg)
	s.kafka = d.kafka
	s.deps = d
	return s
}

func runSidecar(t *testing.T, cfg config.Config) *sidecar {
	t.Helper()
	logs := &lockedBuffer{}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, logs, zapcore.DebugLevel))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	a, err := app.Build(ctx, cfg, log)
	cancel()
	if err != nil {
		t.Fatalf("build sidecar: %v", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	target := a.GRPCAddr()
	if len(cfg.GRPCAddr) > 7 && cfg.GRPCAddr[:7] == "unix://" {
		target = cfg.GRPCAddr
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{
		t: t, app: a, conn: conn, events: eventgwv1.NewEventServiceClient(conn), logs: logs,
		store: eventgwv1.NewEventStoreServiceClient(conn),
		stop:  stop, done: done, dbURL: cfg.DatabaseURL, registry: cfg.SchemaRegistryURL,
	}
	t.Cleanup(func() {
		_ = conn.Close()
		s.shutdown()
		if t.Failed() {
			t.Logf("sidecar log (last 4 KiB):\n%s", tail(logs.String(), 4096))
			// EVENTGW_TEST_LOG_DIR keeps the whole log of a failed test, for debugging.
			if dir := os.Getenv("EVENTGW_TEST_LOG_DIR"); dir != "" {
				name := filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+".log")
				if err := os.WriteFile(name, []byte(logs.String()), 0o600); err == nil {
					t.Logf("whole sidecar log: %s", name)
				}
			}
		}
	})
	return s
}

// shutdown stops the sidecar as SIGTERM would and waits for it; calling it again is
// a no-op.
func (s *sidecar) shutdown() {
	s.stop()
	select {
	case err, ok := <-s.done:
		if ok {
			if err != nil {
				s.t.Errorf("sidecar stopped with error: %v", err)
			}
			close(s.done)
		}
	case <-time.After(30 * time.Second):
		s.t.Error("sidecar did not stop within 30s")
	}
}

func joinComma(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}

func newAdmin(t *testing.T, brokers []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// topicCount is the number of records in topic (0 when it does not exist).
func topicCount(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := newAdmin(t, brokers).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += o.Offset
		}
	})
	return n
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// missingFromKafka counts the acknowledged event ids that topic does not hold.
func missingFromKafka(t *testing.T, brokers []string, topic string, acked map[string]bool) int {
	t.Helper()
	inKafka := map[string]bool{}
	for _, r := range testenv.ConsumeAll(t, brokers, topic) {
		id, _ := header(r, "ce_id")
		inKafka[id] = true
	}
	missing := 0
	for id := range acked {
		if !inKafka[id] {
			missing++
		}
	}
	return missing
}

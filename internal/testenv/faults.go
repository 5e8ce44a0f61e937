package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// RestartableKafka is a 3-broker kfake cluster that keeps its log in a directory, so
// that it can be stopped and started again on the same ports with its data, as a
// restarted Kafka would be (an in-memory cluster started again is empty: what it held
// would be lost by Kafka, not by the sidecar). Its options are devstack.StartKafka's.
type RestartableKafka struct {
	*Kafka
	t     testing.TB
	dir   string
	ports []int

	mu      sync.Mutex
	running bool
}

// NewRestartableKafka starts the cluster on free ports; it is stopped when the test
// ends.
func NewRestartableKafka(t testing.TB) *RestartableKafka {
	t.Helper()
	if os.Getenv("EVENTGW_TEST_KAFKA_BROKERS") != "" {
		t.Skip("fault injection needs the in-process kfake cluster (EVENTGW_TEST_KAFKA_BROKERS is set)")
	}
	k := &RestartableKafka{t: t, dir: t.TempDir(), ports: []int{0, 0, 0}}
	c, err := k.start()
	if err != nil {
		t.Fatal(err)
	}
	k.ports = k.ports[:0]
	for _, a := range c.ListenAddrs() {
		_, p, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(p)
		k.ports = append(k.ports, n)
	}
	k.Kafka = &Kafka{Brokers: c.ListenAddrs(), Cluster: c}
	k.running = true
	t.Cleanup(k.Stop)
	return k
}

func (k *RestartableKafka) start() (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(
		kfake.NumBrokers(len(k.ports)),
		kfake.Ports(k.ports...),
		kfake.ClusterID("eventgw-dev"),
		kfake.DefaultNumPartitions(12),
		kfake.BrokerConfigs(map[string]string{"log.segment.bytes": strconv.Itoa(4 << 20)}),
		kfake.DataDir(k.dir),
	)
	if err != nil {
		return nil, fmt.Errorf("start kfake on ports %v: %w", k.ports, err)
	}
	return c, nil
}

// Stop closes the cluster (its log is kept on disk); a no-op when stopped.
func (k *RestartableKafka) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.running {
		k.Cluster.Close()
		k.running = false
	}
}

// Start starts the stopped cluster again on the same ports, with the log it had. The
// ports were just released; if one is still held it retries for a few seconds.
func (k *RestartableKafka) Start() {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.running {
		return
	}
	var err error
	for range 50 {
		var c *kfake.Cluster
		if c, err = k.start(); err == nil {
			k.Cluster = c
			k.running = true
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	k.t.Fatalf("restart Kafka: %v", err)
}

// BrokerFault makes requests fail (the broker drops the connection) or slows them down
// while it is on. It is installed once per cluster run with ControlKey; Off makes it
// let every request through.
type BrokerFault struct {
	on    atomic.Bool
	node  atomic.Int32 // -1: every broker
	delay atomic.Int64 // nanoseconds; 0: fail instead of delaying
	hits  atomic.Int64
}

// InjectBrokerFault installs a fault on requests with key (kmsg.Produce, or -1 for
// every request) of cluster c; it starts off.
func InjectBrokerFault(c *kfake.Cluster, key kmsg.Key) *BrokerFault {
	f := &BrokerFault{}
	f.node.Store(-1)
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		if !f.on.Load() {
			return nil, nil, false
		}
		if n := f.node.Load(); n >= 0 && c.CurrentNode() != n {
			return nil, nil, false
		}
		f.hits.Add(1)
		if d := time.Duration(f.delay.Load()); d > 0 {
			// Sleeping yields to the other connections; the request is then handled as
			// usual.
			c.SleepControl(func() { time.Sleep(d) })
			return nil, nil, false
		}
		c.KeepControl()
		return nil, errors.New("injected broker failure"), true
	})
	return f
}

// FailAll fails the requests of every broker.
func (f *BrokerFault) FailAll() { f.node.Store(-1); f.delay.Store(0); f.on.Store(true) }

// FailNode fails only the requests that broker node receives.
func (f *BrokerFault) FailNode(node int32) { f.node.Store(node); f.delay.Store(0); f.on.Store(true) }

// Slow delays every broker's requests by d before handling them.
func (f *BrokerFault) Slow(d time.Duration) {
	f.node.Store(-1)
	f.delay.Store(int64(d))
	f.on.Store(true)
}

// Off lets every request through again.
func (f *BrokerFault) Off() { f.on.Store(false) }

// Hits is how many requests the fault failed or delayed.
func (f *BrokerFault) Hits() int64 { return f.hits.Load() }

// RestartableRegistry is an srfake Schema Registry served over HTTP on a fixed address,
// which can be stopped (connections refused) and started again with the schemas it had,
// as a restarted registry would (a real one keeps them in Kafka).
type RestartableRegistry struct {
	t   testing.TB
	reg *srfake.Registry
	// URL is http://host:port, the same across restarts.
	URL  string
	addr string

	mu  sync.Mutex
	srv *http.Server
}

// NewRestartableRegistry serves a registry on a free port until the test ends.
func NewRestartableRegistry(t testing.TB) *RestartableRegistry {
	t.Helper()
	r := &RestartableRegistry{t: t, reg: srfake.NewRegistry(), addr: "127.0.0.1:0"}
	r.Start()
	r.URL = "http://" + r.addr
	t.Cleanup(r.Stop)
	return r
}

// Stop closes the listener and every open connection; a no-op when stopped.
func (r *RestartableRegistry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		_ = r.srv.Close()
		r.srv = nil
	}
}

// Start serves the registry again on its address.
func (r *RestartableRegistry) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return
	}
	var (
		l   net.Listener
		err error
	)
	for range 50 {
		if l, err = (&net.ListenConfig{}).Listen(context.Background(), "tcp", r.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("start the registry on %s: %v", r.addr, err)
	}
	r.addr = l.Addr().String()
	r.srv = &http.Server{Handler: r.reg.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func(srv *http.Server) { _ = srv.Serve(l) }(r.srv)
}

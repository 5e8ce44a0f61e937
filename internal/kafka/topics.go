package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Topics creates topics on first use with the configured settings.
type Topics struct {
	conn     atomic.Pointer[topicsConn] // nil until Kafka is reachable
	settings TopicSettings
	log      *zap.Logger

	ready  sync.Map // topic → struct{}
	nReady atomic.Int64
	sf     singleflight.Group

	// admitted are the topics events may go to (Admit): at most settings.MaxTopics.
	mu       sync.Mutex
	admitted map[string]struct{}
}

// TooManyTopicsError means an event would go to a new topic while the sidecar already
// uses as many as --max-topics allows.
type TooManyTopicsError struct {
	Topic string
	Max   int
}

func (e *TooManyTopicsError) Error() string {
	return fmt.Sprintf("topic %s would be new, and this gateway already uses %d topics, its limit", e.Topic, e.Max)
}

// Admit lets events go to topic: a topic already in use, or a new one while fewer
// than MaxTopics are (each one is a topic with its partitions on the cluster, and an
// entry in the caches). Past that it answers a *TooManyTopicsError.
func (t *Topics) Admit(topic string) error {
	if _, ok := t.ready.Load(topic); ok {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.admitted[topic]; ok {
		return nil
	}
	if t.settings.MaxTopics > 0 && len(t.admitted) >= t.settings.MaxTopics {
		return &TooManyTopicsError{Topic: topic, Max: t.settings.MaxTopics}
	}
	if t.admitted == nil {
		t.admitted = map[string]struct{}{}
	}
	t.admitted[topic] = struct{}{}
	return nil
}

// maxReady bounds the topics Ensure remembers as ready: the admitted ones, their
// dead-letter topics and some room. Past it Ensure still works, looking the topic up
// in the client's metadata each time.
func (t *Topics) maxReady() int64 {
	if t.settings.MaxTopics <= 0 {
		return 1 << 62
	}
	return int64(2*t.settings.MaxTopics + 64)
}

type topicsConn struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
}

// ErrNotConnected means Kafka has not been reachable since the sidecar started.
var ErrNotConnected = errors.New("kafka is not connected yet")

// NewTopics uses client for metadata and admin requests.
func NewTopics(client sarama.Client, settings TopicSettings, log *zap.Logger) (*Topics, error) {
	t := NewDetachedTopics(settings, log)
	if err := t.Attach(client); err != nil {
		return nil, err
	}
	return t, nil
}

// NewDetachedTopics builds Topics before Kafka is reachable: Ensure fails with
// ErrNotConnected until Attach.
func NewDetachedTopics(settings TopicSettings, log *zap.Logger) *Topics {
	return &Topics{settings: settings, log: log}
}

// Attach gives Topics its client (it needs the cluster's controller).
func (t *Topics) Attach(client sarama.Client) error {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	t.conn.Store(&topicsConn{client: client, admin: admin})
	return nil
}

// Ensure makes sure topic exists (creating it for domain's settings) and is known to
// the client's metadata. Known topics cost one map lookup.
func (t *Topics) Ensure(ctx context.Context, topic, domain string) error {
	if _, ok := t.ready.Load(topic); ok {
		return nil
	}
	if t.conn.Load() == nil {
		return ErrNotConnected
	}
	ch := t.sf.DoChan(topic, func() (any, error) {
		// Not the caller's context: a caller that gives up must not fail the others.
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return nil, t.create(cctx, topic, domain)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return r.Err
		}
		for n := t.nReady.Load(); n < t.maxReady(); n = t.nReady.Load() {
			if t.nReady.CompareAndSwap(n, n+1) {
				if _, loaded := t.ready.LoadOrStore(topic, struct{}{}); loaded {
					t.nReady.Add(-1)
				}
				break
			}
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("create topic %s: %w", topic, ctx.Err())
	}
}

// Detail returns the settings a topic of domain is created with.
func (t *Topics) Detail(domain string) *sarama.TopicDetail {
	rf := t.settings.MaxReplication
	if c := t.conn.Load(); c != nil {
		if n := int16(len(c.client.Brokers())); n > 0 && n < rf {
			rf = n
		}
	}
	minISR := t.settings.MinInsyncReplicas
	if minISR > rf {
		minISR = rf
	}
	retention := t.settings.DefaultRetention
	if r, ok := t.settings.Retention[domain]; ok {
		retention = r
	}
	ms := strconv.FormatInt(retention.Milliseconds(), 10)
	isr := strconv.Itoa(int(minISR))
	entries := map[string]*string{
		"min.insync.replicas": &isr,
		"retention.ms":        &ms,
	}
	if t.settings.MaxMessageBytes > 0 {
		// A little over the producer's limit: the batch header is not counted there.
		mmb := strconv.Itoa(t.settings.MaxMessageBytes + 1024)
		entries["max.message.bytes"] = &mmb
	}
	return &sarama.TopicDetail{
		NumPartitions:     t.settings.Partitions,
		ReplicationFactor: rf,
		ConfigEntries:     entries,
	}
}

func (t *Topics) create(ctx context.Context, topic, domain string) error {
	c := t.conn.Load()
	if err := c.client.RefreshMetadata(topic); err == nil {
		if parts, err := c.client.Partitions(topic); err == nil && len(parts) > 0 {
			return nil
		}
	}
	detail := t.Detail(domain)
	err := c.admin.CreateTopic(topic, detail, false)
	var terr *sarama.TopicError
	switch {
	case err == nil:
		t.log.Info("created topic", zap.String("topic", topic), zap.Int32("partitions", detail.NumPartitions),
			zap.Int16("replication", detail.ReplicationFactor), zap.String("retention_ms", *detail.ConfigEntries["retention.ms"]))
	case errors.As(err, &terr) && errors.Is(terr.Err, sarama.ErrTopicAlreadyExists):
	case errors.Is(err, sarama.ErrTopicAlreadyExists):
	default:
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	// Wait until the producer's metadata has the topic's partitions.
	for {
		if err := c.client.RefreshMetadata(topic); err == nil {
			if parts, err := c.client.Partitions(topic); err == nil && len(parts) > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic %s not in metadata: %w", topic, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// IsTopicName reports whether s is a legal Kafka topic name.
func IsTopicName(s string) bool {
	if s == "" || len(s) > 249 || s == "." || s == ".." {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) < 0
}

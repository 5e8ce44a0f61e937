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

	ready sync.Map // topic → struct{}
	sf    singleflight.Group
}

type topicsConn struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
}

// ErrNotConnected: Kafka has not been reachable since the sidecar started.
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
		t.ready.Store(topic, struct{}{})
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

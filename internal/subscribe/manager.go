package subscribe

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/deadletter"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/validate"
)

// DeadLetterer writes dead letters (deadletter.Writer).
type DeadLetterer interface {
	Write(ctx context.Context, l *deadletter.Letter) (deadletter.Result, error)
}

// Config is what the Manager needs.
type Config struct {
	Brokers []string
	// ClientID names the sidecar's Kafka clients.
	ClientID string
	// Service is the --service-name: the default subscription and the metrics label.
	Service     string
	Router      *kafka.Router
	Topics      *kafka.Topics
	Decoder     Decoder
	DeadLetters DeadLetterer
	Metrics     *metrics.Metrics
	Log         *zap.Logger
	// MaxHeldBytes bounds the bytes of records one stream holds (delivered or read
	// ahead); past it the stream stops fetching.
	MaxHeldBytes int
	// BudgetBytes bounds the bytes all streams hold together; at it every stream
	// stops fetching until acks bring the total under half of it.
	BudgetBytes int64
	// SessionTimeout is the consumer group session timeout: how long a member that
	// stopped heart-beating (a killed sidecar) keeps its partitions.
	SessionTimeout time.Duration
	// KafkaVersion is the protocol version the consumers speak.
	KafkaVersion sarama.KafkaVersion
	// Tenants are the tenants whose events are delivered, canonical UUIDs (nil: any);
	// other tenants' events are committed without being delivered (servesTenant).
	Tenants map[string]bool
	// Security is the consumers' TLS and SASL (nil: plaintext).
	Security *kafka.Security
	// Tracer, when set, makes delivery spans (tracing.go).
	Tracer trace.Tracer
}

// Manager runs the sidecar's Subscribe streams and routes Ack and Nack to them.
type Manager struct {
	cfg          Config
	service      string
	router       *kafka.Router
	decoder      Decoder
	deadLetters  DeadLetterer
	metrics      *metrics.Metrics
	log          *zap.Logger
	maxHeldBytes int
	budget       int64
	heldBytes    atomic.Int64 // over all streams
	instance     string       // tells this process's delivery ids from any other's

	mu      sync.RWMutex
	streams map[uint64]*stream
	lastNum atomic.Uint64
	dlq     sync.WaitGroup
	closed  bool
}

// NewManager builds a Manager.
func NewManager(cfg Config) *Manager {
	if cfg.MaxHeldBytes <= 0 {
		cfg.MaxHeldBytes = 64 << 20
	}
	if cfg.BudgetBytes <= 0 {
		cfg.BudgetBytes = 256 << 20
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.KafkaVersion == (sarama.KafkaVersion{}) {
		cfg.KafkaVersion = sarama.V2_8_0_0
	}
	return &Manager{
		cfg: cfg, service: cfg.Service, router: cfg.Router, decoder: cfg.Decoder, deadLetters: cfg.DeadLetters,
		metrics: cfg.Metrics, log: cfg.Log, maxHeldBytes: cfg.MaxHeldBytes, budget: cfg.BudgetBytes, instance: newInstance(),
		streams: map[uint64]*stream{},
	}
}

func newInstance() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatUint(uint64(b[0])<<24|uint64(b[1])<<16|uint64(b[2])<<8|uint64(b[3]), 36)
}

// DefaultSubscription is the subscription of a request that names none.
func (m *Manager) DefaultSubscription() string { return m.service }

func (m *Manager) consumerConfig(o *Options) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = m.cfg.ClientID
	c.Version = m.cfg.KafkaVersion
	c.Net.DialTimeout = 5 * time.Second
	c.Metadata.AllowAutoTopicCreation = false
	c.Consumer.Return.Errors = true
	c.Consumer.Fetch.Min = 1
	c.Consumer.Fetch.Default = 256 << 10 // per partition and fetch: bounds the read-ahead of a paused stream
	// sarama sends offset commits on the connection its fetches use, and a broker
	// answers one request per connection at a time: an idle fetch's wait delays the
	// commit an Ack waits for. Keep the wait short (an idle stream then polls each
	// broker 50 times a second).
	c.Consumer.MaxWaitTime = 20 * time.Millisecond
	c.Consumer.MaxProcessingTime = time.Second
	c.ChannelBufferSize = 64
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = time.Second
	c.Consumer.Offsets.Initial = sarama.OffsetNewest
	if o.StartEarliest {
		c.Consumer.Offsets.Initial = sarama.OffsetOldest
	}
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyCooperativeSticky()}
	c.Consumer.Group.Session.Timeout = m.cfg.SessionTimeout
	c.Consumer.Group.Heartbeat.Interval = max(m.cfg.SessionTimeout/10, 100*time.Millisecond)
	c.Consumer.Group.Rebalance.Timeout = 30 * time.Second
	m.cfg.Security.Apply(c)
	return c
}

// Send delivers one response on the stream.
type Send func(*eventgwv1.SubscribeResponse) error

// Subscribe runs one stream until ctx ends, the client goes away (send fails) or the
// manager closes. Unacknowledged deliveries then go back to the group.
func (m *Manager) Subscribe(ctx context.Context, o Options, send Send) error {
	for _, t := range o.Topics {
		if err := m.cfg.Topics.Ensure(ctx, t, o.Domain(t)); err != nil {
			return &kafka.UnavailableError{Err: err}
		}
	}
	client, err := sarama.NewClient(m.cfg.Brokers, m.consumerConfig(&o))
	if err != nil {
		return &kafka.UnavailableError{Err: err}
	}
	group, err := sarama.NewConsumerGroupFromClient(o.Subscription, client)
	if err != nil {
		_ = client.Close()
		return &kafka.UnavailableError{Err: err}
	}
	sctx, cancel := context.WithCancelCause(ctx)
	s := &stream{
		m: m, num: m.lastNum.Add(1), opts: o, group: group, client: client, ctx: sctx, cancel: cancel,
		bySeq: map[uint64]*msg{}, parts: map[topicPart]*partition{},
		poke: make(chan struct{}, 1), assignment: make(chan struct{}, 1), commitKick: make(chan struct{}, 1),
		processing: m.metrics.Processing.WithLabelValues(m.service, m.metrics.Subscription(o.Subscription)),
	}
	s.log = m.log.With(zap.String("subscription", o.Subscription), zap.Uint64("stream", s.num))
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = group.Close()
		_ = client.Close()
		return kafka.ErrClosed
	}
	m.streams[s.num] = s
	m.mu.Unlock()
	s.log.Info("subscribed", zap.Strings("topics", o.Topics), zap.Int("max_in_flight", o.MaxInFlight),
		zap.String("ordering", o.Ordering.String()), zap.Bool("from_earliest", o.StartEarliest))

	var wg sync.WaitGroup
	wg.Add(3)
	consumed := make(chan struct{})
	go func() { defer close(consumed); s.consume() }()
	errsDone := make(chan struct{})
	go func() {
		defer close(errsDone)
		for err := range group.Errors() {
			s.log.Warn("consumer group", redact.Error(err))
		}
	}()
	go func() { defer wg.Done(); s.committer() }()
	go func() { defer wg.Done(); s.timers() }()
	var sendErr error
	go func() {
		defer wg.Done()
		if sendErr = s.sender(send); sendErr != nil {
			cancel(sendErr)
		}
	}()
	<-sctx.Done()
	// The session ends first: sarama waits for the claims to return (they drop what
	// they hold) and commits what was marked. Only then leave the group: a member that
	// left can no longer commit.
	<-consumed
	if err := group.Close(); err != nil {
		s.log.Debug("leave group", redact.Error(err))
	}
	<-errsDone
	wg.Wait()
	m.mu.Lock()
	delete(m.streams, s.num)
	m.mu.Unlock()
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	_ = client.Close()
	s.log.Info("unsubscribed")
	if sendErr != nil && !errors.Is(sendErr, context.Canceled) {
		return sendErr
	}
	if errors.Is(context.Cause(sctx), kafka.ErrClosed) {
		return kafka.ErrClosed
	}
	return ctx.Err()
}

func (s *stream) consume() {
	for s.ctx.Err() == nil {
		err := s.group.Consume(s.ctx, s.opts.Topics, s)
		if err == nil || s.ctx.Err() != nil {
			continue
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return
		}
		s.log.Warn("consumer group session ended; rejoining", redact.Error(err))
		select {
		case <-s.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *stream) timers() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.tick(now)
			n++
			if n%10 == 0 {
				s.updateLag(n%50 == 0)
			}
		}
	}
}

// sender delivers ready records in batches as room allows, and assignments.
func (s *stream) sender(send Send) error {
	var buf []taken
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-s.assignment:
			if err := send(&eventgwv1.SubscribeResponse{Assignment: s.assignmentNow()}); err != nil {
				return err
			}
			continue
		case <-s.poke:
		}
		for {
			now := time.Now()
			buf = s.take(now, buf[:0])
			if len(buf) == 0 {
				break
			}
			resp := &eventgwv1.SubscribeResponse{Deliveries: make([]*eventgwv1.Delivery, 0, len(buf))}
			idBuf := make([]byte, 0, 24*len(buf))
			var spans []trace.Span
			for _, t := range buf {
				start := len(idBuf)
				idBuf = s.m.appendID(idBuf, s.num, t.seq, t.attempt)
				d, err := toDelivery(s.ctx, s.m.decoder, t.rec, string(idBuf[start:]), t.attempt, s.opts.PayloadJSON)
				if err != nil {
					s.log.Warn("cannot decode a consumed event for delivery", zap.String("topic", t.rec.Topic),
						zap.Int32("partition", t.rec.Partition), zap.Int64("offset", t.rec.Offset), redact.Error(err))
					s.undeliverable(t, err)
					continue
				}
				if sp := s.traceDelivery(t.rec, d); sp != nil {
					spans = append(spans, sp)
				}
				resp.Deliveries = append(resp.Deliveries, d)
			}
			clear(buf)
			if len(resp.Deliveries) > 0 {
				err := send(resp)
				endDeliveries(spans, err)
				if err != nil {
					return err
				}
			}
			if !s.moreReady() {
				break
			}
		}
	}
}

// Delivery ids are "<instance>.<stream>.<record>.<attempt>", numbers in base 36.
func (m *Manager) appendID(b []byte, stream, seq uint64, attempt int32) []byte {
	b = append(b, m.instance...)
	b = append(b, '.')
	b = strconv.AppendUint(b, stream, 36)
	b = append(b, '.')
	b = strconv.AppendUint(b, seq, 36)
	b = append(b, '.')
	return strconv.AppendUint(b, uint64(attempt), 36)
}

type parsedID struct {
	stream, seq uint64
	raw         string
}

var errBadID = errors.New("bad delivery id")

func (m *Manager) parseID(id string) (parsedID, error) {
	inst, rest, ok := strings.Cut(id, ".")
	if !ok || inst != m.instance {
		return parsedID{}, errBadID
	}
	st, rest, ok := strings.Cut(rest, ".")
	if !ok {
		return parsedID{}, errBadID
	}
	sq, at, ok := strings.Cut(rest, ".")
	if !ok {
		return parsedID{}, errBadID
	}
	stream, err1 := strconv.ParseUint(st, 36, 64)
	seq, err2 := strconv.ParseUint(sq, 36, 64)
	_, err3 := strconv.ParseUint(at, 36, 31)
	if err1 != nil || err2 != nil || err3 != nil || stream == 0 || seq == 0 {
		return parsedID{}, errBadID
	}
	return parsedID{stream: stream, seq: seq, raw: id}, nil
}

// resolve checks every id of an Ack or Nack before anything changes: each must be a
// delivery of this sidecar for this subscription. Ids of streams that ended are
// stale, not errors.
func (m *Manager) resolve(subscription string, ids []string) (map[*stream][]parsedID, []string, error) {
	if err := CheckSubscription(subscription); err != nil {
		return nil, nil, err
	}
	if len(ids) == 0 {
		return nil, nil, validate.Errorf("delivery_ids", "is empty: name at least one delivery")
	}
	if len(ids) > MaxIDsPerCall {
		return nil, nil, validate.Errorf("delivery_ids", "has %d ids, over the limit of %d", len(ids), MaxIDsPerCall)
	}
	byStream := map[*stream][]parsedID{}
	var stale []string
	last := m.lastNum.Load()
	m.mu.RLock()
	defer m.mu.RUnlock()
	for i, id := range ids {
		p, err := m.parseID(id)
		if err != nil || p.stream > last {
			return nil, nil, validate.Errorf(fmt.Sprintf("delivery_ids[%d]", i), "%q is not a delivery of this sidecar (acknowledge on the sidecar whose Subscribe delivered it)", truncate(id, 60))
		}
		s := m.streams[p.stream]
		if s == nil {
			stale = append(stale, id) // its stream ended: delivered again elsewhere
			continue
		}
		if s.opts.Subscription != subscription {
			return nil, nil, validate.Errorf(fmt.Sprintf("delivery_ids[%d]", i), "belongs to another subscription, not %q", subscription)
		}
		s.mu.Lock()
		issued := s.seq
		s.mu.Unlock()
		if p.seq > issued {
			return nil, nil, validate.Errorf(fmt.Sprintf("delivery_ids[%d]", i), "%q was never delivered", truncate(id, 60))
		}
		byStream[s] = append(byStream[s], p)
	}
	return byStream, stale, nil
}

// Ack acknowledges deliveries. It answers how many were acknowledged now and the ids
// no longer held (already finished, revoked, or of an ended stream), once Kafka
// confirmed the offset commit; Unavailable when it kept refusing it (commit.go).
func (m *Manager) Ack(ctx context.Context, subscription string, ids []string) (int, []string, error) {
	byStream, stale, err := m.resolve(subscription, ids)
	if err != nil {
		return 0, nil, err
	}
	acked := 0
	now := time.Now()
	var commitErr error
	for s, ps := range byStream {
		before := acked
		s.mu.Lock()
		for _, p := range ps {
			msg := s.bySeq[p.seq]
			if msg == nil || s.ended || (msg.state != stDelivered && msg.state != stReady && msg.state != stBackoff) {
				stale = append(stale, p.raw)
				continue
			}
			if msg.state == stDelivered {
				s.processing.Observe(now.Sub(msg.sentAt).Seconds())
			}
			msg.part.consumed.Inc()
			s.finish(msg)
			acked++
		}
		moved := len(s.dirty) > 0
		s.flushMarks()
		s.maybeResume()
		s.mu.Unlock()
		s.wake()
		if moved && acked > before {
			if err := s.commitNow(ctx); err != nil && commitErr == nil {
				commitErr = err
			}
		}
	}
	return acked, stale, commitErr
}

// Nack fails deliveries: retried after a backoff until max attempts, or dead-lettered
// now. It answers once the dead-letter hand-offs it started are done (or ctx ends).
func (m *Manager) Nack(ctx context.Context, subscription string, ids []string, deadLetter bool, errType, errMsg string) (int, []string, error) {
	if err := validate.Text("error_type", errType, maxErrorType); err != nil {
		return 0, nil, err
	}
	if err := validate.Text("error_message", errMsg, maxErrorMessage); err != nil {
		return 0, nil, err
	}
	if errType == "" {
		errType = "unspecified"
	}
	byStream, stale, err := m.resolve(subscription, ids)
	if err != nil {
		return 0, nil, err
	}
	nacked := 0
	var handoffs []chan struct{}
	for s, ps := range byStream {
		s.mu.Lock()
		for _, p := range ps {
			msg := s.bySeq[p.seq]
			if msg == nil || s.ended || msg.state != stDelivered {
				stale = append(stale, p.raw)
				continue
			}
			if done := s.fail(msg, deadLetter, errType, errMsg); done != nil {
				handoffs = append(handoffs, done)
			}
			nacked++
		}
		s.flushMarks()
		s.mu.Unlock()
		s.wake()
	}
	for _, done := range handoffs {
		select {
		case <-done:
		case <-ctx.Done():
			return nacked, stale, nil
		}
	}
	return nacked, stale, nil
}

// Close ends every stream and waits for dead-letter hand-offs in progress.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	streams := make([]*stream, 0, len(m.streams))
	for _, s := range m.streams {
		streams = append(streams, s)
	}
	m.mu.Unlock()
	for _, s := range streams {
		s.cancel(kafka.ErrClosed)
	}
	m.dlq.Wait()
	return nil
}

// Held sums what the streams hold now.
type Held struct {
	Events, Bytes, Delivered int
	// Paused: some stream stopped fetching because it holds its limit.
	Paused bool
}

// Held reports what the sidecar's streams hold (for tests and diagnostics).
func (m *Manager) Held() Held {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var h Held
	for _, s := range m.streams {
		s.mu.Lock()
		h.Events += s.held
		h.Bytes += s.heldBytes
		h.Delivered += s.inFlight
		h.Paused = h.Paused || s.paused
		s.mu.Unlock()
	}
	return h
}

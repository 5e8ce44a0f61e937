package kafka

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/rcrowley/go-metrics"
	"go.uber.org/zap"
)

func init() {
	// sarama records go-metrics meters and histograms for every request; nothing reads
	// them here (the gateway exports its own Prometheus metrics) and they cost CPU on
	// the publish path.
	metrics.UseNilMetrics = true
}

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("kafka producer is closed")

// UnavailableError wraps a Kafka delivery failure. It is retriable: the same event may
// be sent again (consumers deduplicate on the event id).
type UnavailableError struct{ Err error }

func (e *UnavailableError) Error() string {
	return "kafka did not acknowledge the event: " + e.Err.Error()
}
func (e *UnavailableError) Unwrap() error   { return e.Err }
func (e *UnavailableError) Retriable() bool { return true }

// ProducerConfig returns the sarama configuration of the gateway's producer: acks=all,
// idempotent, no linger timer (a lone event is sent at once; events that arrive while
// a request is in flight are batched into the next one).
func ProducerConfig(clientID string, maxMessageBytes int) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = clientID
	c.Version = sarama.V2_8_0_0
	c.Net.MaxOpenRequests = 1 // required by the idempotent producer
	c.Net.DialTimeout = 5 * time.Second
	c.Metadata.AllowAutoTopicCreation = false
	c.Metadata.Retry.Max = 3
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Retry.Max = 5
	// A fixed backoff: with a jittered sarama BackoffFunc the idempotent producer's
	// retries reordered a partition's records in TestPublishFallbackQueuesWhileKafkaDown
	// (seen, not yet explained). The gateway's own retries (the relay, the breaker's
	// trials) back off with jitter.
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Producer.Timeout = 10 * time.Second
	c.Producer.MaxMessageBytes = maxMessageBytes
	c.Producer.Flush.Frequency = 0
	c.Producer.Flush.Messages = 0
	c.Producer.Flush.Bytes = 0
	c.Producer.Flush.MaxMessages = 0
	c.Producer.Partitioner = NewJavaCompatiblePartitioner
	c.ChannelBufferSize = 4096
	return c
}

// Result is the outcome of one message.
type Result struct {
	Partition int32
	Offset    int64
	Err       error
}

// Batch tracks the acknowledgements of a group of messages sent together.
type Batch struct {
	slots     []slot
	remaining atomic.Int64
	done      chan struct{}
	// inProducer counts messages handed to the producer that it has not reported on
	// yet (they may still reach Kafka, even after Wait gave up on them); quiet is closed
	// when it is back to zero once sending is over. quiet is made on demand (few
	// callers ask): quietMu orders making it and closing it.
	inProducer atomic.Int64
	quietMu    sync.Mutex
	quiet      chan struct{}
	quietDone  bool
	// one holds the slot of a one-message batch (a unary Publish): no slice to allocate.
	one [1]slot
}

type slot struct {
	b      *Batch
	state  atomic.Uint32 // 0 pending, 1 done
	result Result
}

// NewBatch prepares a batch of n messages.
func NewBatch(n int) *Batch {
	b := new(Batch)
	b.Init(n)
	return b
}

// Init prepares b, a zero Batch (one embedded in a larger allocation), for n messages.
func (b *Batch) Init(n int) {
	if n == 1 {
		b.slots = b.one[:]
	} else {
		b.slots = make([]slot, n)
	}
	b.done = make(chan struct{})
	for i := range b.slots {
		b.slots[i].b = b
	}
	b.remaining.Store(int64(n))
	b.inProducer.Store(1) // Send's own hold, dropped when it has handed everything over
	if n == 0 {
		close(b.done)
	}
}

// Quiet is closed once the producer has reported on every message of the batch it was
// given: none of them can reach Kafka any more. Wait may give up on messages earlier
// (its context ended); a sender that will send the same events again must wait for
// Quiet first, or a late original could land after the resent ones.
func (b *Batch) Quiet() <-chan struct{} {
	b.quietMu.Lock()
	defer b.quietMu.Unlock()
	if b.quiet == nil {
		b.quiet = make(chan struct{})
		if b.quietDone {
			close(b.quiet)
		}
	}
	return b.quiet
}

func (b *Batch) reported() {
	if b.inProducer.Add(-1) == 0 {
		b.quietMu.Lock()
		b.quietDone = true
		if b.quiet != nil {
			close(b.quiet)
		}
		b.quietMu.Unlock()
	}
}

// Done is closed when every message has an outcome.
func (b *Batch) Done() <-chan struct{} { return b.done }

// Result returns message i's outcome; ok is false while it has none yet.
func (b *Batch) Result(i int) (r Result, ok bool) {
	s := &b.slots[i]
	for {
		switch s.state.Load() {
		case 0:
			return Result{}, false
		case 1:
			return s.result, true
		default: // being written by the ack goroutine: a few instructions away
			runtime.Gosched()
		}
	}
}

func (s *slot) complete(r Result) {
	if !s.state.CompareAndSwap(0, 2) { // 2: writing
		return
	}
	s.result = r
	s.state.Store(1)
	if s.b.remaining.Add(-1) == 0 {
		close(s.b.done)
	}
}

// Producer is an idempotent async producer whose acknowledgements are routed back to
// the batch each message belongs to.
type Producer struct {
	ap  sarama.AsyncProducer
	log *zap.Logger

	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

// NewProducer starts a producer on client (which must use ProducerConfig).
func NewProducer(client sarama.Client, log *zap.Logger) (*Producer, error) {
	p := NewDetachedProducer(log)
	if err := p.Attach(client); err != nil {
		return nil, err
	}
	return p, nil
}

// NewDetachedProducer builds a producer before Kafka is reachable: every message fails
// with ErrNotConnected (an *UnavailableError) until Attach.
func NewDetachedProducer(log *zap.Logger) *Producer { return &Producer{log: log} }

// Attach starts producing through client (which must use ProducerConfig); the
// idempotent producer needs a reachable cluster for its producer id.
func (p *Producer) Attach(client sarama.Client) error {
	ap, err := sarama.NewAsyncProducerFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		ap.AsyncClose()
		return ErrClosed
	}
	p.ap = ap
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		for m := range ap.Successes() {
			sl := m.Metadata.(*slot)
			sl.complete(Result{Partition: m.Partition, Offset: m.Offset})
			sl.b.reported()
		}
	}()
	go func() {
		defer p.wg.Done()
		for pe := range ap.Errors() {
			p.log.Warn("kafka produce failed", zap.String("topic", pe.Msg.Topic), zap.Error(pe.Err))
			sl := pe.Msg.Metadata.(*slot)
			sl.complete(Result{Partition: -1, Offset: -1, Err: &UnavailableError{Err: pe.Err}})
			sl.b.reported()
		}
	}()
	return nil
}

// Attached reports whether the producer has reached Kafka.
func (p *Producer) Attached() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.ap != nil
}

// Send enqueues msgs[i] as message i of b. It returns early when ctx ends; the messages
// not enqueued then get ctx's error as their outcome.
func (p *Producer) Send(ctx context.Context, b *Batch, msgs []*sarama.ProducerMessage) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	defer b.reported() // Send's own hold on quiet (a batch is sent once)
	for i, m := range msgs {
		s := &b.slots[i]
		if p.closed {
			s.complete(Result{Partition: -1, Offset: -1, Err: ErrClosed})
			continue
		}
		if p.ap == nil {
			s.complete(Result{Partition: -1, Offset: -1, Err: &UnavailableError{Err: ErrNotConnected}})
			continue
		}
		m.Metadata = s
		b.inProducer.Add(1)
		// The producer's input is buffered: the first try nearly always takes the
		// message without asking ctx for its Done channel (a timer for a deadline).
		select {
		case p.ap.Input() <- m:
			continue
		default:
		}
		select {
		case p.ap.Input() <- m:
		case <-ctx.Done():
			b.inProducer.Add(-1)
			s.complete(Result{Partition: -1, Offset: -1, Err: ctx.Err()})
		}
	}
}

// Wait blocks until b is done or ctx ends; messages still pending then get ctx's error
// as their outcome (Kafka may still store them: the caller must say the outcome is
// unknown, and the event id lets consumers deduplicate a retry).
func (b *Batch) Wait(ctx context.Context) {
	select {
	case <-b.done:
	case <-ctx.Done():
		b.giveUp(ctx.Err())
	}
}

// WaitUntil is Wait that also gives up at deadline (zero: no deadline), the pending
// messages getting context.DeadlineExceeded: the same outcome as Wait under a context
// with that deadline, without making one (a context with a deadline costs a timer,
// its registration with ctx and a channel; the timer here is reused).
func (b *Batch) WaitUntil(ctx context.Context, deadline time.Time) {
	if deadline.IsZero() {
		b.Wait(ctx)
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	d := time.Until(deadline)
	if d <= 0 {
		b.giveUp(context.DeadlineExceeded)
		return
	}
	t := timers.Get().(*time.Timer)
	t.Reset(d)
	select {
	case <-b.done:
	case <-ctx.Done():
		b.giveUp(ctx.Err())
	case <-t.C:
		b.giveUp(context.DeadlineExceeded)
	}
	t.Stop() // since Go 1.23 no stale tick is left in t.C after Stop
	timers.Put(t)
}

// timers are stopped timers for WaitUntil.
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

func (b *Batch) giveUp(err error) {
	for i := range b.slots {
		b.slots[i].complete(Result{Partition: -1, Offset: -1, Err: err})
	}
}

// Close flushes what is buffered, waits for its acknowledgements and stops.
func (p *Producer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	ap := p.ap
	p.mu.Unlock()
	if ap != nil {
		ap.AsyncClose()
	}
	p.wg.Wait()
	return nil
}

// Unavailable reports whether err says Kafka could not take a message for a reason of
// Kafka's (a broker, the network, a timeout) rather than because of the message itself
// (too large, refused by a policy, not authorized), which no retry or queueing fixes.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, ErrClosed) {
		return false
	}
	var ke sarama.KError
	if errors.As(err, &ke) {
		switch ke {
		case sarama.ErrInvalidMessage, sarama.ErrInvalidMessageSize, sarama.ErrMessageSizeTooLarge,
			sarama.ErrInvalidTopic, sarama.ErrMessageSetSizeTooLarge, sarama.ErrInvalidRequiredAcks,
			sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed,
			sarama.ErrUnsupportedForMessageFormat, sarama.ErrPolicyViolation, sarama.ErrInvalidRecord:
			return false
		}
		return true
	}
	var ce sarama.ConfigurationError
	if errors.As(err, &ce) {
		return false
	}
	var ue *UnavailableError
	return errors.As(err, &ue)
}

package publish

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/validate"
)

// Config bounds and shapes publishing.
type Config struct {
	// DefaultSource is ce_source when an event names no source service.
	DefaultSource string
	Limits        event.Limits
	// MaxBatch is the most events one call may carry.
	MaxBatch int
	// RequireSchemas refuses event types that have no registered schema.
	RequireSchemas bool
	// Domains, when not empty, are the only domains events may have.
	Domains map[string]bool
	// Timeout bounds a call that brought no deadline of its own.
	Timeout time.Duration
}

// Outcome is where Kafka stored an event, or why it did not.
type Outcome struct {
	EventID   string
	Topic     string
	Partition int32
	Offset    int64
	Err       error
	// Queued: Kafka was unavailable; the event is stored in PostgreSQL's publish_queue
	// and the relay publishes it when Kafka is back (Partition and Offset are -1).
	Queued bool
}

// Publisher publishes events to Kafka.
type Publisher struct {
	cfg      Config
	router   *kafka.Router
	topics   *kafka.Topics
	producer *kafka.Producer
	schemas  *schema.Registry
	metrics  *metrics.Metrics
	log      *zap.Logger
	fb       *Fallback
}

// WithFallback makes the publisher queue events in PostgreSQL while Kafka is
// unavailable (see Fallback).
func (p *Publisher) WithFallback(f *Fallback) *Publisher {
	p.fb = f
	return p
}

// New builds a Publisher.
func New(cfg Config, router *kafka.Router, topics *kafka.Topics, producer *kafka.Producer,
	schemas *schema.Registry, m *metrics.Metrics, log *zap.Logger,
) *Publisher {
	return &Publisher{cfg: cfg, router: router, topics: topics, producer: producer, schemas: schemas, metrics: m, log: log}
}

// Pending is a batch handed to Kafka whose acknowledgements may not all be in yet.
type Pending struct {
	events []event.Event
	msgs   []*sarama.ProducerMessage
	topics []string
	batch  *kafka.Batch // nil when every event went to the queue
	start  time.Time
	p      *Publisher
	// queuedDone delivers the outcome of queueing every event (batch == nil).
	queuedDone chan error
	// settled is closed when Wait has the outcomes (and has queued what Kafka did not
	// take).
	settled    chan struct{}
	settleOnce sync.Once
	direct     bool // no fallback: Kafka's outcome is the answer
	permit     bool // direct, holding a Kafka breaker permit to settle
}

// Publish checks and sends events, then waits for their acknowledgements. A bad event
// fails the whole call with a *validate.Error (field prefixed "events[i]" when there
// are several) before anything is sent.
func (p *Publisher) Publish(ctx context.Context, events []event.Event) ([]Outcome, error) {
	cc := &callCtx{}
	ctx = cc.init(ctx, p.cfg.Timeout)
	defer cc.release()
	pend, err := p.Start(ctx, events)
	if err != nil {
		return nil, err
	}
	return pend.Wait(ctx), nil
}

// oneCall is everything a one-event Publish needs, in one allocation: the event, its
// Kafka message (key, value and CloudEvents headers included), the batch tracking its
// acknowledgement, the pending call and its outcome.
type oneCall struct {
	cc     callCtx
	pend   Pending
	batch  kafka.Batch
	events [1]event.Event
	msg    sarama.ProducerMessage
	msgs   [1]*sarama.ProducerMessage
	topics [1]string
	out    [1]Outcome
	enc    encoders
}

// encoders are a message's key and value encoders and room for its headers.
type encoders struct {
	key   sarama.StringEncoder
	value sarama.ByteEncoder
	hdrs  [12]sarama.RecordHeader
	hbuf  [256]byte
}

// PublishOne is Publish of the one event *e (copied: the caller keeps e), the unary
// Publish's path: the same checks, encoding, sending and outcome, with its memory in
// one allocation and no context or timer made while Kafka answers in time.
func (p *Publisher) PublishOne(ctx context.Context, e *event.Event) (Outcome, error) {
	c := new(oneCall)
	c.events[0] = *e
	ctx = c.cc.init(ctx, p.cfg.Timeout)
	defer c.cc.release()
	now := time.Now()
	if p.cfg.MaxBatch < 1 {
		return Outcome{}, validate.Errorf("events", "has 1 events, over the limit of %d (--max-batch)", p.cfg.MaxBatch)
	}
	ev := &c.events[0]
	if err := p.encode(ev, now, &c.msg, &c.enc); err != nil {
		p.countInvalid(ev)
		return Outcome{}, err
	}
	c.msgs[0] = &c.msg
	pend, err := p.send(ctx, c.events[:], c.msgs[:], now, nil, c)
	if err != nil {
		return Outcome{}, err
	}
	return pend.wait(ctx, c.out[:])[0], nil
}

// Start checks and encodes events and hands them to Kafka without waiting, so that a
// stream can keep many batches in flight. Wait on the result for the outcomes.
func (p *Publisher) Start(ctx context.Context, events []event.Event) (*Pending, error) {
	return p.StartAfter(ctx, events, nil)
}

// StartAfter is Start for a stream whose previous request is after: should this one be
// queued while after, sent to Kafka, may still be queued, it waits for after to settle
// first, so that a stream's events keep their order across the switch to queueing.
// after's Wait must be called independently (the stream's sender does).
func (p *Publisher) StartAfter(ctx context.Context, events []event.Event, after *Pending) (*Pending, error) {
	now := time.Now()
	if len(events) == 0 {
		return nil, validate.Errorf("events", "is empty: send at least one event")
	}
	if len(events) > p.cfg.MaxBatch {
		return nil, validate.Errorf("events", "has %d events, over the limit of %d (--max-batch)", len(events), p.cfg.MaxBatch)
	}
	msgs := make([]*sarama.ProducerMessage, len(events))
	backing := make([]sarama.ProducerMessage, len(events))
	var seen map[string]int
	if len(events) > 1 {
		seen = make(map[string]int, len(events))
	}
	ar := newArena(len(events))
	for i := range events {
		e := &events[i]
		if err := p.encodeIn(e, now, &backing[i], ar, i); err != nil {
			p.countInvalid(e)
			if len(events) > 1 {
				return nil, validate.Prefix("events["+strconv.Itoa(i)+"]", err)
			}
			return nil, err
		}
		if seen != nil {
			if j, dup := seen[e.ID]; dup {
				p.countInvalid(e)
				return nil, validate.Errorf("events["+strconv.Itoa(i)+"].event_id", "repeats the id of events[%d]: event ids must be unique within a batch", j)
			}
			seen[e.ID] = i
		}
		msgs[i] = &backing[i]
	}
	return p.send(ctx, events, msgs, now, after, nil)
}

// Check runs every check and the encoding of Start on e without sending it (for events
// stored first and published later through the outbox).
func (p *Publisher) Check(e *event.Event) error {
	_, _, err := p.value(e, time.Now())
	return err
}

// Encode checks e and encodes it into a Kafka message.
func (p *Publisher) Encode(e *event.Event, now time.Time) (*sarama.ProducerMessage, error) {
	m := &sarama.ProducerMessage{}
	if err := p.encode(e, now, m, nil); err != nil {
		return nil, err
	}
	return m, nil
}

// Send hands encoded messages (msgs[i] encodes events[i]) to Kafka, creating their
// topics first when needed. With a fallback, while Kafka is unavailable (or this
// sidecar still has queued events) they go to PostgreSQL's queue instead.
func (p *Publisher) Send(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, start time.Time) (*Pending, error) {
	return p.send(ctx, events, msgs, start, nil, nil)
}

// send is Send; mem, when not nil, is where a one-event call keeps its Pending and
// batch.
func (p *Publisher) send(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, start time.Time, after *Pending, mem *oneCall) (*Pending, error) {
	f := p.fb
	if f == nil {
		return p.sendDirect(ctx, events, msgs, start, mem)
	}
	f.mu.RLock()
	if !f.queued.Load() {
		f.mu.RUnlock()
		if err := f.breaker.Allow(); err != nil {
			f.enter(err.Error())
		} else {
			pend, err := p.sendKafka(ctx, events, msgs, start, mem)
			if err == nil {
				return pend, nil
			}
			f.breaker.Done(err)
			f.enter("kafka: " + err.Error())
		}
		f.mu.RLock()
	}
	// Queued mode: the rows are committed before f.mu is released.
	if after != nil && after.batch != nil && !after.direct {
		// The previous request went to Kafka and may yet be queued: after it.
		f.mu.RUnlock()
		select {
		case <-after.settled:
		case <-ctx.Done():
		}
		f.mu.RLock()
	}
	pend := &Pending{events: events, msgs: msgs, topics: topicsOf(msgs), start: start, p: p,
		queuedDone: make(chan error, 1), settled: make(chan struct{})}
	all := make([]int, len(msgs))
	for i := range all {
		all[i] = i
	}
	wait := f.submit(ctx, events, msgs, all)
	go func() {
		defer f.mu.RUnlock()
		pend.queuedDone <- wait()
	}()
	return pend, nil
}

// SendDirect is Send without the fallback: Kafka's outcome is the answer (the relay
// publishing queued events uses it).
func (p *Publisher) SendDirect(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, start time.Time) (*Pending, error) {
	return p.sendDirect(ctx, events, msgs, start, nil)
}

func (p *Publisher) sendDirect(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, start time.Time, mem *oneCall) (*Pending, error) {
	permit := p.fb != nil && p.fb.breaker.Allow() == nil
	pend, err := p.sendKafka(ctx, events, msgs, start, mem)
	if err != nil {
		if permit {
			p.fb.breaker.Done(err)
		}
		return nil, err
	}
	pend.direct, pend.permit = true, permit
	return pend, nil
}

func topicsOf(msgs []*sarama.ProducerMessage) []string {
	topics := make([]string, len(msgs))
	for i, m := range msgs {
		topics[i] = m.Topic
	}
	return topics
}

func (p *Publisher) sendKafka(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, start time.Time, mem *oneCall) (*Pending, error) {
	var topics []string
	if mem != nil {
		topics = mem.topics[:len(msgs)]
		for i, m := range msgs {
			topics[i] = m.Topic
		}
	} else {
		topics = topicsOf(msgs)
	}
	for i, m := range msgs {
		if i > 0 && m.Topic == msgs[i-1].Topic {
			continue
		}
		if err := p.topics.Ensure(ctx, m.Topic, kafka.Domain(events[i].Type)); err != nil {
			if p.fb == nil {
				p.countFailed(events, "unavailable")
			}
			return nil, &kafka.UnavailableError{Err: err}
		}
	}
	var (
		b  *kafka.Batch
		pd *Pending
	)
	if mem != nil {
		b, pd = &mem.batch, &mem.pend
		b.Init(len(msgs))
	} else {
		b, pd = kafka.NewBatch(len(msgs)), new(Pending)
	}
	p.producer.Send(ctx, b, msgs)
	*pd = Pending{events: events, msgs: msgs, topics: topics, batch: b, start: start, p: p, settled: make(chan struct{})}
	return pd, nil
}

// kafkaDeadline is how long to wait for Kafka's acknowledgements when the fallback may
// still have to queue what Kafka did not take: of the time left before deadline, a
// quarter, at most 2 s, is kept for that.
func kafkaDeadline(deadline time.Time) time.Time {
	if deadline.IsZero() {
		return deadline
	}
	keep := min(time.Until(deadline)/4, 2*time.Second)
	return deadline.Add(-keep)
}

// Wait waits for every acknowledgement (or ctx's end) and returns the outcomes in order.
// With a fallback, events Kafka did not take for a reason of Kafka's are queued in
// PostgreSQL and answered Queued.
func (pd *Pending) Wait(ctx context.Context) []Outcome {
	return pd.wait(ctx, make([]Outcome, len(pd.events)))
}

// wait is Wait writing the outcomes into out (len(pd.events) long).
func (pd *Pending) wait(ctx context.Context, out []Outcome) []Outcome {
	defer pd.settleOnce.Do(func() { close(pd.settled) })
	p := pd.p
	if pd.batch == nil {
		err := <-pd.queuedDone
		for i := range pd.events {
			out[i] = Outcome{EventID: pd.events[i].ID, Topic: pd.topics[i], Partition: -1, Offset: -1, Queued: err == nil}
			if err != nil {
				out[i].Err = &errBothDown{kafka: errors.New("kafka unavailable"), pg: err}
			}
		}
		pd.count(out)
		return out
	}
	// The deadline is waited for with a reused timer rather than through ctx (a
	// context with a deadline makes a timer of its own when asked for Done).
	parent, deadline := ctx, time.Time{}
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	if cc, ok := ctx.(*callCtx); ok {
		parent = cc.waitable()
	}
	f := p.fb
	if f != nil && !pd.direct {
		deadline = kafkaDeadline(deadline)
	}
	pd.batch.WaitUntil(parent, deadline)
	if pd.permit {
		defer func() { f.breaker.Done(firstErr(out)) }()
	}
	var failed []int
	var kerr error
	for i := range pd.events {
		r, _ := pd.batch.Result(i)
		out[i] = Outcome{EventID: pd.events[i].ID, Topic: pd.topics[i], Partition: r.Partition, Offset: r.Offset, Err: r.Err}
		if f != nil && !pd.direct && kafkaDown(r.Err) && ctx.Err() == nil {
			failed = append(failed, i)
			if kerr == nil {
				kerr = r.Err
			}
		}
	}
	if f != nil && !pd.direct {
		f.breaker.Done(firstErr(out))
		if len(failed) > 0 {
			f.enter("kafka: " + kerr.Error())
			f.mu.RLock()
			err := f.submit(ctx, pd.events, pd.msgs, failed)()
			f.mu.RUnlock()
			for _, i := range failed {
				if err != nil {
					out[i].Err = &errBothDown{kafka: out[i].Err, pg: err}
					continue
				}
				out[i] = Outcome{EventID: out[i].EventID, Topic: out[i].Topic, Partition: -1, Offset: -1, Queued: true}
			}
		}
	}
	pd.count(out)
	return out
}

// Quiet waits until none of the events sent to Kafka can still reach it (the producer
// has reported on each), or d passes; it reports whether that happened. A sender about
// to send the same events again calls it first, so that a late original does not land
// after its resent successors.
func (pd *Pending) Quiet(d time.Duration) bool {
	if pd.batch == nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-pd.batch.Quiet():
		return true
	case <-t.C:
		return false
	}
}

func firstErr(out []Outcome) error {
	for i := range out {
		if out[i].Err != nil {
			return out[i].Err
		}
	}
	return nil
}

// count records the outcomes' metrics (queued events count as published when the
// relay publishes them).
func (pd *Pending) count(out []Outcome) {
	p := pd.p
	var (
		lastKey [2]string // source service and event type as the events name them
		okCount int
	)
	flush := func() {
		if okCount > 0 {
			p.metrics.PublishFor(lastKey[0], lastKey[1]).Published.Add(float64(okCount))
		}
		okCount = 0
	}
	for i := range pd.events {
		e := &pd.events[i]
		if out[i].Queued {
			continue
		}
		if err := out[i].Err; err != nil {
			reason := "unavailable"
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				reason = "timeout"
			}
			p.metrics.PublishErrors.WithLabelValues(p.metrics.Service(e.Source), p.metrics.EventType(e.Type), reason).Inc()
			continue
		}
		if key := [2]string{e.Source, e.Type}; key != lastKey {
			flush()
			lastKey = key
		}
		okCount++
	}
	flush()
	first := &pd.events[0]
	p.metrics.PublishFor(first.Source, first.Type).Duration.Observe(time.Since(pd.start).Seconds())
}

// arena is room for the key and value encoders and the CloudEvents headers of a
// request's messages: a few allocations per request instead of five per event.
type arena struct {
	keys []sarama.StringEncoder
	vals []sarama.ByteEncoder
	hdrs []sarama.RecordHeader
	hbuf []byte
}

// arenaHeaders and arenaHeaderBytes are the room an event gets on average: the
// envelope's 8 headers and about 250 bytes of their values (ids, type, source, time);
// an event with more metadata takes more, and once the room is used up an event's
// headers get arrays of their own.
const (
	arenaHeaders     = 9
	arenaHeaderBytes = 256
)

func newArena(n int) *arena {
	return &arena{
		keys: make([]sarama.StringEncoder, n), vals: make([]sarama.ByteEncoder, n),
		hdrs: make([]sarama.RecordHeader, 0, n*arenaHeaders), hbuf: make([]byte, 0, n*arenaHeaderBytes),
	}
}

// encodeIn is encode with message i's encoders and headers in ar.
func (p *Publisher) encodeIn(e *event.Event, now time.Time, m *sarama.ProducerMessage, ar *arena, i int) error {
	value, ref, err := p.value(e, now)
	if err != nil {
		return err
	}
	*m = sarama.ProducerMessage{Topic: p.router.Topic(e.Type)}
	ar.keys[i], ar.vals[i] = sarama.StringEncoder(e.Key()), sarama.ByteEncoder(value)
	m.Key, m.Value = &ar.keys[i], &ar.vals[i]
	// Appended in place while the room lasts (the slices then share the arena's
	// arrays), else into arrays of their own.
	var hs []sarama.RecordHeader
	hs, ar.hbuf = e.AppendHeaders(ar.hdrs[len(ar.hdrs):len(ar.hdrs):cap(ar.hdrs)], ar.hbuf, ref)
	m.Headers = hs[:len(hs):len(hs)]
	if len(ar.hdrs)+len(hs) <= cap(ar.hdrs) && len(hs) > 0 && &ar.hdrs[:len(ar.hdrs)+1][len(ar.hdrs)] == &hs[0] {
		ar.hdrs = ar.hdrs[:len(ar.hdrs)+len(hs)]
	}
	return nil
}

// encode checks e and encodes it into m. enc, when not nil, holds m's key and value
// encoders and its headers (no allocation for them).
func (p *Publisher) encode(e *event.Event, now time.Time, m *sarama.ProducerMessage, enc *encoders) error {
	value, ref, err := p.value(e, now)
	if err != nil {
		return err
	}
	*m = sarama.ProducerMessage{Topic: p.router.Topic(e.Type)}
	if enc == nil {
		m.Key, m.Value, m.Headers = sarama.StringEncoder(e.Key()), sarama.ByteEncoder(value), e.Headers(ref)
		return nil
	}
	enc.key, enc.value = sarama.StringEncoder(e.Key()), sarama.ByteEncoder(value)
	m.Key, m.Value = &enc.key, &enc.value
	m.Headers, _ = e.AppendHeaders(enc.hdrs[:0], enc.hbuf[:0], ref)
	return nil
}

// value checks e and encodes its payload (Avro with its schema reference, or JSON).
func (p *Publisher) value(e *event.Event, now time.Time) (value []byte, ref string, err error) {
	if err := e.Normalize(p.cfg.DefaultSource, p.cfg.Limits, now); err != nil {
		return nil, "", err
	}
	if len(p.cfg.Domains) > 0 && !p.cfg.Domains[kafka.Domain(e.Type)] {
		return nil, "", validate.Errorf("event_type", "has domain %q, which this gateway does not route (--domains)", kafka.Domain(e.Type))
	}
	if s := p.schemas.Lookup(e.Type); s != nil {
		if value, err = s.Encode(e.PayloadJSON, e.Payload); err != nil {
			return nil, "", err
		}
		ref = s.Ref
	} else {
		if p.cfg.RequireSchemas {
			return nil, "", validate.Errorf("event_type", "has no registered schema, and this gateway requires one (--require-schemas): call RegisterSchema first")
		}
		value = e.PayloadJSON
		if value == nil {
			if value, err = event.AppendStructJSON(make([]byte, 0, 256), e.Payload); err != nil {
				return nil, "", validate.Errorf("payload", "holds a NaN or infinite number, which JSON cannot represent")
			}
		}
	}
	if len(value) > p.cfg.Limits.MaxEventBytes {
		return nil, "", validate.Errorf("payload", "is %d bytes encoded, over the %d-byte limit (--max-event-bytes)", len(value), p.cfg.Limits.MaxEventBytes)
	}
	if err := p.AdmitTopic("event_type", p.router.Topic(e.Type)); err != nil {
		return nil, "", err
	}
	return value, ref, nil
}

// Router is the router events are routed with.
func (p *Publisher) Router() *kafka.Router { return p.router }

// AdmitTopic checks that events may go to topic: one in use, or a new one while the
// gateway uses fewer than --max-topics (kafka.Topics.Admit). Refused, the error is a
// *validate.Error on field.
func (p *Publisher) AdmitTopic(field, topic string) error {
	err := p.topics.Admit(topic)
	if err == nil {
		return nil
	}
	// Only here: te escapes to the heap through errors.As.
	var te *kafka.TooManyTopicsError
	if errors.As(err, &te) {
		return validate.Errorf(field, "would need the new topic %s, and this gateway already uses %d topics, its limit (--max-topics): name the domains it serves with --domains, or raise --max-topics", topic, te.Max)
	}
	return err
}

func (p *Publisher) countInvalid(e *event.Event) {
	p.metrics.PublishErrors.WithLabelValues(p.metrics.Service(labelOr(e.Source, p.cfg.DefaultSource)), p.metrics.EventType(labelType(e.Type)), "invalid").Inc()
}

func (p *Publisher) countFailed(events []event.Event, reason string) {
	for i := range events {
		p.metrics.PublishErrors.WithLabelValues(p.metrics.Service(events[i].Source), p.metrics.EventType(events[i].Type), reason).Inc()
	}
}

// labelType keeps malformed event types out of label values (unbounded cardinality;
// well-formed ones are bounded by the metrics' label limits).
func labelType(t string) string {
	if validate.IsEventType(t) && len(t) <= 100 {
		return t
	}
	return "invalid"
}

func labelOr(s, def string) string {
	if s == "" || validate.Name("", s, 100, true) != nil {
		return def
	}
	return s
}

package subscribe

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/deadletter"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/redact"
)

// States of a held record.
const (
	stWaiting   uint8 = iota // behind an earlier record of its key
	stReady                  // in the ready queue
	stDelivered              // sent, not yet acknowledged
	stBackoff                // waiting for its redelivery
	stDLQ                    // being dead-lettered
	stDLQWait                // dead-letter hand-off failed; tried again after a backoff
	stDone                   // acknowledged, filtered or dead-lettered
)

// msg is one held record.
type msg struct {
	seq      uint64
	part     *partition
	rec      *sarama.ConsumerMessage
	key      *keyQueue // nil without key or partition ordering
	next     *msg      // next in its key queue
	state    uint8
	gen      uint32 // bumped on every state change: queue entries of older gens are stale
	attempt  int32
	size     int
	sentAt   time.Time
	errType  string // why it is being dead-lettered
	errMsg   string
	dlqTries int32
}

type keyQueue struct {
	name       string
	head, tail *msg
}

// partition is one claimed partition of the stream.
type partition struct {
	topic   string
	id      int32
	sess    sarama.ConsumerGroupSession
	claim   sarama.ConsumerGroupClaim
	pending []*msg // held records in offset order (head first)
	head    int
	next    int64  // the offset to commit: everything before it is finished
	marked  int64  // the offset sarama's offset manager holds for the partition
	meta    string // the metadata last marked (unknownMeta before the first mark)
	// confirmed and confirmedMeta are what the coordinator confirmed committing (commit.go).
	confirmed     int64
	confirmedMeta string
	dirty         bool
	revoked       bool
	keys          map[string]*keyQueue
	// doneAhead counts finished records in pending (beyond the commit point).
	doneAhead int
	// skip is what the previous owner finished beyond the committed offset.
	skip     *skipSet
	newest   int64 // high watermark from ListOffsets (refreshed while paused)
	consumed prometheus.Counter
	lag      prometheus.Gauge
}

// entry is a queued reference to a msg, valid while the msg's gen is unchanged.
type entry struct {
	m   *msg
	gen uint32
	at  time.Time
}

func (e entry) valid() bool { return e.m.gen == e.gen }

// timerHeap orders backoff entries by due time.
type timerHeap []entry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// stream is one Subscribe call: a member of its subscription's consumer group.
type stream struct {
	m      *Manager
	num    uint64
	opts   Options
	log    *zap.Logger
	group  sarama.ConsumerGroup
	client sarama.Client
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu        sync.Mutex
	seq       uint64 // last record number given out
	bySeq     map[uint64]*msg
	parts     map[topicPart]*partition
	ready     []entry
	readyHead int
	deadlines []entry // delivered records in delivery order (deadlines are monotonic)
	dlHead    int
	backoff   timerHeap
	inFlight  int
	held      int
	heldBytes int
	paused    bool
	dirty     []*partition
	ended     bool

	sess          sarama.ConsumerGroupSession
	cmu           sync.Mutex
	commitWaiters []chan error
	commitKick    chan struct{}

	poke       chan struct{} // wakes the sender
	assignment chan struct{} // wakes the sender to report a new assignment
	processing prometheus.Observer
}

type topicPart struct {
	topic string
	id    int32
}

func (s *stream) maxHeld() int { return 2*s.opts.MaxInFlight + 256 }

// wake pokes the sender without blocking.
func (s *stream) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Setup implements sarama.ConsumerGroupHandler.
func (s *stream) Setup(sess sarama.ConsumerGroupSession) error {
	s.mu.Lock()
	s.sess = sess
	s.mu.Unlock()
	return nil
}

// Cleanup implements sarama.ConsumerGroupHandler.
func (s *stream) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim implements sarama.ConsumerGroupHandler: it holds every record of the
// partition until it is finished, and drops what is still held when the partition is
// revoked.
func (s *stream) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	p := s.claimPartition(sess, claim)
	defer s.revoke(p)
	for rec := range claim.Messages() {
		s.add(p, rec)
	}
	return nil
}

func (s *stream) claimPartition(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) *partition {
	pl := strconv.Itoa(int(claim.Partition()))
	p := &partition{
		topic: claim.Topic(), id: claim.Partition(), sess: sess, claim: claim,
		// sarama's offset manager starts at the committed offset and takes a mark only
		// above it (MarkOffset) or at or below it (ResetOffset): marked mirrors it, so
		// the first mark at the committed offset still stores this owner's metadata.
		next: claim.InitialOffset(), marked: claim.InitialOffset(), meta: unknownMeta, keys: map[string]*keyQueue{},
		confirmed: claim.InitialOffset(), confirmedMeta: unknownMeta,
		consumed: s.m.metrics.Consumed.WithLabelValues(s.m.service, s.m.metrics.Subscription(s.opts.Subscription), claim.Topic()),
		lag:      s.m.metrics.Lag.WithLabelValues(s.m.service, s.m.metrics.Subscription(s.opts.Subscription), claim.Topic(), pl),
	}
	p.skip = s.fetchAhead(p.topic, p.id, claim.InitialOffset())
	s.mu.Lock()
	s.parts[topicPart{p.topic, p.id}] = p
	s.mu.Unlock()
	s.log.Debug("partition assigned", zap.String("topic", p.topic), zap.Int32("partition", p.id),
		zap.Int64("offset", p.next), zap.Int("finished_ahead", p.skip.count()))
	s.notifyAssignment()
	return p
}

func (s *stream) notifyAssignment() {
	select {
	case s.assignment <- struct{}{}:
	default:
	}
	s.wake()
}

// revoke drops what the stream holds of p: nothing of it can be acknowledged any more.
func (s *stream) revoke(p *partition) {
	s.mu.Lock()
	s.flushMarks() // what is finished is marked before sarama commits the partition away
	p.revoked = true
	marked, ahead := p.marked, p.meta
	for _, m := range p.pending[p.head:] {
		if m.state == stDone {
			continue
		}
		if m.state == stDelivered {
			s.inFlight--
		}
		s.forget(m)
	}
	p.pending, p.head, p.keys = nil, 0, nil
	delete(s.parts, topicPart{p.topic, p.id})
	s.maybeResume()
	s.mu.Unlock()
	s.m.metrics.Lag.DeleteLabelValues(s.m.service, s.m.metrics.Subscription(s.opts.Subscription), p.topic, strconv.Itoa(int(p.id)))
	s.log.Debug("partition revoked", zap.String("topic", p.topic), zap.Int32("partition", p.id),
		zap.Int64("marked", marked), zap.Int("finished_ahead", parseAhead(max(marked, 0), ahead).count()))
	s.notifyAssignment()
}

// forget removes m from the held set (its queue entries go stale).
func (s *stream) forget(m *msg) {
	m.state = stDone
	m.gen++
	delete(s.bySeq, m.seq)
	s.held--
	s.heldBytes -= m.size
	s.m.heldBytes.Add(-int64(m.size))
}

// add holds a record read from p (or finishes it at once when filtered out).
func (s *stream) add(p *partition, rec *sarama.ConsumerMessage) {
	if p.skip != nil && p.skip.past(rec.Offset) {
		p.skip = nil
	}
	if (p.skip != nil && p.skip.has(rec.Offset)) ||
		(s.opts.EventTypes != nil && !s.opts.EventTypes[headerValue(rec.Headers, event.HeaderType)]) ||
		!s.m.servesTenant(rec.Headers) {
		s.mu.Lock()
		if p.revoked {
			s.mu.Unlock()
			return
		}
		if p.head == len(p.pending) { // nothing held before it: the offset moves on
			p.next = rec.Offset + 1
			s.markDirty(p)
		} else {
			p.pending = append(p.pending, &msg{part: p, rec: rec, state: stDone})
			p.doneAhead++
			s.markDirty(p)
		}
		s.flushMarks()
		s.mu.Unlock()
		return
	}
	m := &msg{part: p, rec: rec, size: len(rec.Value) + len(rec.Key) + 256}
	s.mu.Lock()
	if p.head == len(p.pending) {
		p.next = rec.Offset // finished up to here
	}
	s.seq++
	m.seq = s.seq
	s.bySeq[m.seq] = m
	s.held++
	s.heldBytes += m.size
	s.m.heldBytes.Add(int64(m.size))
	p.pending = append(p.pending, m)
	var name string
	switch s.opts.Ordering {
	case eventgwv1.Ordering_ORDERING_KEY:
		name = string(rec.Key)
	case eventgwv1.Ordering_ORDERING_PARTITION:
	default:
		s.makeReady(m)
		s.afterAdd()
		return
	}
	if q := p.keys[name]; q != nil {
		q.tail.next = m
		q.tail = m
		m.key = q
		m.state = stWaiting
	} else {
		q := &keyQueue{name: name, head: m, tail: m}
		p.keys[name] = q
		m.key = q
		s.makeReady(m)
	}
	s.afterAdd()
}

// afterAdd pauses fetching when the stream, or all streams together, hold too much,
// and unlocks.
func (s *stream) afterAdd() {
	if !s.paused && (s.held >= s.maxHeld() || s.heldBytes >= s.m.maxHeldBytes || s.m.heldBytes.Load() >= s.m.budget) {
		s.paused = true
		s.group.PauseAll()
	}
	s.mu.Unlock()
	s.wake()
}

// maybeResume resumes fetching once the stream and all streams are down to half their
// bounds (tick checks it too: other streams' acks free the sidecar's budget).
func (s *stream) maybeResume() {
	if s.paused && s.held <= s.maxHeld()/2 && s.heldBytes <= s.m.maxHeldBytes/2 && s.m.heldBytes.Load() <= s.m.budget/2 {
		s.paused = false
		s.group.ResumeAll()
	}
}

func (s *stream) makeReady(m *msg) {
	m.state = stReady
	m.gen++
	s.ready = append(s.ready, entry{m: m, gen: m.gen})
}

// finish ends a held record (acknowledged or dead-lettered): the next of its key
// becomes ready and the partition's offset moves past whatever is finished.
func (s *stream) finish(m *msg) {
	if m.state == stDelivered {
		s.inFlight--
	}
	s.forget(m)
	if q := m.key; q != nil {
		q.head = m.next
		m.next = nil
		if q.head == nil {
			delete(m.part.keys, q.name)
		} else if q.head.state == stWaiting {
			s.makeReady(q.head)
		}
	}
	p := m.part
	if p.revoked {
		return
	}
	p.doneAhead++
	for p.head < len(p.pending) && p.pending[p.head].state == stDone {
		p.next = p.pending[p.head].rec.Offset + 1
		p.pending[p.head] = nil
		p.head++
		p.doneAhead--
	}
	if p.head > 64 && p.head*2 > len(p.pending) {
		n := copy(p.pending, p.pending[p.head:])
		clear(p.pending[n:])
		p.pending = p.pending[:n]
		p.head = 0
	}
	s.markDirty(p)
}

func (s *stream) markDirty(p *partition) {
	if !p.dirty {
		p.dirty = true
		s.dirty = append(s.dirty, p)
	}
}

// unknownMeta is never a real metadata string: the first flush of a partition always
// marks, whatever the previous owner committed.
const unknownMeta = "\x00"

// flushMarks marks the commit point of partitions that changed, with what is
// finished beyond it (sarama commits them).
func (s *stream) flushMarks() {
	for _, p := range s.dirty {
		p.dirty = false
		if p.revoked || p.next < 0 {
			continue
		}
		meta := aheadMetadata(p)
		if p.next > p.marked {
			p.sess.MarkOffset(p.topic, p.id, p.next, meta)
		} else if meta != p.meta {
			p.sess.ResetOffset(p.topic, p.id, p.next, meta)
		}
		p.marked, p.meta = p.next, meta
	}
	clear(s.dirty)
	s.dirty = s.dirty[:0]
}

// backoffFor is the wait before redelivering after attempt n: exponential with full
// jitter over its upper half, capped.
func (s *stream) backoffFor(attempt int32) time.Duration {
	d := s.opts.RetryBackoff
	for i := int32(1); i < attempt && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

func (s *stream) schedule(m *msg, state uint8, wait time.Duration) {
	m.state = state
	m.gen++
	heap.Push(&s.backoff, entry{m: m, gen: m.gen, at: time.Now().Add(wait)})
}

// fail handles a record that failed: retried after a backoff, or dead-lettered once
// it has had its attempts (or at once when deadLetter). A dead-letter hand-off returns
// its channel.
func (s *stream) fail(m *msg, deadLetter bool, errType, errMsg string) chan struct{} {
	if m.state == stDelivered {
		s.inFlight--
	}
	if deadLetter || m.attempt >= s.opts.MaxAttempts {
		m.errType, m.errMsg = errType, errMsg
		return s.startDeadLetter(m)
	}
	s.schedule(m, stBackoff, s.backoffFor(m.attempt))
	return nil
}

// startDeadLetter hands m to the dead-letter writer, outside the lock; the returned
// channel closes when this hand-off ended (written, or failed and scheduled again).
func (s *stream) startDeadLetter(m *msg) chan struct{} {
	done := make(chan struct{})
	m.state = stDLQ
	m.gen++
	gen := m.gen
	l := &deadletter.Letter{
		Subscription: s.opts.Subscription, Topic: m.rec.Topic, Partition: m.rec.Partition, Offset: m.rec.Offset,
		Key: m.rec.Key, Value: m.rec.Value, Headers: make([]sarama.RecordHeader, len(m.rec.Headers)),
		TenantID:  headerValue(m.rec.Headers, event.HeaderTenantID),
		EventID:   headerValue(m.rec.Headers, event.HeaderID),
		EventType: headerValue(m.rec.Headers, event.HeaderType),
		ErrorType: m.errType, ErrorMessage: m.errMsg, RetryCount: max(m.attempt-1, 0),
	}
	for i, h := range m.rec.Headers {
		l.Headers[i] = *h
	}
	s.m.dlq.Add(1)
	go func() {
		defer s.m.dlq.Done()
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if js, err := payloadJSON(ctx, s.m.decoder, m.rec); err == nil {
			l.PayloadJSON = js
		}
		_, err := s.m.deadLetters.Write(ctx, l)
		s.mu.Lock()
		defer s.mu.Unlock()
		if m.gen != gen {
			return // revoked meanwhile: the new owner decides again
		}
		if err != nil {
			m.dlqTries++
			s.log.Warn("dead-letter hand-off failed; trying again", zap.String("topic", m.rec.Topic),
				zap.Int32("partition", m.rec.Partition), zap.Int64("offset", m.rec.Offset), redact.Error(err))
			s.schedule(m, stDLQWait, s.backoffFor(min(m.dlqTries, 10)))
			return
		}
		// The writer logged it (with the event type checked: a foreign record's header
		// could hold any text).
		s.finish(m)
		s.flushMarks()
		s.maybeResume()
		s.wake()
	}()
	return done
}

// tick redelivers expired deliveries and due backoffs.
func (s *stream) tick(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	woke := false
	for s.dlHead < len(s.deadlines) {
		e := s.deadlines[s.dlHead]
		if e.valid() && now.Before(e.at) {
			break
		}
		s.deadlines[s.dlHead] = entry{}
		s.dlHead++
		if !e.valid() || e.m.state != stDelivered {
			continue
		}
		s.log.Debug("ack deadline passed", zap.String("topic", e.m.rec.Topic), zap.Int32("partition", e.m.rec.Partition),
			zap.Int64("offset", e.m.rec.Offset), zap.Int32("attempt", e.m.attempt))
		if e.m.attempt >= s.opts.MaxAttempts {
			s.fail(e.m, true, "eventgw.AckDeadlineExceeded", "not acknowledged within the ack deadline in any of "+strconv.Itoa(int(e.m.attempt))+" attempts")
		} else {
			s.inFlight--
			s.makeReady(e.m)
		}
		woke = true
	}
	s.deadlines, s.dlHead = compact(s.deadlines, s.dlHead)
	for len(s.backoff) > 0 && !now.Before(s.backoff[0].at) {
		e := heap.Pop(&s.backoff).(entry)
		if !e.valid() {
			continue
		}
		switch e.m.state {
		case stBackoff:
			s.makeReady(e.m)
			woke = true
		case stDLQWait:
			s.startDeadLetter(e.m)
		}
	}
	s.flushMarks()
	s.maybeResume()
	if woke {
		s.wake()
	}
}

func compact(q []entry, head int) ([]entry, int) {
	if head > 64 && head*2 > len(q) {
		n := copy(q, q[head:])
		clear(q[n:])
		return q[:n], 0
	}
	return q, head
}

// take moves up to n ready records to delivered and returns them with their ids.
func (s *stream) take(now time.Time, buf []taken) []taken {
	s.mu.Lock()
	defer s.mu.Unlock()
	room := min(s.opts.MaxInFlight-s.inFlight, s.opts.MaxBatch)
	deadline := now.Add(s.opts.AckDeadline)
	for room > 0 && s.readyHead < len(s.ready) {
		e := s.ready[s.readyHead]
		s.ready[s.readyHead] = entry{}
		s.readyHead++
		if !e.valid() || e.m.state != stReady {
			continue
		}
		m := e.m
		m.state = stDelivered
		m.gen++
		m.attempt++
		m.sentAt = now
		s.deadlines = append(s.deadlines, entry{m: m, gen: m.gen, at: deadline})
		s.inFlight++
		room--
		buf = append(buf, taken{m: m, gen: m.gen, seq: m.seq, attempt: m.attempt, rec: m.rec})
	}
	s.ready, s.readyHead = compact(s.ready, s.readyHead)
	return buf
}

type taken struct {
	m       *msg
	gen     uint32
	seq     uint64
	attempt int32
	rec     *sarama.ConsumerMessage
}

// moreReady reports whether a take now would return something.
func (s *stream) moreReady() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readyHead < len(s.ready) && s.inFlight < s.opts.MaxInFlight
}

// undeliverable handles records whose payload could not be decoded for delivery.
func (s *stream) undeliverable(t taken, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := t.m
	if m.gen != t.gen || m.state != stDelivered {
		return
	}
	if isPermanent(err) {
		m.attempt = max(m.attempt, 1)
		s.fail(m, true, "eventgw.UndecodablePayload", redact.Describe(err))
	} else {
		// The registry is unreachable: not the event's fault, so no attempt is counted.
		m.attempt--
		s.inFlight--
		s.schedule(m, stBackoff, s.backoffFor(1))
	}
	s.flushMarks()
}

// assignmentNow lists the partitions the stream owns.
func (s *stream) assignmentNow() *eventgwv1.Assignment {
	s.mu.Lock()
	byTopic := map[string][]int32{}
	for tp := range s.parts {
		byTopic[tp.topic] = append(byTopic[tp.topic], tp.id)
	}
	s.mu.Unlock()
	a := &eventgwv1.Assignment{Subscription: s.opts.Subscription}
	for _, t := range s.opts.Topics {
		if ps := byTopic[t]; len(ps) > 0 {
			slices.Sort(ps)
			a.Topics = append(a.Topics, &eventgwv1.TopicPartitions{Topic: t, Partitions: ps})
		}
	}
	return a
}

// updateLag sets consumer_lag_messages of every owned partition: the high watermark
// minus the offset the subscription has finished up to.
func (s *stream) updateLag(refresh bool) {
	s.mu.Lock()
	parts := make([]*partition, 0, len(s.parts))
	for _, p := range s.parts {
		parts = append(parts, p)
	}
	s.mu.Unlock()
	for _, p := range parts {
		if refresh {
			if n, err := s.client.GetOffset(p.topic, p.id, sarama.OffsetNewest); err == nil {
				s.mu.Lock()
				p.newest = n
				s.mu.Unlock()
			}
		}
		s.mu.Lock()
		hwm := max(p.claim.HighWaterMarkOffset(), p.newest)
		next := p.next
		revoked := p.revoked
		s.mu.Unlock()
		if !revoked && next >= 0 {
			p.lag.Set(float64(max(hwm-next, 0)))
		}
	}
}

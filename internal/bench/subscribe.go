package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// The subscribe suite's settings.
const (
	// subAckIDs is the most delivery ids one Ack call of the bench carries.
	subAckIDs = 500
	// subAckers is how many Ack calls one stream keeps in flight at most (a variant
	// keeps subManyAckers).
	subAckers     = 4
	subManyAckers = 32
	// subMaxInFlight and subMaxBatch are the drains' max_in_flight and max_batch.
	subMaxInFlight = 5000
	subMaxBatch    = 500
	// subLatencyRate is the steady publishing rate of the latency scenario, in batches
	// of subLatencyBatch every subLatencyTick.
	subLatencyBatch = 50
	subLatencyTick  = 10 * time.Millisecond
	// subStall ends a drain that made no progress for this long (reported as errors).
	subStall = 15 * time.Second
	// subMinCap is the least time a sidecar drain may take before it is cut short
	// (the cap is 1.5 × --duration, at least this): the rate is then what it
	// acknowledged by the cap, and the events column says of how many.
	subMinCap = 3 * time.Second
)

// subResult is one scenario of the subscribe suite: Result plus what the process
// spent on it.
type subResult struct {
	Result
	// Delivered is the delivery rate (events over the time to the last delivery);
	// 0 where delivery and acknowledgement are one (the direct consumer).
	Delivered float64
	// CPU is the process CPU time (user+system) over the scenario.
	CPU time.Duration
	// PeakRSS is VmHWM in bytes, reset just before the scenario (0 if unknown).
	PeakRSS int64
	// Dups counts deliveries beyond the events (redeliveries).
	Dups int64
	// Of is the events the drain was to read, when it was cut short at its cap.
	Of int64
	// drain marks the sidecar's drain scenarios (the throughput targets apply).
	drain bool
	// latency marks the publish-to-delivery scenario (the p99 target applies).
	latency bool
}

// procUsage samples process CPU time and resets the peak RSS.
type procUsage struct {
	cpu      time.Duration
	rssReset bool
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startUsage returns the heap to the OS and resets VmHWM (writing 5 to
// /proc/self/clear_refs) so that the peak read after the scenario is the scenario's.
func startUsage() procUsage {
	debug.FreeOSMemory()
	u := procUsage{cpu: cpuTime()}
	if f, err := os.OpenFile("/proc/self/clear_refs", os.O_WRONLY, 0); err == nil {
		_, werr := f.Write([]byte("5"))
		u.rssReset = werr == nil
		_ = f.Close()
	}
	return u
}

func (u procUsage) finish(r *subResult) {
	r.CPU = cpuTime() - u.cpu
	if u.rssReset {
		r.PeakRSS = vmHWM()
	}
}

// vmHWM is the process's peak resident set size in bytes, from /proc/self/status.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// subscribeSuite pre-loads a topic and drains it through the sidecar and through a
// plain sarama consumer group, then measures publish-to-delivery latency at a steady
// rate on a fresh topic.
func (e *env) subscribeSuite(ctx context.Context, o Options) ([]subResult, error) {
	n := o.SubscribeEvents
	if n <= 0 {
		n = 200000
	}
	keys := o.SubscribeKeys
	if keys <= 0 {
		keys = len(tenants)
	}
	want := func(name string) bool { return o.Only == "" || strings.Contains(name, o.Only) }
	var rs []subResult
	add := func(r subResult, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", r.Name, err)
		}
		rs = append(rs, r)
		extra := ""
		if r.Delivered > 0 {
			extra = fmt.Sprintf("  delivered %.0f ev/s", r.Delivered)
		}
		fmt.Fprintf(os2(), "  %-58s %8d ev %10.0f ev/s%s  p50 %-9v p99 %-9v errors %d dups %d cpu %v\n",
			r.Name, r.Events, r.Rate(), extra, r.P50, r.P99, r.Errors, r.Dups, r.CPU.Round(time.Millisecond))
		return nil
	}
	type drain struct {
		name string
		fn   func(total int64) (subResult, error)
	}
	capAfter := subCap(o.Duration)
	drains := []drain{
		{"direct sarama ConsumerGroup, MarkMessage each", e.directGroup},
		{fmt.Sprintf("sidecar Subscribe 1 stream, key order, %d Acks in flight", subAckers), func(total int64) (subResult, error) {
			return e.sidecarDrain(total, 1, eventgwv1.Ordering_ORDERING_KEY, subAckers, capAfter)
		}},
		{fmt.Sprintf("sidecar Subscribe 2 streams, key order, %d Acks in flight each", subAckers), func(total int64) (subResult, error) {
			return e.sidecarDrain(total, 2, eventgwv1.Ordering_ORDERING_KEY, subAckers, capAfter)
		}},
		{fmt.Sprintf("sidecar Subscribe 1 stream, key order, %d Acks in flight", subManyAckers), func(total int64) (subResult, error) {
			return e.sidecarDrain(total, 1, eventgwv1.Ordering_ORDERING_KEY, subManyAckers, capAfter)
		}},
		{fmt.Sprintf("sidecar Subscribe 1 stream, no order, %d Acks in flight", subAckers), func(total int64) (subResult, error) {
			return e.sidecarDrain(total, 1, eventgwv1.Ordering_ORDERING_NONE, subAckers, capAfter)
		}},
	}
	var selected []drain
	for _, d := range drains {
		if want(d.name) {
			selected = append(selected, d)
		}
	}
	if len(selected) > 0 {
		if err := e.freshTopic(ctx); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := e.preload(ctx, n, keys); err != nil {
			e.dropTopic()
			return nil, fmt.Errorf("pre-load: %w", err)
		}
		total, err := e.topicEvents()
		if err != nil {
			e.dropTopic()
			return nil, err
		}
		fmt.Fprintf(os2(), "  pre-loaded %d events (%d B JSON, %d tenant keys) in %v through PublishBatch\n",
			total, len(payloadJSON(200)), keys, time.Since(t0).Round(time.Millisecond))
		for _, d := range selected {
			// The previous scenario's streams leave their groups in the background.
			time.Sleep(300 * time.Millisecond)
			r, err := d.fn(total)
			r.Name = d.name
			if err := add(r, err); err != nil {
				e.dropTopic()
				return nil, err
			}
		}
		e.dropTopic()
	}
	rate := subLatencyBatch * int(time.Second/subLatencyTick)
	for _, l := range []struct {
		name string
		fn   func(time.Duration) (subResult, error)
	}{
		{fmt.Sprintf("direct sarama SyncProducer → ConsumerGroup at %d ev/s", rate), e.directLatency},
		{fmt.Sprintf("sidecar publish-to-delivery at %d ev/s, 1 stream, defaults", rate), e.deliveryLatency},
	} {
		if !want(l.name) {
			continue
		}
		if err := e.freshTopic(ctx); err != nil {
			return nil, err
		}
		r, err := l.fn(o.Duration)
		e.dropTopic()
		r.Name = l.name
		if err := add(r, err); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// preload publishes n events (~200 B JSON, round-robin over keys tenant keys) to the
// scenario's topic through PublishBatch, 100 per call, 8 callers.
func (e *env) preload(ctx context.Context, n, keys int) error {
	calls := int64((n + 99) / 100)
	var next, key atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]*eventgwv1.Event, 100)
			for j := range evs {
				evs[j] = e.event(200, false)
			}
			c := e.client(i)
			for next.Add(1) <= calls {
				for _, ev := range evs {
					ev.TenantId = benchTenant(int(key.Add(1)) % keys)
				}
				resp, err := c.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: evs})
				if err != nil {
					errs <- err
					return
				}
				for _, r := range resp.GetResults() {
					if r.GetResult() == nil {
						errs <- fmt.Errorf("an event was refused: %v", r.GetError())
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// topicEvents counts the records of the scenario's topic (the sum of its high
// watermarks: nothing is deleted from it while it lives).
func (e *env) topicEvents() (int64, error) {
	cl, err := sarama.NewClient(e.brokers, sarama.NewConfig())
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	ps, err := cl.Partitions(e.topic())
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range ps {
		hwm, err := cl.GetOffset(e.topic(), p, sarama.OffsetNewest)
		if err != nil {
			return 0, err
		}
		total += hwm
	}
	return total, nil
}

// directGroup is the baseline: a plain sarama consumer group (fresh group id, from
// the oldest offset) marking every message, until it has read total events.
func (e *env) directGroup(total int64) (subResult, error) {
	cfg := sarama.NewConfig()
	cfg.ClientID = "bench-direct-consumer"
	cfg.Version = sarama.V2_8_0_0
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	u := startUsage()
	start := time.Now()
	group, err := sarama.NewConsumerGroup(e.brokers, fmt.Sprintf("bench-direct-%s", e.domain), cfg)
	if err != nil {
		return subResult{}, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &countHandler{total: total, done: make(chan struct{})}
	consumed := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := group.Consume(ctx, []string{e.topic()}, h); err != nil && ctx.Err() == nil {
				consumed <- err
				return
			}
		}
		consumed <- nil
	}()
	var r subResult
	var runErr error
	select {
	case <-h.done:
	case runErr = <-consumed:
	case <-time.After(subStall + time.Duration(total/10000)*time.Second):
		runErr = fmt.Errorf("read %d of %d events", h.n.Load(), total)
	}
	r.Elapsed = time.Since(start)
	r.Events = min(h.n.Load(), total)
	u.finish(&r)
	cancel()
	if runErr == nil {
		runErr = <-consumed
	}
	_ = group.Close()
	return r, runErr
}

type countHandler struct {
	total int64
	n     atomic.Int64
	once  sync.Once
	done  chan struct{}
}

func (h *countHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *countHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *countHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		sess.MarkMessage(m, "")
		if h.n.Add(1) == h.total {
			h.once.Do(func() { close(h.done) })
		}
	}
	return nil
}

// subscriber runs Subscribe streams of one subscription and acknowledges everything
// they deliver, in Ack calls of up to subAckIDs ids, nAckers calls in flight per
// stream: ids gather while every call is busy, so the batches grow with the load.
type subscriber struct {
	e      *env
	sub    string
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time

	target                      int64 // acknowledgements that end the run (0: none)
	delivered, acked, stale     atomic.Int64
	ackErrs                     atomic.Int64
	lastDelivery, firstDelivery atomic.Int64 // unix nanoseconds
	ninetyPct                   atomic.Int64 // unix nanoseconds when 90% of target was acknowledged
	assigned                    atomic.Int64 // streams that received an assignment
	ackLat                      latencies
	done                        chan struct{}
	doneOnce                    sync.Once
	errc                        chan error
	// onDelivery, when set, sees every delivery as it arrives.
	onDelivery func(now time.Time, d *eventgwv1.Delivery)

	nAckers int // Ack calls in flight per stream, at most
	ackers  []*acker
	wg      sync.WaitGroup
}

var subSeq atomic.Int64

func (e *env) newSubscriber(target int64, ackers int) *subscriber {
	ctx, cancel := context.WithCancel(context.Background())
	return &subscriber{
		e: e, sub: fmt.Sprintf("bench-sub-%s-%d", e.domain, subSeq.Add(1)), ctx: ctx, cancel: cancel,
		target: target, nAckers: ackers, done: make(chan struct{}), errc: make(chan error, 64), start: time.Now(),
	}
}

// open starts stream i of the subscription.
func (s *subscriber) open(i int, req *eventgwv1.SubscribeRequest) error {
	req.Subscription = s.sub
	req.Topics = []string{s.e.topic()}
	st, err := s.e.client(i).Subscribe(s.ctx, req)
	if err != nil {
		return err
	}
	a := &acker{s: s}
	a.cond = sync.NewCond(&a.mu)
	s.ackers = append(s.ackers, a)
	for k := range s.nAckers {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); a.run(s.e.client(i + 1 + k)) }()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ids := make([]string, 0, subMaxBatch)
		for {
			resp, err := st.Recv()
			if err != nil {
				if s.ctx.Err() == nil {
					s.errc <- fmt.Errorf("stream %d: %w", i, err)
				}
				return
			}
			now := time.Now()
			if resp.GetAssignment() != nil {
				s.assigned.Add(1)
			}
			ds := resp.GetDeliveries()
			if len(ds) == 0 {
				continue
			}
			s.firstDelivery.CompareAndSwap(0, now.UnixNano())
			s.lastDelivery.Store(now.UnixNano())
			ids = ids[:0]
			for _, d := range ds {
				if s.onDelivery != nil {
					s.onDelivery(now, d)
				}
				ids = append(ids, d.GetDeliveryId())
			}
			s.delivered.Add(int64(len(ds)))
			a.add(ids)
		}
	}()
	return nil
}

// stop ends the streams and the Ack calls.
func (s *subscriber) stop() {
	s.cancel()
	for _, a := range s.ackers {
		a.close()
	}
	s.wg.Wait()
}

// wait returns once target events are acknowledged, a stream failed, nothing was
// acknowledged for subStall, or at capAt (capped true).
func (s *subscriber) wait(capAt time.Time) (capped bool, err error) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	cut := time.NewTimer(time.Until(capAt))
	defer cut.Stop()
	last, since := int64(-1), time.Now()
	for {
		select {
		case <-s.done:
			return false, nil
		case err := <-s.errc:
			return false, err
		case <-cut.C:
			return true, nil
		case <-t.C:
			if a := s.acked.Load(); a != last {
				last, since = a, time.Now()
			} else if time.Since(since) > subStall {
				return false, fmt.Errorf("stalled: %d of %d events acknowledged, %d delivered, nothing acknowledged for %v",
					a, s.target, s.delivered.Load(), subStall)
			}
		}
	}
}

type acker struct {
	s       *subscriber
	mu      sync.Mutex
	cond    *sync.Cond
	pending []string
	closed  bool
}

func (a *acker) add(ids []string) {
	a.mu.Lock()
	a.pending = append(a.pending, ids...)
	a.mu.Unlock()
	a.cond.Signal()
}

func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cond.Broadcast()
}

func (a *acker) run(c eventgwv1.EventServiceClient) {
	s := a.s
	batch := make([]string, 0, subAckIDs)
	var lat []time.Duration
	defer func() { s.ackLat.add(lat) }()
	for {
		a.mu.Lock()
		for len(a.pending) == 0 && !a.closed {
			a.cond.Wait()
		}
		if a.closed {
			a.mu.Unlock()
			return
		}
		k := min(len(a.pending), subAckIDs)
		batch = append(batch[:0], a.pending[:k]...)
		a.pending = append(a.pending[:0], a.pending[k:]...)
		more := len(a.pending) > 0
		a.mu.Unlock()
		if more {
			a.cond.Signal()
		}
		t := time.Now()
		resp, err := c.Ack(s.ctx, &eventgwv1.AckRequest{Subscription: s.sub, DeliveryIds: batch})
		if err != nil {
			if s.ctx.Err() == nil && s.ackErrs.Add(1) == 1 {
				fmt.Fprintln(os2(), "  first Ack error:", err)
			}
			continue
		}
		lat = append(lat, time.Since(t))
		s.stale.Add(int64(len(resp.GetStaleDeliveryIds())))
		if got := s.acked.Add(int64(resp.GetAcked())); s.target > 0 && got >= s.target*9/10 {
			s.ninetyPct.CompareAndSwap(0, time.Now().UnixNano())
			if got >= s.target {
				s.doneOnce.Do(func() { close(s.done) })
			}
		}
	}
}

// sidecarDrain reads the pre-loaded topic through the sidecar (a fresh subscription,
// from the earliest offset, payload_as_json) on streams streams and acknowledges every
// delivery, until total events are acknowledged.
func (e *env) sidecarDrain(total int64, streams int, ordering eventgwv1.Ordering, ackers int, capAfter time.Duration) (subResult, error) {
	u := startUsage()
	s := e.newSubscriber(total, ackers)
	for i := range streams {
		if err := s.open(i, &eventgwv1.SubscribeRequest{
			MaxInFlight: subMaxInFlight, AckDeadlineSeconds: 60, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
			Ordering: ordering, PayloadAsJson: true, MaxBatch: subMaxBatch,
		}); err != nil {
			return subResult{}, err
		}
	}
	capped, err := s.wait(s.start.Add(capAfter))
	end := time.Now()
	var r subResult
	r.drain = true
	r.Elapsed = end.Sub(s.start)
	r.Events = min(s.acked.Load(), total)
	delivered := s.delivered.Load()
	if capped {
		r.Of = total
	} else {
		r.Errors = total - r.Events
	}
	r.Errors += s.ackErrs.Load()
	if !capped {
		r.Dups = max(delivered-total, 0)
	}
	if last := s.lastDelivery.Load(); last > 0 {
		r.Delivered = float64(min(delivered, total)) / time.Unix(0, last).Sub(s.start).Seconds()
	}
	u.finish(&r)
	s.stop()
	s.ackLat.fill(&r.Result)
	if first := s.firstDelivery.Load(); first > 0 {
		fmt.Fprintf(os2(), "    first delivery after %v; %d delivered, %d acked, %d stale acks, %d Ack calls\n",
			time.Unix(0, first).Sub(s.start).Round(time.Millisecond), delivered, r.Events, s.stale.Load(), len(s.ackLat.d))
	}
	if t90 := s.ninetyPct.Load(); t90 > 0 {
		el := time.Unix(0, t90).Sub(s.start)
		fmt.Fprintf(os2(), "    90%% acknowledged after %v (%.0f ev/s)\n", el.Round(time.Millisecond), float64(total*9/10)/el.Seconds())
	}
	if capped {
		fmt.Fprintf(os2(), "    cut short at %v: %d of %d events acknowledged\n", capAfter, r.Events, total)
	}
	if err != nil {
		fmt.Fprintln(os2(), "   ", err)
	}
	return r, nil
}

// pacer publishes at the latency scenarios' steady rate (subLatencyBatch events every
// subLatencyTick, the batch's start time in each event's payload) and collects the
// publish-to-arrival times of the events published after a warm-up.
type pacer struct {
	mu       sync.Mutex
	samples  []time.Duration
	measured atomic.Int64 // events published after the warm-up
	measFrom atomic.Int64 // unix nanoseconds; 0 during the warm-up
	pubErrs  atomic.Int64
}

// arrived records the arrival at now of an event whose payload is value.
func (p *pacer) arrived(now time.Time, value []byte) {
	t0, ok := sentAt(value)
	if !ok {
		return
	}
	if from := p.measFrom.Load(); from == 0 || t0 < from {
		return
	}
	p.mu.Lock()
	p.samples = append(p.samples, now.Sub(time.Unix(0, t0)))
	p.mu.Unlock()
}

// run calls publish every subLatencyTick (at most 32 at once) until d has passed after
// a warm-up; publish sends subLatencyBatch events stamped with t0 and answers how many
// were acknowledged. It waits for the last arrivals and answers the result (CPU and
// RSS over the measured part).
func (p *pacer) run(d time.Duration, publish func(t0 int64) (ok int64)) subResult {
	warm := min(time.Second, d/5)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	tick := time.NewTicker(subLatencyTick)
	begin := time.Now()
	var u procUsage
	var measStart time.Time
	for {
		now := <-tick.C
		if measStart.IsZero() && now.Sub(begin) >= warm {
			u = startUsage()
			measStart = time.Now()
			p.measFrom.Store(measStart.UnixNano())
		}
		if !measStart.IsZero() && now.Sub(measStart) >= d {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now().UnixNano()
			ok := publish(t0)
			p.pubErrs.Add(subLatencyBatch - ok)
			if from := p.measFrom.Load(); from != 0 && t0 >= from {
				p.measured.Add(ok)
			}
		}()
	}
	tick.Stop()
	wg.Wait()
	pubEnd := time.Now()
	// Let the last deliveries arrive.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		got := int64(len(p.samples))
		p.mu.Unlock()
		if got >= p.measured.Load() {
			break
		}
	}
	var r subResult
	r.latency = true
	u.finish(&r)
	p.mu.Lock()
	lat := latencies{d: p.samples}
	r.Events = int64(len(p.samples))
	p.mu.Unlock()
	r.Elapsed = pubEnd.Sub(measStart)
	lat.fill(&r.Result)
	r.Errors = p.pubErrs.Load() + max(p.measured.Load()-r.Events, 0)
	return r
}

// deliveryLatency publishes at a steady rate (subLatencyBatch events per PublishBatch
// every subLatencyTick, each call's start time in its events' payloads) to one stream
// with default settings (payload_as_json) that acknowledges everything, and measures
// from the publish call's start to the delivery's arrival, after a warm-up.
func (e *env) deliveryLatency(d time.Duration) (subResult, error) {
	var p pacer
	s := e.newSubscriber(0, subAckers)
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()
	s.onDelivery = func(now time.Time, dl *eventgwv1.Delivery) { p.arrived(now, dl.GetPayloadJson()) }
	if err := s.open(0, &eventgwv1.SubscribeRequest{
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST, PayloadAsJson: true,
	}); err != nil {
		return subResult{}, err
	}
	// The stream owns the partitions before anything is published.
	for deadline := time.Now().Add(30 * time.Second); s.assigned.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return subResult{}, errors.New("no assignment within 30s")
		}
	}
	var calls atomic.Uint64
	r := p.run(d, func(t0 int64) int64 {
		evs := make([]*eventgwv1.Event, subLatencyBatch)
		for j := range evs {
			evs[j] = e.event(200, false)
			evs[j].Data = &eventgwv1.Event_PayloadJson{PayloadJson: stampedPayload(t0)}
		}
		resp, err := e.client(int(calls.Add(1))).PublishBatch(s.ctx, &eventgwv1.PublishBatchRequest{Events: evs})
		if err != nil {
			return 0
		}
		var ok int64
		for _, res := range resp.GetResults() {
			if res.GetResult() != nil {
				ok++
			}
		}
		return ok
	})
	s.stop()
	stopped = true
	r.Errors += s.ackErrs.Load()
	var ackLat Result
	s.ackLat.fill(&ackLat)
	fmt.Fprintf(os2(), "    %d published after the warm-up, %d delivered; Ack calls p50 %v p99 %v\n",
		p.measured.Load(), r.Events, ackLat.P50, ackLat.P99)
	select {
	case err := <-s.errc:
		return r, err
	default:
	}
	return r, nil
}

// directLatency is the latency scenario's baseline without the sidecar: the same
// batches at the same pace through a sarama SyncProducer (the sidecar's producer
// settings: idempotent, acks=all), read by a plain sarama consumer group in the same
// process, publish-to-delivery measured the same way.
func (e *env) directLatency(d time.Duration) (subResult, error) {
	var p pacer
	cfg := sarama.NewConfig()
	cfg.ClientID = "bench-direct-latency"
	cfg.Version = sarama.V2_8_0_0
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	group, err := sarama.NewConsumerGroup(e.brokers, fmt.Sprintf("bench-latency-%s", e.domain), cfg)
	if err != nil {
		return subResult{}, err
	}
	defer group.Close()
	h := &latencyHandler{assigned: make(chan struct{}), record: p.arrived}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	consumed := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := group.Consume(ctx, []string{e.topic()}, h); err != nil && ctx.Err() == nil {
				consumed <- err
				return
			}
		}
		consumed <- nil
	}()
	select {
	case <-h.assigned:
	case err := <-consumed:
		return subResult{}, fmt.Errorf("direct consumer: %v", err)
	case <-time.After(30 * time.Second):
		return subResult{}, errors.New("direct consumer: no assignment within 30s")
	}
	cl, err := e.saramaClient()
	if err != nil {
		return subResult{}, err
	}
	defer cl.Close()
	sp, err := sarama.NewSyncProducerFromClient(cl)
	if err != nil {
		return subResult{}, err
	}
	defer sp.Close()
	r := p.run(d, func(t0 int64) int64 {
		msgs := make([]*sarama.ProducerMessage, subLatencyBatch)
		for j := range msgs {
			msgs[j] = &sarama.ProducerMessage{Topic: e.topic(), Key: sarama.StringEncoder(nextTenant()), Value: sarama.ByteEncoder(stampedPayload(t0))}
		}
		if err := sp.SendMessages(msgs); err != nil {
			return 0
		}
		return subLatencyBatch
	})
	cancel()
	return r, <-consumed
}

// latencyHandler records each consumed record's arrival.
type latencyHandler struct {
	once     sync.Once
	assigned chan struct{}
	record   func(now time.Time, value []byte)
}

func (h *latencyHandler) Setup(sarama.ConsumerGroupSession) error {
	h.once.Do(func() { close(h.assigned) })
	return nil
}
func (h *latencyHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *latencyHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.record(time.Now(), m.Value)
		sess.MarkMessage(m, "")
	}
	return nil
}

// stampedPayload is a ~200 B JSON object whose first field, "sent_ns", holds t0.
func stampedPayload(t0 int64) []byte {
	p := payloadJSON(170)
	out := fmt.Appendf(make([]byte, 0, len(p)+32), `{"sent_ns":%d,`, t0)
	return append(out, p[1:]...)
}

// sentAt reads the "sent_ns" field of a stampedPayload.
func sentAt(js []byte) (int64, bool) {
	rest, ok := bytes.CutPrefix(js, []byte(`{"sent_ns":`))
	if !ok {
		return 0, false
	}
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return v, err == nil
}

func reportSubscribe(out io.Writer, rs []subResult, capAfter time.Duration, keys int) {
	var direct *subResult
	for i := range rs {
		if strings.HasPrefix(rs[i].Name, "direct sarama ConsumerGroup") {
			direct = &rs[i]
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "subscribe scenario\tevents\tseconds\tevents/s\tdelivered/s\tp50\tp99\terrors\tvs direct CG\tCPU s/1k ev\tpeak RSS MB\ttarget\t")
	for _, r := range rs {
		deliv, vs, target := "-", "-", "-"
		if r.Delivered > 0 {
			deliv = fmt.Sprintf("%.0f", r.Delivered)
		}
		if direct != nil && r.drain && direct.Rate() > 0 {
			vs = fmt.Sprintf("%.2fx", r.Rate()/direct.Rate())
		}
		if r.drain {
			ok := r.Rate() >= 100000 && (direct == nil || r.Rate() >= 0.3*direct.Rate())
			target = "≥100000/s, ≥0.30x: " + metOrNot(ok)
		}
		if r.latency && strings.HasPrefix(r.Name, "sidecar") { // not the direct baseline
			target = "p99 < 10ms: " + metOrNot(r.P99 > 0 && r.P99 < 10*time.Millisecond)
		}
		perK, rss := "-", "-"
		if r.Events > 0 {
			perK = fmt.Sprintf("%.3f", r.CPU.Seconds()/float64(r.Events)*1000)
		}
		if r.PeakRSS > 0 {
			rss = fmt.Sprintf("%.0f", float64(r.PeakRSS)/(1<<20))
		}
		events := strconv.FormatInt(r.Events, 10)
		if r.Of > 0 {
			events += " of " + strconv.FormatInt(r.Of, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.0f\t%s\t%v\t%v\t%d\t%s\t%s\t%s\t%s\t\n", r.Name, events, r.Elapsed.Seconds(), r.Rate(),
			deliv, r.P50, r.P99, r.Errors, vs, perK, rss, target)
	}
	_ = tw.Flush()
	fmt.Fprintf(out, `
Drains read the same pre-loaded topic (12 partitions, %d tenant keys), each with a fresh
group, from the Subscribe (or Consume) call until the last event is acknowledged, or cut
short at %v ("x of n" events: the rate is then over what was acknowledged by then) (sidecar:
max_in_flight %d, payload_as_json, max_batch %d, Acks of up to %d ids, as many Ack calls
in flight per stream as the name says, ids gathering while all are busy;
direct: sarama defaults, MarkMessage per message, auto-commit). events/s is acknowledged
events over that time; delivered/s is the events over the time to the last delivery.
Drains: p50/p99 are per Ack call. Latency: p50/p99 from the PublishBatch call's start to
the delivery's arrival at the client, over the run after a warm-up; events/s is the
measured events; its CPU includes publishing them.
CPU s/1k ev and peak RSS are the whole bench process (sidecar, gRPC client, kfake and
sarama all run in it): getrusage(RUSAGE_SELF) over the scenario, VmHWM reset before it.
kfake keeps the pre-loaded topic in memory, which counts in every drain's RSS.
`, keys, capAfter, subMaxInFlight, subMaxBatch, subAckIDs)
}

// subCap is how long a sidecar drain may run before it is cut short.
func subCap(d time.Duration) time.Duration { return max(d*3/2, subMinCap) }

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

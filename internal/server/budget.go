package server

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// Budgets bound, in bytes, the requests the sidecar holds once it has read them (see
// README "Memory"). The unit is cost: what a decoded request and the work made of it
// (Kafka messages) keep on the heap, estimated by requestCost.
type Budgets struct {
	// Stream bounds one PublishStream's requests received and not yet answered: at it
	// the stream stops reading (HTTP/2 flow control then stops the client).
	Stream int64
	// Streams bounds the same over all PublishStreams. Streams stop reading at 3/4 of
	// it; a request that arrives anyway (a stream was already waiting for one) and
	// would pass it is answered RESOURCE_EXHAUSTED and dropped.
	Streams int64
	// Unary bounds the requests of the unary calls being handled; past it a call is
	// answered RESOURCE_EXHAUSTED.
	Unary int64
	// MaxRequest is the largest request message (--max-request-bytes): a stream reads
	// only while a request of that size still fits its budget.
	MaxRequest int64
}

var (
	errStreamsBudget = status.Error(codes.ResourceExhausted,
		"the sidecar holds as many published requests as it may (--publish-budget-bytes): this request was not published; send it again")
	errUnaryBudget = status.Error(codes.ResourceExhausted,
		"the sidecar is handling as many request bytes as it may (--unary-budget-bytes): retry with backoff")
)

// byteBudget counts bytes held against a limit.
type byteBudget struct {
	limit int64
	mu    sync.Mutex
	used  int64
	// freed, when waiters are possible, is closed (and replaced) whenever bytes are
	// released.
	freed chan struct{}
}

func newByteBudget(limit int64, waiters bool) *byteBudget {
	b := &byteBudget{limit: limit}
	if waiters {
		b.freed = make(chan struct{})
	}
	return b
}

// tryAcquire takes n bytes if they fit, or if nothing is held (one request larger than
// the limit must still pass, alone).
func (b *byteBudget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

// acquire takes n bytes whether they fit or not (the caller checked room first).
func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	b.used += n
	b.mu.Unlock()
}

func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.freed != nil {
		close(b.freed)
		b.freed = make(chan struct{})
	}
	b.mu.Unlock()
}

// waitBelow waits until fewer than mark bytes are held.
func (b *byteBudget) waitBelow(ctx context.Context, mark int64) error {
	for {
		b.mu.Lock()
		if b.used < mark || b.used == 0 {
			b.mu.Unlock()
			return nil
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *byteBudget) held() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Limiter applies Budgets: to PublishStream (EventService.WithLimiter) and to unary
// calls (Options.Limiter).
type Limiter struct {
	b       Budgets
	streams *byteBudget
	unary   *byteBudget
	// unaryMethods are the full names of the gateway's unary methods.
	unaryMethods map[string]bool
}

// NewLimiter builds a Limiter and registers its gauges on reg (when not nil).
func NewLimiter(b Budgets, reg prometheus.Registerer) *Limiter {
	l := &Limiter{b: b, streams: newByteBudget(b.Streams, true), unary: newByteBudget(b.Unary, false), unaryMethods: map[string]bool{}}
	for _, sd := range []grpc.ServiceDesc{
		eventgwv1.EventService_ServiceDesc, eventgwv1.EventStoreService_ServiceDesc,
		eventgwv1.SagaService_ServiceDesc, eventgwv1.DeadLetterService_ServiceDesc,
	} {
		for _, m := range sd.Methods {
			l.unaryMethods["/"+sd.ServiceName+"/"+m.MethodName] = true
		}
	}
	if reg != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "eventgw_publish_stream_held_bytes",
				Help: "Estimated memory of the PublishStream requests received and not yet answered (--publish-budget-bytes bounds it).",
			}, func() float64 { return float64(l.streams.held()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "eventgw_unary_held_bytes",
				Help: "Estimated memory of the requests of the unary calls being handled (--unary-budget-bytes bounds it).",
			}, func() float64 { return float64(l.unary.held()) }),
		)
	}
	return l
}

// tap refuses a new unary call of the gateway's before its request is read, while the
// unary calls being handled hold the whole budget (health checks always pass).
func (l *Limiter) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if l.unaryMethods[info.FullMethodName] && l.unary.held() >= l.b.Unary {
		return nil, errUnaryBudget
	}
	return ctx, nil
}

// unaryInterceptor holds a unary call's request cost for the time it is handled, or
// refuses the call when the budget cannot hold it.
func (l *Limiter) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	m, ok := req.(proto.Message)
	if !ok || !l.unaryMethods[info.FullMethod] {
		return handler(ctx, req)
	}
	cost := requestCost(m)
	if !l.unary.tryAcquire(cost) {
		return nil, errUnaryBudget
	}
	defer l.unary.release(cost)
	return handler(ctx, req)
}

// streamShare is one PublishStream's account: its own budget, within the sidecar's.
type streamShare struct {
	l   *Limiter
	own *byteBudget
}

// stream opens a PublishStream's account (nil without a Limiter: no bound).
func (l *Limiter) stream() *streamShare {
	if l == nil {
		return nil
	}
	return &streamShare{l: l, own: newByteBudget(l.b.Stream, true)}
}

// waitRoom returns when the stream may read its next request: while its own requests
// leave room for one of the largest size, and all streams together are below 3/4 of
// theirs, or the stream holds nothing (so that streams that do not read their answers
// cannot stop the others: each may always have one request in flight, within the hard
// budget). Until then the stream does not read, so the client is held back by HTTP/2
// flow control instead of the sidecar buffering.
func (s *streamShare) waitRoom(ctx context.Context) error {
	if s == nil {
		return nil
	}
	if err := s.own.waitBelow(ctx, s.l.b.Stream-s.l.b.MaxRequest+1); err != nil {
		return err
	}
	if s.own.held() == 0 {
		return nil
	}
	return s.l.streams.waitBelow(ctx, s.l.b.Streams-s.l.b.Streams/4)
}

// admit takes cost for a request just read: false when the sidecar's budget cannot
// hold it (the request is answered RESOURCE_EXHAUSTED).
func (s *streamShare) admit(cost int64) bool {
	if s == nil {
		return true
	}
	if !s.l.streams.tryAcquire(cost) {
		return false
	}
	s.own.acquire(cost)
	return true
}

// release gives back an admitted request's cost, once it is answered.
func (s *streamShare) release(cost int64) {
	if s == nil || cost == 0 {
		return
	}
	s.own.release(cost)
	s.l.streams.release(cost)
}

package server

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Guard is the gRPC listener's watch over what clients send. gRPC reads a request
// message whole before handing it on, and once the sidecar asks for a message (a
// unary call at once, a stream when its handler calls Recv) it lets the client send
// all of it: a client that declares a large message and never finishes it would pin
// what it sent for as long as it stays connected, keepalive pings and all. Guard reads
// the HTTP/2 frames going both ways and closes the connection of a message that
//   - has taken longer than RecvTimeout, or
//   - is the oldest unfinished one while the messages being received, over all
//     connections, hold more than MaxReceiving bytes.
//
// Closing the connection ends its streams, and gRPC frees what they had received.
// Only messages the sidecar has asked for count: more than StreamWindow bytes of one
// (the static HTTP/2 stream window) means it was asked for, since without that the
// client can send no more than the window; a stream the sidecar is not reading (a
// PublishStream at its budget) keeps at most that window, for as long as it likes.
//
// Guard also bounds the connections served at once (MaxConns): Accept waits for one
// to close.
type Guard struct {
	opts GuardOptions
	sem  chan struct{}

	mu    sync.Mutex
	conns map[*guardConn]struct{}
	// receiving is the bytes of messages being received (asked for, unfinished).
	receiving atomic.Int64
	// evictMu: a reader whose message brought the total over MaxReceiving waits here
	// until connections are closed to bring it back under, so no reader goes on
	// reading meanwhile (the total passes the budget by at most one read per
	// connection).
	evictMu sync.Mutex

	closed *prometheus.CounterVec
}

// GuardOptions configures a Guard.
type GuardOptions struct {
	MaxConns     int
	StreamWindow int
	RecvTimeout  time.Duration
	MaxReceiving int64
	// MaxPartial bounds the streams of a connection with a message partly received
	// (normally at most its concurrent streams); past it the connection is closed.
	MaxPartial int
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

// Reasons a Guard closes a connection (the reason label of
// grpc_server_connections_closed_total).
const (
	closedRecvTimeout = "recv_timeout"
	closedReceiving   = "receiving_budget"
	closedPartial     = "too_many_partial_messages"
)

// NewGuard builds a Guard.
func NewGuard(opts GuardOptions) *Guard {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	g := &Guard{opts: opts, sem: make(chan struct{}, opts.MaxConns), conns: map[*guardConn]struct{}{}}
	g.closed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "grpc_server_connections_closed_total",
		Help: "gRPC connections the sidecar closed because of what the client sent (reason: recv_timeout, receiving_budget, too_many_partial_messages).",
	}, []string{"reason"})
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(g.closed,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "grpc_server_connections",
				Help: "gRPC connections open (--grpc-max-connections bounds them).",
			}, func() float64 { return float64(len(g.sem)) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "grpc_server_receiving_bytes",
				Help: "Bytes of request messages being received, asked for and unfinished (--grpc-max-receiving-bytes bounds them).",
			}, func() float64 { return float64(g.receiving.Load()) }),
		)
	}
	for _, r := range []string{closedRecvTimeout, closedReceiving, closedPartial} {
		g.closed.WithLabelValues(r)
	}
	return g
}

// Receiving is the bytes of messages being received now.
func (g *Guard) Receiving() int64 { return g.receiving.Load() }

// Listener wraps l.
func (g *Guard) Listener(l net.Listener) net.Listener {
	return &guardListener{Listener: l, g: g, done: make(chan struct{})}
}

type guardListener struct {
	net.Listener
	g         *Guard
	done      chan struct{}
	closeOnce sync.Once
}

// Accept waits for a free place among MaxConns, then accepts.
func (l *guardListener) Accept() (net.Conn, error) {
	select {
	case l.g.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.g.sem
		return nil, err
	}
	gc := &guardConn{Conn: c, g: l.g, partial: map[uint32]*partialMsg{}}
	gc.in.preface = len(http2Preface)
	l.g.mu.Lock()
	l.g.conns[gc] = struct{}{}
	l.g.mu.Unlock()
	return gc, nil
}

func (l *guardListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// guardConn follows the frames of one connection.
type guardConn struct {
	net.Conn
	g *Guard

	// in is only used by the reading goroutine, out by the writing one.
	in, out frameParser

	mu       sync.Mutex
	partial  map[uint32]*partialMsg // stream → its message partly received
	gen      uint64
	gone     bool
	closeErr error
	once     sync.Once
}

// partialMsg is a gRPC message of a stream, partly received.
type partialMsg struct {
	prefix  [5]byte
	prefixN int
	need    uint32 // bytes of the message still to come
	got     int64  // bytes of it received
	start   time.Time
	counted bool // asked for: in Guard.receiving, with a timer
	timer   *time.Timer
	gen     uint64 // tells the timer whether it is still this message
}

func (c *guardConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.in.broken {
		tooMany := false
		c.in.feed(b[:n], c.onClientFrame, func(stream uint32, p []byte) {
			tooMany = c.onClientData(stream, p) || tooMany
		})
		if c.in.broken {
			c.forgetAll() // not HTTP/2 as expected: gRPC closes the connection itself
		}
		if tooMany {
			c.closeFor(closedPartial)
		}
		c.checkBudget()
	}
	return n, err
}

func (c *guardConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 && !c.out.broken {
		c.out.feed(b[:n], c.onServerFrame, nil)
	}
	return n, err
}

func (c *guardConn) Close() error {
	c.once.Do(func() {
		c.forgetAll()
		c.g.mu.Lock()
		delete(c.g.conns, c)
		c.g.mu.Unlock()
		<-c.g.sem
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}

// closeFor closes the connection for a reason of the Guard's.
func (c *guardConn) closeFor(reason string) {
	c.mu.Lock()
	gone := c.gone
	c.gone = true
	c.mu.Unlock()
	if gone {
		return
	}
	c.g.closed.WithLabelValues(reason).Inc()
	remote := "unknown"
	if a := c.RemoteAddr(); a != nil {
		remote = a.String()
	}
	c.g.opts.Log.Warn("closed a gRPC connection: a client's request messages broke a limit",
		zap.String("reason", reason), zap.String("remote", remote))
	_ = c.Close()
}

// forgetAll drops every partial message (the connection is closing).
func (c *guardConn) forgetAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gone = true
	for id, m := range c.partial {
		c.drop(m)
		delete(c.partial, id)
	}
}

// drop stops counting m (c.mu held).
func (c *guardConn) drop(m *partialMsg) {
	if m.counted {
		c.g.receiving.Add(-m.got)
		m.timer.Stop()
		m.counted = false
	}
}

// onClientFrame: a frame from the client ended. A stream the client ends or resets
// has no message coming any more (gRPC fails an unfinished one).
func (c *guardConn) onClientFrame(typ, flags byte, stream uint32) {
	if typ == frameRSTStream || (typ == frameData || typ == frameHeaders) && flags&flagEndStream != 0 {
		c.forget(stream)
	}
}

// onServerFrame: a frame to the client. A stream the server ends (trailers) or resets
// reads nothing more: gRPC drops what still comes for it.
func (c *guardConn) onServerFrame(typ, flags byte, stream uint32) {
	if typ == frameRSTStream || typ == frameHeaders && flags&flagEndStream != 0 {
		c.forget(stream)
	}
}

func (c *guardConn) forget(stream uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.partial[stream]; ok {
		c.drop(m)
		delete(c.partial, stream)
	}
}

// onClientData follows the gRPC messages (a 5-byte prefix: flag and length, then the
// message) in the DATA of a stream. It answers whether the connection has more
// streams with a partial message than it may.
func (c *guardConn) onClientData(stream uint32, p []byte) (tooMany bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return false
	}
	// Work on a copy: a message that arrives whole (the usual case) costs no
	// allocation; only one left partial is kept in the map.
	var st partialMsg
	kept := c.partial[stream]
	if kept != nil {
		st = *kept
	}
	for len(p) > 0 {
		if st.prefixN < len(st.prefix) {
			k := copy(st.prefix[st.prefixN:], p)
			st.prefixN += k
			p = p[k:]
			if st.prefixN < len(st.prefix) {
				break
			}
			st.need = binary.BigEndian.Uint32(st.prefix[1:])
			st.got = 0
			st.start = time.Now()
		}
		k := int64(min(uint64(st.need), uint64(len(p))))
		st.need -= uint32(k)
		st.got += k
		p = p[k:]
		if st.counted {
			c.g.receiving.Add(k)
		}
		switch {
		case st.need == 0:
			c.drop(&st)
			st = partialMsg{}
		case !st.counted && st.got > int64(c.g.opts.StreamWindow):
			// Asked for: from now on it must arrive in time.
			c.gen++
			gen := c.gen
			st.counted, st.gen = true, gen
			c.g.receiving.Add(st.got)
			st.timer = time.AfterFunc(c.g.opts.RecvTimeout-time.Since(st.start), func() { c.timedOut(stream, gen) })
		}
	}
	switch {
	case st.prefixN > 0 && kept != nil:
		*kept = st
	case st.prefixN > 0:
		kept = new(partialMsg)
		*kept = st
		c.partial[stream] = kept
	case kept != nil:
		delete(c.partial, stream)
	}
	return len(c.partial) > c.g.opts.MaxPartial
}

func (c *guardConn) timedOut(stream uint32, gen uint64) {
	c.mu.Lock()
	m := c.partial[stream]
	still := m != nil && m.counted && m.gen == gen
	c.mu.Unlock()
	if still {
		c.closeFor(closedRecvTimeout)
	}
}

// checkBudget closes connections, oldest unfinished message first, while the messages
// being received hold more than MaxReceiving.
func (c *guardConn) checkBudget() {
	g := c.g
	if g.receiving.Load() <= g.opts.MaxReceiving {
		return
	}
	g.evictMu.Lock()
	defer g.evictMu.Unlock()
	for g.receiving.Load() > g.opts.MaxReceiving {
		victim := g.oldest()
		if victim == nil {
			return
		}
		victim.closeFor(closedReceiving)
	}
}

// oldest is the connection with the oldest message being received.
func (g *Guard) oldest() *guardConn {
	g.mu.Lock()
	conns := make([]*guardConn, 0, len(g.conns))
	for c := range g.conns {
		conns = append(conns, c)
	}
	g.mu.Unlock()
	var (
		victim *guardConn
		since  time.Time
	)
	for _, c := range conns {
		c.mu.Lock()
		for _, m := range c.partial {
			if m.counted && (victim == nil || m.start.Before(since)) {
				victim, since = c, m.start
			}
		}
		c.mu.Unlock()
	}
	return victim
}

// HTTP/2 frame types and flags (RFC 9113).
const (
	frameData      = 0x0
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	flagEndStream  = 0x1
	flagPadded     = 0x8
)

// frameParser follows HTTP/2 frames through a byte stream fed in pieces of any size.
type frameParser struct {
	preface int // bytes of the client connection preface still to pass
	hdr     [9]byte
	hdrN    int
	typ     byte
	flags   byte
	stream  uint32
	left    uint32 // bytes of the current frame's payload still to come
	// For DATA: the pad length byte still to come, then the data, then padding.
	needPad bool
	data    uint32
	broken  bool
}

// feed passes p through the parser: onData gets the data of DATA frames (when not
// nil), onFrame every frame's end.
func (f *frameParser) feed(p []byte, onFrame func(typ, flags byte, stream uint32), onData func(stream uint32, p []byte)) {
	for !f.broken {
		if f.preface > 0 {
			if len(p) == 0 {
				return
			}
			off := len(http2Preface) - f.preface
			k := min(f.preface, len(p))
			if string(p[:k]) != http2Preface[off:off+k] {
				f.broken = true
				return
			}
			f.preface -= k
			p = p[k:]
			continue
		}
		if f.hdrN < len(f.hdr) {
			if len(p) == 0 {
				return
			}
			k := copy(f.hdr[f.hdrN:], p)
			f.hdrN += k
			p = p[k:]
			if f.hdrN < len(f.hdr) {
				return
			}
			f.left = uint32(f.hdr[0])<<16 | uint32(f.hdr[1])<<8 | uint32(f.hdr[2])
			f.typ, f.flags = f.hdr[3], f.hdr[4]
			f.stream = binary.BigEndian.Uint32(f.hdr[5:]) & 0x7fffffff
			f.needPad = f.typ == frameData && f.flags&flagPadded != 0
			f.data = 0
			if f.typ == frameData && !f.needPad {
				f.data = f.left
			}
		}
		if f.needPad {
			if f.left == 0 {
				f.broken = true
				return
			}
			if len(p) == 0 {
				return
			}
			pad := uint32(p[0])
			p = p[1:]
			f.left--
			f.needPad = false
			if pad > f.left {
				f.broken = true
				return
			}
			f.data = f.left - pad
		}
		if f.data > 0 {
			if len(p) == 0 {
				return
			}
			k := min(f.data, uint32(len(p)))
			if onData != nil {
				onData(f.stream, p[:k])
			}
			f.data -= k
			f.left -= k
			p = p[k:]
			continue
		}
		if f.left > 0 { // padding, or a frame whose payload does not matter here
			if len(p) == 0 {
				return
			}
			k := min(f.left, uint32(len(p)))
			f.left -= k
			p = p[k:]
			if f.left > 0 {
				return
			}
		}
		onFrame(f.typ, f.flags, f.stream)
		f.hdrN = 0
	}
}

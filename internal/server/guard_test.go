package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/eventgw/eventgw/internal/testenv"
)

// guarded is a gRPC server behind a Guard, with the sidecar's flow-control and
// keepalive settings, serving two test methods: /t/Read receives messages for as long
// as the stream lasts, /t/Hold never reads (a stream at its budget).
type guarded struct {
	addr     string
	g        *Guard
	received chan int // sizes of the messages /t/Read got
	ended    chan error
}

func startGuarded(t *testing.T, opts GuardOptions) *guarded {
	t.Helper()
	opts.StreamWindow = StreamWindow
	if opts.MaxPartial == 0 {
		opts.MaxPartial = 64
	}
	opts.Registerer = prometheus.NewRegistry()
	gs := &guarded{g: NewGuard(opts), received: make(chan int, 100), ended: make(chan error, 100)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.StaticStreamWindowSize(StreamWindow), grpc.StaticConnWindowSize(connWindow),
		grpc.MaxRecvMsgSize(8<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			method, _ := grpc.MethodFromServerStream(ss)
			if method == "/t/Hold" {
				<-ss.Context().Done()
				return ss.Context().Err()
			}
			for {
				var m wrapperspb.BytesValue
				if err := ss.RecvMsg(&m); err != nil {
					gs.ended <- err
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				gs.received <- len(m.GetValue())
			}
		}),
	)
	go func() { _ = srv.Serve(gs.g.Listener(lis)) }()
	t.Cleanup(srv.Stop)
	gs.addr = lis.Addr().String()
	return gs
}

func closedCount(g *Guard, reason string) float64 {
	return testutil.ToFloat64(g.closed.WithLabelValues(reason))
}

// A client that declares a message, sends most of it and stops (answering every ping)
// has its connection closed after RecvTimeout, and what it sent is freed; a message
// sent whole in time is received.
func TestGuardClosesAnUnfinishedMessage(t *testing.T) {
	gs := startGuarded(t, GuardOptions{MaxConns: 8, RecvTimeout: 500 * time.Millisecond, MaxReceiving: 64 << 20})
	good := testenv.DialH2(t, gs.addr)
	good.Open(1, "/t/Read")
	if !good.Send(1, testenv.GRPCMessageStart(1<<20)) {
		t.Fatal("the connection closed while a message was sent whole")
	}
	if n := <-gs.received; n != 1<<20 {
		t.Fatalf("received %d bytes", n)
	}

	bad := testenv.DialH2(t, gs.addr)
	bad.Open(1, "/t/Read")
	msg := testenv.GRPCMessageStart(1 << 20)
	if !bad.Send(1, msg[:len(msg)*3/4]) {
		t.Fatal("closed before the message stalled")
	}
	if !bad.WaitClosed(30 * time.Second) {
		t.Fatal("a connection holding an unfinished message was not closed")
	}
	if err := <-gs.ended; err == nil {
		t.Error("the stream's Recv did not fail")
	}
	if got := closedCount(gs.g, closedRecvTimeout); got != 1 {
		t.Errorf("recv_timeout closes %v, want 1", got)
	}
	if n := gs.g.Receiving(); n != 0 {
		t.Errorf("%d bytes still counted as being received", n)
	}
	// The other connection is untouched.
	good.Open(3, "/t/Read")
	if !good.Send(3, testenv.GRPCMessageStart(100)) {
		t.Fatal("the good connection was closed")
	}
	if n := <-gs.received; n != 100 {
		t.Fatalf("received %d bytes", n)
	}
}

// A stream the server does not read (a PublishStream at its budget) holds at most its
// flow-control window: such a message is never counted or timed, so back-pressure
// never closes a connection.
func TestGuardLeavesUnreadStreamsAlone(t *testing.T) {
	gs := startGuarded(t, GuardOptions{MaxConns: 8, RecvTimeout: 200 * time.Millisecond, MaxReceiving: 64 << 20})
	c := testenv.DialH2(t, gs.addr)
	c.WaitSettings()
	c.Open(1, "/t/Hold")
	msg := testenv.GRPCMessageStart(1 << 20)
	done := make(chan bool, 1)
	go func() { done <- c.Send(1, msg) }() // blocks on the stream's window
	var got int64
	for got < StreamWindow-16384 {
		select {
		case <-done:
			t.Fatal("the whole message went through a stream that is not read")
		case <-time.After(10 * time.Millisecond):
		}
		gs.g.mu.Lock()
		for gc := range gs.g.conns {
			gc.mu.Lock()
			for _, m := range gc.partial {
				got = m.got
				if m.counted || m.timer != nil {
					t.Errorf("a message the server did not ask for is counted (got %d)", m.got)
				}
			}
			gc.mu.Unlock()
		}
		gs.g.mu.Unlock()
	}
	if got > StreamWindow {
		t.Errorf("%d bytes of a message arrived on a stream that is not read, over its window", got)
	}
	if n := gs.g.Receiving(); n != 0 {
		t.Errorf("%d bytes counted as being received", n)
	}
}

// Past MaxReceiving the connection with the oldest unfinished message is closed; the
// newer one finishes its message.
func TestGuardBoundsReceivingBytes(t *testing.T) {
	gs := startGuarded(t, GuardOptions{MaxConns: 8, RecvTimeout: time.Hour, MaxReceiving: 3 << 19})
	msg := testenv.GRPCMessageStart(1 << 20)
	older := testenv.DialH2(t, gs.addr)
	older.Open(1, "/t/Read")
	if !older.Send(1, msg[:900<<10]) {
		t.Fatal("closed early")
	}
	deadline := time.Now().Add(30 * time.Second)
	for gs.g.Receiving() < 800<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the message was not counted: %d bytes", gs.g.Receiving())
		}
		time.Sleep(5 * time.Millisecond)
	}
	newer := testenv.DialH2(t, gs.addr)
	newer.Open(1, "/t/Read")
	if !newer.Send(1, msg[:900<<10]) {
		t.Fatal("the newer connection was closed")
	}
	if !older.WaitClosed(30 * time.Second) {
		t.Fatal("the oldest unfinished message's connection was not closed")
	}
	if got := closedCount(gs.g, closedReceiving); got != 1 {
		t.Errorf("receiving_budget closes %v, want 1", got)
	}
	if n := gs.g.Receiving(); n > 3<<19 {
		t.Errorf("%d bytes being received, over the bound", n)
	}
	if !newer.Send(1, msg[900<<10:]) {
		t.Fatal("the newer connection was closed")
	}
	if n := <-gs.received; n != 1<<20 {
		t.Errorf("received %d bytes", n)
	}
	if n := gs.g.Receiving(); n != 0 {
		t.Errorf("%d bytes still counted", n)
	}
}

// Past MaxConns a connection waits to be accepted until another closes.
func TestGuardBoundsConnections(t *testing.T) {
	gs := startGuarded(t, GuardOptions{MaxConns: 2, RecvTimeout: time.Minute, MaxReceiving: 64 << 20})
	a, b := testenv.DialH2(t, gs.addr), testenv.DialH2(t, gs.addr)
	a.WaitSettings()
	b.WaitSettings()
	c := testenv.DialH2(t, gs.addr) // connected by the kernel, not accepted
	gs.g.mu.Lock()
	n := len(gs.g.conns)
	gs.g.mu.Unlock()
	if n != 2 || len(gs.g.sem) != 2 {
		t.Fatalf("%d connections served, want 2", n)
	}
	_ = a.Conn.Close()
	c.WaitSettings()
	if c.Closed != nil {
		t.Fatalf("the waiting connection was not served once another closed: %v", c.Closed)
	}
}

// A client pinging more often than keepaliveMinTime is told to go away.
func TestKeepaliveEnforcement(t *testing.T) {
	gs := startGuarded(t, GuardOptions{MaxConns: 8, RecvTimeout: time.Minute, MaxReceiving: 64 << 20})
	c := testenv.DialH2(t, gs.addr)
	c.WaitSettings()
	for i := range 10 {
		c.Write(func() error { return c.Fr.WritePing(false, [8]byte{byte(i)}) })
	}
	if !c.WaitClosed(30 * time.Second) {
		t.Fatal("a ping flood was tolerated")
	}
	c.WMu.Lock()
	defer c.WMu.Unlock()
	if c.GoAway == nil || c.GoAway.ErrCode != http2.ErrCodeEnhanceYourCalm || string(c.GoAway.DebugData()) != "too_many_pings" {
		t.Errorf("GOAWAY %+v, want ENHANCE_YOUR_CALM too_many_pings", c.GoAway)
	}
}

// The frame parser sees the same frames and data however the bytes are cut.
func TestFrameParserAnyChunking(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(http2Preface)
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteSettings()
	_ = fr.WriteData(1, false, []byte("hello"))
	_ = fr.WriteDataPadded(3, false, []byte("padded data"), make([]byte, 7))
	_ = fr.WriteDataPadded(3, true, nil, make([]byte, 3))
	_ = fr.WriteRSTStream(5, http2.ErrCodeCancel)
	_ = fr.WriteData(7, true, bytes.Repeat([]byte{'x'}, 3000))
	_ = fr.WritePing(false, [8]byte{})
	wire := buf.Bytes()
	run := func(cut func(int) int) string {
		var out bytes.Buffer
		f := frameParser{preface: len(http2Preface)}
		for p := wire; len(p) > 0; {
			n := min(cut(len(p)), len(p))
			f.feed(p[:n], func(typ, flags byte, stream uint32) {
				fmt.Fprintf(&out, "[%d %d %d]", typ, flags, stream)
			}, func(stream uint32, d []byte) {
				fmt.Fprintf(&out, "(%d %s)", stream, d)
			})
			p = p[n:]
		}
		if f.broken {
			return "broken"
		}
		return out.String()
	}
	whole := run(func(n int) int { return n })
	dataOf := func(s string) string {
		var b bytes.Buffer
		for _, seg := range bytes.Split([]byte(s), []byte("(")) {
			if i := bytes.IndexByte(seg, ')'); i >= 0 {
				b.Write(seg[bytes.IndexByte(seg, ' ')+1 : i])
			}
		}
		return b.String()
	}
	frames := func(s string) string {
		var b bytes.Buffer
		for _, seg := range bytes.Split([]byte(s), []byte("[")) {
			if i := bytes.IndexByte(seg, ']'); i >= 0 {
				b.WriteByte('[')
				b.Write(seg[:i+1])
			}
		}
		return b.String()
	}
	if want := "hellopadded data" + string(bytes.Repeat([]byte{'x'}, 3000)); dataOf(whole) != want {
		t.Fatalf("data %q", dataOf(whole))
	}
	if want := "[4 0 0][0 0 1][0 8 3][0 9 3][3 0 5][0 1 7][6 0 0]"; frames(whole) != want {
		t.Fatalf("frames %s, want %s", frames(whole), want)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		max := 1 + i%40
		got := run(func(int) int { return 1 + r.IntN(max) })
		if dataOf(got) != dataOf(whole) || frames(got) != frames(whole) {
			t.Fatalf("cut in pieces of up to %d bytes: %s", max, got)
		}
	}
	// Not HTTP/2: the parser gives up (gRPC closes the connection itself).
	f := frameParser{preface: len(http2Preface)}
	f.feed([]byte("GET / HTTP/1.1\r\n\r\n"), func(byte, byte, uint32) {}, nil)
	if !f.broken {
		t.Error("an HTTP/1 request was taken for HTTP/2")
	}
}

package testenv

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// H2Client is a raw HTTP/2 client of a gRPC server: it can do what no gRPC library
// does, such as stop in the middle of a message while answering every ping.
type H2Client struct {
	t    testing.TB
	Conn net.Conn
	mu   sync.Mutex // writes
	Fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder

	WMu      sync.Mutex // guards Closed and GoAway
	wcond    *sync.Cond
	connWin  int64
	strWin   map[uint32]int64
	initWin  int64
	settings bool
	Closed   error
	GoAway   *http2.GoAwayFrame
	Done     chan struct{}
}

// DialH2 connects to a gRPC server at addr as a raw HTTP/2 client.
func DialH2(t testing.TB, addr string) *H2Client {
	t.Helper()
	conn, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &H2Client{t: t, Conn: conn, connWin: 65535, initWin: 65535, strWin: map[uint32]int64{}, Done: make(chan struct{})}
	c.wcond = sync.NewCond(&c.WMu)
	c.Fr = http2.NewFramer(conn, conn)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	c.Write(func() error { return c.Fr.WriteSettings() })
	go c.readLoop()
	t.Cleanup(func() { _ = conn.Close() })
	return c
}

// Write runs f, which writes frames with Fr, alone.
func (c *H2Client) Write(f func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = f() // a closed connection shows in readLoop
}

func (c *H2Client) readLoop() {
	defer close(c.Done)
	for {
		f, err := c.Fr.ReadFrame()
		if err != nil {
			c.WMu.Lock()
			c.Closed = err
			c.wcond.Broadcast()
			c.WMu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error {
					if s.ID == http2.SettingInitialWindowSize {
						c.WMu.Lock()
						c.initWin = int64(s.Val)
						c.WMu.Unlock()
					}
					return nil
				})
				c.Write(func() error { return c.Fr.WriteSettingsAck() })
				c.WMu.Lock()
				c.settings = true
				c.wcond.Broadcast()
				c.WMu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.Write(func() error { return c.Fr.WritePing(true, f.Data) })
			}
		case *http2.WindowUpdateFrame:
			c.WMu.Lock()
			if f.StreamID == 0 {
				c.connWin += int64(f.Increment)
			} else {
				c.strWin[f.StreamID] += int64(f.Increment)
			}
			c.wcond.Broadcast()
			c.WMu.Unlock()
		case *http2.GoAwayFrame:
			c.WMu.Lock()
			c.GoAway = f
			c.WMu.Unlock()
		}
	}
}

// WaitSettings waits for the server's SETTINGS: the connection was accepted.
func (c *H2Client) WaitSettings() {
	c.WMu.Lock()
	defer c.WMu.Unlock()
	for !c.settings && c.Closed == nil {
		c.wcond.Wait()
	}
}

// Open starts a call of method on stream id.
func (c *H2Client) Open(id uint32, method string) {
	c.WMu.Lock()
	c.strWin[id] += c.initWin
	c.WMu.Unlock()
	c.Write(func() error {
		c.hbuf.Reset()
		fields := [][2]string{
			{":method", "POST"},
			{":scheme", "http"},
			{":path", method},
			{":authority", "sidecar"},
			{"content-type", "application/grpc"},
			{"te", "trailers"},
		}
		for _, f := range fields {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return c.Fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true})
	})
}

// Send writes p as DATA of stream id, within the server's flow-control windows,
// waiting for them as a client must. It returns false if the connection closed.
func (c *H2Client) Send(id uint32, p []byte) bool {
	for len(p) > 0 {
		c.WMu.Lock()
		for (c.connWin <= 0 || c.strWin[id] <= 0) && c.Closed == nil {
			c.wcond.Wait()
		}
		if c.Closed != nil {
			c.WMu.Unlock()
			return false
		}
		n := min(int64(len(p)), c.connWin, c.strWin[id], 16384)
		c.connWin -= n
		c.strWin[id] -= n
		c.WMu.Unlock()
		chunk := p[:n]
		c.Write(func() error { return c.Fr.WriteData(id, false, chunk) })
		p = p[n:]
	}
	return true
}

// GRPCMessageStart is a gRPC message prefix and the first bytes of a BytesValue of n bytes.
func GRPCMessageStart(n int) []byte {
	full, _ := proto.Marshal(&wrapperspb.BytesValue{Value: make([]byte, n)})
	out := make([]byte, 5, 5+len(full))
	binary.BigEndian.PutUint32(out[1:], uint32(len(full)))
	return append(out, full...)
}

// WaitClosed waits until the server closed the connection (false: not within).
func (c *H2Client) WaitClosed(within time.Duration) bool {
	select {
	case <-c.Done:
		return true
	case <-time.After(within):
		return false
	}
}

package socks5d

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/socks5wire"
)

// scriptConn plays a client that sends fixed bytes and records what the
// server answers.
type scriptConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error) {
	if c.in.Len() == 0 {
		return 0, io.EOF
	}
	// Dribble: a real client's bytes arrive in pieces, and the reader
	// must put them together.
	if len(b) > 7 {
		b = b[:7]
	}
	return c.in.Read(b)
}
func (c *scriptConn) Write(b []byte) (int, error) { return c.out.Write(b) }
func (c *scriptConn) Close() error                { return nil }
func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1080}
}
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// FuzzRequest runs the server's whole handshake (greeting, method choice,
// request) on arbitrary client bytes. It must never panic or read beyond
// the protocol's bounds, and whatever it answers must be well formed: a
// method choice, then at most one reply, and a failure reply only with a
// code RFC 1928 defines. The seed corpus is in testdata/fuzz/FuzzRequest.
func FuzzRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 9, 'd', 'e', 'm', 'o', '.', 't', 'e', 's', 't', 1, 187})
	f.Add([]byte{5, 1, 0, 5, 9, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 7, 127, 0, 0, 1, 0, 80})
	s := &Server{Log: quietLog}
	s.defaults()
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &scriptConn{in: bytes.NewReader(data)}
		ss := &session{s: s, c: c, remote: c.RemoteAddr(), w: &wireReader{r: c}}
		req, ok := ss.handshake()
		out := c.out.Bytes()
		if len(out) == 0 {
			if ok {
				t.Fatal("request accepted without a method choice")
			}
			return
		}
		if len(out) < 2 || out[0] != 5 || (out[1] != socks5wire.MethodNone && out[1] != socks5wire.MethodNoAcceptable) {
			t.Fatalf("method choice % x", out)
		}
		rest := out[2:]
		if ok {
			if len(rest) != 0 {
				t.Fatalf("accepted request, but replies % x were sent", rest)
			}
			// What was parsed must survive a round trip through the wire.
			var enc []byte
			if req.dest.IsName() {
				enc = nameReq(req.cmd, req.dest.Name, req.dest.Port)
			} else {
				enc = socks5wire.AppendAddrPort([]byte{5, req.cmd, 0}, req.dest.AddrPort())
			}
			again, err := readRequest(&wireReader{r: bytes.NewReader(enc)})
			if err != nil || again != req {
				t.Fatalf("request %+v re-encoded as % x parses as %+v, %v", req, enc, again, err)
			}
			return
		}
		if len(rest) == 0 {
			return
		}
		if len(rest) != 10 || rest[0] != 5 || rest[1] < 1 || rest[1] > 8 || !bytes.Equal(rest[2:], []byte{0, 1, 0, 0, 0, 0, 0, 0}) {
			t.Fatalf("failure reply % x", rest)
		}
	})
}

// A batch of malformed and abandoned handshakes must leave no goroutine
// behind: each gets its reply or its close, bounded by the deadline.
func TestNoGoroutineLeakOnMalformedInput(t *testing.T) {
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, HandshakeTimeout: 300 * time.Millisecond, Log: quietLog}, "tcp")
	// Warm up: the first connection starts the runtime's poller and
	// friends, which are not ours to count.
	r := dialRaw(t, addr)
	r.noAuth()
	r.c.Close()
	time.Sleep(50 * time.Millisecond)
	base := testingGoroutines()

	inputs := [][]byte{
		{5},                                      // half a greeting, then silence
		{5, 3, 0},                                // fewer methods than announced
		{4, 1, 0, 80, 127, 0, 0, 1},              // SOCKS4
		{5, 0},                                   // no methods
		{5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, // bad ATYP
		{5, 1, 0, 5, 7, 0, 1, 1, 2, 3, 4, 0, 80}, // unknown command
		{5, 1, 0, 5, 1, 0, 3, 200, 'a'},          // name cut short
		{5, 1, 0, 5, 1, 0},                       // request cut short
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},        // noise
		{5, 1, 0, 5, 1, 0, 3, 0, 0, 80},                         // empty name
		{5, 2, 0, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p'},     // password while none asked
		{'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/'}, // an HTTP client
	}
	const rounds = 15
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errc := make(chan error, rounds*len(inputs))
	for i := 0; i < rounds; i++ {
		for j, in := range inputs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					errc <- err
					return
				}
				defer c.Close()
				c.Write(in)
				if (i+j)%3 == 0 {
					return // the client gives up at once
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						errc <- errors.New("server kept a malformed connection open for 10s")
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	waitGoroutines(t, base)
}

// testingGoroutines is the goroutine count once the warm-up's have ended.
func testingGoroutines() int {
	time.Sleep(20 * time.Millisecond)
	return runtime.NumGoroutine()
}

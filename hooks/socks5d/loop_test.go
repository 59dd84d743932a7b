//go:build linux

package socks5d

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/funtun/funtun/internal/socks5wire"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	builtin "github.com/funtun/funtun/profiles"
	"golang.org/x/sys/unix"
)

// The event loop's tests run real loopback traffic through a socks5d whose
// profile is plain `direct`, and prove which path served each case: every
// log record of the engine and the server is kept together with whether
// the event loop's finish (the loop's only way to end a flow) or a
// session of the general path was on the stack when it was logged. For a
// connection still open, the server's own books tell the two apart too:
// the general path tracks its connections in s.conns, the loop does not.

// logRec is one log record, with the path that logged it.
type logRec struct {
	msg     string
	attrs   map[string]string
	loop    bool // the engine's loop ended a flow it accepted (finishListened)
	general bool // a (*session) method was on the stack
}

func (r logRec) String() string {
	path := "neither path"
	switch {
	case r.loop && r.general:
		path = "both paths?"
	case r.loop:
		path = "the event loop"
	case r.general:
		path = "the general path"
	}
	return fmt.Sprintf("%q %v (logged from %s)", r.msg, r.attrs, path)
}

type logRecorder struct {
	mu   sync.Mutex
	recs []logRec
}

func (lr *logRecorder) all() []logRec {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return append([]logRec(nil), lr.recs...)
}

// wait returns the first record that match accepts, waiting (bounded) for
// it to be logged.
func (lr *logRecorder) wait(t testing.TB, what string, match func(logRec) bool) logRec {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range lr.all() {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log record for %s within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isFlowRec(r logRec) bool { return r.msg == "flow" || r.msg == "flow failed" }

// flowOf waits for the flow log line of the client whose end is c.
func (lr *logRecorder) flowOf(t testing.TB, c net.Conn) logRec {
	t.Helper()
	src := c.LocalAddr().String()
	return lr.wait(t, "the flow from "+src, func(r logRec) bool { return isFlowRec(r) && r.attrs["src"] == src })
}

// flowTo waits for the flow log line of a flow to dst.
func (lr *logRecorder) flowTo(t testing.TB, dst string) logRec {
	t.Helper()
	return lr.wait(t, "a flow to "+dst, func(r logRec) bool { return isFlowRec(r) && r.attrs["dst"] == dst })
}

// recHandler records every record, then passes it to next.
type recHandler struct {
	rec   *logRecorder
	attrs []slog.Attr
	next  slog.Handler
}

func (h *recHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recHandler) Handle(ctx context.Context, r slog.Record) error {
	lr := logRec{msg: r.Message, attrs: map[string]string{}}
	// The session's frames mark the general path; the engine's relay
	// loops and goroutines carry relays that only the general path hands
	// them, and its listener loops are the event loop.
	switch testutil.FlowPath() {
	case "listened":
		lr.loop = true
	case "adopted", "goroutines":
		lr.general = true
	}
	pcs := make([]uintptr, 128)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs)])
	for {
		f, more := frames.Next()
		if strings.Contains(f.Function, "/socks5d.(*session).") {
			lr.general = true
		}
		if !more {
			break
		}
	}
	for _, a := range h.attrs {
		lr.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		lr.attrs[a.Key] = a.Value.String()
		return true
	})
	h.rec.mu.Lock()
	h.rec.recs = append(h.rec.recs, lr)
	h.rec.mu.Unlock()
	return h.next.Handle(ctx, r)
}

func (h *recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recHandler{rec: h.rec, attrs: append(append([]slog.Attr(nil), h.attrs...), as...), next: h.next.WithAttrs(as)}
}

func (h *recHandler) WithGroup(name string) slog.Handler {
	return &recHandler{rec: h.rec, attrs: h.attrs, next: h.next.WithGroup(name)}
}

// loopEnv is an engine whose profiles are the built-in ones plus the given
// ones, in a directory the test may rewrite, and whose log (shared with
// the servers it starts) is recorded.
type loopEnv struct {
	eng *funnel.Engine
	rec *logRecorder
	log *slog.Logger
	dir string
}

func newLoopEnv(t testing.TB, profiles map[string]string) *loopEnv {
	t.Helper()
	e := &loopEnv{rec: &logRecorder{}, dir: t.TempDir()}
	for name, text := range profiles {
		e.writeProfile(t, name, text)
	}
	e.log = slog.New(&recHandler{rec: e.rec, next: testLogger(t).Handler()})
	eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{e.dir}, Builtins: builtin.Builtin}, e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.eng = eng
	return e
}

func (e *loopEnv) writeProfile(t testing.TB, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name+funnel.ProfileExt), []byte(text+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// serve starts s (with this engine and log) on a fresh loopback port.
func (e *loopEnv) serve(t testing.TB, s *Server, network string) string {
	t.Helper()
	s.Engine, s.Log = e.eng, e.log
	return startServer(t, s, network)
}

func wantLoop(t testing.TB, r logRec) {
	t.Helper()
	if !r.loop || r.general {
		t.Fatalf("want a flow of the event loop, got %v", r)
	}
}

func wantGeneral(t testing.TB, r logRec) {
	t.Helper()
	if r.loop || !r.general {
		t.Fatalf("want a flow of the general path, got %v", r)
	}
}

func wantCounts(t testing.TB, r logRec, up, down int64) {
	t.Helper()
	if r.attrs["up"] != strconv.FormatInt(up, 10) || r.attrs["down"] != strconv.FormatInt(down, 10) {
		t.Fatalf("flow log says up=%s down=%s, want up=%d down=%d (%v)", r.attrs["up"], r.attrs["down"], up, down, r)
	}
}

// held splits the connections s serves into the loop's and the general
// path's (which tracks its own in s.conns).
func held(s *Server) (loop, general int) {
	s.mu.Lock()
	general = len(s.conns)
	s.mu.Unlock()
	return s.Active() - general, general
}

func waitHeld(t testing.TB, s *Server, loop, general int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, g := held(s)
		if l == loop && g == general {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the loop holds %d connections and the general path %d, want %d and %d", l, g, loop, general)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// loopConnect runs the greeting and a CONNECT to dest, and wants success.
func loopConnect(t testing.TB, addr string, dest netip.AddrPort) (*rawClient, netip.AddrPort) {
	t.Helper()
	r := dialRaw(t, addr)
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	r.noAuth()
	r.send(connectReq(dest)...)
	code, bound := r.readReply()
	if code != 0 {
		t.Fatalf("CONNECT %s: reply %d, want 0", dest, code)
	}
	return r, bound
}

// finishClient half-closes the client, wants everything the server still
// sends to be want, then EOF, and closes.
func finishClient(t testing.TB, r *rawClient, want string) {
	t.Helper()
	if err := r.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r.c)
	if err != nil {
		t.Fatalf("reading to EOF: %v", err)
	}
	if string(rest) != want {
		t.Fatalf("got %q before EOF, want %q", rest, want)
	}
	r.c.Close()
}

func echoAddr(t testing.TB) netip.AddrPort {
	return testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
}

// plainEcho is an echo server that copies through a buffer of its own:
// io.Copy between two sockets would splice through pipes from the net
// package's pool, which come and go with the garbage collector and would
// blur a count of the loop's pipes.
func plainEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func TestLoopConnect(t *testing.T) {
	for _, c := range []struct{ name, listen, dest string }{
		{"IPv4", "tcp", "tcp"},
		{"IPv6 destination", "tcp", "tcp6"},
		{"IPv6 client and destination", "tcp6", "tcp6"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := newLoopEnv(t, nil)
			s := &Server{}
			addr := env.serve(t, s, c.listen)
			who := whoServer(t, c.dest)
			r, bound := loopConnect(t, addr, who)
			waitHeld(t, s, 1, 0)
			line, err := bufio.NewReader(r.c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			seen := strings.TrimSpace(line)
			if !bound.Addr().IsLoopback() || bound.Port() == 0 {
				t.Fatalf("BND.ADDR/BND.PORT say %s, want a loopback address and a port", bound)
			}
			if bound.Addr().Is4() != who.Addr().Is4() {
				t.Fatalf("BND.ADDR %s is not of the destination's family (%s)", bound, who)
			}
			if bound.String() != seen {
				t.Fatalf("BND.ADDR/BND.PORT say %s; the server saw the connection come from %s", bound, seen)
			}
			testutil.EchoOnce(t, r.c, "ping through the loop\n")
			finishClient(t, r, "")
			rec := env.rec.flowOf(t, r.c)
			wantLoop(t, rec)
			if rec.msg != "flow" || rec.attrs["dst"] != who.String() || rec.attrs["profile"] != "direct" || rec.attrs["hook"] != "socks5d" {
				t.Fatalf("flow log line %v, want a flow to %s with profile direct and hook socks5d", rec, who)
			}
			wantCounts(t, rec, int64(len("ping through the loop\n")), int64(len(line)+len("ping through the loop\n")))
		})
	}
}

// The loop serves a client that passes --allow.
func TestLoopAllow(t *testing.T) {
	env := newLoopEnv(t, nil)
	echo := echoAddr(t)
	t.Run("inside", func(t *testing.T) {
		s := &Server{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		addr := env.serve(t, s, "tcp")
		r, _ := loopConnect(t, addr, echo)
		waitHeld(t, s, 1, 0)
		testutil.EchoOnce(t, r.c, "allowed\n")
		finishClient(t, r, "")
		wantLoop(t, env.rec.flowOf(t, r.c))
	})
	t.Run("outside", func(t *testing.T) {
		addr := env.serve(t, &Server{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "tcp")
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(connectReq(echo)...)
		if code, _ := r.readReply(); code != 2 {
			t.Fatalf("reply %d, want 2", code)
		}
		r.expectClosed()
		src := r.c.LocalAddr().String()
		wantGeneral(t, env.rec.wait(t, "the refusal of "+src, func(l logRec) bool {
			return strings.Contains(l.msg, "not in --allow") && l.attrs["src"] == src
		}))
	})
}

func TestLoopHandshakePipelined(t *testing.T) {
	env := newLoopEnv(t, nil)
	addr := env.serve(t, &Server{}, "tcp")
	echo := echoAddr(t)
	r := dialRaw(t, addr)
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	r.send(append([]byte{5, 1, 0}, connectReq(echo)...)...)
	r.expect(5, 0)
	if code, _ := r.readReply(); code != 0 {
		t.Fatalf("reply %d, want 0", code)
	}
	testutil.EchoOnce(t, r.c, "pipelined\n")
	finishClient(t, r, "")
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	wantCounts(t, rec, 10, 10)
}

func TestLoopHandshakeDribbled(t *testing.T) {
	env := newLoopEnv(t, nil)
	addr := env.serve(t, &Server{}, "tcp")
	echo4 := echoAddr(t)
	port6, _ := testutil.DualStackEcho(t, "") // echoes on [::1] too
	echo6 := netip.AddrPortFrom(netip.IPv6Loopback(), port6)
	for _, c := range []struct {
		name     string
		dest     netip.AddrPort
		greeting []byte
		// cuts: the handshake goes in pieces ending here (nil: a byte
		// a write)
		cuts []int
	}{
		{"IPv4 a byte at a time", echo4, []byte{5, 1, 0}, nil},
		{"IPv6 a byte at a time", echo6, []byte{5, 1, 0}, nil},
		{"greeting's end with request's start", echo4, []byte{5, 1, 0}, []int{2, 6}},
		{"two methods, then a request in two", echo4, []byte{5, 2, 2, 0}, []int{4, 9}},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := append(append([]byte(nil), c.greeting...), connectReq(c.dest)...)
			r := dialRaw(t, addr)
			r.c.SetDeadline(time.Now().Add(5 * time.Second))
			cuts := c.cuts
			if cuts == nil {
				for i := 1; i < len(msg); i++ {
					cuts = append(cuts, i)
				}
			}
			from := 0
			for _, to := range append(cuts, len(msg)) {
				r.send(msg[from:to]...)
				from = to
				time.Sleep(3 * time.Millisecond)
			}
			r.expect(5, 0)
			if code, _ := r.readReply(); code != 0 {
				t.Fatalf("reply %d, want 0", code)
			}
			testutil.EchoOnce(t, r.c, "dribbled\n")
			finishClient(t, r, "")
			rec := env.rec.flowOf(t, r.c)
			wantLoop(t, rec)
			wantCounts(t, rec, 9, 9)
		})
	}
}

func TestLoopRefused(t *testing.T) {
	env := newLoopEnv(t, nil)
	addr := env.serve(t, &Server{}, "tcp")
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(closedPort(t)))
	r := dialRaw(t, addr)
	r.noAuth()
	r.send(connectReq(closed)...)
	code, bound := r.readReply()
	if code != 5 {
		t.Fatalf("reply %d, want 5 (connection refused)", code)
	}
	if bound != netip.AddrPortFrom(netip.IPv4Unspecified(), 0) {
		t.Errorf("a failure reply carries %s, want 0.0.0.0:0", bound)
	}
	r.expectClosed()
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	if rec.msg != "flow failed" || rec.attrs["kind"] != "connection refused" || rec.attrs["dst"] != closed.String() {
		t.Fatalf("flow log line %v, want a failed flow to %s of kind \"connection refused\"", rec, closed)
	}
}

// unansweredAddr is an address whose SYNs get no answer. On loopback: a
// listening socket with a backlog of 0 whose accept queue the test fills
// and never empties, so the kernel drops every further SYN. Where the
// kernel answers anyway, an address in a network namespace that has no
// route back to us.
func unansweredAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	for range 8 {
		c, err := net.DialTimeout("tcp", ap.String(), 150*time.Millisecond)
		if err == nil {
			// Completed, and queued for an accept that never comes.
			t.Cleanup(func() { c.Close() })
			continue
		}
		if isTimeout(err) {
			return ap // the probe's SYNs went unanswered
		}
		t.Fatalf("probing the full backlog at %s: %v", ap, err)
	}
	t.Logf("the kernel completes connections beyond a full backlog: using a network namespace")
	return unansweredInNetns(t)
}

func unansweredInNetns(t *testing.T) netip.AddrPort {
	t.Helper()
	ns := newNetns(t)
	link := netip.MustParsePrefix(ns.hostIP + "/30").Masked()
	// SYNs reach the namespace; its answers (a SYN-ACK or a reset) have
	// no route back to us.
	if out, err := exec.Command(testutil.NeedTool(t, "ip"), "-n", ns.name, "route", "del", link.String()).CombinedOutput(); err != nil {
		t.Fatalf("ip route del: %v: %s", err, out)
	}
	ap := netip.AddrPortFrom(netip.MustParseAddr(ns.nsIP), 9)
	c, err := net.DialTimeout("tcp", ap.String(), 150*time.Millisecond)
	if err == nil {
		c.Close()
	}
	if !isTimeout(err) {
		t.Fatalf("a connect to %s in the namespace did not hang: %v", ap, err)
	}
	return ap
}

func TestLoopDialTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	dest := unansweredAddr(t)
	// The loop dials as the direct piece says, timeout included.
	env := newLoopEnv(t, map[string]string{"d": "direct timeout=300ms"})
	// The loop checks deadlines on a sweep every HandshakeTimeout/4 (at
	// most every second): 1s makes it 250ms.
	addr := env.serve(t, &Server{HandshakeTimeout: time.Second, Selector: funnel.Selector{Profile: "d"}}, "tcp")
	r := dialRaw(t, addr)
	r.c.SetDeadline(time.Now().Add(3 * time.Second))
	r.noAuth()
	start := time.Now()
	r.send(connectReq(dest)...)
	code, bound := r.readReply()
	took := time.Since(start)
	if code != 6 {
		t.Fatalf("reply %d after %v, want 6 (TTL expired: timed out)", code, took)
	}
	if took < timeout-50*time.Millisecond || took > timeout+time.Second {
		t.Errorf("the timeout reply came after %v; the dial timeout is %v", took, timeout)
	}
	if bound != netip.AddrPortFrom(netip.IPv4Unspecified(), 0) {
		t.Errorf("a failure reply carries %s, want 0.0.0.0:0", bound)
	}
	r.expectClosed()
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	if rec.msg != "flow failed" || rec.attrs["kind"] != "timed out" {
		t.Fatalf("flow log line %v, want a failed flow of kind \"timed out\"", rec)
	}
}

func TestLoopHalfClose(t *testing.T) {
	env := newLoopEnv(t, nil)
	addr := env.serve(t, &Server{}, "tcp")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	body := make([]byte, 100<<10)
	rand.NewChaCha8([32]byte{1}).Read(body)
	tail := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{2}).Read(tail)
	srvErr := make(chan error, 1)
	go func() {
		srvErr <- func() error {
			c, err := l.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c) // to EOF: the client's CloseWrite
			if err != nil {
				return fmt.Errorf("server reading the body: %w", err)
			}
			if !bytes.Equal(got, body) {
				return fmt.Errorf("server got %d bytes, not the %d-byte body", len(got), len(body))
			}
			sum := sha256.Sum256(got)
			if _, err := c.Write(sum[:]); err != nil {
				return err
			}
			_, err = c.Write(tail)
			return err
		}()
	}()
	r, _ := loopConnect(t, addr, l.Addr().(*net.TCPAddr).AddrPort())
	if _, err := r.c.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := r.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(r.c)
	if err != nil {
		t.Fatalf("reading the answer to EOF: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if want := append(sum[:], tail...); !bytes.Equal(answer, want) {
		t.Fatalf("got a %d-byte answer, want the %d bytes the server sent", len(answer), len(want))
	}
	r.c.Close()
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	wantCounts(t, rec, int64(len(body)), int64(len(sum)+len(tail)))
}

// sendStream writes size bytes of a seeded random stream to c, counting
// them in sent, then shuts c for writing; it returns their SHA-256.
func sendStream(c net.Conn, seed byte, size int, sent *atomic.Int64) ([32]byte, error) {
	src := rand.NewChaCha8([32]byte{seed})
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for left := size; left > 0; {
		b := buf[:min(len(buf), left)]
		src.Read(b)
		h.Write(b)
		n, err := c.Write(b)
		sent.Add(int64(n))
		if err != nil {
			return [32]byte{}, err
		}
		left -= n
	}
	return [32]byte(h.Sum(nil)), c.(*net.TCPConn).CloseWrite()
}

// recvStream reads c to EOF and returns the count and SHA-256.
func recvStream(c net.Conn) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, c)
	return n, [32]byte(h.Sum(nil)), err
}

func TestLoopBulkBackpressure(t *testing.T) {
	const size = 32 << 20
	const slow = 300 * time.Millisecond
	env := newLoopEnv(t, nil)
	addr := env.serve(t, &Server{}, "tcp")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	type half struct {
		n   int64
		sum [32]byte
		err error
	}
	var upSent, downSent atomic.Int64
	srvGot, srvSent := make(chan half, 1), make(chan half, 1)
	upAtRead := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srvGot <- half{err: err}
			srvSent <- half{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		sent := make(chan half, 1)
		go func() {
			sum, err := sendStream(c, 'd', size, &downSent)
			sent <- half{size, sum, err}
		}()
		time.Sleep(slow) // a slow reader at first
		upAtRead <- upSent.Load()
		n, sum, err := recvStream(c)
		srvGot <- half{n, sum, err}
		srvSent <- <-sent
	}()

	r, _ := loopConnect(t, addr, l.Addr().(*net.TCPAddr).AddrPort())
	r.c.SetDeadline(time.Now().Add(10 * time.Second))
	cliSent := make(chan half, 1)
	go func() {
		sum, err := sendStream(r.c, 'u', size, &upSent)
		cliSent <- half{size, sum, err}
	}()
	time.Sleep(slow) // a slow reader at first
	downAtRead := downSent.Load()
	n, sum, err := recvStream(r.c)
	if err != nil {
		t.Fatalf("client reading: %v after %d bytes", err, n)
	}
	up, got := <-cliSent, <-srvGot
	down := <-srvSent
	for _, h := range []half{up, got, down} {
		if h.err != nil {
			t.Fatal(h.err)
		}
	}
	if got.n != size || got.sum != up.sum {
		t.Fatalf("upstream got %d bytes (sha256 %x), want %d (sha256 %x)", got.n, got.sum, size, up.sum)
	}
	if n != size || sum != down.sum {
		t.Fatalf("client got %d bytes (sha256 %x), want %d (sha256 %x)", n, sum, size, down.sum)
	}
	// Neither writer could be done while its reader slept: the loop
	// holds no more than a pipe's worth.
	if v := <-upAtRead; v >= size {
		t.Errorf("the client wrote all %d bytes up before the server read one", v)
	}
	if downAtRead >= size {
		t.Errorf("the server wrote all %d bytes down before the client read one", downAtRead)
	}
	r.c.Close()
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	wantCounts(t, rec, size, size)
}

// What the loop does not serve itself goes to the general path, which
// serves it as ever, with the same profile.
func TestLoopHandoff(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{}
	addr := env.serve(t, s, "tcp")
	t.Run("domain name", func(t *testing.T) {
		port, _ := testutil.DualStackEcho(t, "")
		r := dialRaw(t, addr)
		r.c.SetDeadline(time.Now().Add(5 * time.Second))
		r.noAuth()
		r.send(nameReq(socks5wire.CmdConnect, "localhost", port)...)
		if code, _ := r.readReply(); code != 0 {
			t.Fatalf("reply %d, want 0", code)
		}
		waitHeld(t, s, 0, 1)
		testutil.EchoOnce(t, r.c, "by name\n")
		finishClient(t, r, "")
		rec := env.rec.flowOf(t, r.c)
		wantGeneral(t, rec)
		if rec.attrs["dst"] != net.JoinHostPort("localhost", strconv.Itoa(int(port))) || rec.attrs["profile"] != "direct" {
			t.Fatalf("flow log line %v, want a flow to localhost:%d with profile direct", rec, port)
		}
	})
	t.Run("optimistic data", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		const early = "sent before the reply\n"
		first := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				first <- err.Error()
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, len(early))
			io.ReadFull(c, b)
			first <- string(b)
			c.Write(b)
			io.Copy(c, c)
		}()
		r := dialRaw(t, addr)
		r.c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := append([]byte{5, 1, 0}, connectReq(l.Addr().(*net.TCPAddr).AddrPort())...)
		r.send(append(msg, early...)...)
		r.expect(5, 0)
		if code, _ := r.readReply(); code != 0 {
			t.Fatalf("reply %d, want 0", code)
		}
		select {
		case got := <-first:
			if got != early {
				t.Fatalf("the server's first bytes are %q, want %q", got, early)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the optimistic data did not reach the server")
		}
		r.expect([]byte(early)...)
		waitHeld(t, s, 0, 1)
		testutil.EchoOnce(t, r.c, "and after\n")
		finishClient(t, r, "")
		rec := env.rec.flowOf(t, r.c)
		wantGeneral(t, rec)
		wantCounts(t, rec, int64(len(early)+len("and after\n")), int64(len(early)+len("and after\n")))
	})
	t.Run("unsupported command", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(5, 9, 0, 1, 127, 0, 0, 1, 0, 80)
		if code, _ := r.readReply(); code != 7 {
			t.Fatalf("reply %d, want 7", code)
		}
		r.expectClosed()
		src := r.c.LocalAddr().String()
		wantGeneral(t, env.rec.wait(t, "the malformed request of "+src, func(l logRec) bool {
			return l.msg == "malformed SOCKS5 request" && l.attrs["src"] == src
		}))
	})
	t.Run("SOCKS4", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(4, 1, 0, 80, 127, 0, 0, 1, 0)
		r.expectClosed()
		src := r.c.LocalAddr().String()
		wantGeneral(t, env.rec.wait(t, "the SOCKS4 greeting of "+src, func(l logRec) bool {
			return l.msg == "malformed SOCKS5 greeting" && l.attrs["src"] == src
		}))
	})
	t.Run("password only without --users", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(5, 1, 2)
		r.expect(5, 0xff)
		r.expectClosed()
	})
	t.Run("UDP ASSOCIATE", func(t *testing.T) {
		echo := testutil.UDPEchoServer(t).AddrPort()
		mine, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer mine.Close()
		ctl, relay := udpAssociate(t, addr, uint16(mine.LocalAddr().(*net.UDPAddr).Port))
		waitHeld(t, s, 0, 1)
		mine.WriteToUDPAddrPort(udpDatagram(echo, "through the general path"), relay)
		buf := make([]byte, 200)
		mine.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := mine.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no answer through the relay: %v", err)
		}
		if want := string(udpDatagram(echo, "through the general path")); string(buf[:n]) != want {
			t.Fatalf("got % x, want % x", buf[:n], want)
		}
		ctl.c.Close()
		waitHeld(t, s, 0, 0)
	})
}

// A client that does not speak SOCKS5 is closed at once, as the general
// path does, even when what it sent is shorter than a greeting whose
// second byte were its method count ("GET / HTTP/1.0" would announce 69
// methods).
func TestLoopNonSOCKSClientClosedAtOnce(t *testing.T) {
	for _, general := range []bool{true, false} {
		name := "loop"
		if general {
			name = "general only"
		}
		t.Run(name, func(t *testing.T) {
			env := newLoopEnv(t, nil)
			addr := env.serve(t, &Server{GeneralOnly: general}, "tcp")
			r := dialRaw(t, addr)
			r.send([]byte("GET / HTTP/1.0\r\n\r\n")...)
			r.c.SetReadDeadline(time.Now().Add(time.Second))
			var b [64]byte
			n, err := r.c.Read(b[:])
			if n > 0 || err == nil || isTimeout(err) {
				t.Fatalf("a short HTTP request got %q, %v within 1s; want the connection closed at once (the handshake timeout is 10s)", b[:n], err)
			}
		})
	}
}

func TestLoopClientReset(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{}
	addr := env.serve(t, s, "tcp")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ups := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ups)
			return
		}
		ups <- c
	}()
	// Warm up: the loop has taken the listener over and made a pipe.
	w, _ := loopConnect(t, addr, plainEcho(t))
	testutil.EchoOnce(t, w.c, "warm\n")
	finishClient(t, w, "")
	wantLoop(t, env.rec.flowOf(t, w.c))
	waitHeld(t, s, 0, 0)
	before := countFDs(t)

	r, _ := loopConnect(t, addr, l.Addr().(*net.TCPAddr).AddrPort())
	var up net.Conn
	select {
	case up = <-ups:
	case <-time.After(5 * time.Second):
		t.Fatal("no upstream connection")
	}
	if up == nil {
		t.Fatal("upstream listener failed")
	}
	defer up.Close()
	up.SetDeadline(time.Now().Add(5 * time.Second))
	r.send([]byte("ping\n")...)
	if _, err := io.ReadFull(up, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, s, 1, 0)
	r.c.(*net.TCPConn).SetLinger(0)
	r.c.Close() // a reset, while the upstream is idle

	up.SetReadDeadline(time.Now().Add(time.Second))
	n, err := up.Read(make([]byte, 16))
	if n > 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("upstream read %d bytes, %v; want EOF or a reset within 1s of the client's reset", n, err)
	}
	up.Close()
	rec := env.rec.flowOf(t, r.c)
	wantLoop(t, rec)
	wantCounts(t, rec, 5, 0)
	waitHeld(t, s, 0, 0)
	// The flow may have made a pipe for "ping", kept for the next.
	waitFDs(t, before, 2)
}

// fdCounts counts this process's descriptors: sockets, pipes, and all.
type fdCounts struct{ sockets, pipes, total int }

func countFDs(t testing.TB) fdCounts {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var n fdCounts
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own, closed by now
		}
		n.total++
		switch {
		case strings.HasPrefix(link, "socket:"):
			n.sockets++
		case strings.HasPrefix(link, "pipe:"):
			n.pipes++
		}
	}
	return n
}

// waitFDs waits (bounded) for the sockets to be back to before's count,
// and wants the pipes to be at most pipeSlack more than before's.
func waitFDs(t testing.TB, before fdCounts, pipeSlack int) fdCounts {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		now := countFDs(t)
		if now.sockets <= before.sockets && now.pipes <= before.pipes+pipeSlack {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("descriptors leaked: %+v now, %+v before (pipes may grow by %d)", now, before, pipeSlack)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortFlow is one short client: greeting, CONNECT, a 64-byte echo, close.
func shortFlow(addr string, dest netip.AddrPort, payload []byte) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return err
	}
	b := make([]byte, 10)
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if _, err := c.Write(connectReq(dest)); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b); err != nil || b[1] != 0 {
		return fmt.Errorf("reply % x: %v", b, err)
	}
	if _, err := c.Write(payload); err != nil {
		return err
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo gave % x, want % x", got, payload)
	}
	return nil
}

func manyShortFlows(t *testing.T, addr string, dest netip.AddrPort, n, width int) {
	t.Helper()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4)
	var next atomic.Int64
	errc := make(chan error, width)
	for range width {
		go func() {
			for next.Add(1) <= int64(n) {
				if err := shortFlow(addr, dest, payload); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range width {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoopNoDescriptorLeak(t *testing.T) {
	const n, width = 500, 16
	env := newLoopEnv(t, nil)
	s := &Server{}
	addr := env.serve(t, s, "tcp")
	echo := plainEcho(t)
	w, _ := loopConnect(t, addr, echo)
	testutil.EchoOnce(t, w.c, "warm\n")
	finishClient(t, w, "")
	wantLoop(t, env.rec.flowOf(t, w.c))
	waitHeld(t, s, 0, 0)
	before := countFDs(t)
	// The loops keep up to 64 empty pipes each.
	pool := 2 * 64 * runtime.GOMAXPROCS(0)

	loopFlows := func() int {
		k := 0
		for _, r := range env.rec.all() {
			if r.msg == "flow" && r.loop && !r.general && r.attrs["dst"] == echo.String() {
				k++
			}
		}
		return k
	}
	manyShortFlows(t, addr, echo, n, width)
	waitHeld(t, s, 0, 0)
	first := waitFDs(t, before, pool)
	if k := loopFlows(); k != 1+n {
		t.Fatalf("%d flows of the loop logged, want %d", k, 1+n)
	}
	manyShortFlows(t, addr, echo, n, width)
	waitHeld(t, s, 0, 0)
	// The pool may still grow to what 16 flows at once hold (two pipes
	// each), but not with the number of flows.
	second := waitFDs(t, before, pool)
	if second.pipes > first.pipes+2*2*width || second.total > first.total+2*2*width {
		t.Fatalf("descriptors grew from %+v to %+v over %d more flows", first, second, n)
	}
	if k := loopFlows(); k != 1+2*n {
		t.Fatalf("%d flows of the loop logged, want %d", k, 1+2*n)
	}
	t.Logf("descriptors: %+v before, %+v after %d flows, %+v after %d", before, first, n, second, 2*n)
}

func TestLoopMaxConns(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{MaxConns: 2}
	addr := env.serve(t, s, "tcp")
	echo := echoAddr(t)
	a, _ := loopConnect(t, addr, echo)
	b, _ := loopConnect(t, addr, echo)
	waitHeld(t, s, 2, 0)

	over := dialRaw(t, addr)
	over.c.Write([]byte{5, 1, 0})
	over.c.SetReadDeadline(time.Now().Add(time.Second))
	var buf [16]byte
	n, err := over.c.Read(buf[:])
	if n > 0 || err == nil || isTimeout(err) {
		t.Fatalf("a third client got % x, %v within 1s; want it closed at once without a reply", buf[:n], err)
	}
	testutil.EchoOnce(t, a.c, "still here\n")

	finishClient(t, b, "")
	wantLoop(t, env.rec.flowOf(t, b.c))
	waitHeld(t, s, 1, 0)
	again, _ := loopConnect(t, addr, echo)
	waitHeld(t, s, 2, 0)
	testutil.EchoOnce(t, again.c, "my turn\n")
	finishClient(t, again, "")
	finishClient(t, a, "")
	wantLoop(t, env.rec.flowOf(t, again.c))
	wantLoop(t, env.rec.flowOf(t, a.c))
}

// A client that connects and says nothing stays in the kernel: the loop's
// listener accepts only clients that have spoken (TCP_DEFER_ACCEPT), so a
// silent one costs the server nothing and does not count against
// --max-conns; once it speaks it is served as usual.
func TestLoopSilentClientWaitsInTheKernel(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{MaxConns: 1}
	addr := env.serve(t, s, "tcp")
	// A first client shows the loop has the listener (a client that
	// connects before that is accepted the old way).
	probe := dialRaw(t, addr)
	probe.noAuth()
	probe.c.Close()
	waitHeld(t, s, 0, 0)
	silent := dialRaw(t, addr)
	time.Sleep(300 * time.Millisecond)
	if n := s.Active(); n != 0 {
		t.Fatalf("%d clients active while the only one has sent nothing, want 0", n)
	}
	silent.noAuth()
	waitHeld(t, s, 1, 0)
}

func TestLoopReload(t *testing.T) {
	env := newLoopEnv(t, map[string]string{"p": "direct"})
	s := &Server{Selector: funnel.Selector{Profile: "p"}}
	addr := env.serve(t, s, "tcp")
	echo := echoAddr(t)
	before, _ := loopConnect(t, addr, echo)
	waitHeld(t, s, 1, 0)
	testutil.EchoOnce(t, before.c, "hello\n")

	env.writeProfile(t, "p", "rewrite from=hello to=HOWDY | direct")
	if err := env.eng.Reload(); err != nil {
		t.Fatal(err)
	}
	after, _ := loopConnect(t, addr, echo)
	waitHeld(t, s, 1, 1)
	after.send([]byte("hello\n")...)
	after.expect([]byte("HOWDY\n")...)
	// The flow that began before the reload goes on as it was.
	testutil.EchoOnce(t, before.c, "hello again\n")

	finishClient(t, after, "")
	finishClient(t, before, "")
	a := env.rec.flowOf(t, after.c)
	wantGeneral(t, a)
	b := env.rec.flowOf(t, before.c)
	wantLoop(t, b)
	if a.attrs["profile"] != "p" || b.attrs["profile"] != "p" {
		t.Fatalf("flows logged with profiles %q and %q, want p", a.attrs["profile"], b.attrs["profile"])
	}
}

func TestLoopServeStops(t *testing.T) {
	dest := unansweredAddr(t)
	env := newLoopEnv(t, nil)
	s := &Server{Engine: env.eng, Log: env.log}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	returned := false
	t.Cleanup(func() {
		cancel()
		if !returned {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
	})
	echo := echoAddr(t)
	relaying1, _ := loopConnect(t, addr, echo)
	relaying2, _ := loopConnect(t, addr, echo)
	testutil.EchoOnce(t, relaying1.c, "one\n")
	testutil.EchoOnce(t, relaying2.c, "two\n")
	greeted := dialRaw(t, addr)
	greeted.noAuth()
	dialing := dialRaw(t, addr)
	dialing.noAuth()
	dialing.send(connectReq(dest)...)
	waitHeld(t, s, 4, 0)
	time.Sleep(50 * time.Millisecond) // the loop reads the request and dials

	cancel()
	start := time.Now()
	select {
	case err := <-done:
		returned = true
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Serve did not return within 1s of its context ending")
	}
	t.Logf("Serve returned %v after the context ended", time.Since(start))
	if n := s.Active(); n != 0 {
		t.Fatalf("%d connections still counted as active after Serve returned", n)
	}
	for _, r := range []*rawClient{relaying1, relaying2, greeted, dialing} {
		r.c.SetReadDeadline(time.Now().Add(time.Second))
		var b [16]byte
		n, err := r.c.Read(b[:])
		if n > 0 || err == nil || isTimeout(err) {
			t.Fatalf("client %s read % x, %v: want its connection closed", r.c.LocalAddr(), b[:n], err)
		}
	}
	wantLoop(t, env.rec.flowOf(t, relaying1.c))
	wantLoop(t, env.rec.flowOf(t, relaying2.c))
	wantLoop(t, env.rec.flowOf(t, dialing.c))
}

func TestLoopGeneralOnly(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{GeneralOnly: true}
	addr := env.serve(t, s, "tcp")
	r, bound := loopConnect(t, addr, echoAddr(t))
	if !bound.Addr().IsLoopback() || bound.Port() == 0 {
		t.Fatalf("BND.ADDR/BND.PORT say %s", bound)
	}
	waitHeld(t, s, 0, 1)
	testutil.EchoOnce(t, r.c, "no loop\n")
	finishClient(t, r, "")
	rec := env.rec.flowOf(t, r.c)
	wantGeneral(t, rec)
	wantCounts(t, rec, 8, 8)
}

func TestLoopIdleTimeout(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{IdleTimeout: 200 * time.Millisecond}
	addr := env.serve(t, s, "tcp")
	r, _ := loopConnect(t, addr, echoAddr(t))
	waitHeld(t, s, 1, 0)
	testutil.EchoOnce(t, r.c, "ping\n")
	r.c.SetReadDeadline(time.Now().Add(time.Second))
	var b [16]byte
	n, err := r.c.Read(b[:])
	if n > 0 || err == nil || isTimeout(err) {
		t.Fatalf("read % x, %v: want the idle flow closed within 1s", b[:n], err)
	}
	wantLoop(t, env.rec.flowOf(t, r.c))
}

func TestLoopCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	const body = "hello from httptest through the loop\n"
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(web.Close)
	port := web.Listener.Addr().(*net.TCPAddr).Port
	env := newLoopEnv(t, map[string]string{"d": "direct"})
	addr := env.serve(t, &Server{Selector: funnel.Selector{Profile: "d"}}, "tcp")
	for _, c := range []struct {
		flag, host string
		loop       bool
	}{
		{"--socks5", "127.0.0.1", true},
		{"--socks5-hostname", "localhost", false},
	} {
		t.Run(c.flag, func(t *testing.T) {
			url := fmt.Sprintf("http://%s:%d/", c.host, port)
			out, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "5", c.flag, addr, url)
			if code != 0 || out != body {
				t.Fatalf("curl %s %s: exit %d, output %q, stderr %q; want %q", c.flag, url, code, out, errOut, body)
			}
			rec := env.rec.flowTo(t, net.JoinHostPort(c.host, strconv.Itoa(port)))
			if c.loop {
				wantLoop(t, rec)
			} else {
				wantGeneral(t, rec)
			}
			if rec.attrs["profile"] != "d" {
				t.Fatalf("flow log line %v, want profile d", rec)
			}
		})
	}
}

func sockAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// serverSide finds the descriptor of this process's socket from local to
// peer: the server's end of a client connection.
func serverSide(t testing.TB, local, peer netip.AddrPort) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.HasPrefix(link, "socket:") {
			continue
		}
		la, err1 := unix.Getsockname(fd)
		pa, err2 := unix.Getpeername(fd)
		if err1 == nil && err2 == nil && sockAddrPort(la) == local && sockAddrPort(pa) == peer {
			return fd
		}
	}
	t.Fatalf("no socket from %s to %s in this process", local, peer)
	return -1
}

// On a listener not on loopback, socks5d leaves Go's default in force:
// TCP keepalive on every client connection (15s), so that the flows of a
// client that vanished behind a middlebox end. The loop's clients must
// get it as the general path's do. The listener is on our side of a veth
// pair the test makes: a local address that is not loopback.
func TestLoopClientKeepalive(t *testing.T) {
	ns := newNetns(t)
	port, _ := testutil.DualStackEcho(t, "")
	echo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	for _, c := range []struct {
		name    string
		general bool // GeneralOnly
		byName  bool // a DOMAINNAME request, which the loop hands over
	}{
		{"general only", true, false},
		{"served by the loop", false, false},
		{"handed over by the loop", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := newLoopEnv(t, nil)
			s := &Server{Engine: env.eng, Log: env.log, GeneralOnly: c.general}
			l, err := net.Listen("tcp", net.JoinHostPort(ns.hostIP, "0"))
			if err != nil {
				t.Fatal(err)
			}
			serveOn(t, s, l)
			addr := l.Addr().(*net.TCPAddr).AddrPort()
			var r *rawClient
			if c.byName {
				r = dialRaw(t, addr.String())
				r.noAuth()
				r.send(nameReq(socks5wire.CmdConnect, "localhost", port)...)
				if code, _ := r.readReply(); code != 0 {
					t.Fatalf("reply %d, want 0", code)
				}
			} else {
				r, _ = loopConnect(t, addr.String(), echo)
			}
			loopServed := !c.general && !c.byName
			if loopServed {
				waitHeld(t, s, 1, 0)
			} else {
				waitHeld(t, s, 0, 1)
			}
			fd := serverSide(t, addr, r.c.LocalAddr().(*net.TCPAddr).AddrPort())
			on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			if err != nil {
				t.Fatal(err)
			}
			idle, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			testutil.EchoOnce(t, r.c, "alive\n")
			finishClient(t, r, "")
			rec := env.rec.flowOf(t, r.c)
			if loopServed {
				wantLoop(t, rec)
			} else {
				wantGeneral(t, rec)
			}
			if on != 1 || idle != 15 {
				t.Fatalf("the server's end of a client connection has SO_KEEPALIVE=%d TCP_KEEPIDLE=%d, want 1 and 15 (Go's default for an accepted connection)", on, idle)
			}
		})
	}
}

// proxychains4 is how most programs meet socks5d; with a literal address
// and profile direct, its flows are the loop's.
func TestLoopProxychains(t *testing.T) {
	pc := testutil.NeedTool(t, "proxychains4")
	curl := testutil.NeedTool(t, "curl")
	const body = "hello from httptest through proxychains and the loop\n"
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(web.Close)
	port := web.Listener.Addr().(*net.TCPAddr).Port
	env := newLoopEnv(t, map[string]string{"d": "direct"})
	addr := env.serve(t, &Server{Selector: funnel.Selector{Profile: "d"}}, "tcp")
	host, pport, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "proxychains.conf")
	text := "strict_chain\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks5 " + host + " " + pport + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	out, errOut, code := runTool(t, nil, pc, "-q", "-f", conf, curl, "-sS", "--max-time", "10", url)
	if code != 0 || out != body {
		t.Fatalf("proxychains4 curl %s: exit %d, output %q, stderr %q; want %q", url, code, out, errOut, body)
	}
	wantLoop(t, env.rec.flowTo(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))))
}

// Arbitrary bytes from many clients at once, cut at arbitrary points: the
// loop must answer or hand over each and close it, and keep serving. The
// inputs are SOCKS5-shaped more often than not, so that every state of the
// loop's parser sees garbage, not just the first byte.
func TestLoopArbitraryInput(t *testing.T) {
	env := newLoopEnv(t, nil)
	s := &Server{HandshakeTimeout: 2 * time.Second}
	addr := env.serve(t, s, "tcp")
	echo := plainEcho(t)
	rng := rand.New(rand.NewPCG(4, 2))
	inputs := make([][]byte, 600)
	for i := range inputs {
		var b []byte
		switch rng.IntN(4) {
		case 0: // noise
			b = make([]byte, rng.IntN(40))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
		default: // a valid CONNECT with some bytes changed, cut somewhere
			b = append([]byte{5, 1, 0}, connectReq(echo)...)
			for range rng.IntN(3) {
				b[rng.IntN(len(b))] = byte(rng.IntN(256))
			}
			b = b[:rng.IntN(len(b)+1)]
			if rng.IntN(3) == 0 {
				b = append(b, "ping"...)
			}
		}
		inputs[i] = b
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, in := range inputs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(in)
			// Done sending: the server sees the end of the input
			// wherever it is (a relay then ends when the echo does).
			c.(*net.TCPConn).CloseWrite()
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("input % x: %v (want the server to close)", in, err)
			}
		}()
	}
	wg.Wait()
	// Still serving, and nothing left behind.
	r, _ := loopConnect(t, addr, echo)
	testutil.EchoOnce(t, r.c, "after the noise\n")
	r.c.Close()
	waitHeld(t, s, 0, 0)
}

package rewrite_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/rewrite"
)

func dest(t *testing.T, a net.Addr) funnel.Addr {
	t.Helper()
	return funnel.AddrFromNet(a)
}

// TestEchoBothDirections sends text to a real echo server through two
// chained rewrites: the upper one rewrites what the application writes,
// the lower one what comes back, and a match cut across writes and a tail
// held at the half-close both arrive.
func TestEchoBothDirections(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, `rewrite from=cat to=dog dir=up | rewrite from=dog to=bird dir=down`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, part := range []string{"the c", "at sat", " with a dog, ", "the c"} {
		if _, err := io.WriteString(c, part); err != nil {
			t.Fatal(err)
		}
	}
	// The final "c" may begin "cat": only the half-close lets it go.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "the bird sat with a bird, the c"; string(got) != want {
		t.Fatalf("echo came back as %q, want %q", got, want)
	}
}

// TestEchoInteractive: a line that cannot begin a match is not held back,
// so a request/response exchange does not stall.
func TestEchoInteractive(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, `rewrite from='password: [^\n]*' to='password: ***' regex=true`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	for _, tc := range []struct{ send, want string }{
		{"user: alice\n", "user: alice\n"},
		{"password: hunter2\n", "password: ***\n"},
		{"bye\n", "bye\n"},
	} {
		io.WriteString(c, tc.send)
		n, err := io.ReadAtLeast(c, buf, len(tc.want))
		if err != nil {
			t.Fatalf("after sending %q: %v", tc.send, err)
		}
		if string(buf[:n]) != tc.want {
			t.Fatalf("sent %q, got back %q, want %q", tc.send, buf[:n], tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ chain, want string }{
		{`rewrite to=x`, `test:1:1: piece "rewrite": needs from=TEXT`},
		{`rewrite from=a dir=sideways`, `test:1:20: piece "rewrite": dir: "sideways" is not up, down or both`},
		{`rewrite from='a(' regex=true`, `test:1:14: piece "rewrite": from: error parsing regexp`},
		{`rewrite from='x*' regex=true`, `can match the empty string`},
		{`rewrite from=abcdef max=4`, `piece "rewrite": from: 6 bytes long, longer than max=4`},
		{`rewrite from=a max=lots`, `piece "rewrite": max: "lots" is not a size`},
		{`rewrite from=a regex=maybe`, `regex: "maybe" is not true or false`},
		{`rewrite from=a hold=soon`, `piece "rewrite": hold: "soon" is not a duration`},
		{`rewrite from=a hold=1m`, `piece "rewrite": hold: "1m" is longer than 10s: a held byte would stall the protocol that sent it`},
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: tc.chain}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.chain, err, tc.want)
		}
	}
}

// httpOrigin serves a fixed page on loopback.
func httpOrigin(t *testing.T) net.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from the origin server, path %s\n", r.URL.Path)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr()
}

// forward accepts connections and carries each through pl to target, the
// way `funtun forward` does: outgoing flows with pl.DialStream and
// funnel.Relay, or with --inbound the engine's ServeInbound.
func forward(t *testing.T, pl *funnel.Pipeline, target net.Addr, inbound bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	engine := &funnel.Engine{Log: slog.New(slog.DiscardHandler)}
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				f := funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(target))
				f.Log = engine.Log
				if inbound {
					engine.ServeInbound(ctx, f, pl, client, func(ctx context.Context) (net.Conn, error) {
						var d net.Dialer
						return d.DialContext(ctx, "tcp", target.String())
					})
					return
				}
				engine.ServeStream(ctx, f, pl, client)
			}()
		}
	}()
	return l.Addr().String()
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	bin := testutil.NeedTool(t, "curl")
	args = append([]string{"-sS", "--max-time", "10"}, args...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCurlResponseRewritten: a real curl talks to a real HTTP server
// through the piece; the request path is rewritten on the way up and the
// response body (same length, so Content-Length still holds) on the way
// down.
func TestCurlResponseRewritten(t *testing.T) {
	origin := httpOrigin(t)
	pl := testutil.Pipeline(t, `rewrite dir=up from='GET /old' to='GET /brand-new' | rewrite dir=down regex=true from='(o)rigin' to='${1}RIGIN'`)
	addr := forward(t, pl, origin, false)
	got := curl(t, "http://"+addr+"/old")
	if want := "Hello from the oRIGIN server, path /brand-new\n"; got != want {
		t.Fatalf("curl got %q, want %q", got, want)
	}
}

// TestCurlInbound: on an incoming flow the application is the local server,
// so its response travels up: dir=up rewrites what the client receives.
func TestCurlInbound(t *testing.T) {
	origin := httpOrigin(t)
	pl := testutil.Pipeline(t, `rewrite dir=up from=origin to=ORIGIN`)
	addr := forward(t, pl, origin, true)
	got := curl(t, "http://"+addr+"/in")
	if want := "Hello from the ORIGIN server, path /in\n"; got != want {
		t.Fatalf("curl got %q, want %q", got, want)
	}
}

// dialThrough opens a flow through chain to an echo server.
func dialThrough(t *testing.T, chain string) net.Conn {
	t.Helper()
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, chain)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readN reads n bytes, or what comes within d.
func readN(c net.Conn, n int, d time.Duration) string {
	buf := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	got, _ := io.ReadFull(c, buf)
	return string(buf[:got])
}

// TestPartialMatchIsReleased: a message that ends in the beginning of a
// match comes back whole, both ways held and released within hold.
func TestPartialMatchIsReleased(t *testing.T) {
	c := dialThrough(t, `rewrite from=hello to=HELLO`)
	start := time.Now()
	io.WriteString(c, "say hel")
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadAtLeast(c, buf, len("say hel"))
	if err != nil {
		t.Fatalf("%v after %q came back", err, buf[:n])
	}
	took := time.Since(start)
	if string(buf[:n]) != "say hel" || took > 200*time.Millisecond {
		t.Fatalf("%q came back after %v, want %q within 200ms", buf[:n], took, "say hel")
	}
	t.Logf("%q came back in %v", buf[:n], took)
	// The released bytes are no match's beginning: the next "lo" is text.
	io.WriteString(c, "lo, hello\n")
	if got := readN(c, len("lo, HELLO\n"), time.Second); got != "lo, HELLO\n" {
		t.Fatalf("then %q, want %q", got, "lo, HELLO\n")
	}
}

// TestSplitMatchWithinHold: a match cut across two writes a few
// milliseconds apart is still replaced; one cut by a pause longer than
// hold is not (its first part has gone out). hold=100ms in the first case
// leaves a loaded machine room to schedule the second write in time.
func TestSplitMatchWithinHold(t *testing.T) {
	for _, tc := range []struct {
		chain string
		pause time.Duration
		want  string
	}{
		{`rewrite from=hello to=HELLO dir=up hold=100ms`, 5 * time.Millisecond, "say HELLO\n"},
		{`rewrite regex=true from='hel+o' to=HELLO dir=up hold=100ms`, 5 * time.Millisecond, "say HELLO\n"},
		{`rewrite from=hello to=HELLO dir=up`, 200 * time.Millisecond, "say hello\n"},
		{`rewrite regex=true from='hel+o' to=HELLO dir=up`, 200 * time.Millisecond, "say hello\n"},
		{`rewrite from=hello to=HELLO dir=up hold=0`, 5 * time.Millisecond, "say hello\n"},
	} {
		c := dialThrough(t, tc.chain)
		io.WriteString(c, "say hel")
		time.Sleep(tc.pause)
		io.WriteString(c, "lo\n")
		if got := readN(c, len(tc.want), time.Second); got != tc.want {
			t.Errorf("%s, writes %v apart: %q came back, want %q", tc.chain, tc.pause, got, tc.want)
		}
	}
}

// TestSplitMatchDown: the same on the way back, where Read waits for the
// rest of a match at most hold.
func TestSplitMatchDown(t *testing.T) {
	srv, client := net.Pipe()
	defer srv.Close()
	r := wrapForTest(t, `rewrite from=hello to=HELLO dir=down hold=100ms`, client)
	go func() {
		io.WriteString(srv, "say hel")
		time.Sleep(5 * time.Millisecond)
		io.WriteString(srv, "lo\n")
		time.Sleep(300 * time.Millisecond)
		io.WriteString(srv, "say hel")
		time.Sleep(300 * time.Millisecond)
		io.WriteString(srv, "lo\n")
	}()
	if got := readN(r, len("say HELLO\n"), 200*time.Millisecond); got != "say HELLO\n" {
		t.Errorf("split 5ms apart: %q, want %q", got, "say HELLO\n")
	}
	if got := readN(r, len("say hel"), 600*time.Millisecond); got != "say hel" {
		t.Errorf("then %q, want the held %q released after hold", got, "say hel")
	}
	if got := readN(r, len("lo\n"), time.Second); got != "lo\n" {
		t.Errorf("then %q, want %q", got, "lo\n")
	}
}

// TestCallerDeadline: a read deadline the caller sets still ends a Read
// in time even while bytes are held, and the held bytes come with a later
// Read; rewrite sets no deadline on the connection below.
func TestCallerDeadline(t *testing.T) {
	srv, client := net.Pipe()
	defer srv.Close()
	r := wrapForTest(t, `rewrite from=hello to=HELLO dir=down hold=300ms`, client)
	go io.WriteString(srv, "say hel")
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if string(buf[:n]) != "say " || err != nil {
		t.Fatalf("first Read: %q, %v", buf[:n], err)
	}
	r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	n, err = r.Read(buf)
	if !isTimeout(err) || n != 0 || time.Since(start) > 250*time.Millisecond {
		t.Fatalf("Read with a 20ms deadline: %q, %v after %v; want a timeout before hold", buf[:n], err, time.Since(start))
	}
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = r.Read(buf)
	if string(buf[:n]) != "hel" || err != nil {
		t.Fatalf("after hold: %q, %v; want %q", buf[:n], err, "hel")
	}
	// The stream goes on; the end still flushes.
	go func() { io.WriteString(srv, "lo hel"); srv.Close() }()
	got, err := io.ReadAll(r)
	if string(got) != "lo hel" || err != nil {
		t.Fatalf("at the end: %q, %v", got, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && errors.As(err, &ne) && ne.Timeout()
}

// wrapForTest puts the first piece of chain, a rewrite, around c the way
// an incoming flow is wrapped.
func wrapForTest(t *testing.T, chain string, c net.Conn) net.Conn {
	t.Helper()
	info, ok := funnel.Lookup("rewrite")
	if !ok {
		t.Fatal("no rewrite piece")
	}
	spec, err := funnel.ParseChain("test", chain)
	if err != nil {
		t.Fatal(err)
	}
	p, err := info.New(funnel.ParamsOf(spec[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := p.(funnel.StreamAcceptor).AcceptStream(context.Background(), funnel.NewFlow("test", funnel.TCP, funnel.Addr{}), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// requestResponse is a python3 client of a request/response protocol
// whose requests end in the beginning of a match: it waits for each answer
// (the echo) before it sends the next request, so a held byte would stall
// it. It prints the slowest round.
const requestResponse = `
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(3)
worst = 0
begin = time.monotonic()
for i in range(30):
    msg = ("req %d: say hello, then hel" if i % 2 else "req %d: the wor").encode() % i
    start = time.monotonic()
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        try:
            b = s.recv(4096)
        except socket.timeout:
            sys.exit("round %d stalled: sent %r, got %r" % (i, msg, got))
        if not b:
            sys.exit("round %d: connection closed after %r" % (i, got))
        got += b
    want = msg.replace(b"hello", b"HELLO")
    if got != want:
        sys.exit("round %d: sent %r, got %r, want %r" % (i, msg, got, want))
    worst = max(worst, time.monotonic() - start)
print("30 rounds in %.0f ms, slowest %.0f ms" % ((time.monotonic() - begin) * 1000, worst * 1000))
`

// TestRequestResponseDoesNotStall: 30 rounds of a request/response
// protocol through the engine's relay, with literal and regex rewrites
// both ways, where every request ends in a prefix of a pattern.
func TestRequestResponseDoesNotStall(t *testing.T) {
	python := testutil.NeedTool(t, "python3")
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, `rewrite from=hello to=HELLO | rewrite regex=true from='wor[a-z]*ld' to=WORLD`)
	addr := forward(t, pl, echo, false)
	_, port, _ := net.SplitHostPort(addr)
	start := time.Now()
	out, err := exec.Command(python, "-c", requestResponse, port).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("%s(%v in all)", out, time.Since(start).Round(time.Millisecond))
}

// TestCloseWithHeldBytes: Close sends what is held at once, and the hold
// timer that was running finds nothing left to do.
func TestCloseWithHeldBytes(t *testing.T) {
	srv, client := net.Pipe()
	defer srv.Close()
	w := wrapForTest(t, `rewrite from=hello to=HELLO dir=up hold=30ms`, client)
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(srv)
		got <- string(b)
	}()
	io.WriteString(w, "say hel")
	w.Close()
	if g := <-got; g != "say hel" {
		t.Fatalf("the peer got %q, want %q", g, "say hel")
	}
	time.Sleep(60 * time.Millisecond) // the timer fires on a closed conn
	if _, err := io.WriteString(w, "x"); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

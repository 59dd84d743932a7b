package proxyproto_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/proxyproto"
	proxyproto "github.com/pires/go-proxyproto"
)

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ chain, want string }{
		{"proxy-protocol version=3", `test:1:24: piece "proxy-protocol": version: "3" is not 1 or 2`},
		{"proxy-protocol timeout=0s", `piece "proxy-protocol": timeout: must be more than 0`},
		{"proxy-protocol timeout=soon", `piece "proxy-protocol": timeout: "soon" is not a duration`},
		{"proxy-protocol trust=10.0.0.0/8,nowhere", `piece "proxy-protocol": trust: "nowhere" is not a network`},
		{"proxy-protocol source=1.2.3.4", `piece "proxy-protocol" has no parameter "source"`},
	} {
		_, err := testutil.CompileChain(tc.chain)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got  %v\n want an error containing %q", tc.chain, err, tc.want)
		}
	}
	for _, ok := range []string{"proxy-protocol", "proxy-protocol version=1 timeout=1s trust=127.0.0.1,::1,10.0.0.0/8"} {
		if _, err := testutil.CompileChain(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// got is what a PROXY-protocol server saw on one connection.
type got struct {
	header *proxyproto.Header
	raw    []byte // the header's bytes as they came
	err    error
}

// headerServer accepts connections, reads a PROXY header from each (with
// go-proxyproto, as a server behind funtun would), reports it, and echoes
// the rest.
func headerServer(t *testing.T) (net.Addr, chan got) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan got, 4)
	testutil.Serve(t, l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		rec := &recorder{r: c}
		br := bufio.NewReader(rec)
		h, err := proxyproto.Read(br)
		raw := append([]byte(nil), rec.buf[:len(rec.buf)-br.Buffered()]...)
		ch <- got{h, raw, err}
		if err != nil {
			return
		}
		c.SetDeadline(time.Time{})
		io.Copy(c, br)
	})
	return l.Addr(), ch
}

type recorder struct {
	r   io.Reader
	buf []byte
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.buf = append(r.buf, b[:n]...)
	return n, err
}

func dial(t *testing.T, chain string, f *funnel.Flow) net.Conn {
	t.Helper()
	pl := testutil.Pipeline(t, chain)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, f)
	if err != nil {
		t.Fatalf("dial through %q: %v", chain, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func flowTo(t *testing.T, dest string, source net.Addr) *funnel.Flow {
	t.Helper()
	d, err := funnel.ParseAddr(dest)
	if err != nil {
		t.Fatal(err)
	}
	f := funnel.NewFlow("test", funnel.TCP, d)
	f.Source = source
	return f
}

func tcpAddr(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// Outgoing, v1 and v2: the server reads the flow's source and destination,
// the bytes after the header arrive untouched, and the piece hands back the
// kernel socket itself, so the relay can splice.
func TestOutgoing(t *testing.T) {
	for _, tc := range []struct {
		chain   string
		version byte
		src     string
	}{
		{"proxy-protocol", 2, "192.0.2.7:4321"},
		{"proxy-protocol version=2", 2, "[2001:db8::7]:4321"},
		{"proxy-protocol version=1", 1, "192.0.2.7:4321"},
		{"proxy-protocol version=1", 1, "[2001:db8::7]:4321"},
	} {
		t.Run(tc.chain+" "+tc.src, func(t *testing.T) {
			srv, seen := headerServer(t)
			c := dial(t, tc.chain, flowTo(t, srv.String(), tcpAddr(tc.src)))
			if _, ok := c.(*net.TCPConn); !ok {
				t.Errorf("DialStream returned %T, want the *net.TCPConn from below (splice)", c)
			}
			testutil.EchoOnce(t, c, "hello through the header")
			g := <-seen
			if g.err != nil {
				t.Fatal(g.err)
			}
			t.Logf("header %q", g.raw)
			if g.header.Version != tc.version || !g.header.Command.IsProxy() {
				t.Errorf("header version %d command %v, want v%d PROXY", g.header.Version, g.header.Command, tc.version)
			}
			src, dst, ok := g.header.TCPAddrs()
			if !ok {
				t.Fatalf("header %+v has no TCP addresses", g.header)
			}
			want := netip.MustParseAddrPort(tc.src)
			if got := src.AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != want {
				t.Errorf("header source %v, want %v", src, want)
			}
			if got := dst.AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != srv.(*net.TCPAddr).AddrPort() {
				t.Errorf("header destination %v, want %v", dst, srv)
			}
		})
	}
}

// A flow without an IP source (unknown, or a Unix socket's) sends v1's
// UNKNOWN and v2's LOCAL: the server then uses the connection's addresses.
func TestOutgoingUnknownSource(t *testing.T) {
	for _, tc := range []struct {
		chain string
		src   net.Addr
		raw   string
	}{
		{"proxy-protocol version=1", nil, "PROXY UNKNOWN\r\n"},
		{"proxy-protocol version=1", &net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, "PROXY UNKNOWN\r\n"},
		{"proxy-protocol", nil, "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"},
	} {
		srv, seen := headerServer(t)
		c := dial(t, tc.chain, flowTo(t, srv.String(), tc.src))
		testutil.EchoOnce(t, c, "x")
		g := <-seen
		if g.err != nil {
			t.Fatal(g.err)
		}
		if string(g.raw) != tc.raw || g.header.SourceAddr != nil {
			t.Errorf("%s with source %v: header %q (%+v), want %q", tc.chain, tc.src, g.raw, g.header, tc.raw)
		}
	}
}

// A destination that is a name (resolved below, by hosts here) goes in the
// header as the address the connection from below reached.
func TestOutgoingNamedDestination(t *testing.T) {
	srv, seen := headerServer(t)
	port := srv.(*net.TCPAddr).Port
	c := dial(t, "proxy-protocol | hosts demo.test=127.0.0.1", flowTo(t, "demo.test:"+strconv.Itoa(port), tcpAddr("198.51.100.1:999")))
	testutil.EchoOnce(t, c, "named")
	g := <-seen
	if g.err != nil {
		t.Fatal(g.err)
	}
	src, dst, _ := g.header.TCPAddrs()
	if src.String() != "198.51.100.1:999" || dst.String() != srv.String() {
		t.Errorf("header %v → %v, want 198.51.100.1:999 → %v", src, dst, srv)
	}
}

// accept runs the pipeline's AcceptStream on the server side of a fresh
// loopback connection after the client side wrote first.
func accept(t *testing.T, chain string, first []byte) (app net.Conn, client net.Conn, f *funnel.Flow, err error) {
	t.Helper()
	l, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	defer l.Close()
	client, lerr = net.Dial("tcp", l.Addr().String())
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { client.Close() })
	server, lerr := l.Accept()
	if lerr != nil {
		t.Fatal(lerr)
	}
	if len(first) > 0 {
		if _, err := client.Write(first); err != nil {
			t.Fatal(err)
		}
	}
	f = flowTo(t, "127.0.0.1:9", server.RemoteAddr())
	pl := testutil.Pipeline(t, chain)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	app, err = pl.AcceptStream(ctx, f, server)
	if err == nil {
		t.Cleanup(func() { app.Close() })
	}
	return app, client, f, err
}

func format(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	b, err := proxyproto.HeaderProxyFromAddrs(version, tcpAddr(src), tcpAddr(dst)).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Incoming: the header is read and stripped, its source becomes the
// flow's, bytes that came in with it are served first, and the half-close
// still reaches the client.
func TestIncoming(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first []byte
		src   string
		extra string
	}{
		{"v2 alone", format(t, 2, "203.0.113.9:55000", "127.0.0.1:443"), "203.0.113.9:55000", ""},
		{"v2 with data behind", append(format(t, 2, "[2001:db8::9]:1234", "[::1]:443"), "GET / HTTP/1.0\r\n\r\n"...), "[2001:db8::9]:1234", "GET / HTTP/1.0\r\n\r\n"},
		{"v1 with data behind", append(format(t, 1, "203.0.113.9:55000", "127.0.0.1:443"), "hello"...), "203.0.113.9:55000", "hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, client, f, err := accept(t, "proxy-protocol", tc.first)
			if err != nil {
				t.Fatal(err)
			}
			if f.Source.String() != tc.src {
				t.Errorf("flow source %v, want %s", f.Source, tc.src)
			}
			if tc.extra == "" {
				if _, ok := app.(*net.TCPConn); !ok {
					t.Errorf("with nothing behind the header AcceptStream returned %T, want the *net.TCPConn itself", app)
				}
			}
			app.SetDeadline(time.Now().Add(5 * time.Second))
			client.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(client, "more")
			want := tc.extra + "more"
			b := make([]byte, len(want))
			if _, err := io.ReadFull(app, b); err != nil || string(b) != want {
				t.Fatalf("application read %q, %v; want %q", b, err, want)
			}
			// Half-close toward the client: it sees EOF, and can still send.
			if _, ok := app.(interface{ CloseWrite() error }); !ok {
				t.Fatalf("%T has no CloseWrite", app)
			}
			io.WriteString(app, "bye")
			app.(interface{ CloseWrite() error }).CloseWrite()
			if b, err := io.ReadAll(client); err != nil || string(b) != "bye" {
				t.Errorf("client read %q, %v after the half-close; want bye and EOF", b, err)
			}
			io.WriteString(client, "still open")
			client.(*net.TCPConn).CloseWrite()
			if b, err := io.ReadAll(app); err != nil || string(b) != "still open" {
				t.Errorf("application read %q, %v after its half-close; want the client's bytes", b, err)
			}
		})
	}
}

// v2 LOCAL and v1 UNKNOWN (a proxy's own health check) leave the source alone.
func TestIncomingLocal(t *testing.T) {
	local, _ := proxyproto.HeaderProxyFromAddrs(2, nil, nil).Format()
	for _, first := range [][]byte{local, []byte("PROXY UNKNOWN\r\n")} {
		_, client, f, err := accept(t, "proxy-protocol", first)
		if err != nil {
			t.Fatal(err)
		}
		if f.Source.String() != client.LocalAddr().String() {
			t.Errorf("after %q the flow source is %v, want the connection's %v", first, f.Source, client.LocalAddr())
		}
	}
}

func TestIncomingRefused(t *testing.T) {
	_, _, _, err := accept(t, "proxy-protocol", []byte("GET / HTTP/1.0\r\n\r\n"))
	testutil.WantKind(t, err, funnel.KindDenied, "did not start with a PROXY protocol header")

	_, _, _, err = accept(t, "proxy-protocol", []byte("PROXY TCP4 1.2.3.4\r\n"))
	testutil.WantKind(t, err, funnel.KindGeneral, "bad PROXY header")

	start := time.Now()
	_, _, _, err = accept(t, "proxy-protocol timeout=200ms", nil)
	testutil.WantKind(t, err, funnel.KindTimeout, "within 200ms")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout=200ms took %v", d)
	}

	_, _, _, err = accept(t, "proxy-protocol trust=10.0.0.0/8", format(t, 2, "203.0.113.9:1", "127.0.0.1:2"))
	testutil.WantKind(t, err, funnel.KindDenied, "not in trust=")

	_, _, f, err := accept(t, "proxy-protocol trust=10.0.0.0/8,127.0.0.0/8", format(t, 2, "203.0.113.9:1", "127.0.0.1:2"))
	if err != nil || f.Source.String() != "203.0.113.9:1" {
		t.Errorf("trusted client: %v, source %v", err, f.Source)
	}
}

// The client goes away before sending: a cancelled flow ends the read at
// once.
func TestIncomingCancelled(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	client, _ := net.Dial("tcp", l.Addr().String())
	defer client.Close()
	server, _ := l.Accept()
	pl := testutil.Pipeline(t, "proxy-protocol timeout=1m")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := pl.AcceptStream(ctx, flowTo(t, "127.0.0.1:9", server.RemoteAddr()), server)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled accept: %v after %v", err, time.Since(start))
	}
	t.Logf("error as expected: %v", err)
}

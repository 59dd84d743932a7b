package httpconnect_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/httpconnect"
	_ "github.com/funtun/funtun/pieces/socks5"
)

func dial(t *testing.T, chain string, dest funnel.Addr) (net.Conn, error) {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: chain}})
	if err != nil {
		t.Fatalf("compile %q: %v", chain, err)
	}
	pl, _ := set.Profile("p")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest))
}

func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello through the proxy\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

func local(port uint16) funnel.Addr { return funnel.MakeAddr("127.0.0.1", port) }

// startTinyproxy runs tinyproxy in the foreground with extra config lines.
func startTinyproxy(t *testing.T, allow string, extra ...string) string {
	t.Helper()
	bin := testutil.NeedTool(t, "tinyproxy")
	port := testutil.FreePort(t)
	conf := filepath.Join(t.TempDir(), "tinyproxy.conf")
	text := fmt.Sprintf("Port %d\nListen 127.0.0.1\nAllow %s\nLogLevel Info\nMaxClients 20\nTimeout 60\n%s\n", port, allow, strings.Join(extra, "\n"))
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.StartDaemon(t, bin, "-d", "-c", conf)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testutil.WaitListen(t, addr)
	return addr
}

func TestConnectTinyproxy(t *testing.T) {
	proxy := startTinyproxy(t, "127.0.0.1")
	port, _ := testutil.DualStackEcho(t, "")
	for _, dest := range []funnel.Addr{local(port), funnel.MakeAddr("localhost", port)} {
		c, err := dial(t, "http-connect server="+proxy, dest)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		roundTrip(t, c)
		c.Close()
	}
}

// A destination that speaks first: its greeting must arrive whole, whether
// it came in the same read as the proxy's answer or after it.
func TestServerSpeaksFirst(t *testing.T) {
	proxy := startTinyproxy(t, "127.0.0.1")
	banner := "220 ready\r\n"
	port, _ := testutil.DualStackEcho(t, banner)
	c, err := dial(t, "http-connect server="+proxy, local(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(banner))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != banner {
		t.Fatalf("greeting %q, %v; want %q", got, err, banner)
	}
	roundTrip(t, c)
}

// fakeProxy answers CONNECT with answer in a single write, so that the
// bytes after the header reach the client in the same read, and then echoes.
// It hands the request it received to the test.
func fakeProxy(t *testing.T, answer string) (string, <-chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	requests := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var req strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			req.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		requests <- req.String()
		io.WriteString(c, answer)
		io.Copy(c, br)
	}()
	return l.Addr().String(), requests
}

func TestEarlyBytesKept(t *testing.T) {
	proxy, _ := fakeProxy(t, "HTTP/1.1 200 Connection established\r\nX-Note: hi\r\n\r\nearly bytes|")
	c, err := dial(t, "http-connect server="+proxy, funnel.MakeAddr("example.org", 443))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("early bytes|"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "early bytes|" {
		t.Fatalf("first bytes %q, %v", got, err)
	}
	roundTrip(t, c)
}

func TestRequestSendsNameAndAuth(t *testing.T) {
	for _, tc := range []struct {
		chain, want string
		dest        funnel.Addr
	}{
		{"", "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", funnel.MakeAddr("example.org", 443)},
		{" user=alice pass=open:sesame", "CONNECT [2001:db8::1]:22 HTTP/1.1\r\nHost: [2001:db8::1]:22\r\nProxy-Authorization: Basic YWxpY2U6b3BlbjpzZXNhbWU=\r\n\r\n", funnel.MakeAddr("2001:db8::1", 22)},
	} {
		proxy, requests := fakeProxy(t, "HTTP/1.1 200 OK\r\n\r\n")
		c, err := dial(t, "http-connect server="+proxy+tc.chain, tc.dest)
		if err != nil {
			t.Fatal(err)
		}
		if got := <-requests; got != tc.want {
			t.Errorf("request %q, want %q", got, tc.want)
		}
		// Nothing came after the answer, so the piece hands on the kernel
		// socket itself and the relay can splice.
		if _, ok := c.(*net.TCPConn); !ok {
			t.Errorf("connection is %T, not *net.TCPConn", c)
		}
		c.Close()
	}
}

func TestAuthTinyproxy(t *testing.T) {
	proxy := startTinyproxy(t, "127.0.0.1", "BasicAuth alice secret")
	port, _ := testutil.DualStackEcho(t, "")

	c, err := dial(t, "http-connect server="+proxy+" user=alice pass=secret", local(port))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()

	_, err = dial(t, "http-connect server="+proxy+" user=alice pass=wrong", local(port))
	testutil.WantKind(t, err, funnel.KindDenied, `authentication failed for user "alice"`)

	_, err = dial(t, "http-connect server="+proxy, local(port))
	testutil.WantKind(t, err, funnel.KindDenied, "requires authentication")
}

func TestErrorsTinyproxy(t *testing.T) {
	proxy := startTinyproxy(t, "127.0.0.1", "ConnectPort 443")
	port, _ := testutil.DualStackEcho(t, "")
	_, err := dial(t, "http-connect server="+proxy, local(port))
	testutil.WantKind(t, err, funnel.KindDenied, "the proxy denied access")

	open := startTinyproxy(t, "127.0.0.1")
	closed := uint16(testutil.FreePort(t))
	_, err = dial(t, "http-connect server="+open, local(closed))
	// tinyproxy says 500 for any failed connect, so the kind stays general;
	// its reason reaches the user.
	testutil.WantKind(t, err, funnel.KindGeneral, "Unable to connect")

	gone := testutil.FreePort(t)
	_, err = dial(t, fmt.Sprintf("http-connect server=127.0.0.1:%d", gone), local(port))
	testutil.WantKind(t, err, funnel.KindRefused, "reaching HTTP proxy")
}

func TestStatusKinds(t *testing.T) {
	for answer, kind := range map[string]funnel.Kind{
		"HTTP/1.1 502 Bad Gateway\r\n\r\n":           funnel.KindRefused,
		"HTTP/1.1 503 Service Unavailable\r\n\r\n":   funnel.KindRefused,
		"HTTP/1.1 504 Gateway Timeout\r\n\r\n":       funnel.KindTimeout,
		"HTTP/1.1 405 Method Not Allowed\r\n\r\n":    funnel.KindNotSupported,
		"HTTP/1.1 407 Proxy Auth Required\r\n\r\n":   funnel.KindDenied,
		"HTTP/1.1 418 I'm a teapot\r\n\r\n":          funnel.KindGeneral,
		"SSH-2.0-OpenSSH_9.6 not an HTTP server\r\n": funnel.KindGeneral,
	} {
		proxy, _ := fakeProxy(t, answer)
		_, err := dial(t, "http-connect server="+proxy, local(443))
		t.Logf("%v", err)
		if got := funnel.Classify(err); got != kind {
			t.Errorf("%q: %v is %s, want %s", answer, err, got, kind)
		}
	}
}

// A proxy that accepts and never answers: the CONNECT times out.
func TestTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	_, err = dial(t, "http-connect timeout=100ms server="+l.Addr().String(), local(443))
	testutil.WantKind(t, err, funnel.KindTimeout, "no answer to CONNECT 127.0.0.1:443 within timeout=100ms")
}

// `http-connect | socks5`: first reach microsocks, through it tinyproxy,
// through that the destination. tinyproxy admits only 127.0.0.2, where
// microsocks connects from, so only the whole chain gets through.
func TestChainHTTPThroughSocks(t *testing.T) {
	micro := testutil.StartMicrosocks(t, "-b", "127.0.0.2")
	proxy := startTinyproxy(t, "127.0.0.2")
	port, peers := testutil.DualStackEcho(t, "")

	c, err := dial(t, "http-connect server="+proxy, local(port))
	if err == nil {
		c.Close()
		t.Fatal("tinyproxy let us in directly; the chain test would prove nothing")
	}
	t.Logf("directly: %v", err)
	c, err = dial(t, "http-connect server="+proxy+" | socks5 server="+micro, local(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	if peer := <-peers; peer != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("echo server saw %s, want tinyproxy at 127.0.0.1", peer)
	}
}

// `socks5 | http-connect`: through tinyproxy to microsocks, through that to
// the destination, which sees microsocks' bind address.
func TestChainSocksThroughHTTP(t *testing.T) {
	micro := testutil.StartMicrosocks(t, "-b", "127.0.0.3")
	proxy := startTinyproxy(t, "127.0.0.1")
	port, peers := testutil.DualStackEcho(t, "")
	c, err := dial(t, "socks5 server="+micro+" | http-connect server="+proxy, local(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	if peer := <-peers; peer != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("echo server saw %s, want microsocks at 127.0.0.3", peer)
	}
}

func TestParams(t *testing.T) {
	for chain, want := range map[string]string{
		"http-connect":                                 "needs server=HOST:PORT",
		"http-connect server=proxy":                    "want HOST:PORT",
		"http-connect server=127.0.0.1:3128 pass=x":    "a password needs user=",
		"http-connect server=127.0.0.1:3128 user=a:b":  "cannot hold ':'",
		"http-connect server=127.0.0.1:3128 timeout=x": "not a duration",
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: chain}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one saying %q", chain, err, want)
		}
	}
}

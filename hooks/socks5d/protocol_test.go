package socks5d

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
)

// whoServer tells each client the address it sees the client at, then
// echoes.
func whoServer(t testing.TB, network string) netip.AddrPort {
	t.Helper()
	host := "127.0.0.1:0"
	if network == "tcp6" {
		host = "[::1]:0"
	}
	l, err := net.Listen(network, host)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		io.WriteString(c, c.RemoteAddr().String()+"\n")
		io.Copy(c, c)
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func TestConnectReportsTheRealBoundAddress(t *testing.T) {
	for _, network := range []string{"tcp", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			eng := testEngine(t, nil)
			addr := startServer(t, &Server{Engine: eng}, network)
			who := whoServer(t, network)
			r := dialRaw(t, addr)
			r.noAuth()
			r.send(connectReq(who)...)
			code, bound := r.readReply()
			if code != 0 {
				t.Fatalf("reply %d, want 0", code)
			}
			line, err := bufio.NewReader(r.c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			seen := strings.TrimSpace(line)
			if bound.String() != seen {
				t.Fatalf("BND.ADDR/BND.PORT say %s; the server saw the connection come from %s", bound, seen)
			}
		})
	}
}

// A client that sends greeting, request and data in one go (optimistic
// data) must not lose the data: the handshake reads from the socket
// without a buffered reader, and hands what is left to the upstream.
func TestPipelinedDataIsKept(t *testing.T) {
	addr := simpleServer(t)
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	r := dialRaw(t, addr)
	msg := append([]byte{5, 1, 0}, connectReq(echo)...)
	msg = append(msg, "hello, pipelined\n"...)
	r.send(msg...)
	r.expect(5, 0)
	if code, _ := r.readReply(); code != 0 {
		t.Fatalf("reply %d, want 0", code)
	}
	r.expect([]byte("HOWDY, pipelined\n")...)
}

func TestReplyCodes(t *testing.T) {
	eng := testEngine(t, nil)
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(closedPort(t)))
	deniedChain := "deny to=port:" + strconv.Itoa(int(echo.Port())) + " | " + actingChain
	cases := []struct {
		name  string
		chain string
		req   []byte
		want  byte
	}{
		{"refused", actingChain, connectReq(closed), 5},
		{"denied by deny piece", deniedChain, connectReq(echo), 2},
		{"unknown name", actingChain, nameReq(1, "nosuch.test", 80), 4},
		{"empty name", actingChain, []byte{5, 1, 0, 3, 0, 0, 80}, 4},
		{"unsupported command", actingChain, []byte{5, 9, 0, 1, 127, 0, 0, 1, 0, 80}, 7},
		{"bad address type", actingChain, []byte{5, 1, 0, 2, 127, 0, 0, 1, 0, 80}, 8},
		{"wrong request version", actingChain, []byte{4, 1, 0, 1, 127, 0, 0, 1, 0, 80}, 1},
		{"UDP through a stream-only profile", "rewrite from=hello to=HOWDY", []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := startServer(t, &Server{Engine: eng, Selector: funnel.Selector{Chain: c.chain}}, "tcp")
			r := dialRaw(t, addr)
			r.noAuth()
			r.send(c.req...)
			code, bound := r.readReply()
			if code != c.want {
				t.Fatalf("reply %d, want %d", code, c.want)
			}
			if bound != netip.AddrPortFrom(netip.IPv4Unspecified(), 0) {
				t.Errorf("a failure reply carries %s, want 0.0.0.0:0", bound)
			}
			r.expectClosed()
		})
	}
}

func TestGreetingErrorsClose(t *testing.T) {
	addr := simpleServer(t)
	t.Run("SOCKS4", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(4, 1, 0, 80, 127, 0, 0, 1, 0)
		r.expectClosed()
	})
	t.Run("no methods", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(5, 0)
		r.expectClosed()
	})
	t.Run("only password, no --users", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(5, 1, 2)
		r.expect(5, 0xff)
		r.expectClosed()
	})
}

func TestHandshakeDeadline(t *testing.T) {
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, HandshakeTimeout: 200 * time.Millisecond}, "tcp")
	t.Run("half a greeting", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(5)
		r.expectClosed()
	})
	t.Run("half a request", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(5, 1, 0, 1, 127)
		r.expectClosed()
	})
}

func TestMaxConnsRefusesAtOnce(t *testing.T) {
	eng := testEngine(t, nil)
	s := &Server{Engine: eng, MaxConns: 2, HandshakeTimeout: time.Minute}
	addr := startServer(t, s, "tcp")
	// Each sends the first byte of its greeting: the event loop's
	// listener accepts a client only once it has spoken (TCP_DEFER_ACCEPT).
	a, b := dialRaw(t, addr), dialRaw(t, addr)
	a.send(5)
	b.send(5)
	waitActive(t, s, 2)
	over := dialRaw(t, addr)
	over.send(5, 1, 0)
	over.expectClosed()
	b.c.Close()
	waitActive(t, s, 1)
	again := dialRaw(t, addr)
	again.noAuth()
	a.send(1, 0)
	a.expect(5, 0)
}

func waitActive(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Active() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections active after 10s, want %d", s.Active(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAllowList(t *testing.T) {
	eng := testEngine(t, nil)
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	outside := startServer(t, &Server{Engine: eng, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "tcp")
	t.Run("refused with reply 2", func(t *testing.T) {
		r := dialRaw(t, outside)
		r.noAuth()
		r.send(connectReq(echo)...)
		if code, _ := r.readReply(); code != 2 {
			t.Fatalf("reply %d, want 2", code)
		}
		r.expectClosed()
	})
	t.Run("refused without a method", func(t *testing.T) {
		r := dialRaw(t, outside)
		r.send(5, 1, 2)
		r.expect(5, 0xff)
		r.expectClosed()
	})
	inside := startServer(t, &Server{Engine: eng, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, "tcp")
	t.Run("allowed", func(t *testing.T) {
		r := dialRaw(t, inside)
		r.noAuth()
		r.send(connectReq(echo)...)
		if code, _ := r.readReply(); code != 0 {
			t.Fatalf("reply %d, want 0", code)
		}
	})
}

func TestUsernamePassword(t *testing.T) {
	eng := testEngine(t, map[string]string{"work": "rewrite from=hello to=WORK"})
	users := writeUsers(t, "alice:secret", "bob:hunter2:work")
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: actingChain}}
	s.SetUsers(mustLoadUsers(t, users))
	addr := startServer(t, s, "tcp")
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	login := func(t *testing.T, user, pass string) *rawClient {
		r := dialRaw(t, addr)
		r.send(5, 2, 0, 2)
		r.expect(5, 2)
		msg := []byte{1, byte(len(user))}
		msg = append(msg, user...)
		msg = append(msg, byte(len(pass)))
		msg = append(msg, pass...)
		r.send(msg...)
		return r
	}
	t.Run("no auth offered", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(5, 1, 0)
		r.expect(5, 0xff)
		r.expectClosed()
	})
	for _, c := range []struct{ user, pass string }{{"alice", "wrong"}, {"mallory", "secret"}, {"", ""}} {
		t.Run("rejected "+c.user, func(t *testing.T) {
			r := login(t, c.user, c.pass)
			r.expect(1, 1)
			r.expectClosed()
		})
	}
	// Each user's flows take the user's profile: alice has none in the
	// file (the command's chain), bob has "work".
	for _, c := range []struct{ user, pass, want string }{
		{"alice", "secret", "HOWDY"}, {"alice", "secret", "HOWDY"}, {"bob", "hunter2", "WORK"},
	} {
		t.Run("accepted "+c.user, func(t *testing.T) {
			r := login(t, c.user, c.pass)
			r.expect(1, 0)
			r.send(connectReq(echo)...)
			if code, _ := r.readReply(); code != 0 {
				t.Fatalf("reply %d, want 0", code)
			}
			r.send([]byte("hello\n")...)
			r.expect([]byte(c.want + "\n")...)
		})
	}
}

func TestIdleTimeoutEndsQuietFlows(t *testing.T) {
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, IdleTimeout: 200 * time.Millisecond}, "tcp")
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	r := dialRaw(t, addr)
	r.noAuth()
	r.send(connectReq(echo)...)
	if code, _ := r.readReply(); code != 0 {
		t.Fatalf("reply %d, want 0", code)
	}
	r.send([]byte("ping\n")...)
	r.expect([]byte("ping\n")...)
	r.expectClosed()
}

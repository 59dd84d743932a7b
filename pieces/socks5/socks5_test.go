package socks5_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/socks5"
)

func dial(t *testing.T, chain string, dest funnel.Addr) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return testutil.Pipeline(t, chain).DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest))
}

// roundTrip sends a line and expects it echoed.
func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello through the funnel\n")
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

func TestConnectMicrosocks(t *testing.T) {
	server := testutil.StartMicrosocks(t)
	port, _ := testutil.DualStackEcho(t, "")
	for _, dest := range []funnel.Addr{local(port), funnel.MakeAddr("localhost", port)} {
		c, err := dial(t, "socks5 server="+server, dest)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		roundTrip(t, c)
		// Nothing touches the bytes, so the relay must still see a kernel
		// socket it can splice.
		if _, ok := c.(*net.TCPConn); !ok {
			t.Errorf("connection is %T, not *net.TCPConn", c)
		}
		c.Close()
	}
}

func TestConnectDanted(t *testing.T) {
	server := testutil.StartDanted(t, "127.0.0.1/32", "lo")
	port, _ := testutil.DualStackEcho(t, "")
	for _, dest := range []funnel.Addr{local(port), funnel.MakeAddr("localhost", port)} {
		c, err := dial(t, "socks5 server="+server, dest)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		roundTrip(t, c)
		c.Close()
	}
}

// The piece nearest the network is the first hop. danted here accepts only
// clients from 127.0.0.2, where microsocks connects from, so the flow can
// only succeed by going through microsocks first.
func TestChainMicrosocksThenDanted(t *testing.T) {
	micro := testutil.StartMicrosocks(t, "-b", "127.0.0.2")
	dante := testutil.StartDanted(t, "127.0.0.2/32", "lo")
	port, peers := testutil.DualStackEcho(t, "")

	if c, err := dial(t, "socks5 server="+dante, local(port)); err == nil {
		c.Close()
		t.Fatal("danted accepted us directly; the chain test would prove nothing")
	}
	c, err := dial(t, "socks5 server="+dante+" | socks5 server="+micro, local(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	// danted's external side is lo; microsocks would have come from 127.0.0.2.
	if peer := <-peers; peer != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("echo server saw %s, want danted at 127.0.0.1", peer)
	}
}

// Two microsocks: the outer one (first in the chain) connects to the echo
// server from 127.0.0.3; the inner one wants a password, and a wrong one
// breaks the chain, which shows the flow really passes it.
func TestChainTwoMicrosocks(t *testing.T) {
	inner := testutil.StartMicrosocks(t, "-u", "alice", "-P", "secret")
	outer := testutil.StartMicrosocks(t, "-b", "127.0.0.3")
	port, peers := testutil.DualStackEcho(t, "")

	c, err := dial(t, "socks5 server="+outer+" | socks5 server="+inner+" user=alice pass=secret", local(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	if peer := <-peers; peer != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("echo server saw %s, want the outer microsocks at 127.0.0.3", peer)
	}

	_, err = dial(t, "socks5 server="+outer+" | socks5 server="+inner+" user=alice pass=wrong", local(port))
	testutil.WantKind(t, err, funnel.KindDenied, "authentication failed")
}

func TestAuthMicrosocks(t *testing.T) {
	server := testutil.StartMicrosocks(t, "-u", "alice", "-P", "secret")
	port, _ := testutil.DualStackEcho(t, "")

	c, err := dial(t, "socks5 server="+server+" user=alice pass=secret", local(port))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()

	_, err = dial(t, "socks5 server="+server+" user=alice pass=wrong", local(port))
	testutil.WantKind(t, err, funnel.KindDenied, `authentication failed for user "alice"`)

	_, err = dial(t, "socks5 server="+server, local(port))
	testutil.WantKind(t, err, funnel.KindDenied, "requires authentication")
}

func TestRefused(t *testing.T) {
	closed := uint16(testutil.FreePort(t))
	for name, server := range map[string]string{
		"microsocks": testutil.StartMicrosocks(t),
		"danted":     testutil.StartDanted(t, "127.0.0.1/32", "lo"),
	} {
		_, err := dial(t, "socks5 server="+server, local(closed))
		t.Logf("%s: %v", name, err)
		if got := funnel.Classify(err); got != funnel.KindRefused {
			t.Errorf("%s: error %v is %s, want %s", name, err, got, funnel.KindRefused)
		}
	}
}

func TestServerNotThere(t *testing.T) {
	closed := testutil.FreePort(t)
	_, err := dial(t, fmt.Sprintf("socks5 server=127.0.0.1:%d", closed), local(80))
	testutil.WantKind(t, err, funnel.KindRefused, "reaching socks5 server")
}

// A server that accepts and never answers: the handshake times out.
func TestHandshakeTimeout(t *testing.T) {
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
	_, err = dial(t, "socks5 timeout=100ms server="+l.Addr().String(), local(80))
	testutil.WantKind(t, err, funnel.KindTimeout, "no answer to the handshake within timeout=100ms")
}

func udpEcho(t *testing.T) uint16 {
	t.Helper()
	a := testutil.UDPEchoServer(t)
	// The same port on ::1, for "localhost" resolved either way.
	if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback, Port: a.Port}); err == nil {
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDP(buf)
				if err != nil {
					return
				}
				c.WriteToUDP(buf[:n], from)
			}
		}()
	}
	return uint16(a.Port)
}

func dgramRoundTrips(t *testing.T, dc funnel.DgramConn, from netip.AddrPort) {
	t.Helper()
	for i := range 3 {
		msg := fmt.Appendf(nil, "datagram %d", i)
		fr := funnel.NewFrame()
		fr.SetLen(copy(fr.Room(), msg))
		if err := dc.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
		dc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := dc.ReadFrame()
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(got.Bytes(), msg) {
			t.Errorf("got %q, want %q", got.Bytes(), msg)
		}
		if from.IsValid() && got.Src != from {
			t.Errorf("answer from %s, want %s", got.Src, from)
		}
		got.Release()
	}
}

func TestUDPAssociateDanted(t *testing.T) {
	server := testutil.StartDanted(t, "127.0.0.1/32", "lo")
	port := udpEcho(t)
	pl := testutil.Pipeline(t, "socks5 server="+server)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	dc, err := pl.DialDgram(ctx, funnel.NewFlow("test", funnel.UDP, local(port)))
	if err != nil {
		t.Fatal(err)
	}
	dgramRoundTrips(t, dc, local(port).AddrPort())
	dc.Close()

	dc, err = pl.DialDgram(ctx, funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("localhost", port)))
	if err != nil {
		t.Fatal(err)
	}
	dgramRoundTrips(t, dc, netip.AddrPort{})
	dc.Close()
}

func TestUDPAssociateMicrosocksUnsupported(t *testing.T) {
	server := testutil.StartMicrosocks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := testutil.Pipeline(t, "socks5 server="+server).DialDgram(ctx, funnel.NewFlow("test", funnel.UDP, local(53)))
	testutil.WantKind(t, err, funnel.KindNotSupported, "command not supported")
}

func TestParams(t *testing.T) {
	for chain, want := range map[string]string{
		"socks5":                                    "needs server=HOST:PORT",
		"socks5 server=nowhere":                     "want HOST:PORT",
		"socks5 server=127.0.0.1:1080 pass=x":       "a password needs user=",
		"socks5 server=127.0.0.1:1080 timeout=soon": "not a duration",
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: chain}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one saying %q", chain, err, want)
		}
	}
	_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: "socks5 server=127.0.0.1:1080 user=u pass=p timeout=2s"}})
	if err != nil {
		t.Fatal(err)
	}
	var pe *funnel.PosError
	_, err = funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: "socks5 server=x"}})
	if !errors.As(err, &pe) {
		t.Fatalf("error %v names no position", err)
	}
}

// UDP through two danted: the first piece's control connection goes through
// the second server by CONNECT, and its datagrams through the second
// server's own UDP association. The outer server takes clients from
// 127.0.0.2 only, where the inner one reaches out from.
func TestUDPAssociateChainTwoDanted(t *testing.T) {
	inner := testutil.StartDanted(t, "127.0.0.1/32", "127.0.0.2")
	outer := testutil.StartDanted(t, "127.0.0.2/32", "lo")
	port := udpEcho(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if dc, err := testutil.Pipeline(t, "socks5 server="+outer).DialDgram(ctx, funnel.NewFlow("test", funnel.UDP, local(port))); err == nil {
		dc.Close()
		t.Fatal("the outer danted accepted us directly; the chain test would prove nothing")
	}
	dc, err := testutil.Pipeline(t, "socks5 server="+outer+" | socks5 server="+inner).DialDgram(ctx, funnel.NewFlow("test", funnel.UDP, local(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dgramRoundTrips(t, dc, local(port).AddrPort())
}

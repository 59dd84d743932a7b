package funnel

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// relayed sets up client <-> [app|relay|network] <-> server and returns the
// outer ends and a channel with the relay's result.
func relayed(t *testing.T, wrap func(net.Conn) net.Conn) (client, server net.Conn, up, down *atomic.Int64, done chan error) {
	client, app := tcpPair(t)
	network, srv := tcpPair(t)
	up, down = new(atomic.Int64), new(atomic.Int64)
	done = make(chan error, 1)
	var a net.Conn = app
	if wrap != nil {
		a = wrap(app)
	}
	go func() { done <- Relay(a, network, up, down) }()
	return client, srv, up, down, done
}

type plainConn struct{ net.Conn } // hides *net.TCPConn: forces the buffered copy

func testRelay(t *testing.T, wrap func(net.Conn) net.Conn) {
	client, server, up, down, done := relayed(t, wrap)
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	// Up: client writes everything, then half-closes; the server must see
	// every byte and then EOF, and can still answer afterwards.
	go func() {
		client.Write(payload)
		client.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("server got %d bytes (err %v), want the %d sent", len(got), err, len(payload))
	}
	reply := []byte("and the answer after the half-close")
	server.Write(reply)
	server.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(back, reply) {
		t.Fatalf("client got %q, %v", back, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("relay: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end after both sides closed")
	}
	if up.Load() != int64(len(payload)) || down.Load() != int64(len(reply)) {
		t.Errorf("counted up=%d down=%d, want %d and %d", up.Load(), down.Load(), len(payload), len(reply))
	}
}

func TestRelaySplice(t *testing.T) { testRelay(t, nil) }

func TestRelayBuffered(t *testing.T) {
	testRelay(t, func(c net.Conn) net.Conn { return plainConn{c} })
}

func TestRelayResetEndsBothWays(t *testing.T) {
	client, server, _, _, done := relayed(t, nil)
	server.(*net.TCPConn).SetLinger(0)
	server.Close() // an RST toward the relay
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("client still connected after the server reset")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay still running after a reset")
	}
}

package funnel

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
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

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// Idle spliced flows must not park a pipe pair per direction: the relay
// takes a pipe only while bytes are in flight.
func TestRelayIdleHoldsNoPipes(t *testing.T) {
	const flows = 50
	type pair struct{ client, server net.Conn }
	var pairs []pair
	for i := 0; i < flows; i++ {
		c, s, _, _, _ := relayed(t, nil)
		pairs = append(pairs, pair{c, s})
	}
	// One round trip each, so every relay has spliced at least once.
	buf := make([]byte, 5)
	for _, p := range pairs {
		p.client.Write([]byte("hello"))
		io.ReadFull(p.server, buf)
		p.server.Write([]byte("world"))
		io.ReadFull(p.client, buf)
	}
	fds := openFDs(t)
	// 4 sockets per flow (two pairs) plus a small fixed number for the
	// process and the bounded pipe free list.
	limit := flows*4 + 2*maxFreePipes + 32
	if fds > limit {
		t.Errorf("%d descriptors open for %d idle flows; at most %d expected (are idle relays holding pipes?)", fds, flows, limit)
	}
	if fds < flows*4 {
		t.Errorf("only %d descriptors open: the test is not measuring what it thinks", fds)
	}
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

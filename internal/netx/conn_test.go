package netx

import (
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is a connected pair of TCP sockets on loopback.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	l := listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestPrefixConn(t *testing.T) {
	client, server := tcpPair(t)
	pc := WithPrefix(server, []byte("hello "))
	p, ok := pc.(*PrefixConn)
	if !ok {
		t.Fatalf("WithPrefix gave %T", pc)
	}
	if p.Unwrap() != net.Conn(server) {
		t.Error("Unwrap does not give the connection below")
	}
	go io.WriteString(client, "world")
	// Small reads: the prefix comes out in pieces, then the socket's bytes.
	var got []byte
	buf := make([]byte, 4)
	for len(got) < len("hello world") {
		n, err := p.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "hello world" {
		t.Errorf("read %q, want %q", got, "hello world")
	}
	if len(p.Prefix) != 0 {
		t.Errorf("prefix left: %q", p.Prefix)
	}

	// CloseWrite reaches the socket as a half-close: the client reads
	// EOF, and what it sends after still arrives.
	if err := p.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(client); err != nil || len(b) != 0 {
		t.Errorf("client read %q, %v after CloseWrite; want EOF", b, err)
	}
	io.WriteString(client, "more")
	client.CloseWrite()
	if b, err := io.ReadAll(p); err != nil || string(b) != "more" {
		t.Errorf("read %q, %v after our half-close; want more", b, err)
	}
}

func TestWithPrefixEmpty(t *testing.T) {
	_, server := tcpPair(t)
	if c := WithPrefix(server, nil); c != net.Conn(server) {
		t.Errorf("WithPrefix with no bytes wrapped the conn: %T", c)
	}
}

func TestCloseWrite(t *testing.T) {
	// A TCP socket half-closes: the peer reads EOF and can still answer.
	client, server := tcpPair(t)
	if err := CloseWrite(client); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(server); err != nil || len(b) != 0 {
		t.Fatalf("server read %q, %v; want EOF", b, err)
	}
	io.WriteString(server, "answer")
	server.CloseWrite()
	if b, err := io.ReadAll(client); err != nil || string(b) != "answer" {
		t.Errorf("client read %q, %v after its half-close; want the answer", b, err)
	}

	// A conn without a half-close is closed.
	a, b := net.Pipe()
	defer b.Close()
	if ok, err := HalfClose(a); ok || err != nil {
		t.Errorf("HalfClose on a pipe: %v, %v; want false, nil", ok, err)
	}
	go a.Write([]byte("still open"))
	buf := make([]byte, 16)
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "still open" {
		t.Fatalf("HalfClose touched a conn it cannot half-close: %q, %v", buf[:n], err)
	}
	if err := CloseWrite(a); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read(buf); err != io.EOF {
		t.Errorf("read after CloseWrite on a pipe: %v, want EOF (closed)", err)
	}
}

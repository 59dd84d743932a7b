package socks5

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
)

// scriptedServer plays the server side of one handshake over a pipe: it
// checks every message the client sends against want and answers with the
// matching reply.
func scriptedServer(t *testing.T, conn net.Conn, steps [][2][]byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		defer conn.Close()
		for _, step := range steps {
			got := make([]byte, len(step[0]))
			if _, err := io.ReadFull(conn, got); err != nil {
				done <- err
				return
			}
			if !bytes.Equal(got, step[0]) {
				t.Errorf("client sent % x, want % x", got, step[0])
			}
			if _, err := conn.Write(step[1]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func TestHandshakeBytes(t *testing.T) {
	s := &Socks5{server: funnel.MakeAddr("127.0.0.1", 1080), serverName: "127.0.0.1:1080", user: "alice", pass: "secret", timeout: 5 * time.Second}
	client, server := net.Pipe()
	defer client.Close()
	done := scriptedServer(t, server, [][2][]byte{
		{{5, 2, 0, 2}, {5, 2}},
		{append(append([]byte{1, 5}, "alice"...), append([]byte{6}, "secret"...)...), {1, 0}},
		// The name travels unresolved, as ATYP 3.
		{append(append([]byte{5, 1, 0, 3, 11}, "example.org"...), 0x01, 0xbb), {5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x30, 0x39}},
	})
	bound, err := s.handshake(context.Background(), client, socks5wire.CmdConnect, funnel.MakeAddr("example.org", 443))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := funnel.MakeAddr("::1", 12345); bound != want {
		t.Errorf("bound address %v, want %v", bound, want)
	}
}

func TestRequestEncoding(t *testing.T) {
	for _, tc := range []struct {
		dest funnel.Addr
		want []byte
	}{
		{funnel.MakeAddr("192.0.2.7", 80), []byte{5, 1, 0, 1, 192, 0, 2, 7, 0, 80}},
		{funnel.MakeAddr("2001:db8::1", 53), []byte{5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53}},
		{funnel.MakeAddr("a.b", 8080), []byte{5, 1, 0, 3, 3, 'a', '.', 'b', 0x1f, 0x90}},
	} {
		got, _, err := request(socks5wire.CmdConnect, tc.dest)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%v: % x, want % x", tc.dest, got, tc.want)
		}
		a, n, err := socks5wire.ParseAddr(got[3:])
		if err != nil || n != len(got)-3 || a != tc.dest {
			t.Errorf("%v: parsed back as %v (%d bytes, %v)", tc.dest, a, n, err)
		}
	}
	got, _, _ := request(socks5wire.CmdUDPAssociate, funnel.Addr{})
	if want := []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(got, want) {
		t.Errorf("UDP ASSOCIATE: % x, want % x", got, want)
	}
	if _, _, err := request(socks5wire.CmdConnect, funnel.MakeAddr(string(make([]byte, 256)), 1)); funnel.Classify(err) != funnel.KindAddrNotSupported {
		t.Errorf("a 256-byte name: %v", err)
	}
}

func TestReplyCodes(t *testing.T) {
	for code := byte(1); code <= 9; code++ {
		reply := []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0}
		_, err := readReply(bytes.NewReader(reply), "s", asked{cmd: socks5wire.CmdConnect, dest: funnel.MakeAddr("x", 1)})
		want := funnel.Kind(code)
		if code == 9 {
			want = funnel.KindGeneral
		}
		if got := funnel.Classify(err); got != want {
			t.Errorf("reply %d: %v is %s, want %s", code, err, got, want)
		}
	}
	// The reply must be consumed exactly, leaving the stream's first byte.
	r := bytes.NewReader([]byte{5, 0, 0, 3, 1, 'h', 0, 7, 'X'})
	a, err := readReply(r, "s", asked{cmd: socks5wire.CmdConnect, dest: funnel.MakeAddr("x", 1)})
	if err != nil || a != funnel.MakeAddr("h", 7) {
		t.Fatalf("reply: %v, %v", a, err)
	}
	if next, _ := r.ReadByte(); next != 'X' {
		t.Errorf("readReply took the stream's first byte")
	}
}

// loopRelay stands in for the relay's socket: what is written comes back,
// which works because a reply's header has the request's format.
type loopRelay struct{ queue chan *funnel.Frame }

func (l *loopRelay) WriteFrame(fr *funnel.Frame) error { l.queue <- fr; return nil }
func (l *loopRelay) ReadFrame() (*funnel.Frame, error) { return <-l.queue, nil }
func (l *loopRelay) SetReadDeadline(time.Time) error   { return nil }
func (l *loopRelay) Close() error                      { return nil }

func TestUDPHeaderNoAllocation(t *testing.T) {
	dest := funnel.MakeAddr("192.0.2.9", 5004)
	header, _ := socks5wire.AppendAddr([]byte{0, 0, 0}, dest)
	relay := &loopRelay{queue: make(chan *funnel.Frame, 1)}
	c := &udpConn{relay: relay, header: header, dest: dest.AddrPort()}
	payload := []byte("rtp-like payload")
	roundTrip := func() {
		fr := funnel.NewFrame()
		fr.SetLen(copy(fr.Room(), payload))
		if err := c.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
		wire := <-relay.queue
		if !bytes.Equal(wire.Bytes()[:len(header)], header) || !bytes.Equal(wire.Bytes()[len(header):], payload) {
			t.Fatalf("on the wire: % x", wire.Bytes())
		}
		relay.queue <- wire
		back, err := c.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Bytes(), payload) || back.Src != dest.AddrPort() {
			t.Fatalf("back: %q from %v", back.Bytes(), back.Src)
		}
		back.Release()
	}
	roundTrip()
	if n := testing.AllocsPerRun(100, roundTrip); n != 0 {
		t.Errorf("%v allocations per datagram, want 0", n)
	}
}

func TestUDPDropsForeignAndFragments(t *testing.T) {
	dest := funnel.MakeAddr("192.0.2.9", 5004)
	relay := &loopRelay{queue: make(chan *funnel.Frame, 3)}
	c := &udpConn{relay: relay, dest: dest.AddrPort()}
	put := func(frag byte, from funnel.Addr, payload string) {
		fr := funnel.NewFrame()
		b, _ := socks5wire.AppendAddr([]byte{0, 0, frag}, from)
		fr.SetLen(copy(fr.Room(), append(b, payload...)))
		relay.queue <- fr
	}
	put(1, dest, "fragment")
	put(0, funnel.Addr{IP: netip.MustParseAddr("192.0.2.66"), Port: 5004}, "stranger")
	put(0, dest, "answer")
	fr, err := c.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Release()
	if string(fr.Bytes()) != "answer" {
		t.Errorf("got %q, want only the answer from the destination", fr.Bytes())
	}
}

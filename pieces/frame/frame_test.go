package frame

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	_ "github.com/funtun/funtun/pieces/direct"
)

func compile(t *testing.T, text string) *funnel.Pipeline {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: text}})
	if err != nil {
		t.Fatal(err)
	}
	pl, _ := set.Profile("p")
	return pl
}

func prefixed(msg []byte) []byte {
	out := make([]byte, HeaderLen+len(msg))
	binary.BigEndian.PutUint32(out, uint32(len(msg)))
	copy(out[HeaderLen:], msg)
	return out
}

// testMessages covers the empty datagram, tiny ones and one near the
// largest a loopback UDP socket carries.
func testMessages() [][]byte {
	var msgs [][]byte
	for i, n := range []int{0, 1, 5, 1400, 9000, 60000, 3} {
		m := make([]byte, n)
		for j := range m {
			m[j] = byte(i*31 + j*7)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// framedEchoServer reads length-prefixed messages over TCP, checking the
// framing itself, and sends every one back the same way.
func framedEchoServer(t *testing.T) (addr *net.TCPAddr, seen chan []byte) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	seen = make(chan []byte, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [4]byte
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					msg := make([]byte, binary.BigEndian.Uint32(hdr[:]))
					if _, err := io.ReadFull(c, msg); err != nil {
						return
					}
					seen <- msg
					if _, err := c.Write(prefixed(msg)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr), seen
}

// udpFront plays the UDP hook for one client: its datagrams go through the
// pipeline as one flow and the replies come back to it.
func udpFront(t *testing.T, pl *funnel.Pipeline, dest net.Addr) *net.UDPAddr {
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { front.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		var dc funnel.DgramConn
		defer func() {
			if dc != nil {
				dc.Close()
			}
		}()
		for {
			fr := funnel.NewFrame()
			n, client, err := front.ReadFromUDP(fr.Room())
			if err != nil {
				fr.Release()
				return
			}
			fr.SetLen(n)
			if dc == nil {
				f := funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(dest))
				f.Source = client
				dc, err = pl.DialDgram(context.Background(), f)
				if err != nil {
					t.Errorf("dial: %v", err)
					fr.Release()
					return
				}
				wg.Add(1)
				go func(dc funnel.DgramConn) {
					defer wg.Done()
					for {
						fr, err := dc.ReadFrame()
						if err != nil {
							return
						}
						front.WriteToUDP(fr.Bytes(), client)
						fr.Release()
					}
				}(dc)
			}
			if err := dc.WriteFrame(fr); err != nil {
				t.Errorf("write frame: %v", err)
				return
			}
		}
	}()
	return front.LocalAddr().(*net.UDPAddr)
}

func TestUDPClientThroughFrameToTCPServer(t *testing.T) {
	server, seen := framedEchoServer(t)
	pl := compile(t, "frame")
	front := udpFront(t, pl, server)

	client, err := net.DialUDP("udp", nil, front)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 70000)
	for i, msg := range testMessages() {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-seen:
			if !bytes.Equal(got, msg) {
				t.Fatalf("message %d: the TCP server got %d bytes, want %d", i, len(got), len(msg))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d (%d bytes) never reached the TCP server", i, len(msg))
		}
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := client.Read(buf)
		if err != nil {
			t.Fatalf("message %d: no echo: %v", i, err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("message %d: echo has %d bytes, want %d", i, n, len(msg))
		}
	}
}

// tcpFront plays the TCP hook: each accepted connection is a flow relayed
// through the pipeline.
func tcpFront(t *testing.T, pl *funnel.Pipeline, dest net.Addr) net.Addr {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(dest))
				f.Source = c.RemoteAddr()
				up, err := pl.DialStream(context.Background(), f)
				if err != nil {
					t.Errorf("dial: %v", err)
					c.Close()
					return
				}
				funnel.Relay(c, up, f.Up, f.Down)
			}()
		}
	}()
	return l.Addr()
}

func TestStreamClientThroughFrameToUDPServer(t *testing.T) {
	udpEcho := udpEchoServer(t)
	pl := compile(t, "frame linger=300ms")
	front := tcpFront(t, pl, udpEcho)

	c, err := net.Dial("tcp", front.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs := testMessages()
	var all []byte
	for _, m := range msgs {
		all = append(all, prefixed(m)...)
	}
	// Messages arrive split anywhere and several to a write: a prefix cut
	// in two, then the rest in uneven pieces.
	go func() {
		rest := all
		for _, n := range []int{1, 2, 3, 1, 700, 5} {
			c.Write(rest[:n])
			rest = rest[n:]
			time.Sleep(5 * time.Millisecond)
		}
		c.Write(rest)
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, m := range msgs {
		got := make([]byte, HeaderLen+len(m))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, prefixed(m)) {
			t.Fatalf("message %d: got %d bytes (prefix %x), want %d with its prefix", i, len(got), got[:HeaderLen], len(m))
		}
	}
	// After the application half-closes, the stream ends once the network
	// has been quiet for linger.
	c.(*net.TCPConn).CloseWrite()
	start := time.Now()
	var one [1]byte
	if n, err := c.Read(one[:]); err != io.EOF {
		t.Fatalf("after CloseWrite: read %d bytes, err %v; want the end of the stream", n, err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("the stream ended %v after CloseWrite, before linger=300ms", waited)
	}
}

func udpEchoServer(t *testing.T) *net.UDPAddr {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, a, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], a)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr)
}

func TestOversizedPrefixClosesTheStream(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serverSawEOF := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			serverSawEOF <- err
			return
		}
		defer c.Close()
		c.Write([]byte{0x00, 0x01, 0x00, 0x00}) // 65536: one more than FrameMax
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 10))
		serverSawEOF <- err
	}()
	pl := compile(t, "frame")
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(l.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	fr, err := dc.ReadFrame()
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Len != 65536 {
		if fr != nil {
			fr.Release()
		}
		t.Fatalf("ReadFrame: %v; want a TooLargeError for 65536 bytes", err)
	}
	if !strings.Contains(err.Error(), "65535") {
		t.Errorf("the error does not say the limit: %v", err)
	}
	if err := <-serverSawEOF; err != io.EOF {
		t.Fatalf("the server read %v; want EOF because frame closed the stream", err)
	}
}

func TestOversizedMessageFromApplication(t *testing.T) {
	sink := &frameSink{}
	s := NewStreamConn(sink, time.Second)
	msg := append(prefixed([]byte("ok")), 0xff, 0xff, 0xff, 0xff)
	n, err := s.Write(msg)
	var tl *TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("Write: %d, %v; want a TooLargeError", n, err)
	}
	if len(sink.got) != 1 || string(sink.got[0]) != "ok" {
		t.Fatalf("the message before the bad prefix: got %q, want [ok]", sink.got)
	}
	if !sink.closed {
		t.Fatal("the datagram side stays open after a bad prefix")
	}
	if _, err := s.Write([]byte{0}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after the bad prefix: %v; want net.ErrClosed", err)
	}
}

func TestBadParameterNamesItsPlace(t *testing.T) {
	_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: "frame linger=soon"}})
	if err == nil || !strings.Contains(err.Error(), "test.profile:1:14") || !strings.Contains(err.Error(), "linger") {
		t.Fatalf("got %v; want an error at test.profile:1:14 about linger", err)
	}
	_, err = funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: "frame size=4"}})
	if err == nil || !strings.Contains(err.Error(), `no parameter "size"`) {
		t.Fatalf("got %v; want an unknown-parameter error", err)
	}
}

// frameSink is a DgramConn that keeps copies of what is written.
type frameSink struct {
	got    [][]byte
	closed bool
}

func (s *frameSink) WriteFrame(fr *funnel.Frame) error {
	s.got = append(s.got, append([]byte(nil), fr.Bytes()...))
	fr.Release()
	return nil
}
func (s *frameSink) ReadFrame() (*funnel.Frame, error) { return nil, io.EOF }
func (s *frameSink) SetReadDeadline(time.Time) error   { return nil }
func (s *frameSink) Close() error                      { s.closed = true; return nil }

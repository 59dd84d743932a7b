package frame

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
)

// FuzzParsers feeds the same bytes to both parsers, the reader (stream to
// datagrams) in one piece and the splitter (application stream to
// datagrams) in chunks of a fuzzed size: they must agree on every message
// and on where a bad prefix stops them, and neither may panic or leak.
func FuzzParsers(f *testing.F) {
	f.Add([]byte{}, uint8(0))
	f.Add(prefixed([]byte("hello")), uint8(1))
	f.Add(append(prefixed(nil), prefixed([]byte("x"))...), uint8(2))
	f.Add([]byte{0, 1, 0, 0, 1, 2, 3}, uint8(3))
	f.Add([]byte{0, 0, 0, 9, 1, 2}, uint8(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		var want [][]byte
		var hdr [HeaderLen]byte
		r := bytes.NewReader(data)
		var readErr error
		for {
			fr, err := readFrame(r, &hdr)
			if err != nil {
				readErr = err
				break
			}
			if fr.Len() > funnel.FrameMax {
				t.Fatalf("frame of %d bytes", fr.Len())
			}
			want = append(want, append([]byte(nil), fr.Bytes()...))
			fr.Release()
		}
		var tl *TooLargeError
		tooLarge := errors.As(readErr, &tl)
		if !tooLarge && readErr != io.EOF && !errors.Is(readErr, io.ErrUnexpectedEOF) {
			t.Fatalf("reader stopped with %v", readErr)
		}

		sink := &frameSink{}
		sp := splitter{out: sink}
		step := int(chunk) + 1
		var splitErr error
		for rest := data; len(rest) > 0 && splitErr == nil; {
			n := min(step, len(rest))
			used, err := sp.feed(rest[:n])
			if used > n {
				t.Fatalf("feed used %d of %d bytes", used, n)
			}
			splitErr = err
			rest = rest[n:]
		}
		sp.reset()
		if tooLarge != (splitErr != nil) {
			t.Fatalf("reader says %v, splitter says %v", readErr, splitErr)
		}
		if len(sink.got) != len(want) {
			t.Fatalf("splitter found %d messages, reader %d", len(sink.got), len(want))
		}
		for i := range want {
			if !bytes.Equal(sink.got[i], want[i]) {
				t.Fatalf("message %d differs", i)
			}
		}
	})
}

// discardConn is a stream that swallows writes and serves reads from a
// repeating buffer, so the frame path can be measured alone.
type discardConn struct {
	in  []byte
	pos int
}

func (c *discardConn) Read(p []byte) (int, error) {
	n := copy(p, c.in[c.pos:])
	c.pos = (c.pos + n) % len(c.in)
	return n, nil
}
func (c *discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *discardConn) Close() error                     { return nil }
func (c *discardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *discardConn) SetDeadline(time.Time) error      { return nil }
func (c *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (c *discardConn) SetWriteDeadline(time.Time) error { return nil }

func TestFramePathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; run without -race")
	}
	msg := prefixed(bytes.Repeat([]byte("rtp!"), 40))
	dc := NewDgramConn(&discardConn{in: bytes.Repeat(msg, 3)})
	allocs := testing.AllocsPerRun(1000, func() {
		fr := funnel.NewFrame()
		fr.SetLen(copy(fr.Room(), "payload of one datagram"))
		if err := dc.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
		in, err := dc.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		in.Release()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per datagram written and read; want 0", allocs)
	}
}

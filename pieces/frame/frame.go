// Package frame carries datagrams over a stream, each one behind a 32-bit
// big-endian length prefix: the Funnel Tunnel specification's frame
// sequence. Outgoing datagram flows become one stream (Dgram->Stream), and
// an application that already speaks length-prefixed messages over a stream
// reaches a datagram network (Stream->Dgram).
package frame

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "frame",
		Summary: "carry datagrams over a stream with a 32-bit length prefix (and back)",
		Params: `linger=DURATION  stream->dgram only: after the application half-closes, keep
                 delivering replies until none arrives for this long, default 2s`,
		Curves: curves,
		New:    New,
	})
}

// HeaderLen is the size of the length prefix in front of every datagram.
const HeaderLen = 4

// Frame is a configured frame piece.
type Frame struct {
	linger time.Duration
}

var (
	_ funnel.StreamDialer = (*Frame)(nil)
	_ funnel.DgramDialer  = (*Frame)(nil)
)

// New builds a frame piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	linger, err := p.Duration("linger", 2*time.Second)
	if err != nil {
		return nil, err
	}
	if linger == 0 {
		return nil, p.Errorf("linger", "must be more than 0, or replies to a half-closed stream are never delivered")
	}
	return &Frame{linger: linger}, nil
}

// Curves: datagrams ride a stream below, and a stream of length-prefixed
// messages from the application rides datagrams below.
func (*Frame) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{
	{App: funnel.Dgram, Net: funnel.Stream},
	{App: funnel.Stream, Net: funnel.Dgram},
}

// TooLargeError is returned when a length prefix announces more than a
// datagram can hold: the stream is out of step (or not framed at all), so
// nothing after it can be trusted and the connection is closed.
type TooLargeError struct{ Len uint32 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("frame: length prefix announces %d bytes, more than the %d a datagram can hold; the stream is not framed the way frame expects, closing it", e.Len, funnel.FrameMax)
}

// DialDgram opens the stream below and carries the flow's datagrams on it.
func (fp *Frame) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	c, err := next.DialStream(ctx, f)
	if err != nil {
		return nil, err
	}
	return NewDgramConn(c), nil
}

// DgramConn is datagrams over a stream.
type DgramConn struct {
	conn   net.Conn
	rd     *bufio.Reader
	hdr    [HeaderLen]byte
	local  netip.AddrPort
	remote netip.AddrPort
}

// NewDgramConn frames datagrams over c.
func NewDgramConn(c net.Conn) *DgramConn {
	d := &DgramConn{conn: c, rd: bufio.NewReaderSize(c, 16<<10)}
	d.local = netx.AddrPortOf(c.LocalAddr())
	d.remote = netx.AddrPortOf(c.RemoteAddr())
	return d
}

// WriteFrame sends the datagram with its prefix in one write: the prefix
// goes into the frame's headroom, so the payload is neither copied nor split
// over two segments.
func (d *DgramConn) WriteFrame(fr *funnel.Frame) error {
	n := fr.Len()
	binary.BigEndian.PutUint32(fr.Push(HeaderLen), uint32(n))
	_, err := d.conn.Write(fr.Bytes())
	fr.Release()
	return err
}

// ReadFrame reads one length-prefixed datagram into a pooled frame.
func (d *DgramConn) ReadFrame() (*funnel.Frame, error) {
	fr, err := readFrame(d.rd, &d.hdr)
	if err != nil {
		var tl *TooLargeError
		if errors.As(err, &tl) {
			d.conn.Close()
		}
		return nil, err
	}
	fr.Src, fr.Dst = d.remote, d.local
	return fr, nil
}

// readFrame is the parser, kept apart from the connection so that it can be
// fuzzed.
func readFrame(r io.Reader, hdr *[HeaderLen]byte) (*funnel.Frame, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("frame: stream ended inside a length prefix: %w", err)
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > funnel.FrameMax {
		return nil, &TooLargeError{Len: n}
	}
	fr := funnel.NewFrame()
	if _, err := io.ReadFull(r, fr.Room()[:n]); err != nil {
		fr.Release()
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("frame: stream ended inside a %d-byte datagram: %w", n, io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	fr.SetLen(int(n))
	return fr, nil
}

func (d *DgramConn) SetReadDeadline(t time.Time) error { return d.conn.SetReadDeadline(t) }
func (d *DgramConn) Close() error                      { return d.conn.Close() }

// LocalAddr and RemoteAddr are the stream's, for pieces above that want to
// know where the flow really goes (pcap).
func (d *DgramConn) LocalAddr() net.Addr  { return d.conn.LocalAddr() }
func (d *DgramConn) RemoteAddr() net.Addr { return d.conn.RemoteAddr() }

// DialStream opens the datagram flow below and gives the application a
// stream on which it writes and reads length-prefixed messages.
func (fp *Frame) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	dc, err := next.DialDgram(ctx, f)
	if err != nil {
		return nil, err
	}
	return NewStreamConn(dc, fp.linger), nil
}

// StreamConn is a stream of length-prefixed messages over datagrams: each
// message written becomes one datagram, each datagram received is read as
// one message with its prefix.
type StreamConn struct {
	dc     funnel.DgramConn
	linger time.Duration

	wmu   sync.Mutex
	split splitter

	rmu     sync.Mutex
	pending *funnel.Frame // a received datagram not yet read out in full

	closed      atomic.Bool
	writeClosed atomic.Bool
	lastRecv    atomic.Int64 // unix nanoseconds of the last datagram, for linger
	userDL      atomic.Int64 // read deadline the caller set, unix ns, 0 for none
}

// NewStreamConn carries length-prefixed messages over dc.
func NewStreamConn(dc funnel.DgramConn, linger time.Duration) *StreamConn {
	s := &StreamConn{dc: dc, linger: linger}
	s.split.out = dc
	return s
}

// Write sends every message that p completes; a message may arrive spread
// over many writes, and one write may hold many messages.
func (s *StreamConn) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if s.writeClosed.Load() {
		return 0, errors.New("frame: write after CloseWrite")
	}
	s.wmu.Lock()
	n, err := s.split.feed(p)
	s.wmu.Unlock()
	var tl *TooLargeError
	if errors.As(err, &tl) {
		s.Close()
	}
	return n, err
}

// Read gives received datagrams back as length-prefixed messages.
func (s *StreamConn) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	for s.pending == nil {
		fr, err := s.dc.ReadFrame()
		if err != nil {
			if s.lingering(err) {
				if s.lingerOver() {
					return 0, io.EOF
				}
				s.armLinger()
				continue
			}
			return 0, err
		}
		s.lastRecv.Store(time.Now().UnixNano())
		binary.BigEndian.PutUint32(fr.Push(HeaderLen), uint32(fr.Len()-HeaderLen))
		s.pending = fr
	}
	n := copy(p, s.pending.Bytes())
	s.pending.Pull(n)
	if s.pending.Len() == 0 {
		s.pending.Release()
		s.pending = nil
	}
	return n, nil
}

// lingering reports a read timeout that comes from the linger clock rather
// than from the caller's own deadline.
func (s *StreamConn) lingering(err error) bool {
	if !s.writeClosed.Load() || s.closed.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	u := s.userDL.Load()
	return u == 0 || time.Now().UnixNano() < u
}

// lingerOver reports that the application has stopped writing and the
// network has been quiet for linger: the stream ends as a TCP peer's would.
func (s *StreamConn) lingerOver() bool {
	return time.Since(time.Unix(0, s.lastRecv.Load())) >= s.linger
}

// armLinger sets the read deadline to linger after the last datagram, or
// the caller's deadline when that is sooner.
func (s *StreamConn) armLinger() {
	dl := time.Unix(0, s.lastRecv.Load()).Add(s.linger)
	if u := s.userDL.Load(); u != 0 && u < dl.UnixNano() {
		dl = time.Unix(0, u)
	}
	s.dc.SetReadDeadline(dl)
}

// CloseWrite ends the application's messages. A datagram network has no
// half-close to pass on, so replies are still read until none comes for
// linger; then Read reports the end of the stream.
func (s *StreamConn) CloseWrite() error {
	s.wmu.Lock()
	partial := s.split.partial()
	s.wmu.Unlock()
	if s.writeClosed.Swap(true) {
		return nil
	}
	if s.lastRecv.Load() == 0 {
		s.lastRecv.Store(time.Now().UnixNano())
	}
	s.armLinger()
	if partial {
		return errors.New("frame: stream closed inside a message; its start was dropped")
	}
	return nil
}

func (s *StreamConn) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.dc.Close()
	s.wmu.Lock()
	s.split.reset()
	s.wmu.Unlock()
	// Read holds rmu while it waits; the closed socket wakes it.
	s.rmu.Lock()
	if s.pending != nil {
		s.pending.Release()
		s.pending = nil
	}
	s.rmu.Unlock()
	return err
}

// Addresses come from the datagram connection below when it knows them.
func (s *StreamConn) LocalAddr() net.Addr {
	if a, ok := s.dc.(interface{ LocalAddr() net.Addr }); ok {
		return a.LocalAddr()
	}
	return frameAddr{}
}

func (s *StreamConn) RemoteAddr() net.Addr {
	if a, ok := s.dc.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr()
	}
	return frameAddr{}
}

func (s *StreamConn) SetDeadline(t time.Time) error {
	s.SetWriteDeadline(t)
	return s.SetReadDeadline(t)
}

func (s *StreamConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		s.userDL.Store(0)
	} else {
		s.userDL.Store(t.UnixNano())
	}
	if s.writeClosed.Load() {
		s.armLinger()
		return nil
	}
	return s.dc.SetReadDeadline(t)
}

// SetWriteDeadline reaches the datagram socket when it has one; sending a
// datagram rarely blocks, so there is nothing to time out otherwise.
func (s *StreamConn) SetWriteDeadline(t time.Time) error {
	if w, ok := s.dc.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return w.SetWriteDeadline(t)
	}
	return nil
}

type frameAddr struct{}

func (frameAddr) Network() string { return "frame" }
func (frameAddr) String() string  { return "frame" }

// splitter cuts a byte stream into length-prefixed messages and sends each
// as a frame as soon as it is complete. A message is read straight into its
// pooled frame, so it is copied once, from the caller's buffer.
type splitter struct {
	out  funnel.DgramConn
	hdr  [HeaderLen]byte
	nhdr int           // prefix bytes seen so far
	fr   *funnel.Frame // the message being filled, once its prefix is known
	need int           // bytes it still lacks
}

func (s *splitter) feed(p []byte) (int, error) {
	used := 0
	for {
		if s.fr == nil {
			if len(p) == 0 {
				return used, nil
			}
			c := copy(s.hdr[s.nhdr:], p)
			s.nhdr += c
			p = p[c:]
			used += c
			if s.nhdr < HeaderLen {
				return used, nil
			}
			s.nhdr = 0
			n := binary.BigEndian.Uint32(s.hdr[:])
			if n > funnel.FrameMax {
				return used, &TooLargeError{Len: n}
			}
			s.fr = funnel.NewFrame()
			s.need = int(n)
		}
		room := s.fr.Room()
		c := copy(room[s.fr.Len():s.fr.Len()+s.need], p)
		s.fr.SetLen(s.fr.Len() + c)
		s.need -= c
		p = p[c:]
		used += c
		if s.need > 0 {
			return used, nil
		}
		fr := s.fr
		s.fr = nil
		if err := s.out.WriteFrame(fr); err != nil {
			return used, err
		}
	}
}

// partial reports a message begun but not finished.
func (s *splitter) partial() bool { return s.nhdr > 0 || s.fr != nil }

func (s *splitter) reset() {
	if s.fr != nil {
		s.fr.Release()
		s.fr = nil
	}
	s.nhdr = 0
}

package funnel

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// FrameHeadroom is room kept in front of every payload so that pieces
	// can add headers (a length prefix, a SOCKS5 UDP header, a tunnel
	// header) without copying the payload.
	FrameHeadroom = 128
	// FrameMax is the largest payload a frame holds: a full UDP datagram.
	FrameMax = 65535
)

// Frame is one datagram on its way through the pieces: a pooled buffer with
// headroom, the payload's bounds, the addresses parsed once on entry, and a
// reference count, so that a piece that keeps a frame (a delay queue, a
// capture) retains it instead of copying, and the last Release returns the
// buffer to the pool. Steady-state forwarding allocates nothing.
type Frame struct {
	buf      []byte
	off, end int
	refs     atomic.Int32
	// Src and Dst are the datagram's addresses as parsed on entry (the UDP
	// header the kernel stripped); pieces read them instead of re-parsing.
	Src, Dst netip.AddrPort
	// Time is when the frame entered the funnel.
	Time time.Time
}

var framePool = sync.Pool{New: func() any {
	return &Frame{buf: make([]byte, FrameHeadroom+FrameMax)}
}}

// NewFrame takes an empty frame from the pool, with one reference.
func NewFrame() *Frame {
	f := framePool.Get().(*Frame)
	f.off, f.end = FrameHeadroom, FrameHeadroom
	f.refs.Store(1)
	f.Src, f.Dst = netip.AddrPort{}, netip.AddrPort{}
	f.Time = time.Time{}
	return f
}

// Bytes is the payload.
func (f *Frame) Bytes() []byte { return f.buf[f.off:f.end] }

// Len is the payload's length.
func (f *Frame) Len() int { return f.end - f.off }

// Room is the space from the payload's start to the buffer's end, to read a
// datagram into; follow with SetLen.
func (f *Frame) Room() []byte { return f.buf[f.off:] }

// SetLen sets the payload's length after reading into Room.
func (f *Frame) SetLen(n int) { f.end = f.off + n }

// Headroom is how many header bytes Push can still add.
func (f *Frame) Headroom() int { return f.off }

// Push grows the payload at the front by n bytes (for a header) and returns
// them to fill in. It panics when headroom runs out, which is a piece bug.
func (f *Frame) Push(n int) []byte {
	if n > f.off {
		panic("funnel: frame headroom exhausted")
	}
	f.off -= n
	return f.buf[f.off : f.off+n]
}

// Pull removes n bytes from the front of the payload (a parsed header) and
// returns them.
func (f *Frame) Pull(n int) []byte {
	h := f.buf[f.off : f.off+n]
	f.off += n
	return h
}

// Retain adds a reference.
func (f *Frame) Retain() *Frame {
	f.refs.Add(1)
	return f
}

// Release drops a reference; the last one returns the frame to the pool.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		framePool.Put(f)
	case n < 0:
		panic("funnel: frame released more often than retained")
	}
}

// DgramConn is a datagram flow's app-side end, as a piece gives it to the
// piece above it. ReadFrame returns a frame the caller owns (one reference);
// WriteFrame takes over the caller's reference, whether it succeeds or not.
type DgramConn interface {
	ReadFrame() (*Frame, error)
	WriteFrame(*Frame) error
	SetReadDeadline(time.Time) error
	Close() error
}

// UDPConn adapts a connected *net.UDPConn to DgramConn; direct returns it.
type UDPConn struct {
	*net.UDPConn
	local, remote netip.AddrPort
}

// NewUDPConn wraps a connected UDP socket.
func NewUDPConn(c *net.UDPConn) *UDPConn {
	u := &UDPConn{UDPConn: c}
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		u.local = a.AddrPort()
	}
	if a, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		u.remote = a.AddrPort()
	}
	return u
}

func (u *UDPConn) ReadFrame() (*Frame, error) {
	fr := NewFrame()
	n, err := u.UDPConn.Read(fr.Room())
	if err != nil {
		fr.Release()
		return nil, err
	}
	fr.SetLen(n)
	fr.Src, fr.Dst = u.remote, u.local
	return fr, nil
}

func (u *UDPConn) WriteFrame(fr *Frame) error {
	_, err := u.UDPConn.Write(fr.Bytes())
	fr.Release()
	return err
}

package socks5

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
)

// DialDgram opens a UDP association: a control connection to the server
// (which the association lives as long as) and a datagram path to the relay
// address the server names. Datagrams to the relay carry the RFC 1928 UDP
// header in front of the payload.
func (s *Socks5) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	// The header is the same for every datagram of the flow, so it is built
	// once; a frame only has FrameHeadroom bytes in front of its payload.
	header, err := socks5wire.AppendAddr([]byte{0, 0, 0}, f.Dest)
	if err != nil {
		return nil, err
	}
	if len(header) > funnel.FrameHeadroom {
		return nil, funnel.Errorf(funnel.KindAddrNotSupported, "socks5: host name %q is too long for a datagram header (at most %d bytes)", f.Dest.Name, funnel.FrameHeadroom-7)
	}
	ctrl, err := s.dialServer(ctx, f, next)
	if err != nil {
		return nil, err
	}
	// We do not know the address our datagrams will come from (the piece
	// below may be another proxy), so we send the unspecified address, which
	// RFC 1928 allows.
	bound, err := s.handshake(ctx, ctrl, socks5wire.CmdUDPAssociate, funnel.Addr{})
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	relay := bound
	if !bound.IsName() && (!bound.IP.IsValid() || bound.IP.IsUnspecified()) {
		// "Send to me": the relay is on the address we reached the server at.
		relay = funnel.Addr{Name: s.server.Name, IP: s.server.IP, Port: bound.Port}
	}
	lower, err := next.DialDgram(ctx, s.towardServer(f, funnel.UDP, relay))
	if err != nil {
		ctrl.Close()
		return nil, fmt.Errorf("socks5 server %s: reaching its UDP relay %s: %w", s.server, relay, err)
	}
	c := &udpConn{server: s.server, relay: lower, ctrl: ctrl, header: header}
	if !f.Dest.IsName() {
		c.dest = f.Dest.AddrPort()
	}
	go c.watchControl()
	return c, nil
}

// udpConn is one UDP association.
type udpConn struct {
	server funnel.Addr
	relay  funnel.DgramConn
	ctrl   net.Conn
	header []byte // RSV RSV FRAG ATYP DST.ADDR DST.PORT for the flow's destination
	// dest filters answers the way a connected UDP socket does; it is
	// unset when the server resolves a name for us and we cannot know.
	dest      netip.AddrPort
	ctrlEnded atomic.Bool // the server ended the association
	closing   atomic.Bool // our user ended it
	closeOnce sync.Once
}

// watchControl ends the association's datagram side when the server closes
// the control connection, so that ReadFrame does not wait for a relay that
// is gone.
func (c *udpConn) watchControl() {
	var b [64]byte
	for {
		if _, err := c.ctrl.Read(b[:]); err != nil {
			break
		}
	}
	c.ctrlEnded.Store(true)
	c.shutdown()
}

func (c *udpConn) WriteFrame(fr *funnel.Frame) error {
	copy(fr.Push(len(c.header)), c.header)
	return c.relay.WriteFrame(fr)
}

// ReadFrame returns the next answer with the SOCKS header taken off and Src
// set to the address the header names. Fragments (which RFC 1928 lets a
// client drop), malformed datagrams and answers from elsewhere are dropped.
func (c *udpConn) ReadFrame() (*funnel.Frame, error) {
	for {
		fr, err := c.relay.ReadFrame()
		if err != nil {
			if c.ctrlEnded.Load() && !c.closing.Load() {
				return nil, funnel.Errorf(funnel.KindGeneral, "socks5 server %s closed the UDP association", c.server)
			}
			return nil, err
		}
		b := fr.Bytes()
		if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
			fr.Release()
			continue
		}
		src, n, err := socks5wire.ParseAddr(b[3:])
		if err != nil || (c.dest.IsValid() && src.AddrPort() != c.dest) {
			fr.Release()
			continue
		}
		fr.Pull(3 + n)
		// A name as source (no server we know sends one) leaves Src unknown.
		fr.Src = src.AddrPort()
		return fr, nil
	}
}

func (c *udpConn) SetReadDeadline(t time.Time) error { return c.relay.SetReadDeadline(t) }

func (c *udpConn) Close() error {
	c.closing.Store(true)
	return c.shutdown()
}

func (c *udpConn) shutdown() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.relay.Close()
		c.ctrl.Close()
	})
	return err
}

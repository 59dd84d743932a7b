package socks5d

import (
	"context"
	"encoding/binary"
	"github.com/funtun/funtun/internal/socks5wire"
	"net"
	"net/netip"

	"github.com/funtun/funtun/funnel"
)

// The engine's event loops (funnel.ServeListener) serve the most common
// request with no goroutine per client: no authentication, CONNECT to a
// literal address, and a profile the engine dials itself (plain direct).
// This file is socks5d's part of that: which clients the loops may take,
// and the greeting and request as a non-blocking handshake. Everything
// else — authentication, names, BIND, UDP ASSOCIATE, --map, --allow
// refusals, malformed input, any other profile — is handed to the general
// path (serveConnFrom) with the bytes read so far, so the protocol's
// corner cases live in one place (server.go).

// Handshake phases the loop keeps per client.
const (
	phaseGreeting = 0
	phaseRequest  = 1 // the greeting was answered: no authentication
)

type loopHandshake struct{}

var _ funnel.Handshake = loopHandshake{}

func (loopHandshake) Input(phase *uint8, b []byte, write func([]byte) error) funnel.Step {
	if *phase == phaseGreeting {
		if b[0] != socks5wire.Version {
			// An HTTP request, SOCKS4: the general path says what it
			// is and closes, without waiting for more.
			return funnel.Step{Kind: funnel.StepGeneral}
		}
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return funnel.Step{Kind: funnel.StepMore}
		}
		if !offers(b[2:2+int(b[1])], socks5wire.MethodNone) {
			// Not ours to judge: the general path answers it.
			return funnel.Step{Kind: funnel.StepGeneral}
		}
		if err := write([]byte{socks5wire.Version, socks5wire.MethodNone}); err != nil {
			return funnel.Step{Kind: funnel.StepClose}
		}
		*phase = phaseRequest
		// The request, if here already, comes in the next call: a
		// request handed over with bytes after it must not take the
		// greeting along.
		return funnel.Step{Kind: funnel.StepMore, Consumed: 2 + int(b[1])}
	}
	if len(b) < 4 {
		return funnel.Step{Kind: funnel.StepMore}
	}
	var ip netip.Addr
	var n int
	switch {
	case b[0] != socks5wire.Version || b[1] != socks5wire.CmdConnect || b[2] != 0:
		return funnel.Step{Kind: funnel.StepGeneral}
	case b[3] == socks5wire.AtypIPv4 && len(b) >= 4+4+2:
		ip, n = netip.AddrFrom4([4]byte(b[4:8])), 4+4+2
	case b[3] == socks5wire.AtypIPv6 && len(b) >= 4+16+2:
		ip, n = netip.AddrFrom16([16]byte(b[4:20])).Unmap(), 4+16+2
	case b[3] == socks5wire.AtypIPv4 || b[3] == socks5wire.AtypIPv6:
		return funnel.Step{Kind: funnel.StepMore} // not all of it yet
	default:
		// A name (resolved by the profile's pieces), or a malformed
		// request.
		return funnel.Step{Kind: funnel.StepGeneral}
	}
	if !ip.IsValid() || ip.IsUnspecified() {
		return funnel.Step{Kind: funnel.StepGeneral}
	}
	dest := netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[n-2:n]))
	return funnel.Step{Kind: funnel.StepDial, Dest: dest, Consumed: n}
}

func (loopHandshake) Answer(buf []byte, bound netip.AddrPort, err error) []byte {
	if err != nil {
		return socks5wire.AppendReply(buf, funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
	}
	return socks5wire.AppendReply(buf, socks5wire.ReplySucceeded, bound)
}

// admit counts a client against --max-conns (refused at once beyond it)
// and says whether the loop may take it: not when the request will need
// the general path whatever it is.
func (s *Server) admit(remote netip.AddrPort) funnel.Admission {
	if s.active.Add(1) > int64(s.MaxConns) {
		// Refuse at once: a queue would let a flood hold descriptors
		// and memory without bound.
		s.active.Add(-1)
		s.noteRefused()
		return funnel.AdmitRefuse
	}
	s.wg.Add(1)
	if s.users.Load() != nil || s.mapping.Load() != nil || !remote.IsValid() {
		return funnel.AdmitGeneral
	}
	if len(s.Allow) > 0 && !s.allowed(net.TCPAddrFromAddrPort(remote)) {
		return funnel.AdmitGeneral
	}
	return funnel.AdmitLoop
}

// finished ends the books of an admitted client.
func (s *Server) finished() {
	s.active.Add(-1)
	s.wg.Done()
}

// serveHandover is the general path for a client the engine hands over.
func (s *Server) serveHandover(ctx context.Context, h funnel.Handover) {
	c := h.Conn
	if !s.track(c, true) {
		c.Close()
		s.finished()
		return
	}
	finish := func() {
		s.track(c, false)
		s.finished()
	}
	remote := c.RemoteAddr()
	if h.Remote.IsValid() {
		remote = net.TCPAddrFromAddrPort(h.Remote)
	}
	if !s.serveConnFrom(ctx, c, remote, finish, h.Read, h.Phase == phaseRequest) {
		finish()
	}
}

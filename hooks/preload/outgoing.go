//go:build linux

package preload

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/funtun/funtun/funnel"
	"golang.org/x/sys/unix"
)

// udpIdle ends a relayed datagram flow after this long without traffic
// (its relay stays while the program's socket lives: udp_relay.go).
const udpIdle = 2 * time.Minute

// relayAcceptWait bounds how long a relay waits for the program's socket
// to arrive on its loopback listener after connect() was answered.
const relayAcceptWait = 30 * time.Second

// connect answers CONNECT: the program's socket fd is to reach the
// destination in req through the profile. The result is what connect()
// returns in the program: 0, EINPROGRESS, or the errno of the failure;
// plain says the profile is plain direct, so the library may connect
// literal addresses itself for a while (see funnel.Pipeline.KernelDial).
func (s *Server) connect(ctx context.Context, p *peer, req request, fd int) (errno unix.Errno, plain bool) {
	errno, pl := s.connectVia(ctx, p, req, fd)
	if pl == nil {
		return errno, false
	}
	pol, ok := pl.KernelDial()
	return errno, ok && pol.Plain
}

// connectFailed logs a connect the library made itself on the plain-direct
// fast path and that failed: the flow the funnel would have logged.
func (s *Server) connectFailed(p *peer, req request) {
	f := s.libraryFlow(p, req)
	if f == nil {
		return
	}
	errno := unix.Errno(req.Flags)
	if errno == 0 {
		errno = unix.EIO
	}
	s.Log.Debug("preload: the library reports a failed fast-path connect", "pid", p.pid, "dst", f.Dest.String())
	s.Engine.End(f, errno)
}

// connectedFast logs a connect the library made itself on the plain-direct
// fast path, when successful flows are logged (--debug): the funnel never
// sees such a flow's bytes, so the line says who connected it and counts
// nothing.
func (s *Server) connectedFast(p *peer, req request) {
	if !s.Log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	if f := s.libraryFlow(p, req); f != nil {
		s.Engine.EndUncounted(f, "flow connected by the library")
	}
}

// libraryFlow is the flow of a connect the library reports having made
// itself, or nil when the report makes no sense.
func (s *Server) libraryFlow(p *peer, req request) *funnel.Flow {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		return nil
	}
	network := funnel.TCP
	if req.Arg == unix.SOCK_DGRAM {
		network = funnel.UDP
	}
	dest, err := s.destination(ap)
	if err != nil {
		return nil
	}
	f := s.newFlow(p, network, dest)
	if pl, err := s.Engine.Resolve(s.Selector); err == nil {
		f.Profile = pl.Name
	}
	return f
}

func (s *Server) connectVia(ctx context.Context, p *peer, req request, fd int) (unix.Errno, *funnel.Pipeline) {
	// Our copy of the program's socket goes once it is connected; the
	// program keeps its own.
	defer unix.Close(fd)
	// The library has asked the socket's type already; the family and the
	// protocol (for datagrams) are asked here.
	sotype := int(req.Arg)
	family, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return errnoOf(err), nil
	}
	proto := 0
	if sotype == unix.SOCK_DGRAM {
		if proto, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
			return errnoOf(err), nil
		}
	}
	ap, scope, ok := parseSockaddr(req.Addr)
	if !ok {
		return unix.EINVAL, nil
	}
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return unix.EAFNOSUPPORT, nil
	}
	if family == unix.AF_INET && !ap.Addr().Unmap().Is4() {
		return unix.EAFNOSUPPORT, nil // what the kernel says to an IPv6 address on an IPv4 socket
	}
	var network funnel.Network
	switch {
	case sotype == unix.SOCK_STREAM:
		network = funnel.TCP
	case sotype == unix.SOCK_DGRAM && (proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_UDPLITE):
		network = funnel.UDP
	default:
		// ICMP, SCTP, raw: nothing in the funnel carries them, and letting
		// them past would leak around the profile.
		s.Log.Warn("preload: refused a connect the funnel cannot carry", "pid", p.pid, "type", sotype, "protocol", proto, "dst", ap.String())
		return unix.EACCES, nil
	}
	if isSystemResolver(ap) {
		return s.connectDNS(ctx, p, fd, family, sotype), nil
	}
	dest, err := s.destination(ap)
	if err != nil {
		return errnoOf(err), nil
	}
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil {
		s.Log.Error("preload: no profile", "err", err)
		return unix.ECONNREFUSED, nil
	}
	f := s.newFlow(p, network, dest)
	// The address the program asked for, kept with its IPv6 scope, in case
	// the profile sends the flow exactly there.
	asked := handoffTarget{ap: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), scope: scope}
	if network == funnel.UDP {
		return s.connectDgram(ctx, f, pl, fd, family, asked), pl
	}
	return s.connectStream(ctx, f, pl, fd, family, asked), pl
}

type handoffTarget struct {
	ap    netip.AddrPort
	scope uint32
}

func (s *Server) connectStream(ctx context.Context, f *funnel.Flow, pl *funnel.Pipeline, fd, family int, asked handoffTarget) unix.Errno {
	r := s.Engine.Begin(f, pl)
	// Under the guard the program's socket lives where only loopback is:
	// it reaches the destination through a relay only.
	f.Handoff = s.guard == nil
	up, err := r.DialStream(ctx)
	if err != nil {
		r.End(err)
		return errnoOf(err)
	}
	if up.HandedOff() {
		if sa, ok := socketAddr(fd, family, up.Handoff, asked); ok {
			errno := connectFD(fd, sa)
			s.endHandoff(r, fd, errno)
			return errno
		}
		// The program's socket cannot reach that family (an IPv4 socket,
		// an IPv6-only destination): carry the flow through a relay.
		f.Handoff = false
		if up, err = r.DialStream(ctx); err != nil {
			r.End(err)
			return errnoOf(err)
		}
	}
	conn := up.Conn
	fail := func(err error) {
		conn.Close()
		r.End(err)
	}
	hub, sa, err := s.hubs.hub(fd, family)
	if err != nil {
		fail(err)
		return unix.EIO
	}
	errno := connectFD(fd, sa)
	if errno != 0 && errno != unix.EINPROGRESS {
		fail(errno)
		return errno
	}
	local, err := unix.Getsockname(fd)
	from, ok := addrPortOf(local)
	if err != nil || !ok {
		fail(err)
		return unix.EIO
	}
	f.Source = net.TCPAddrFromAddrPort(from)
	// No goroutine waits for the program's socket to reach the hub, and
	// Relay returns at once: two kernel sockets (a socks5 upstream after
	// its handshake, say) relay on the engine's event loops.
	hub.expect(from, func(app net.Conn, err error) {
		if err != nil {
			fail(err)
			return
		}
		r.Relay(ctx, app, conn, funnel.RelayOptions{})
	})
	return errno
}

// endHandoff ends a handed-off flow: there is no relay, so this is all
// there is to say about it. A failure is the engine's "flow failed" line;
// a success gets a line that says the flow was handed off and counts no
// bytes (they never pass the funnel).
func (s *Server) endHandoff(r *funnel.Run, fd int, errno unix.Errno) {
	f := r.Flow
	failed := errno != 0 && errno != unix.EINPROGRESS
	// The source is for the log line only: skip the system call when no
	// line will be written (the launcher logs failed flows only).
	if failed || s.Log.Enabled(context.Background(), slog.LevelInfo) {
		if sa, err := unix.Getsockname(fd); err == nil {
			if ap, ok := addrPortOf(sa); ok {
				f.Source = net.TCPAddrFromAddrPort(ap)
			}
		}
	}
	if failed {
		r.End(errno)
		return
	}
	r.EndHandedOff()
}

func (s *Server) connectDgram(ctx context.Context, f *funnel.Flow, pl *funnel.Pipeline, fd, family int, asked handoffTarget) unix.Errno {
	r := s.Engine.Begin(f, pl)
	dg, err := r.DialDgram(ctx)
	if err != nil {
		r.End(err)
		return errnoOf(err)
	}
	fail := func(err error, c io.Closer) {
		c.Close()
		dg.Close()
		r.End(err)
	}
	// When what comes back is direct's own kernel socket, no piece touches
	// the datagrams: connect the program's socket to the same place and
	// drop ours — the datagram form of a handoff.
	if u, ok := dg.(*funnel.UDPConn); ok && s.guard == nil {
		if ra, ok := u.RemoteAddr().(*net.UDPAddr); ok {
			if sa, ok := socketAddr(fd, family, ra.AddrPort(), asked); ok {
				u.Close()
				errno := connectFD(fd, sa)
				s.endHandoff(r, fd, errno)
				return errno
			}
		}
	}
	rc, sa, err := s.loopbackUDP(fd, family)
	if err != nil {
		dg.Close()
		r.End(err)
		return errnoOf(err)
	}
	errno := connectFD(fd, sa)
	if errno != 0 {
		fail(errno, rc)
		return errno
	}
	local, err := unix.Getsockname(fd)
	app, ok := addrPortOf(local)
	if err != nil || !ok {
		fail(err, rc)
		return unix.EIO
	}
	// Our relay socket takes datagrams from the program's socket only.
	if err := connectConn(rc, app); err != nil {
		fail(err, rc)
		return errnoOf(err)
	}
	f.Source = net.UDPAddrFromAddrPort(app)
	s.Log.Debug("preload: relaying datagrams through the pieces", "flow", f.ID, "dst", f.Dest.String())
	// The relay stays while the program's socket lives (udp_relay.go):
	// it stays connected to it after this flow ends.
	if err := s.relayConnected(ctx, f, rc, app, fd, r, dg); err != nil {
		dg.Close()
		r.End(err)
		return errnoOf(err)
	}
	return 0
}

// socketAddr is where to connect a socket of family for addr, or false
// when that family cannot reach it (an IPv4 socket and an IPv6 address, or
// an IPv6-only socket and an IPv4 address).
func socketAddr(fd, family int, addr netip.AddrPort, asked handoffTarget) (unix.Sockaddr, bool) {
	a := addr.Addr().Unmap()
	if family == unix.AF_INET {
		if !a.Is4() {
			return nil, false
		}
		return &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}, true
	}
	if a.Is4() {
		if v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil && v6only != 0 {
			return nil, false
		}
		return &unix.SockaddrInet6{Port: int(addr.Port()), Addr: netip.AddrFrom16(a.As16()).As16()}, true
	}
	sa := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
	if z := addr.Addr().Zone(); z != "" {
		if n, err := strconv.Atoi(z); err == nil {
			sa.ZoneId = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	} else if a == asked.ap.Addr() {
		sa.ZoneId = asked.scope
	}
	return sa, true
}

// connectFD connects the program's socket. A blocking socket blocks here
// as it would in the program (which waits for our answer); a non-blocking
// one gives EINPROGRESS, and the program polls its own socket.
func connectFD(fd int, sa unix.Sockaddr) unix.Errno {
	err := unix.Connect(fd, sa)
	if err == nil {
		return 0
	}
	errno, ok := err.(unix.Errno)
	if !ok {
		return unix.EIO
	}
	if errno == unix.EINTR || errno == unix.EALREADY {
		// A signal of ours interrupted a blocking connect that goes on in
		// the kernel: wait for it like the program would have.
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK != 0 {
			return unix.EINPROGRESS
		}
		return waitConnected(fd)
	}
	return errno
}

func waitConnected(fd int) unix.Errno {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		_, err := unix.Poll(pfd, -1)
		if err != unix.EINTR {
			break
		}
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return unix.EIO
	}
	return unix.Errno(soerr)
}

func (s *Server) loopbackUDP(fd, family int) (*net.UDPConn, unix.Sockaddr, error) {
	if family == unix.AF_INET6 {
		if c, err := s.listenLoopbackUDP("udp6", net.IPv6loopback); err == nil {
			ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
			return c, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
		}
	}
	c, err := s.listenLoopbackUDP("udp4", net.IPv4(127, 0, 0, 1))
	if err != nil {
		return nil, nil, err
	}
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	sa, ok := socketAddr(fd, family, ap, handoffTarget{})
	if !ok {
		c.Close()
		return nil, nil, funnel.Errorf(funnel.KindAddrNotSupported, "an IPv6-only socket cannot reach the funnel's IPv4 relay, and IPv6 loopback is unavailable")
	}
	return c, sa, nil
}

// connectConn connects one of our UDP sockets to a peer, so that the
// kernel drops datagrams from anyone else.
func connectConn(c *net.UDPConn, to netip.AddrPort) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	family := unix.AF_INET
	if local.Addr().Is6() && !local.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		sa, ok := socketAddr(int(fd), family, to, handoffTarget{})
		if !ok {
			cerr = unix.EAFNOSUPPORT
			return
		}
		cerr = unix.Connect(int(fd), sa)
	}); err != nil {
		return err
	}
	return cerr
}

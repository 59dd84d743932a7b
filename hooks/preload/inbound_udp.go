//go:build linux

package preload

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Datagrams for a program's bound socket from where no kernel socket of
// it can be reached (profile 6bed4's tunnel address; funnel.DgramListener).
// The library reports a UDP socket bound to all addresses on a chosen port
// (UDP_BIND). When the profile listens for it, every peer gets a relay of
// ours on loopback, connected to the program's socket: the peer's
// datagrams reach the program from there, as incoming flows (logged,
// counted), and the program's answers to the peer go back through it and
// leave the profile's listener from the program's port. The library asks
// once per relay who it stands for (UDP_PEER), so that recvfrom names the
// peer. A relay lives as long as the program's socket — the program may
// answer, or call again, long after a conversation went idle and its flow
// ended; the next datagram either way starts a new flow on it.
//
// An IPv4-only socket cannot be told an IPv6 peer: it is told a synthetic
// IPv4 address (the range getaddrinfo answers from) that stands for the
// peer, and which a sendto reaches the peer at even after the library
// forgot the relay.

// The protocol additions (preload/funtun_wire.h). An older funnel answers
// them ENOSYS, and the library then leaves the socket as it is.
const (
	opUDPBind = 15
	opUDPPeer = 16

	udpListened = 1 // UDP_BIND's answer: the profile receives for the socket
)

// maxPeerRelays bounds the relays of one socket: a port open to the
// world (SIP's is scanned all day) must not cost a descriptor for every
// address that ever sent to it. Past it, a peer without a running flow
// gives its relay up — the program's later datagram to that peer, sent
// to the relay it remembers, is lost — and when every peer has one, a
// new peer is turned away.
const maxPeerRelays = 256

var errTooManyPeers = errors.New("too many peers at once for one socket")

type udpInTable struct {
	mu      sync.Mutex
	byPort  map[uint16]*boundSocket
	byRelay map[netip.AddrPort]*peerRelay
}

// boundSocket is a program's UDP socket the profile listens for.
type boundSocket struct {
	s      *Server
	proc   *peer
	convs  funnel.Conversations
	public netip.AddrPort // what the program bound: the unspecified address and its port
	family int
	ino    uint64 // the socket's inode: a later socket on the port is another
	v6only bool
	// stopCtx forgets the server's context, which closes the socket's
	// relays when the funnel stops.
	stopCtx func() bool
	watch   *socketWatch
	done    chan struct{}
	once    sync.Once

	mu      sync.Mutex
	byShown map[netip.AddrPort]*peerRelay
}

// peerRelay carries one peer's datagrams to and from the program's
// socket.
type peerRelay struct {
	b     *boundSocket
	relay *dgramRelay    // ours on loopback, connected to the program's socket
	addr  netip.AddrPort // the relay's address: where the program's datagrams come from
	shown netip.AddrPort // the peer as the program names it
	dest  funnel.Addr    // the peer as a flow's destination
}

// udpBind answers UDP_BIND.
func (s *Server) udpBind(ctx context.Context, p *peer, req request, fd int, resp *response) {
	defer unix.Close(fd)
	family, sotype, proto, err := sockInfo(fd)
	if err != nil || sotype != unix.SOCK_DGRAM || proto != unix.IPPROTO_UDP || (family != unix.AF_INET && family != unix.AF_INET6) || s.guard != nil {
		// Under the guard the program's loopback is its own: no relay
		// of ours can reach the socket.
		return
	}
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil || !pl.ListensDgram() {
		return
	}
	sa, err := unix.Getsockname(fd)
	public, ok := addrPortOf(sa)
	if err != nil || !ok || !public.Addr().Unmap().IsUnspecified() || public.Port() == 0 {
		return
	}
	public = netx.Unmap(public)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return
	}
	// A socket that had the port before is gone (or shares it with
	// SO_REUSEPORT, and the newer one takes the tunnel's datagrams).
	s.udpIn.mu.Lock()
	old := s.udpIn.byPort[public.Port()]
	s.udpIn.mu.Unlock()
	if old != nil {
		old.close()
	}
	f := s.newFlow(p, funnel.UDP, funnel.Addr{IP: public.Addr(), Port: public.Port()})
	convs, err := pl.ListenDgram(ctx, f)
	if errors.Is(err, funnel.ErrNoListener) {
		return
	}
	if err != nil {
		s.Log.Warn("preload: the profile cannot receive for the program's UDP socket; only the socket itself receives", "pid", p.pid, "addr", public.String(), "err", err)
		return
	}
	b := &boundSocket{s: s, proc: p, convs: convs, public: public, family: family, ino: st.Ino, done: make(chan struct{}), byShown: map[netip.AddrPort]*peerRelay{}}
	if family == unix.AF_INET6 {
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		b.v6only = err == nil && v6only != 0
	}
	b.mu.Lock()
	b.stopCtx = context.AfterFunc(ctx, b.close)
	b.mu.Unlock()
	s.udpIn.mu.Lock()
	if s.udpIn.byPort == nil {
		s.udpIn.byPort = map[uint16]*boundSocket{}
		s.udpIn.byRelay = map[netip.AddrPort]*peerRelay{}
	}
	s.udpIn.byPort[public.Port()] = b
	s.udpIn.mu.Unlock()
	s.Log.Debug("preload: the profile receives for the program's UDP socket too", "pid", p.pid, "addr", public.String(), "profile", pl.Name, "at", convs.Addr().String())
	w := s.udp.park.watch(b.ino, s.procNet(p), b.close)
	b.mu.Lock()
	b.watch = w
	b.mu.Unlock()
	go b.accept(ctx)
	resp.setFlags(udpListened)
}

// udpPeer answers UDP_PEER.
func (s *Server) udpPeer(req request, resp *response) {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	s.udpIn.mu.Lock()
	pr := s.udpIn.byRelay[netx.Unmap(ap)]
	s.udpIn.mu.Unlock()
	if pr == nil {
		resp.setErr(int32(unix.ENOENT))
		return
	}
	resp.setAddr(rawSockaddr(pr.shown, pr.b.family))
}

// listenedAssoc serves UDP_ASSOC for a socket the profile listens for,
// when the flow it dialed (r, dg) is not handed off: the peer's relay is
// one that lives with the socket, so that the peer's answers after a
// quiet while still reach the program. ok is false for other sockets.
func (s *Server) listenedAssoc(ctx context.Context, fd int, shown netip.AddrPort, dest funnel.Addr, r *funnel.Run, dg funnel.DgramConn) (relay netip.AddrPort, ok bool, err error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return relay, false, nil
	}
	local, _ := addrPortOf(sa)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return relay, false, nil
	}
	s.udpIn.mu.Lock()
	b := s.udpIn.byPort[local.Port()]
	s.udpIn.mu.Unlock()
	if b == nil || b.ino != st.Ino {
		return relay, false, nil
	}
	pr, err := b.relayFor(ctx, netx.Unmap(shown), dest)
	if errors.Is(err, errTooManyPeers) {
		return relay, false, nil // a relay that ends when idle, as for other sockets
	}
	if err != nil {
		return relay, true, err
	}
	pr.relay.attach(r, dg)
	return pr.addr, true, nil
}

// accept makes each new peer's conversation a flow to the program.
func (b *boundSocket) accept(ctx context.Context) {
	defer b.close()
	s := b.s
	for {
		c, err := b.convs.Accept()
		if err != nil {
			select {
			case <-b.done:
			default:
				s.Log.Warn("preload: the profile no longer receives for the program's UDP socket", "pid", b.proc.pid, "addr", b.public.String(), "err", err)
			}
			return
		}
		peerAddr := netx.AddrPortOf(c.RemoteAddr())
		shown := peerAddr
		if b.family == unix.AF_INET && !peerAddr.Addr().Unmap().Is4() {
			shown = netip.AddrPortFrom(s.names.addr(peerAddr.Addr().String(), false), peerAddr.Port())
		}
		pr, err := b.relayFor(ctx, shown, funnel.Addr{IP: peerAddr.Addr(), Port: peerAddr.Port()})
		if err != nil {
			level := slog.LevelWarn
			if errors.Is(err, errTooManyPeers) {
				level = slog.LevelDebug // a scan of the port says nothing new
			}
			s.Log.Log(ctx, level, "preload: no relay to the program's UDP socket", "pid", b.proc.pid, "addr", b.public.String(), "peer", peerAddr.String(), "err", err)
			c.Close()
			continue
		}
		pl, err := s.Engine.Resolve(s.Selector)
		if err != nil {
			c.Close()
			continue
		}
		f := s.newFlow(b.proc, funnel.UDP, funnel.AddrFromNet(c.LocalAddr()))
		f.Source = c.RemoteAddr()
		f.Inbound = true
		pr.relay.attach(s.Engine.Begin(f, pl), c)
	}
}

// relayFor is the relay for the peer the program names shown, made when
// there is none yet.
func (b *boundSocket) relayFor(ctx context.Context, shown netip.AddrPort, dest funnel.Addr) (*peerRelay, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.done:
		return nil, net.ErrClosed
	default:
	}
	if pr := b.byShown[shown]; pr != nil && !pr.relay.closedNow() {
		return pr, nil
	}
	if len(b.byShown) >= maxPeerRelays && !b.evictIdle() {
		return nil, errTooManyPeers
	}
	rc, err := b.loopbackRelay()
	if err != nil {
		return nil, err
	}
	addr := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	app := netip.AddrPortFrom(addr.Addr(), b.public.Port())
	if err := connectConn(rc, app); err != nil {
		rc.Close()
		return nil, err
	}
	s := b.s
	relay, err := s.udp.park.newRelay(ctx, relaySpec{
		rc: rc, app: b.public, idle: s.datagramIdle(),
		// The program sends first: a flow from its port to the peer.
		open: s.redial(ctx, b.proc, dest, net.UDPAddrFromAddrPort(b.public)),
		// Its bound socket is watched once for all its peers.
		refused: b.checkGone,
		// Closed by the server's limit, say; maybe with b.mu held.
		forget: func(r *dgramRelay) { go b.forget(shown, r) },
	})
	if err != nil {
		return nil, err
	}
	pr := &peerRelay{b: b, relay: relay, addr: relay.addr, shown: shown, dest: dest}
	b.byShown[shown] = pr
	s.udpIn.mu.Lock()
	s.udpIn.byRelay[pr.addr] = pr
	s.udpIn.mu.Unlock()
	return pr, nil
}

// evictIdle closes a relay whose peer has no flow running, to make room
// for a new peer. Called with b.mu held.
func (b *boundSocket) evictIdle() bool {
	for shown, pr := range b.byShown {
		if !pr.relay.idle() {
			continue
		}
		delete(b.byShown, shown)
		b.s.udpIn.mu.Lock()
		delete(b.s.udpIn.byRelay, pr.addr)
		b.s.udpIn.mu.Unlock()
		pr.close()
		return true
	}
	return false
}

func (pr *peerRelay) close() { pr.relay.close() }

// forget drops the relay for the peer shown once it has closed.
func (b *boundSocket) forget(shown netip.AddrPort, r *dgramRelay) {
	b.mu.Lock()
	if pr := b.byShown[shown]; pr != nil && pr.relay == r {
		delete(b.byShown, shown)
	}
	b.mu.Unlock()
	s := b.s
	s.udpIn.mu.Lock()
	if pr := s.udpIn.byRelay[r.addr]; pr != nil && pr.relay == r {
		delete(s.udpIn.byRelay, r.addr)
	}
	s.udpIn.mu.Unlock()
}

// checkGone gives the port up when no socket with the program's inode is
// bound any more. It reads /proc/net/udp{,6}, which binds nothing: a probe
// bind could take the port from under a program that binds it again.
func (b *boundSocket) checkGone() {
	if !udpInodeBound(b.s.procNet(b.proc), b.ino) {
		b.s.Log.Debug("preload: the program's UDP socket is gone; the profile no longer receives for it", "pid", b.proc.pid, "addr", b.public.String())
		b.close()
	}
}

func (b *boundSocket) close() {
	b.once.Do(func() {
		close(b.done)
		b.mu.Lock()
		stop, w := b.stopCtx, b.watch
		b.mu.Unlock()
		if stop != nil {
			stop()
		}
		b.s.udp.park.unwatch(w)
		b.convs.Close()
		s := b.s
		s.udpIn.mu.Lock()
		if s.udpIn.byPort[b.public.Port()] == b {
			delete(s.udpIn.byPort, b.public.Port())
		}
		s.udpIn.mu.Unlock()
		b.mu.Lock()
		relays := b.byShown
		b.byShown = nil
		b.mu.Unlock()
		for _, pr := range relays {
			s.udpIn.mu.Lock()
			delete(s.udpIn.byRelay, pr.addr)
			s.udpIn.mu.Unlock()
			pr.close()
		}
	})
}

// loopbackRelay is a loopback UDP socket of ours that the program's
// socket can receive from: IPv6 loopback for an IPv6 socket where it
// works, else IPv4 (which a dual-stack socket takes as a mapped address).
func (b *boundSocket) loopbackRelay() (*net.UDPConn, error) {
	if b.family == unix.AF_INET6 {
		c, err := b.s.listenLoopbackUDP("udp6", net.IPv6loopback)
		if err == nil || b.v6only {
			return c, err
		}
	}
	return b.s.listenLoopbackUDP("udp4", net.IPv4(127, 0, 0, 1))
}

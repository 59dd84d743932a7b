//go:build linux

package preload

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Datagrams a program sends with an address (sendto, sendmsg). The library
// asks once per socket and destination where they should go: the
// destination itself when what the profile gives back is direct's own
// kernel socket (nothing touches the datagrams), else a relay of ours on
// loopback that carries them through the pieces. A relay serves one
// program socket and one destination, for as long as the socket lives
// (udp_relay.go); its flows end when idle.
type udpTable struct {
	// idle ends a relayed flow after that long without a datagram
	// either way (nanoseconds); 0 is udpIdle.
	idle atomic.Int64
	park relayPark

	mu     sync.Mutex
	relays map[uint64]map[string]*dgramRelay // by the program's socket, then destination
	// connected is the relay a socket connected through the funnel
	// talks to: a socket connected again leaves the old one unused.
	connected map[uint64]*dgramRelay
}

// maxSocketRelays bounds the destinations one socket has relays to (a
// DHT node or a DNS forwarder sends to thousands), so that it cannot take
// every other socket's relays past the server's limit: past it, its
// relay idle longest gives way. The library remembers fewer (512, for all
// of a process's sockets) and asks again for what it forgot.
const maxSocketRelays = 1024

type udpKey struct {
	ino  uint64 // the program's socket
	dest string
}

// lookup is the relay that already serves key.
func (t *udpTable) lookup(key udpKey) *dgramRelay {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.relays[key.ino][key.dest]
}

// keep files relay under key, unless another got there first (two
// threads asked at once): then relay closes, and the other serves.
func (t *udpTable) keep(key udpKey, relay *dgramRelay) *dgramRelay {
	t.mu.Lock()
	byDest := t.relays[key.ino]
	if existing := byDest[key.dest]; existing != nil {
		t.mu.Unlock()
		relay.close()
		return existing
	}
	if t.relays == nil {
		t.relays = map[uint64]map[string]*dgramRelay{}
	}
	if byDest == nil {
		byDest = map[string]*dgramRelay{}
		t.relays[key.ino] = byDest
	}
	var victim *dgramRelay
	if len(byDest) >= maxSocketRelays {
		var victimDest string
		for dest, r := range byDest {
			if r.idle() && (victim == nil || r.lastUsed.Load() < victim.lastUsed.Load()) {
				victim, victimDest = r, dest
			}
		}
		delete(byDest, victimDest)
	}
	byDest[key.dest] = relay
	t.mu.Unlock()
	if victim != nil {
		victim.close()
	}
	return relay
}

// drop is a relay's forget for key.
func (t *udpTable) drop(key udpKey) func(*dgramRelay) {
	return func(relay *dgramRelay) {
		t.mu.Lock()
		if byDest := t.relays[key.ino]; byDest[key.dest] == relay {
			delete(byDest, key.dest)
			if len(byDest) == 0 {
				delete(t.relays, key.ino)
			}
		}
		t.mu.Unlock()
	}
}

// UDPRelays is the number of datagram relays open now, each one
// descriptor: they close when the program's socket is gone.
func (s *Server) UDPRelays() int { return s.udp.park.count() }

func (s *Server) udpAssoc(ctx context.Context, p *peer, req request, fd int, resp *response) {
	defer unix.Close(fd)
	family, sotype, proto, err := sockInfo(fd)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	if sotype != unix.SOCK_DGRAM || (proto != unix.IPPROTO_UDP && proto != unix.IPPROTO_UDPLITE) ||
		(family != unix.AF_INET && family != unix.AF_INET6) {
		resp.setErr(int32(unix.EACCES))
		return
	}
	ap, scope, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	if family == unix.AF_INET && !ap.Addr().Unmap().Is4() {
		resp.setErr(int32(unix.EAFNOSUPPORT))
		return
	}
	dest, err := s.destination(ap)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	ino, err := socketInode(fd)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	key := udpKey{ino: ino, dest: dest.String()}
	// The library forgot (its table is small), or a supervisor asks
	// again: the relay is still there, and no upstream is dialed for
	// nothing.
	if existing := s.udp.lookup(key); existing != nil {
		resp.setAddr(rawSockaddr(existing.addr, family))
		return
	}
	if isSystemResolver(ap) {
		s.dnsAssoc(ctx, p, fd, family, key, resp)
		return
	}
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil {
		resp.setErr(int32(unix.ECONNREFUSED))
		return
	}
	// The program's socket gets its port now, as its first sendto would
	// give it, so that a relay knows whose datagrams to take.
	local, err := boundAddr(fd, family)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	f := s.newFlow(p, funnel.UDP, dest)
	f.Source = net.UDPAddrFromAddrPort(local)
	r := s.Engine.Begin(f, pl)
	dg, err := r.DialDgram(ctx)
	if err != nil {
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	asked := handoffTarget{ap: netx.Unmap(ap), scope: scope}
	if u, ok := dg.(*funnel.UDPConn); ok && s.guard == nil {
		if ra, ok := u.RemoteAddr().(*net.UDPAddr); ok {
			if _, ok := socketAddr(fd, family, ra.AddrPort(), asked); ok {
				u.Close()
				r.EndHandedOff()
				resp.setAddr(rawSockaddr(netx.AddrPortOf(ra), family))
				return
			}
		}
	}
	if relay, ok, err := s.listenedAssoc(ctx, fd, asked.ap, dest, r, dg); ok {
		// A socket the profile receives for: its relay lives with it.
		if err != nil {
			dg.Close()
			r.End(err)
			resp.setErr(int32(errnoOf(err)))
			return
		}
		resp.setAddr(rawSockaddr(relay, family))
		return
	}
	rc, _, err := s.loopbackUDP(fd, family)
	if err != nil {
		dg.Close()
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	relayAddr := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	from := local
	if !from.Addr().Unmap().IsValid() || from.Addr().IsUnspecified() || from.Addr().Unmap().IsUnspecified() {
		// A wildcard-bound socket sends to loopback from loopback.
		from = netip.AddrPortFrom(relayAddr.Addr(), local.Port())
	} else if relayAddr.Addr().Is4() {
		from = netx.Unmap(from)
	}
	if err := connectConn(rc, from); err != nil {
		rc.Close()
		dg.Close()
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	relay, err := s.udp.park.newRelay(ctx, relaySpec{
		rc: rc, app: from, idle: s.datagramIdle(), open: s.redial(ctx, p, dest, f.Source),
		ino: ino, procNet: s.procNet(p), forget: s.udp.drop(key),
	})
	if err != nil {
		dg.Close()
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	if kept := s.udp.keep(key, relay); kept != relay {
		dg.Close()
		r.Abandon()
		resp.setAddr(rawSockaddr(kept.addr, family))
		return
	}
	s.Log.Debug("preload: relaying datagrams through the pieces", "flow", f.ID, "pid", p.pid, "dst", dest.String(), "relay", relay.addr.String())
	relay.attach(r, dg)
	resp.setAddr(rawSockaddr(relay.addr, family))
}

// relayConnected carries the flow (r, dg) of a socket connected through
// the funnel, and its later flows, on a relay (rc, connected to the
// program's socket at app).
func (s *Server) relayConnected(ctx context.Context, f *funnel.Flow, rc *net.UDPConn, app netip.AddrPort, fd int, r *funnel.Run, dg funnel.DgramConn) error {
	p := peerOf(f)
	relay, err := s.connectedRelay(ctx, p, fd, relaySpec{rc: rc, app: app, open: s.redial(ctx, p, f.Dest, f.Source)})
	if err != nil {
		return err
	}
	relay.attach(r, dg)
	return nil
}

// connectedRelay parks the relay a socket connected through the funnel
// talks to, in place of the one it was connected to before (which no
// datagram reaches any more).
func (s *Server) connectedRelay(ctx context.Context, p *peer, fd int, spec relaySpec) (*dgramRelay, error) {
	ino, err := socketInode(fd)
	if err != nil {
		spec.rc.Close()
		return nil, err
	}
	spec.idle, spec.ino, spec.procNet = s.datagramIdle(), ino, s.procNet(p)
	spec.forget = func(relay *dgramRelay) {
		s.udp.mu.Lock()
		if s.udp.connected[ino] == relay {
			delete(s.udp.connected, ino)
		}
		s.udp.mu.Unlock()
	}
	relay, err := s.udp.park.newRelay(ctx, spec)
	if err != nil {
		return nil, err
	}
	s.udp.mu.Lock()
	old := s.udp.connected[ino]
	if s.udp.connected == nil {
		s.udp.connected = map[uint64]*dgramRelay{}
	}
	s.udp.connected[ino] = relay
	s.udp.mu.Unlock()
	if old != nil {
		old.close()
	}
	return relay, nil
}

// boundAddr is the socket's address, binding it to the wildcard address
// and a free port first if it has none (what the kernel does on a first
// sendto).
func boundAddr(fd, family int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap, ok := addrPortOf(sa)
	if ok && ap.Port() != 0 {
		return ap, nil
	}
	var any unix.Sockaddr = &unix.SockaddrInet4{}
	if family == unix.AF_INET6 {
		any = &unix.SockaddrInet6{}
	}
	if err := unix.Bind(fd, any); err != nil {
		return netip.AddrPort{}, err
	}
	if sa, err = unix.Getsockname(fd); err != nil {
		return netip.AddrPort{}, err
	}
	ap, _ = addrPortOf(sa)
	return ap, nil
}

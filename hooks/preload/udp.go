//go:build linux

package preload

import (
	"context"
	"net"
	"net/netip"
	"sync"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Datagrams a program sends with an address (sendto, sendmsg). The library
// asks once per socket and destination where they should go: the
// destination itself when what the profile gives back is direct's own
// kernel socket (nothing touches the datagrams), else a relay of ours on
// loopback that carries them through the pieces. A relay serves one
// program socket and one destination, and ends when idle or when the
// program's socket is gone.
type udpTable struct {
	mu     sync.Mutex
	relays map[udpKey]netip.AddrPort // -> the relay's address
}

type udpKey struct {
	app  netip.AddrPort // the program's socket as the relay sees it
	dest string
}

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
	if isSystemResolver(ap) {
		s.dnsAssoc(ctx, p, fd, family, resp)
		return
	}
	dest, err := s.destination(ap)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
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
	if u, ok := dg.(*funnel.UDPConn); ok {
		if ra, ok := u.RemoteAddr().(*net.UDPAddr); ok {
			if _, ok := socketAddr(fd, family, ra.AddrPort(), asked); ok {
				u.Close()
				r.EndHandedOff()
				resp.setAddr(rawSockaddr(netx.AddrPortOf(ra), family))
				return
			}
		}
	}
	rc, _, err := loopbackUDP(fd, family)
	if err != nil {
		dg.Close()
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	relay := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	from := local
	if !from.Addr().Unmap().IsValid() || from.Addr().IsUnspecified() || from.Addr().Unmap().IsUnspecified() {
		// A wildcard-bound socket sends to loopback from loopback.
		from = netip.AddrPortFrom(relay.Addr(), local.Port())
	} else if relay.Addr().Is4() {
		from = netx.Unmap(from)
	}
	key := udpKey{app: from, dest: dest.String()}
	s.udp.mu.Lock()
	if existing, ok := s.udp.relays[key]; ok {
		// The library forgot (its table is small): the relay is still there.
		s.udp.mu.Unlock()
		rc.Close()
		dg.Close()
		r.Abandon()
		resp.setAddr(rawSockaddr(existing, family))
		return
	}
	if err := connectConn(rc, from); err != nil {
		s.udp.mu.Unlock()
		rc.Close()
		dg.Close()
		r.End(err)
		resp.setErr(int32(errnoOf(err)))
		return
	}
	s.udp.relays[key] = relay
	s.udp.mu.Unlock()
	s.Log.Debug("preload: relaying datagrams through the pieces", "flow", f.ID, "pid", p.pid, "dst", dest.String(), "relay", relay.String())
	go func() {
		stop := context.AfterFunc(ctx, func() { rc.Close(); dg.Close() })
		defer stop()
		err := relayDatagrams(rc, dg, f, from)
		s.udp.mu.Lock()
		delete(s.udp.relays, key)
		s.udp.mu.Unlock()
		r.End(err)
	}()
	resp.setAddr(rawSockaddr(relay, family))
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

//go:build linux

package preload

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// A program that speaks DNS itself (dig, c-ares, Chromium's resolver)
// never calls getaddrinfo: its queries to the system's resolvers would
// leak the names it looks up and get answers the profile never saw. Such
// datagrams and connections are answered here instead, from the same
// synthetic table getaddrinfo uses, so that a later connect to the answer
// maps back to the name and goes through the profile.

// resolvedStub is systemd-resolved's stub, which programs may ask even when
// resolv.conf names another server.
var resolvedStub = netip.MustParseAddr("127.0.0.53")

// systemResolvers is read once per funnel process, at its first connect:
// a resolv.conf edited later (a VPN coming up) is not followed.
var systemResolvers = sync.OnceValue(func() map[netip.Addr]bool {
	set := map[netip.Addr]bool{resolvedStub: true}
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return set
	}
	defer f.Close()
	for _, a := range parseNameservers(f) {
		set[a] = true
	}
	return set
})

// parseNameservers takes the nameserver lines of a resolv.conf; a line it
// cannot read is skipped, as the C resolver does.
func parseNameservers(r io.Reader) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(fields[1]); err == nil {
			out = append(out, a.WithZone("").Unmap())
		}
	}
	return out
}

// isSystemResolver reports whether ap is port 53 of a system resolver.
func isSystemResolver(ap netip.AddrPort) bool {
	return ap.Port() == 53 && systemResolvers()[ap.Addr().WithZone("").Unmap()]
}

// dnsTTL is short: an index of the synthetic table is given to another
// name once every index was taken.
const dnsTTL = 60

// answerDNS answers one query message; nil means no answer can be made
// (too short to carry an ID, or not a query), and the query is dropped.
func answerDNS(query []byte, names *synthTable) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	reply := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if h.OpCode != 0 {
		reply.RCode = dnsmessage.RCodeNotImplemented
		return buildDNS(reply, nil, nil)
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		reply.RCode = dnsmessage.RCodeFormatError
		return buildDNS(reply, nil, nil)
	}
	q := qs[0]
	name, ok := normalizeName(q.Name.String())
	switch {
	case q.Class != dnsmessage.ClassINET:
		// CHAOS and the like ask about a server; there is none.
		reply.RCode = dnsmessage.RCodeRefused
	case !ok:
		reply.RCode = dnsmessage.RCodeNameError
	case q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeAAAA:
		return buildDNS(reply, &q, names.addr(name, q.Type == dnsmessage.TypeAAAA).AsSlice())
	}
	// Other types (MX, TXT, HTTPS…) only the profile could answer, and
	// nothing here asks it: no records, as res_query under the hook says,
	// and never a question to the network.
	return buildDNS(reply, &q, nil)
}

func buildDNS(h dnsmessage.Header, q *dnsmessage.Question, addr []byte) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 128), h)
	b.EnableCompression()
	if q != nil {
		if b.StartQuestions() != nil || b.Question(*q) != nil {
			return nil
		}
	}
	if addr != nil {
		if b.StartAnswers() != nil {
			return nil
		}
		rh := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: dnsmessage.ClassINET, TTL: dnsTTL}
		var err error
		if len(addr) == 4 {
			err = b.AResource(rh, dnsmessage.AResource{A: [4]byte(addr)})
		} else {
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: [16]byte(addr)})
		}
		if err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// serveDNSStream answers queries in DNS-over-TCP framing (a two-byte
// length before each message), as many as the program sends.
func (s *Server) serveDNSStream(ctx context.Context, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	r := bufio.NewReader(c)
	var size [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(udpIdle))
		if _, err := io.ReadFull(r, size[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(r, msg); err != nil {
			return
		}
		ans := answerDNS(msg, s.names)
		if ans == nil {
			return
		}
		out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(ans)), uint16(len(ans)))
		if _, err := c.Write(append(out, ans...)); err != nil {
			return
		}
	}
}

// dnsAssoc answers UDP_ASSOC for a datagram to a system resolver: the
// library sends it to a responder of ours instead.
func (s *Server) dnsAssoc(ctx context.Context, p *peer, fd, family int, key udpKey, resp *response) {
	local, err := boundAddr(fd, family)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	rc, _, err := s.loopbackUDP(fd, family)
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	responder := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	from := local
	if !from.Addr().Unmap().IsValid() || from.Addr().Unmap().IsUnspecified() {
		from = netip.AddrPortFrom(responder.Addr(), local.Port())
	} else if responder.Addr().Is4() {
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	}
	if err := connectConn(rc, from); err != nil {
		rc.Close()
		resp.setErr(int32(errnoOf(err)))
		return
	}
	// The library remembers the responder for the socket's life, and so
	// does the responder (udp_relay.go).
	relay, err := s.udp.park.newRelay(ctx, relaySpec{rc: rc, app: from, idle: s.datagramIdle(),
		ino: key.ino, procNet: s.procNet(p), forget: s.udp.drop(key),
		answer: func(q []byte) []byte { return answerDNS(q, s.names) }})
	if err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	s.Log.Debug("preload: answering DNS datagrams inside the funnel", "pid", p.pid, "responder", responder.String())
	resp.setAddr(rawSockaddr(s.udp.keep(key, relay).addr, family))
}

// connectDNS connects the program's socket, about to reach a system
// resolver, to a responder of ours instead.
func (s *Server) connectDNS(ctx context.Context, p *peer, fd, family, sotype int) unix.Errno {
	if sotype == unix.SOCK_DGRAM {
		rc, sa, err := s.loopbackUDP(fd, family)
		if err != nil {
			return errnoOf(err)
		}
		if errno := connectFD(fd, sa); errno != 0 {
			rc.Close()
			return errno
		}
		local, err := unix.Getsockname(fd)
		app, ok := addrPortOf(local)
		if err != nil || !ok {
			rc.Close()
			return unix.EIO
		}
		if err := connectConn(rc, app); err != nil {
			rc.Close()
			return errnoOf(err)
		}
		if _, err := s.connectedRelay(ctx, p, fd, relaySpec{rc: rc, app: app, answer: func(q []byte) []byte { return answerDNS(q, s.names) }}); err != nil {
			return errnoOf(err)
		}
		s.Log.Debug("preload: answering DNS datagrams inside the funnel", "pid", p.pid)
		return 0
	}
	l, sa, err := s.loopbackTCP(fd, family)
	if err != nil {
		return errnoOf(err)
	}
	errno := connectFD(fd, sa)
	if errno != 0 && errno != unix.EINPROGRESS {
		l.Close()
		return errno
	}
	local, err := unix.Getsockname(fd)
	app, ok := addrPortOf(local)
	if err != nil || !ok {
		l.Close()
		return unix.EIO
	}
	s.Log.Debug("preload: answering DNS over TCP inside the funnel", "pid", p.pid)
	go func() {
		defer l.Close()
		l.SetDeadline(time.Now().Add(relayAcceptWait))
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Another local process that found the port is not the
			// program.
			if ra, ok := c.RemoteAddr().(*net.TCPAddr); !ok || ra.AddrPort().Port() != app.Port() ||
				ra.AddrPort().Addr().Unmap() != app.Addr().Unmap() {
				c.Close()
				continue
			}
			s.serveDNSStream(ctx, c)
			return
		}
	}()
	return errno
}

// loopbackTCP is a one-connection listener on loopback that the program's
// socket of family can reach.
func (s *Server) loopbackTCP(fd, family int) (*net.TCPListener, unix.Sockaddr, error) {
	for _, addr := range []string{"127.0.0.1", "::1"} {
		l, err := s.listenLoopbackTCP("tcp", net.ParseIP(addr))
		if err != nil {
			continue
		}
		if sa, ok := socketAddr(fd, family, l.Addr().(*net.TCPAddr).AddrPort(), handoffTarget{}); ok {
			return l, sa, nil
		}
		l.Close()
	}
	return nil, nil, errors.New("no loopback address the program's socket can reach")
}

package socks5d

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/socks5wire"
)

// maxUDPPeers bounds the destinations one association talks to at once; a
// client that sprays datagrams at many hosts gets the rest dropped.
const maxUDPPeers = 1024

// retryFailedPeer is how long a destination whose dial failed (a deny
// piece, an unknown name) stays refused before the next datagram tries
// again, so a stream of datagrams does not redial for each one.
const retryFailedPeer = 5 * time.Second

// udpClaimWindow: an association whose request gave port 0 takes the port
// of the first datagram from the client's address, if it comes within
// this long of the reply; later ones find the association unclaimed and
// are dropped. The shorter the window, the less time another program at
// the same address (another user of a shared host, a client behind the
// same NAT) has to claim it first; a client that means to wait should
// name its port in the request, which then alone is served.
const udpClaimWindow = 10 * time.Second

// broadcastsMaxAge is how long the list of this host's subnet broadcast
// addresses is trusted before it is read again (also at every reload).
const broadcastsMaxAge = time.Minute

// udpAssoc is one UDP ASSOCIATE: a relay socket for the one client address
// that asked, and one datagram flow through the profile per destination.
type udpAssoc struct {
	ss     *session
	pl     *funnel.Pipeline
	relay  *net.UDPConn
	client netip.Addr
	// port is the client's UDP port: from the request when it names one,
	// else from the first datagram (RFC 1928 lets the client say 0) that
	// comes from the client's address before claimBy.
	port    atomic.Uint32
	claimBy time.Time
	late    atomic.Bool // a datagram came after claimBy: said so once

	mu     sync.Mutex
	peers  map[string]*udpPeer // key: ATYP, address and port as sent
	closed bool
	wg     sync.WaitGroup
	warned bool
	// bcastWarned: this association has logged (or been denied the log
	// line for) a datagram to a broadcast or multicast destination.
	bcastWarned bool
}

type udpPeer struct {
	run      *funnel.Run
	flow     *funnel.Flow
	conn     funnel.DgramConn // nil when the dial failed
	failedAt time.Time
	// refused: a broadcast or multicast destination, which this
	// association never sends to (its datagrams are counted and dropped).
	refused bool
	moved   atomic.Int64 // datagrams either way, for the idle watch
	// header is RSV RSV FRAG ATYP DST.ADDR DST.PORT for the datagrams
	// back to the client, naming the destination the way the client did
	// (PySocks and others match replies against what they sent to).
	header []byte
}

func (ss *session) serveUDP(ctx context.Context, pl *funnel.Pipeline, req request) {
	s := ss.s
	if !pl.Accepts(funnel.Dgram) {
		err := funnel.Errorf(funnel.KindNotSupported, "profile %s carries %s flows, not datagrams: UDP ASSOCIATE refused", pl.Name, pl.Shapes())
		ss.sendReply(socks5wire.ReplyCmdNotSupported, netip.AddrPort{})
		f := ss.newFlow(funnel.UDP, req.dest)
		f.Profile = pl.Name
		s.Engine.End(f, err)
		return
	}
	releaseSlot, ok := s.takeBindSlot("a UDP ASSOCIATE")
	if !ok {
		ss.sendReply(socks5wire.ReplyGeneral, netip.AddrPort{})
		return
	}
	defer releaseSlot()
	local := netx.AddrPortOf(ss.c.LocalAddr()).Addr()
	client := netx.AddrPortOf(ss.remote).Addr()
	relay, err := listenRelay(ctx, local)
	if err != nil {
		ss.sendReply(funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
		s.Log.Warn("udp associate: cannot open the relay socket", "src", ss.remote.String(), "err", err)
		return
	}
	a := &udpAssoc{ss: ss, pl: pl, relay: relay, client: client, peers: map[string]*udpPeer{}}
	// DST.ADDR is the client's idea of its own address, which NAT may make
	// wrong: the control connection's address is what we trust; only the
	// port is taken from the request.
	a.port.Store(uint32(req.dest.Port))
	release := pl.Hold()
	defer release()
	window := s.claimWindow
	if window <= 0 {
		window = udpClaimWindow
	}
	a.claimBy = time.Now().Add(window)
	if err := ss.sendReply(socks5wire.ReplySucceeded, relay.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		relay.Close()
		return
	}
	s.Log.Debug("udp associate", "src", ss.remote.String(), "relay", relay.LocalAddr().String())
	ss.releaseReader()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.fromClient(ctx)
	}()
	// The association lives as long as its TCP connection (RFC 1928);
	// the client has nothing more to say on it, so whatever it sends is
	// read and dropped.
	io.Copy(io.Discard, ss.c)
	a.close()
	<-done
	a.wg.Wait()
}

func (a *udpAssoc) close() {
	a.mu.Lock()
	a.closed = true
	peers := a.peers
	a.peers = nil
	a.mu.Unlock()
	a.relay.Close()
	for _, p := range peers {
		if p.conn != nil {
			p.conn.Close()
		}
	}
}

// fromClient reads the client's datagrams, strips the SOCKS header in
// place and hands each to its destination's flow.
func (a *udpAssoc) fromClient(ctx context.Context) {
	for {
		fr := funnel.NewFrame()
		n, src, err := a.relay.ReadFromUDPAddrPort(fr.Room())
		if err != nil {
			fr.Release()
			return
		}
		fr.SetLen(n)
		src = netx.Unmap(src)
		if !a.fromOurClient(src) {
			fr.Release()
			continue
		}
		hlen, ok := socks5wire.UDPHeaderLen(fr.Bytes())
		if !ok {
			// Fragments (FRAG != 0) are optional in RFC 1928 and we do not
			// reassemble; malformed headers are dropped the same way.
			fr.Release()
			continue
		}
		key := fr.Bytes()[3:hlen]
		p := a.peer(ctx, key)
		if p == nil || p.conn == nil {
			if p != nil && p.refused {
				a.ss.s.udpRefused.Add(1)
			}
			fr.Release()
			continue
		}
		fr.Pull(hlen)
		fr.Src = src
		if d := p.flow.Dest; !d.IsName() {
			fr.Dst = d.AddrPort()
		}
		fr.Time = time.Now()
		p.moved.Add(1)
		p.flow.Up.Add(int64(fr.Len()))
		if err := p.conn.WriteFrame(fr); err != nil {
			p.flow.Log.Debug("udp write", "err", err)
		}
	}
}

// fromOurClient lets in only the address that asked for the association
// (that of its TCP connection, which the client authenticated on), and of
// it only the port the request named, or, when it named none, the port of
// the first datagram within udpClaimWindow.
func (a *udpAssoc) fromOurClient(src netip.AddrPort) bool {
	if src.Addr() != a.client {
		return false
	}
	want := a.port.Load()
	if want == 0 {
		if time.Now().After(a.claimBy) {
			if !a.late.Swap(true) {
				a.ss.s.Log.Warn("udp associate: no datagram from the client within the claim window, so none is taken now (a client should name its port in the request)",
					"src", a.ss.remote.String(), "from", src.String())
			}
			return false
		}
		a.port.CompareAndSwap(0, uint32(src.Port()))
		want = a.port.Load()
	}
	return uint32(src.Port()) == want
}

// peer finds or opens the flow for a destination.
func (a *udpAssoc) peer(ctx context.Context, key []byte) *udpPeer {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	p := a.peers[string(key)]
	if p != nil && (p.conn != nil || p.refused || time.Since(p.failedAt) < retryFailedPeer) {
		a.mu.Unlock()
		return p
	}
	if p == nil && len(a.peers) >= maxUDPPeers {
		warn := !a.warned
		a.warned = true
		a.mu.Unlock()
		if warn {
			a.ss.s.Log.Warn("udp associate: too many destinations; dropping datagrams to new ones", "src", a.ss.remote.String(), "max", maxUDPPeers)
		}
		return nil
	}
	a.mu.Unlock()

	dest, _, err := socks5wire.ParseAddr(key)
	if err != nil {
		return nil
	}
	s := a.ss.s
	if !dest.IsName() && !s.UDPBroadcast {
		// An address is refused before any flow begins: nothing of the
		// profile runs for it, not even a deny piece's log line.
		if why := s.broadcastKind(dest.IP); why != "" {
			return a.refuse(key, dest.String(), why)
		}
	}
	r := s.Engine.Begin(a.ss.newFlow(funnel.UDP, dest), a.pl)
	p = &udpPeer{run: r, flow: r.Flow, header: make([]byte, 3, 3+len(key))}
	p.header = append(p.header, key...)
	dctx, cancel := context.WithTimeout(ctx, s.HandshakeTimeout)
	conn, err := r.DialDgram(dctx)
	cancel()
	if err == nil && !s.UDPBroadcast {
		// A name (or a piece that picks the address) may still land on
		// one: the socket is connected, nothing is sent yet.
		if why := s.broadcastKind(remoteIP(conn)); why != "" {
			conn.Close()
			conn = nil
			p.refused = true
			err = funnel.Errorf(funnel.KindDenied, "%s is %s: datagrams to it are refused (--udp-broadcast allows them)", dest, why)
			a.warnRefused(dest.String(), why)
		}
	}
	if err != nil {
		p.failedAt = time.Now()
		r.End(err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		if conn != nil {
			conn.Close()
			r.End(nil)
		}
		return nil
	}
	a.peers[string(key)] = p
	if conn != nil {
		p.conn = conn
		a.wg.Add(1)
		go a.toClient(p, string(key))
	}
	a.mu.Unlock()
	return p
}

// toClient returns a destination's datagrams to the client with the SOCKS
// header pushed in front, until no datagram went either way for UDPIdle
// (checked every UDPIdle, so between one and two periods after the last
// one) or the association ends.
func (a *udpAssoc) toClient(p *udpPeer, key string) {
	defer a.wg.Done()
	var idled atomic.Bool
	stop := netx.IdleWatch(a.ss.s.UDPIdle, p.moved.Load, func() {
		idled.Store(true)
		p.conn.Close()
	})
	var err error
	var hdr [3 + 1 + 16 + 2]byte
	for {
		fr, rerr := p.conn.ReadFrame()
		if rerr != nil {
			if !idled.Load() && !errors.Is(rerr, net.ErrClosed) {
				err = rerr
			}
			break
		}
		p.moved.Add(1)
		p.flow.Down.Add(int64(fr.Len()))
		h := p.header
		if len(h) > funnel.FrameHeadroom {
			// A long name does not fit the headroom: name the sender by
			// its address instead.
			h = append(hdr[:0], 0, 0, 0)
			h = socks5wire.AppendAddrPort(h, fr.Src)
		}
		copy(fr.Push(len(h)), h)
		dst := netip.AddrPortFrom(a.client, uint16(a.port.Load()))
		_, werr := a.relay.WriteToUDPAddrPort(fr.Bytes(), dst)
		fr.Release()
		if werr != nil && errors.Is(werr, net.ErrClosed) {
			break
		}
	}
	stop()
	p.conn.Close()
	a.mu.Lock()
	if a.peers != nil && a.peers[key] == p {
		delete(a.peers, key)
	}
	a.mu.Unlock()
	p.run.End(err)
}

// refuse records a destination the association never sends to, so that
// its datagrams are dropped (and counted) without looking again.
func (a *udpAssoc) refuse(key []byte, dest, why string) *udpPeer {
	p := &udpPeer{refused: true}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	if len(a.peers) < maxUDPPeers {
		a.peers[string(key)] = p
	}
	a.mu.Unlock()
	a.warnRefused(dest, why)
	return p
}

// warnRefused logs the first broadcast or multicast destination of an
// association, and no more than one such line every 10s for the whole
// server: the count (refused_total) says how many datagrams went nowhere.
func (a *udpAssoc) warnRefused(dest, why string) {
	s := a.ss.s
	a.mu.Lock()
	first := !a.bcastWarned
	a.bcastWarned = true
	a.mu.Unlock()
	if !first {
		return
	}
	s.mu.Lock()
	warn := time.Since(s.lastUDPWarn) >= 10*time.Second
	if warn {
		s.lastUDPWarn = time.Now()
	}
	s.mu.Unlock()
	if warn {
		s.Log.Warn("udp associate: datagrams to a broadcast or multicast destination refused (--udp-broadcast allows them)",
			"src", a.ss.remote.String(), "dst", dest, "is", why, "refused_total", s.udpRefused.Load()+1)
	}
}

// UDPRefused counts the datagrams dropped because their destination is a
// broadcast or multicast address (see UDPBroadcast).
func (s *Server) UDPRefused() int64 { return s.udpRefused.Load() }

// remoteIP is the address a datagram connection sends to, when it is a
// socket that knows one (direct's connected UDP socket).
func remoteIP(c funnel.DgramConn) netip.Addr {
	if ra, ok := c.(interface{ RemoteAddr() net.Addr }); ok {
		return netx.AddrPortOf(ra.RemoteAddr()).Addr()
	}
	return netip.Addr{}
}

// broadcastKind says why a destination reaches more than one host — "a
// multicast address", "the limited broadcast address", "a broadcast address
// of this host's networks" — or "" when it does not.
func (s *Server) broadcastKind(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	ip = ip.Unmap()
	switch {
	case ip.IsMulticast():
		return "a multicast address"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the limited broadcast address"
	case !ip.Is4():
		return "" // IPv6 has no broadcast
	}
	b := s.broadcasts.Load()
	if b == nil || time.Since(b.at) > broadcastsMaxAge {
		b = s.refreshBroadcasts()
	}
	if _, ok := b.addrs[ip]; ok {
		return "a broadcast address of this host's networks"
	}
	return ""
}

// bcastSet is the subnet broadcast addresses of this host's interfaces, as
// read at one time.
type bcastSet struct {
	at    time.Time
	addrs map[netip.Addr]struct{}
}

// refreshBroadcasts reads the interfaces' IPv4 networks again and keeps
// their broadcast addresses (host bits all ones; a /31 or /32 has none).
// It runs when a new destination needs the list and it is older than
// broadcastsMaxAge, and at every reload.
func (s *Server) refreshBroadcasts() *bcastSet {
	b := &bcastSet{at: time.Now(), addrs: map[netip.Addr]struct{}{}}
	ifs, err := net.Interfaces()
	if err != nil && s.Log != nil {
		s.Log.Debug("cannot list the interfaces for their broadcast addresses", "err", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			ipn, ok := ad.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			ones, bits := ipn.Mask.Size()
			if bits == 128 {
				ones -= 96 // a 16-byte mask of an IPv4 address
			}
			if !ok || !ip.Unmap().Is4() || bits == 0 || ones < 0 || ones > 30 {
				continue
			}
			a4 := ip.Unmap().As4()
			host := ^uint32(0) >> ones
			v := (uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])) | host
			b.addrs[netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})] = struct{}{}
		}
	}
	s.broadcasts.Store(b)
	return b
}

// listenRelay opens an association's relay socket. It answers only the
// client, so it needs no SO_BROADCAST, which Go turns on for every UDP
// socket: off, a bug cannot make it broadcast.
func listenRelay(ctx context.Context, local netip.Addr) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 0)
		}); err != nil {
			return err
		}
		return serr
	}}
	host := "" // a client on a Unix socket (systemd): every address
	if local.IsValid() {
		host = local.String()
	}
	pc, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

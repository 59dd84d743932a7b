package socks5d

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
)

// maxUDPPeers bounds the destinations one association talks to at once; a
// client that sprays datagrams at many hosts gets the rest dropped.
const maxUDPPeers = 1024

// retryFailedPeer is how long a destination whose dial failed (a deny
// piece, an unknown name) stays refused before the next datagram tries
// again, so a stream of datagrams does not redial for each one.
const retryFailedPeer = 5 * time.Second

// udpAssoc is one UDP ASSOCIATE: a relay socket for the one client address
// that asked, and one datagram flow through the profile per destination.
type udpAssoc struct {
	ss     *session
	pl     *funnel.Pipeline
	relay  *net.UDPConn
	client netip.Addr
	// port is the client's UDP port: from the request when it names one,
	// else from the first datagram (RFC 1928 lets the client say 0).
	port atomic.Uint32

	mu     sync.Mutex
	peers  map[string]*udpPeer // key: ATYP, address and port as sent
	closed bool
	wg     sync.WaitGroup
	warned bool
}

type udpPeer struct {
	flow     *funnel.Flow
	conn     funnel.DgramConn // nil when the dial failed
	failedAt time.Time
	last     atomic.Int64 // unix nanoseconds of the last datagram either way
	// header is RSV RSV FRAG ATYP DST.ADDR DST.PORT for the datagrams
	// back to the client, naming the destination the way the client did
	// (PySocks and others match replies against what they sent to).
	header []byte
}

func (ss *session) serveUDP(ctx context.Context, pl *funnel.Pipeline, req request) {
	s := ss.s
	if !pl.Accepts(funnel.Dgram) {
		err := funnel.Errorf(funnel.KindNotSupported, "profile %s carries %s flows, not datagrams: UDP ASSOCIATE refused", pl.Name, pl.Shapes())
		ss.sendReply(replyCmdNotSupported, netip.AddrPort{})
		f := ss.newFlow(funnel.UDP, req.dest)
		f.Profile = pl.Name
		s.Engine.End(f, err)
		return
	}
	local := addrPortOf(ss.c.LocalAddr()).Addr().Unmap()
	client := addrPortOf(ss.remote).Addr().Unmap()
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.AsSlice(), Zone: local.Zone()})
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
	if err := ss.sendReply(replySucceeded, relay.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
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
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if !a.fromOurClient(src) {
			fr.Release()
			continue
		}
		hlen, ok := udpHeaderLen(fr.Bytes())
		if !ok {
			// Fragments (FRAG != 0) are optional in RFC 1928 and we do not
			// reassemble; malformed headers are dropped the same way.
			fr.Release()
			continue
		}
		key := fr.Bytes()[3:hlen]
		p := a.peer(ctx, key)
		if p == nil || p.conn == nil {
			fr.Release()
			continue
		}
		fr.Pull(hlen)
		fr.Src = src
		if d := p.flow.Dest; !d.IsName() {
			fr.Dst = d.AddrPort()
		}
		fr.Time = time.Now()
		p.last.Store(fr.Time.UnixNano())
		p.flow.Up.Add(int64(fr.Len()))
		if err := p.conn.WriteFrame(fr); err != nil {
			p.flow.Log.Debug("udp write", "err", err)
		}
	}
}

// fromOurClient lets in only the address that asked for the association.
func (a *udpAssoc) fromOurClient(src netip.AddrPort) bool {
	if src.Addr() != a.client {
		return false
	}
	want := a.port.Load()
	if want == 0 {
		a.port.CompareAndSwap(0, uint32(src.Port()))
		want = a.port.Load()
	}
	return uint32(src.Port()) == want
}

// udpHeaderLen checks RSV RSV FRAG ATYP DST.ADDR DST.PORT and returns its
// length.
func udpHeaderLen(b []byte) (int, bool) {
	if len(b) < 4 || b[2] != 0 {
		return 0, false
	}
	var n int
	switch b[3] {
	case atypIPv4:
		n = 4 + 4 + 2
	case atypIPv6:
		n = 4 + 16 + 2
	case atypDomain:
		if len(b) < 5 || b[4] == 0 {
			return 0, false
		}
		n = 4 + 1 + int(b[4]) + 2
	default:
		return 0, false
	}
	return n, len(b) >= n
}

// peer finds or opens the flow for a destination.
func (a *udpAssoc) peer(ctx context.Context, key []byte) *udpPeer {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	p := a.peers[string(key)]
	if p != nil && (p.conn != nil || time.Since(p.failedAt) < retryFailedPeer) {
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

	dest, _, err := parseUDPAddr(key)
	if err != nil {
		return nil
	}
	f := a.ss.newFlow(funnel.UDP, dest)
	p = &udpPeer{flow: f, header: make([]byte, 3, 3+len(key))}
	p.header = append(p.header, key...)
	dctx, cancel := context.WithTimeout(ctx, a.ss.s.HandshakeTimeout)
	conn, err := a.pl.DialDgram(dctx, f)
	cancel()
	if err != nil {
		p.failedAt = time.Now()
		a.ss.s.Engine.End(f, err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		if conn != nil {
			conn.Close()
		}
		return nil
	}
	a.peers[string(key)] = p
	if conn != nil {
		p.conn = conn
		p.last.Store(time.Now().UnixNano())
		a.wg.Add(1)
		go a.toClient(p, string(key))
	}
	a.mu.Unlock()
	return p
}

// toClient returns a destination's datagrams to the client with the SOCKS
// header pushed in front, until the destination has been idle for UDPIdle
// or the association ends.
func (a *udpAssoc) toClient(p *udpPeer, key string) {
	defer a.wg.Done()
	idle := a.ss.s.UDPIdle
	var err error
	var hdr [3 + 1 + 16 + 2]byte
	for {
		p.conn.SetReadDeadline(time.Now().Add(idle))
		fr, rerr := p.conn.ReadFrame()
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, p.last.Load())) < idle {
				continue
			}
			if !errors.Is(rerr, os.ErrDeadlineExceeded) && !errors.Is(rerr, net.ErrClosed) {
				err = rerr
			}
			break
		}
		p.last.Store(time.Now().UnixNano())
		p.flow.Down.Add(int64(fr.Len()))
		h := p.header
		if len(h) > funnel.FrameHeadroom {
			// A long name does not fit the headroom: name the sender by
			// its address instead.
			h = append(hdr[:0], 0, 0, 0)
			h = appendAddrPort(h, fr.Src)
		}
		copy(fr.Push(len(h)), h)
		dst := netip.AddrPortFrom(a.client, uint16(a.port.Load()))
		_, werr := a.relay.WriteToUDPAddrPort(fr.Bytes(), dst)
		fr.Release()
		if werr != nil && errors.Is(werr, net.ErrClosed) {
			break
		}
	}
	p.conn.Close()
	a.mu.Lock()
	if a.peers != nil && a.peers[key] == p {
		delete(a.peers, key)
	}
	a.mu.Unlock()
	a.ss.s.Engine.End(p.flow, err)
}

// parseUDPAddr reads ATYP DST.ADDR DST.PORT.
func parseUDPAddr(b []byte) (funnel.Addr, int, error) {
	bad := errors.New("socks5d: malformed UDP header address")
	if len(b) < 1 {
		return funnel.Addr{}, 0, bad
	}
	switch b[0] {
	case atypIPv4:
		if len(b) < 7 {
			return funnel.Addr{}, 0, bad
		}
		return funnel.Addr{IP: netip.AddrFrom4([4]byte(b[1:5])), Port: binary.BigEndian.Uint16(b[5:7])}, 7, nil
	case atypIPv6:
		if len(b) < 19 {
			return funnel.Addr{}, 0, bad
		}
		return funnel.Addr{IP: netip.AddrFrom16([16]byte(b[1:17])).Unmap(), Port: binary.BigEndian.Uint16(b[17:19])}, 19, nil
	case atypDomain:
		if len(b) < 2 {
			return funnel.Addr{}, 0, bad
		}
		n := int(b[1])
		if len(b) < 2+n+2 {
			return funnel.Addr{}, 0, bad
		}
		name := string(b[2 : 2+n])
		if checkName(name) != nil {
			return funnel.Addr{}, 0, bad
		}
		return funnel.MakeAddr(name, binary.BigEndian.Uint16(b[2+n:])), 2 + n + 2, nil
	}
	return funnel.Addr{}, 0, bad
}

package socks5d

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
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
	run      *funnel.Run
	flow     *funnel.Flow
	conn     funnel.DgramConn // nil when the dial failed
	failedAt time.Time
	moved    atomic.Int64 // datagrams either way, for the idle watch
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
	local := netx.AddrPortOf(ss.c.LocalAddr()).Addr()
	client := netx.AddrPortOf(ss.remote).Addr()
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

	dest, _, err := socks5wire.ParseAddr(key)
	if err != nil {
		return nil
	}
	r := a.ss.s.Engine.Begin(a.ss.newFlow(funnel.UDP, dest), a.pl)
	p = &udpPeer{run: r, flow: r.Flow, header: make([]byte, 3, 3+len(key))}
	p.header = append(p.header, key...)
	dctx, cancel := context.WithTimeout(ctx, a.ss.s.HandshakeTimeout)
	conn, err := r.DialDgram(dctx)
	cancel()
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

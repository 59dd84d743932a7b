package sixbed4

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Neighbor states: how packets to a peer under the same /64 travel.
type nbState int

const (
	nbProbing   nbState = iota // solicited, no answer yet: via the router
	nbReachable                // answered recently: direct
	nbStale                    // answered a while ago: direct, solicited again
	nbFailed                   // did not answer: via the router until it expires
)

func (s nbState) String() string {
	return [...]string{"probing", "reachable", "stale", "failed"}[s]
}

const (
	probeInterval = time.Second
	maxProbes     = 3
	upQueue       = 512
)

type neighbor struct {
	state  nbState
	until  time.Time // when the state (or the current probe) runs out
	probes int
}

// tunnel is one peer's 6bed4 interface: one UDP socket, its address,
// its neighbors. It is also the link (funnel.DgramConn) the stack above
// reads and writes packets on.
type tunnel struct {
	cfg  config
	conn *net.UDPConn

	mu        sync.Mutex
	addr      netip.Addr
	changed   chan struct{} // closed and replaced when addr changes
	neighbors map[netip.Addr]*neighbor
	lastOut   time.Time // last datagram to the router (keepalive)
	deadline  time.Time

	up     chan *funnel.Frame
	done   chan struct{}
	once   sync.Once
	counts counts
}

var _ funnel.DgramConn = (*tunnel)(nil)

func startTunnel(ctx context.Context, cfg config) (*tunnel, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(cfg.listen))
	if err != nil {
		return nil, funnel.Errorf(funnel.Classify(err), "6bed4: opening the tunnel socket on %s: %w", cfg.listen, err)
	}
	t := newTunnel(cfg, conn)
	go t.receive()
	if err := t.solicit(ctx); err != nil {
		t.close()
		return nil, err
	}
	go t.keepalive()
	return t, nil
}

func newTunnel(cfg config, conn *net.UDPConn) *tunnel {
	return &tunnel{
		cfg:       cfg,
		conn:      conn,
		changed:   make(chan struct{}),
		neighbors: map[netip.Addr]*neighbor{},
		up:        make(chan *funnel.Frame, upQueue),
		done:      make(chan struct{}),
	}
}

// solicit sends Router Solicitations, one second apart and then doubling,
// until an advertisement gives the address or timeout= passes.
func (t *tunnel) solicit(ctx context.Context) error {
	deadline := time.NewTimer(t.cfg.timeout)
	defer deadline.Stop()
	wait, sent := time.Second, 0
	for {
		// Take the channel before soliciting: the answer may come
		// before the select below starts waiting.
		changed := t.changedCh()
		if t.LinkAddr().IsValid() {
			return nil
		}
		t.toRouter(wire.RouterSolicitation())
		sent++
		retry := time.NewTimer(wait)
		select {
		case <-changed:
			retry.Stop()
		case <-retry.C:
			wait *= 2
		case <-deadline.C:
			retry.Stop()
			return funnel.Errorf(funnel.KindNetUnreachable, "6bed4: router %s did not answer %d Router Solicitation(s) within %s", t.cfg.router, sent, t.cfg.timeout)
		case <-ctx.Done():
			retry.Stop()
			return funnel.Errorf(funnel.Classify(ctx.Err()), "6bed4: waiting for router %s: %w", t.cfg.router, ctx.Err())
		case <-t.done:
			retry.Stop()
			return funnel.Errorf(funnel.KindGeneral, "6bed4: the tunnel closed while soliciting router %s", t.cfg.router)
		}
	}
}

func (t *tunnel) changedCh() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// LinkAddr is this peer's 6bed4 address (netstack.AddressedLink).
func (t *tunnel) LinkAddr() netip.Addr {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addr
}

// LinkAddrChanged is closed when the address changes.
func (t *tunnel) LinkAddrChanged() <-chan struct{} { return t.changedCh() }

func (t *tunnel) setAddr(a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a == t.addr {
		return
	}
	if t.addr.IsValid() {
		slog.Info("6bed4: the router gave a new address (the NAT mapping changed)", "old", t.addr, "new", a)
		t.counts.add("address-changed")
		// Peers were reached from the old address; ask them again.
		clear(t.neighbors)
	}
	t.addr = a
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *tunnel) keepalive() {
	tick := time.NewTicker(t.cfg.keepalive / 2)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case now := <-tick.C:
			t.mu.Lock()
			idle := now.Sub(t.lastOut) >= t.cfg.keepalive-t.cfg.keepalive/4
			t.mu.Unlock()
			if idle {
				// An empty datagram: the router ignores it, the NAT
				// mapping that gives this peer its address stays.
				t.toRouter(nil)
				t.counts.add("keepalive")
			}
		}
	}
}

func (t *tunnel) toRouter(b []byte) {
	t.mu.Lock()
	t.lastOut = time.Now()
	t.mu.Unlock()
	if _, err := t.conn.WriteToUDPAddrPort(b, t.cfg.router); err != nil {
		t.counts.add("send-error")
		return
	}
	t.counts.add("sent-router")
}

func (t *tunnel) toPeer(b []byte, to netip.AddrPort) {
	if _, err := t.conn.WriteToUDPAddrPort(b, to); err != nil {
		t.counts.add("send-error")
		return
	}
	t.counts.add("sent-direct")
}

// receive reads the tunnel socket until it closes. Every datagram is
// checked before anything reads it further; what fails is dropped and
// counted by its reason.
func (t *tunnel) receive() {
	buf := make([]byte, 2048) // more than the MTU: an oversized datagram shows as one
	for {
		n, from, err := t.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		t.handle(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
}

// handle is one datagram from the tunnel socket.
func (t *tunnel) handle(b []byte, from netip.AddrPort) {
	if len(b) == 0 {
		t.counts.add("keepalive-in")
		return
	}
	p, err := wire.Parse(b)
	if err != nil {
		t.drop(err.Error(), from)
		return
	}
	t.mu.Lock()
	addr := t.addr
	t.mu.Unlock()
	if from == t.cfg.router {
		t.fromRouter(&p, addr, from)
		return
	}
	t.fromPeer(&p, addr, from)
}

func (t *tunnel) drop(why string, from netip.AddrPort) {
	t.counts.add("drop: " + why)
	slog.Debug("6bed4: dropped a datagram", "from", from, "why", why)
}

func (t *tunnel) fromRouter(p *wire.Packet, addr netip.Addr, from netip.AddrPort) {
	if p.IsND() {
		if p.ICMPType() != header.ICMPv6RouterAdvert {
			t.drop("neighbor discovery from the router other than an advertisement", from)
			return
		}
		if p.Src != wire.RouterLinkLocal {
			t.drop("advertisement not from fe80::", from)
			return
		}
		if !(p.Dst == wire.AllNodes || p.Dst.IsLinkLocalUnicast() || (addr.IsValid() && wire.Same64(p.Dst, addr))) {
			t.drop("advertisement for another address", from)
			return
		}
		prefix, err := wire.RouterPrefix(p)
		if err != nil {
			t.drop("advertisement: "+err.Error(), from)
			return
		}
		t.counts.add("advertisement")
		t.setAddr(wire.WithLANIP(prefix, t.cfg.lanip))
		return
	}
	if !addr.IsValid() || p.Dst != addr {
		t.drop("not for this peer's address", from)
		return
	}
	t.deliver(p.Raw, "received-router")
}

func (t *tunnel) fromPeer(p *wire.Packet, addr netip.Addr, from netip.AddrPort) {
	if !t.cfg.direct {
		t.drop("from a peer, and direct=false", from)
		return
	}
	if !addr.IsValid() {
		t.drop("from a peer before the router gave an address", from)
		return
	}
	// A peer's source address must be a 6bed4 address under our /64
	// that names exactly the IPv4 address and port it came from.
	if !wire.Same64(p.Src, addr) || wire.Endpoint(p.Src) != from || wire.LANIP(p.Src) == 0 {
		t.drop("spoofed source", from)
		return
	}
	if p.IsND() {
		t.neighborDiscovery(p, addr, from)
		return
	}
	if p.Dst != addr {
		t.drop("not for this peer's address", from)
		return
	}
	t.confirm(p.Src)
	t.deliver(p.Raw, "received-direct")
}

func (t *tunnel) neighborDiscovery(p *wire.Packet, addr netip.Addr, from netip.AddrPort) {
	target, ok := wire.NeighborTarget(p)
	if !ok {
		t.drop("neighbor discovery other than a solicitation or an advertisement", from)
		return
	}
	switch p.ICMPType() {
	case header.ICMPv6NeighborSolicit:
		if target != addr {
			t.drop("solicitation for another address", from)
			return
		}
		t.counts.add("solicitation-in")
		t.toPeer(wire.NeighborAdvertisement(addr, p.Src, false), from)
	case header.ICMPv6NeighborAdvert:
		if target != p.Src {
			t.drop("advertisement for another address", from)
			return
		}
		t.counts.add("advertisement-in")
		t.confirm(p.Src)
	}
}

// confirm marks a peer reachable: it answered, or its packets arrive
// straight from its own address and port.
func (t *tunnel) confirm(peer netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	nb := t.neighbors[peer]
	if nb == nil {
		// Unasked: it reaches us, but that says nothing of whether we
		// reach it; our own solicitation will tell.
		return
	}
	if nb.state != nbReachable {
		slog.Debug("6bed4: peer reachable directly", "peer", peer)
		t.counts.add("neighbor-reachable")
	}
	nb.state, nb.until, nb.probes = nbReachable, time.Now().Add(t.cfg.reachable), 0
}

func (t *tunnel) deliver(raw []byte, counter string) {
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), raw))
	fr.Time = time.Now()
	select {
	case t.up <- fr:
		t.counts.add(counter)
	default:
		fr.Release()
		t.counts.add("drop: the stack above is not reading")
	}
}

// route says where a packet for dst goes: to the peer itself, or to the
// router. It runs the neighbor's timers and sends its solicitations.
func (t *tunnel) route(dst, addr netip.Addr) (to netip.AddrPort, direct bool) {
	if !t.cfg.direct || !wire.Same64(dst, addr) || dst == addr || wire.LANIP(dst) == 0 {
		return t.cfg.router, false
	}
	ep := wire.Endpoint(dst)
	if ep == t.cfg.router || ep.Port() == 0 || ep.Addr().IsUnspecified() || ep.Addr().IsMulticast() {
		return t.cfg.router, false
	}
	now := time.Now()
	solicit := false
	t.mu.Lock()
	nb := t.neighbors[dst]
	switch {
	case nb == nil:
		nb = &neighbor{state: nbProbing, until: now.Add(probeInterval), probes: 1}
		t.neighbors[dst] = nb
		solicit = true
	case nb.state == nbReachable && now.After(nb.until):
		nb.state, nb.until, nb.probes = nbStale, now.Add(probeInterval), 1
		solicit = true
	case (nb.state == nbProbing || nb.state == nbStale) && now.After(nb.until):
		if nb.probes < maxProbes {
			nb.until, nb.probes = now.Add(probeInterval), nb.probes+1
			solicit = true
		} else {
			slog.Debug("6bed4: peer did not answer; through the router", "peer", dst)
			t.counts.add("neighbor-failed")
			nb.state, nb.until = nbFailed, now.Add(t.cfg.failed)
		}
	case nb.state == nbFailed && now.After(nb.until):
		nb.state, nb.until, nb.probes = nbProbing, now.Add(probeInterval), 1
		solicit = true
	}
	state := nb.state
	t.mu.Unlock()
	if solicit {
		t.counts.add("solicitation-out")
		t.toPeer(wire.NeighborSolicitation(addr, dst), ep)
	}
	if state == nbReachable || state == nbStale {
		return ep, true
	}
	return t.cfg.router, false
}

// NeighborState is how packets to peer travel now ("" when unknown).
func (t *tunnel) NeighborState(peer netip.Addr) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if nb := t.neighbors[peer]; nb != nil {
		return nb.state.String()
	}
	return ""
}

// WriteFrame sends one IPv6 packet from the stack above.
func (t *tunnel) WriteFrame(fr *funnel.Frame) error {
	defer fr.Release()
	select {
	case <-t.done:
		return net.ErrClosed
	default:
	}
	p, err := wire.Parse(fr.Bytes())
	if err != nil {
		t.counts.add("drop-out: " + err.Error())
		return nil
	}
	addr := t.LinkAddr()
	if p.Src != addr {
		// Not ours to send: the router would drop it, and it would
		// tell the world about an address we do not hold.
		t.counts.add("drop-out: source is not this peer's address")
		return nil
	}
	if p.IsND() {
		t.counts.add("drop-out: neighbor discovery from above")
		return nil
	}
	to, direct := t.route(p.Dst, addr)
	if direct {
		t.toPeer(p.Raw, to)
		return nil
	}
	t.toRouter(p.Raw)
	return nil
}

// ReadFrame returns the next IPv6 packet for the stack above.
func (t *tunnel) ReadFrame() (*funnel.Frame, error) {
	t.mu.Lock()
	dl := t.deadline
	t.mu.Unlock()
	var expire <-chan time.Time
	if !dl.IsZero() {
		timer := time.NewTimer(time.Until(dl))
		defer timer.Stop()
		expire = timer.C
	}
	select {
	case fr := <-t.up:
		return fr, nil
	case <-t.done:
		return nil, net.ErrClosed
	case <-expire:
		return nil, timeoutError{}
	}
}

func (t *tunnel) SetReadDeadline(d time.Time) error {
	t.mu.Lock()
	t.deadline = d
	t.mu.Unlock()
	return nil
}

func (t *tunnel) Close() error {
	t.close()
	return nil
}

func (t *tunnel) close() {
	t.once.Do(func() {
		close(t.done)
		t.conn.Close()
		for {
			select {
			case fr := <-t.up:
				fr.Release()
			default:
				return
			}
		}
	})
}

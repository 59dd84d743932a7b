// Package sixbed4 is the 6bed4 piece (registered as "6bed4"): IPv6 packets
// from the piece above (netstack) travel inside UDP over IPv4 to a 6bed4
// router, as draft-vanrein-6bed4 describes, entirely in user space. The
// router's Router Advertisement gives the peer its address, which embeds
// the peer's public IPv4 address and UDP port; peers under the same /64
// then try each other directly with a unicast Neighbor Solicitation and,
// once answered, stop passing through the router.
package sixbed4

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

// DefaultRouter is the public 6bed4 service that the reference
// implementation's README announces (vanrein/6bed4: "public 6bed4 service
// at 145.136.0.1 port 25790").
const DefaultRouter = "145.136.0.1:25790"

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "6bed4",
		Summary: "carry IPv6 packets in UDP over IPv4 through a 6bed4 router, directly between peers when they can",
		Params: `router=IPV4:PORT   the 6bed4 router, default ` + DefaultRouter + ` (the public service); port default 25790
listen=IPV4:PORT   the local address of the tunnel socket, default 0.0.0.0:0 (any)
lanip=N            this peer's number under its /114, 1 to 16383, default 1
timeout=DURATION   how long to wait for the router's advertisement, default 5s
keepalive=DURATION how often to keep the NAT mapping to the router open, at most 30s, default 30s
direct=BOOL        try peers under the same /64 directly (Neighbor Solicitation), default true
reachable=DURATION how long a peer that answered stays reachable without traffic, default 30s
failed=DURATION    how long a peer that did not answer goes through the router before trying again,
                   default 60s`,
		Example: `router=192.0.2.1:25790`,
		Curves:  curves,
		New:     New,
	})
}

var curves = []funnel.Curve{{App: funnel.PacketIP6, Net: funnel.Kernel}}

// Sixbed4 is a configured 6bed4 piece.
type Sixbed4 struct {
	cfg config

	mu     sync.Mutex
	tun    *tunnel
	closed bool
}

type config struct {
	router    netip.AddrPort
	listen    netip.AddrPort
	lanip     uint16
	timeout   time.Duration
	keepalive time.Duration
	direct    bool
	reachable time.Duration
	failed    time.Duration
}

var (
	_ funnel.DgramDialer = (*Sixbed4)(nil)
	_ funnel.Closer      = (*Sixbed4)(nil)
)

// New reads the parameters; it binds nothing (the socket opens when the
// stack above first needs the link).
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	var c config
	var err error
	if c.router, err = ipv4Port(p.String("router", DefaultRouter), wire.Port); err != nil {
		return nil, p.Errorf("router", "%v", err)
	}
	if c.router.Addr().IsUnspecified() || c.router.Port() == 0 {
		return nil, p.Errorf("router", "needs an address and a port, not %s", c.router)
	}
	if c.listen, err = ipv4Port(p.String("listen", "0.0.0.0:0"), 0); err != nil {
		return nil, p.Errorf("listen", "%v", err)
	}
	lanip, err := p.Int("lanip", 1, 1, wire.MaxLANIP)
	if err != nil {
		return nil, err
	}
	c.lanip = uint16(lanip)
	if c.timeout, err = p.Duration("timeout", 5*time.Second); err != nil {
		return nil, err
	}
	if c.timeout <= 0 {
		return nil, p.Errorf("timeout", "must be more than 0")
	}
	if c.keepalive, err = p.Duration("keepalive", 30*time.Second); err != nil {
		return nil, err
	}
	if c.keepalive <= 0 || c.keepalive > 30*time.Second {
		return nil, p.Errorf("keepalive", "must be more than 0 and at most 30s (NAT mappings for UDP may last no longer)")
	}
	if c.direct, err = p.Bool("direct", true); err != nil {
		return nil, err
	}
	if c.reachable, err = p.Duration("reachable", 30*time.Second); err != nil {
		return nil, err
	}
	if c.failed, err = p.Duration("failed", 60*time.Second); err != nil {
		return nil, err
	}
	if c.reachable <= 0 || c.failed <= 0 {
		return nil, p.Fail("reachable= and failed= must be more than 0")
	}
	return &Sixbed4{cfg: c}, nil
}

// ipv4Port reads IPV4[:PORT]; 6bed4 runs over IPv4 only.
func ipv4Port(s string, defPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if !ap.Addr().Unmap().Is4() {
			return ap, fmt.Errorf("%s is not an IPv4 address: 6bed4 runs over IPv4", ap.Addr())
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IPV4:PORT", s)
	}
	if !a.Unmap().Is4() {
		return netip.AddrPort{}, fmt.Errorf("%s is not an IPv4 address: 6bed4 runs over IPv4", a)
	}
	return netip.AddrPortFrom(a.Unmap(), defPort), nil
}

// Curves: IPv6 packets in, the kernel's UDP socket out.
func (s *Sixbed4) Curves() []funnel.Curve { return curves }

// DialDgram brings the tunnel up for the stack above: it binds the
// socket, solicits the router and returns once the advertisement gave
// this peer its address. Each frame on the link is one IPv6 packet. A
// router that does not answer within timeout= fails the flow with
// "network unreachable".
func (s *Sixbed4) DialDgram(ctx context.Context, f *funnel.Flow, _ funnel.Next) (funnel.DgramConn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, funnel.Errorf(funnel.KindGeneral, "6bed4: the piece has closed")
	}
	old := s.tun
	s.tun = nil
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	t, err := startTunnel(ctx, s.cfg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		t.close()
		return nil, funnel.Errorf(funnel.KindGeneral, "6bed4: the piece has closed")
	}
	s.tun = t
	s.mu.Unlock()
	if f != nil && f.Log != nil {
		f.Log.Info("6bed4: tunnel up", "router", s.cfg.router, "addr", t.LinkAddr())
	}
	return t, nil
}

// Close takes the tunnel down.
func (s *Sixbed4) Close() error {
	s.mu.Lock()
	s.closed = true
	t := s.tun
	s.tun = nil
	s.mu.Unlock()
	if t != nil {
		t.close()
	}
	return nil
}

// Counters are the tunnel's counts (packets sent and received, each kind
// of drop), or nil before the tunnel came up.
func (s *Sixbed4) Counters() map[string]int64 {
	s.mu.Lock()
	t := s.tun
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.counts.snapshot()
}

// counts keeps the tunnel's counters by name.
type counts struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *counts) add(name string) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int64{}
	}
	c.m[name]++
	c.mu.Unlock()
}

func (c *counts) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

var _ net.Error = (*timeoutError)(nil)

type timeoutError struct{}

func (timeoutError) Error() string   { return "6bed4: read deadline passed" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// NeighborState says how packets to peer travel now: "reachable" or
// "stale" (directly), "probing" or "failed" (through the router), or ""
// for a peer not asked yet.
func (s *Sixbed4) NeighborState(peer netip.Addr) string {
	s.mu.Lock()
	t := s.tun
	s.mu.Unlock()
	if t == nil {
		return ""
	}
	return t.NeighborState(peer)
}

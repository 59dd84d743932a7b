// Package sixbed4router is `funtun 6bed4router`: a stateless 6bed4 router
// (draft-vanrein-6bed4). It answers each peer's Router Solicitation with
// the /114 that embeds the peer's public IPv4 address and UDP port, relays
// IPv6 packets between peers under its /64, and delivers the rest either
// to a TUN device (--tun) or, rootless, to a user-space IPv6 stack of its
// own that serves the addresses given with --expose by forwarding their
// connections (through a profile, direct by default) to real servers.
package sixbed4router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/hooks/forward"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/pieces/netstack/ipstack"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const usage = `funtun 6bed4router --listen IPV4:PORT --prefix PREFIX/64 [--expose [IPV6]:PORT=HOST:PORT]… [--tun NAME] [profile=NAME]

A stateless 6bed4 router. Peers (the 6bed4 piece, or the reference
6bed4peer) send it IPv6 packets in UDP over IPv4; it gives each the /114
under PREFIX that embeds the peer's public IPv4 address and UDP port,
relays packets between peers, and delivers everything else:

  without --tun  to a user-space IPv6 stack of its own, rootless. Each
                 --expose [IPV6]:PORT=HOST:PORT gives that stack the
                 address IPV6 and forwards TCP connections to its PORT,
                 as flows through the profile (default direct), to
                 HOST:PORT: an IPv6 service "behind" the router.
  with --tun     to the TUN device NAME (Linux; root, or a device made
                 beforehand with ip tuntap ... user $USER), and packets the
                 kernel routes into it to the peers. The router only
                 opens it: address, MTU 1280 and routes are yours to set.

Examples:
  python3 -m http.server 8000 --bind ::1 &
  funtun 6bed4router --listen 192.0.2.1:25790 --prefix 2001:db8:6bed:4::/64 \
      --expose '[2001:db8:80::1]:80=[::1]:8000'
  funtun 6bed4router --listen 0.0.0.0:25790 --prefix 2001:db8:6bed:4::/64 --tun 6bed4

With --debug every dropped datagram is logged with its reason.`

func init() {
	cli.Register(&cli.Command{
		Name:    "6bed4router",
		Summary: "a stateless 6bed4 router: IPv6 for peers on IPv4, rootless with its own stack or on a TUN device",
		Usage:   usage,
		Run:     run,
		Daemon:  true,
	})
}

// Expose is one service of the router's own stack.
type Expose struct {
	Addr netip.AddrPort // on the router's stack (IPv6)
	To   funnel.Addr    // where its connections go
}

// ParseExpose reads [IPV6]:PORT=HOST:PORT.
func ParseExpose(s string) (Expose, error) {
	at, to, ok := strings.Cut(s, "=")
	if !ok {
		return Expose{}, fmt.Errorf("%q is not [IPV6]:PORT=HOST:PORT", s)
	}
	a, err := netip.ParseAddrPort(at)
	if err != nil || !a.Addr().Is6() || a.Addr().Is4In6() || a.Addr().IsMulticast() || a.Addr().IsUnspecified() || a.Addr().IsLinkLocalUnicast() || a.Port() == 0 {
		return Expose{}, fmt.Errorf("%q: %q is not a unicast [IPV6]:PORT", s, at)
	}
	dst, err := funnel.ParseAddr(to)
	if err != nil {
		return Expose{}, fmt.Errorf("%q: %v", s, err)
	}
	return Expose{Addr: a, To: dst}, nil
}

// Router is one running 6bed4 router.
type Router struct {
	Prefix netip.Prefix // the /64 its peers live in
	Conn   *net.UDPConn // the tunnel socket
	Log    *slog.Logger

	// Packets for the stack's own addresses (owned) go to the stack;
	// others outside the peers' space to the TUN device, if any.
	stack *ipstack.Stack
	owned map[netip.Addr]bool
	tun   func([]byte)
	self  netip.Addr // the router's 6bed4 address, when --listen names one
	// sendTo replaces the socket's send in tests that must not send
	// anywhere (a fuzzed destination names any IPv4 address).
	sendTo func(b []byte, to netip.AddrPort)

	cmu    sync.Mutex
	counts map[string]int64
}

func (r *Router) count(name string) {
	r.cmu.Lock()
	if r.counts == nil {
		r.counts = map[string]int64{}
	}
	r.counts[name]++
	r.cmu.Unlock()
}

// Counters is a copy of the router's counts by name.
func (r *Router) Counters() map[string]int64 {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	out := make(map[string]int64, len(r.counts))
	for k, v := range r.counts {
		out[k] = v
	}
	return out
}

func (r *Router) drop(why string, from netip.AddrPort) {
	r.count("drop: " + why)
	r.Log.Debug("6bed4router: dropped", "from", from, "why", why)
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("6bed4router")
	fs := env.FlagSet(c)
	listen := fs.String("listen", "", "IPV4:PORT to receive the tunnel on (port 25790 is the standard)")
	prefix := fs.String("prefix", "", "the IPv6 /64 the peers' addresses are made in")
	tun := fs.String("tun", "", "deliver non-peer traffic to the TUN device `NAME` (Linux) instead of the router's own stack")
	var exposes cli.StringList
	fs.Var(&exposes, "expose", "`[IPV6]:PORT=HOST:PORT`: the router's stack takes IPV6 and forwards TCP connections to PORT on to HOST:PORT (repeatable)")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("6bed4router", "%v", err)
	}
	if len(rest) > 0 {
		return env.Usagef("6bed4router", "unexpected argument %q", rest[0])
	}
	if *listen == "" || *prefix == "" {
		return env.Usagef("6bed4router", "needs --listen IPV4:PORT and --prefix PREFIX/64")
	}
	la, err := netip.ParseAddrPort(*listen)
	if err != nil || !la.Addr().Unmap().Is4() {
		return env.Usagef("6bed4router", "--listen %q: not IPV4:PORT (6bed4 runs over IPv4)", *listen)
	}
	la = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	pfx, err := netip.ParsePrefix(*prefix)
	if err != nil || !pfx.Addr().Is6() || pfx.Addr().Is4In6() || pfx.Bits() != 64 {
		return env.Usagef("6bed4router", "--prefix %q: not an IPv6 /64 like 2001:db8:6bed:4::/64", *prefix)
	}
	pfx = pfx.Masked()
	var ex []Expose
	for _, s := range exposes {
		e, err := ParseExpose(s)
		if err != nil {
			return env.Usagef("6bed4router", "--expose %v", err)
		}
		ex = append(ex, e)
	}
	var eng *funnel.Engine
	if len(ex) > 0 {
		if eng, err = env.Engine(); err != nil {
			return env.Errorf("6bed4router", "%v", err)
		}
		pl, err := eng.Resolve(sel)
		if err != nil {
			return env.Errorf("6bed4router", "%v", err)
		}
		if !pl.Accepts(funnel.Stream) {
			return env.Errorf("6bed4router", "profile %s carries %s flows, not stream", pl.Name, pl.Shapes())
		}
		cli.ReloadOnHUP(ctx, eng)
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(la))
	if err != nil {
		return env.Errorf("6bed4router", "cannot listen on udp %s: %v", la, err)
	}
	defer conn.Close()
	r := &Router{Prefix: pfx, Conn: conn, Log: env.Log}
	if !la.Addr().IsUnspecified() {
		r.self = wire.Address(pfx, la, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if *tun != "" {
		dev, err := openTUN(*tun)
		if err != nil {
			return env.Errorf("6bed4router", "--tun %s: %v", *tun, err)
		}
		defer dev.Close()
		r.tun = func(b []byte) {
			if _, err := dev.Write(b); err != nil {
				r.count("tun-write-error")
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				n, err := dev.Read(buf)
				if err != nil {
					return
				}
				r.FromLocal(buf[:n])
			}
		}()
	}
	if len(ex) > 0 {
		st, err := ipstack.New(wire.MTU)
		if err != nil {
			return env.Errorf("6bed4router", "%v", err)
		}
		defer st.Close()
		if err := r.AttachStack(ctx, &wg, st, eng, sel, ex); err != nil {
			return env.Errorf("6bed4router", "%v", err)
		}
	}
	env.Log.Info("6bed4router: routing", "listen", conn.LocalAddr().String(), "prefix", pfx.String(), "tun", *tun, "exposed", len(ex))
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	r.Serve()
	env.Log.Info("6bed4router: stopped", "counters", r.Counters())
	return 0
}

// AttachStack makes st the router's own IPv6 host: it takes the exposed
// addresses, and its connections are forwarded as flows through the
// engine's profile sel.
func (r *Router) AttachStack(ctx context.Context, wg *sync.WaitGroup, st *ipstack.Stack, eng *funnel.Engine, sel funnel.Selector, ex []Expose) error {
	if r.owned == nil {
		r.owned = map[netip.Addr]bool{}
	}
	for _, e := range ex {
		if err := st.AddAddress(e.Addr.Addr()); err != nil {
			return err
		}
		r.owned[e.Addr.Addr()] = true
	}
	for _, e := range ex {
		l, err := st.ListenTCP(e.Addr)
		if err != nil {
			return fmt.Errorf("--expose %s: %v", e.Addr, err)
		}
		fw := &forward.Forwarder{Engine: eng, Selector: sel, To: e.To, Log: r.Log}
		wg.Add(1)
		go func() {
			defer wg.Done()
			go func() {
				<-ctx.Done()
				l.Close()
			}()
			fw.ServeTCP(ctx, l)
		}()
		r.Log.Info("6bed4router: exposing", "addr", e.Addr.String(), "to", e.To.String())
	}
	r.stack = st
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, ok := st.ReadPacket(ctx, buf)
			if !ok {
				return
			}
			r.FromLocal(buf[:n])
		}
	}()
	return nil
}

// Serve reads the tunnel socket until it closes.
func (r *Router) Serve() {
	buf := make([]byte, 2048)
	for {
		n, from, err := r.Conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue
		}
		r.FromTunnel(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }

// valid says whether src is the 6bed4 address of the peer at from.
func (r *Router) valid(src netip.Addr, from netip.AddrPort) bool {
	return r.Prefix.Contains(src) && wire.Endpoint(src) == from && wire.LANIP(src) != 0
}

// FromTunnel is one datagram from a peer.
func (r *Router) FromTunnel(b []byte, from netip.AddrPort) {
	if len(b) == 0 {
		r.count("keepalive")
		return
	}
	p, err := wire.Parse(b)
	if err != nil {
		r.drop(err.Error(), from)
		return
	}
	if p.IsND() {
		r.neighborDiscovery(&p, from)
		return
	}
	if p.Dst.IsMulticast() || !p.Dst.Is6() {
		r.drop("multicast", from)
		return
	}
	if !r.valid(p.Src, from) {
		if r.Prefix.Contains(p.Src) && wire.LANIP(p.Src) != 0 {
			// One of ours from the wrong IPv4 address or port: its NAT
			// mapping changed. Tell it its new address (the draft's
			// corrective Router Advertisement) and drop the packet.
			r.count("corrective-advertisement")
			r.send(wire.RouterAdvertisement(p.Src, wire.Address(r.Prefix, from, 0)), from)
			r.Log.Debug("6bed4router: peer's mapping changed; advertised its new prefix", "from", from, "src", p.Src)
			return
		}
		r.drop("spoofed source", from)
		return
	}
	if r.stack != nil && r.owned[p.Dst] {
		r.count("to-stack")
		r.stack.Inject(p.Raw)
		return
	}
	if !wire.DecHopLimit(p.Raw) {
		r.drop("hop limit", from)
		return
	}
	if r.Prefix.Contains(p.Dst) {
		to := wire.Endpoint(p.Dst)
		if to.Port() == 0 || to.Addr().IsUnspecified() {
			r.drop("peer address without a port", from)
			return
		}
		r.count("relayed")
		r.send(p.Raw, to)
		return
	}
	if r.tun == nil {
		r.drop("no route: neither a peer nor an exposed address, and no --tun", from)
		return
	}
	r.count("to-tun")
	r.tun(p.Raw)
}

func (r *Router) neighborDiscovery(p *wire.Packet, from netip.AddrPort) {
	switch typ := p.ICMPType(); {
	case typ == header.ICMPv6RouterSolicit:
		dst := wire.AllNodes
		if p.Src.IsValid() && !p.Src.IsUnspecified() {
			dst = p.Src
		}
		r.count("advertisement")
		r.send(wire.RouterAdvertisement(dst, wire.Address(r.Prefix, from, 0)), from)
	case typ == header.ICMPv6NeighborSolicit:
		if !r.valid(p.Src, from) {
			r.drop("solicitation from a spoofed source", from)
			return
		}
		target, ok := wire.NeighborTarget(p)
		if !ok || !(target == wire.RouterLinkLocal || (r.self.IsValid() && target == r.self)) {
			r.drop("solicitation for an address not the router's", from)
			return
		}
		r.count("neighbor-advertisement")
		r.send(wire.NeighborAdvertisement(target, p.Src, true), from)
	default:
		r.drop("neighbor discovery the router does not answer", from)
	}
}

// FromLocal is a packet from the router's own stack or TUN device: it
// goes to the peer its destination names.
func (r *Router) FromLocal(b []byte) {
	p, err := wire.Parse(b)
	if err != nil {
		r.drop("local: "+err.Error(), netip.AddrPort{})
		return
	}
	if !r.Prefix.Contains(p.Dst) || wire.LANIP(p.Dst) == 0 {
		r.drop("local: destination is not a peer", netip.AddrPort{})
		return
	}
	to := wire.Endpoint(p.Dst)
	if to.Port() == 0 || to.Addr().IsUnspecified() {
		r.drop("local: peer address without a port", netip.AddrPort{})
		return
	}
	r.count("to-peer")
	r.send(p.Raw, to)
}

func (r *Router) send(b []byte, to netip.AddrPort) {
	if r.sendTo != nil {
		r.sendTo(b, to)
		return
	}
	if _, err := r.Conn.WriteToUDPAddrPort(b, to); err != nil {
		r.count("send-error")
	}
}

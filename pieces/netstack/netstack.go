// Package netstack is the piece that gives a program IPv6 without the
// kernel: a user-space TCP/IP stack (gVisor's) terminates the flow's TCP
// connection or UDP conversation and sends the IPv6 packets it makes to the
// piece below (shape packet/ip6), such as the 6bed4 tunnel; and it listens
// on its own address for a hooked program that listens (listen.go) or binds
// a UDP port (listen_udp.go). One stack
// serves every flow of the profile; it starts when the profile goes live
// and stops after the last flow of its set.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/pieces/netstack/ipstack"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "netstack",
		Summary: "a user-space TCP/IP stack: carry TCP and UDP flows as IPv6 packets to the piece below (6bed4)",
		Params: `addr=IPV6        the stack's own address, for a link below that gives none (6bed4 gives one)
ipv4=PROFILE     flows to IPv4 addresses, and to names that have an IPv4 address, go to PROFILE
                 instead (the 6bed4 profile sends them direct); default: refused
accept=PORT,…    accept TCP connections from the network on these ports of the stack's address and
                 connect each to accept-to: the way in to a server that is not hooked (a hooked
                 program that listens on all addresses, or binds UDP on them, is listened for on
                 its port by itself)
accept-to=HOST   where accepted connections go, on the same port, default 127.0.0.1
mtu=N            the link's MTU, default 1280 (the IPv6 minimum; 6bed4 carries no more)
timeout=DURATION how long a TCP connect may take, default 30s`,
		Example: `ipv4=direct`,
		Curves:  curves,
		New:     New,
	})
}

var curves = []funnel.Curve{
	{App: funnel.Stream, Net: funnel.PacketIP6},
	{App: funnel.Dgram, Net: funnel.PacketIP6},
}

// AddressedLink is what a packet link below may tell the stack: the
// address the network gave this end, and when it changes (a 6bed4 router
// gives the address in its Router Advertisement, and a new one when the
// NAT mapping changes).
type AddressedLink interface {
	LinkAddr() netip.Addr
	LinkAddrChanged() <-chan struct{}
}

// Netstack is a configured netstack piece.
type Netstack struct {
	static   netip.Addr
	ipv4     *funnel.ProfileRef
	accept   []uint16
	acceptTo string
	mtu      int
	timeout  time.Duration

	attachMu sync.Mutex // one link dial at a time; others wait for it
	mu       sync.Mutex
	st       *ipstack.Stack
	link     *link
	// listening holds the ports of the stack that programs listen on
	// (ListenStream): one listener a port.
	listening map[uint16]bool
	// udpListening holds the UDP ports of the stack that programs are
	// bound to (ListenDgram).
	udpListening map[uint16]*udpListener
	closed       bool
	ctx          context.Context
	cancel       context.CancelFunc
}

var (
	_ funnel.StreamDialer   = (*Netstack)(nil)
	_ funnel.DgramDialer    = (*Netstack)(nil)
	_ funnel.Opener         = (*Netstack)(nil)
	_ funnel.Closer         = (*Netstack)(nil)
	_ funnel.StreamListener = (*Netstack)(nil)
	_ funnel.DgramListener  = (*Netstack)(nil)
)

// New reads the parameters; the stack itself starts in Open.
func New(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
	n := &Netstack{}
	if s := p.String("addr", ""); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is6() || a.Is4In6() || a.IsMulticast() || a.IsUnspecified() {
			return nil, p.Errorf("addr", "%q is not a unicast IPv6 address", s)
		}
		n.static = a
	}
	if name := p.String("ipv4", ""); name != "" && b != nil {
		ref, err := b.Ref(name)
		if err != nil {
			return nil, p.Errorf("ipv4", "%v", err)
		}
		n.ipv4 = ref
	}
	if ports := p.String("accept", ""); ports != "" {
		for _, s := range strings.Split(ports, ",") {
			port, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
			if err != nil || port == 0 {
				return nil, p.Errorf("accept", "%q is not a TCP port (accept=80,443)", s)
			}
			n.accept = append(n.accept, uint16(port))
		}
	}
	n.acceptTo = p.String("accept-to", "127.0.0.1")
	if _, err := netip.ParseAddr(n.acceptTo); err != nil && !validName(n.acceptTo) {
		return nil, p.Errorf("accept-to", "%q is neither an address nor a host name", n.acceptTo)
	}
	mtu, err := p.Int("mtu", 1280, 1280, 65535)
	if err != nil {
		return nil, err
	}
	n.mtu = int(mtu)
	if n.timeout, err = p.Duration("timeout", 30*time.Second); err != nil {
		return nil, err
	}
	if n.timeout <= 0 {
		return nil, p.Errorf("timeout", "must be more than 0")
	}
	return n, nil
}

// Curves: TCP and UDP in, IPv6 packets out.
func (n *Netstack) Curves() []funnel.Curve { return curves }

// Open makes the piece live. The stack itself starts with the first flow
// (and the link below with it, since only a flow can reach the pieces
// below): a profile that is loaded but never used costs nothing.
func (n *Netstack) Open() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.listening = map[uint16]bool{}
	n.udpListening = map[uint16]*udpListener{}
	return nil
}

// start makes the stack if there is none yet. Called with n.mu held.
func (n *Netstack) start() (*ipstack.Stack, error) {
	if n.st != nil {
		return n.st, nil
	}
	st, err := ipstack.New(n.mtu)
	if err != nil {
		return nil, funnel.Errorf(funnel.KindGeneral, "netstack: %v", err)
	}
	if n.static.IsValid() {
		if err := st.AddAddress(n.static); err != nil {
			st.Close()
			return nil, funnel.Errorf(funnel.KindGeneral, "netstack: %v", err)
		}
	}
	for _, port := range n.accept {
		l, err := st.ListenTCPAny(port)
		if err != nil {
			st.Close()
			return nil, funnel.Errorf(funnel.KindGeneral, "netstack: accept=%d: %v", port, err)
		}
		go n.serveAccepted(l, port)
	}
	n.st = st
	return st, nil
}

// serveAccepted carries connections from the network to accept-to on the
// same port, until the stack closes (and its listener with it).
func (n *Netstack) serveAccepted(l net.Listener, port uint16) {
	to := net.JoinHostPort(n.acceptTo, strconv.Itoa(int(port)))
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var d net.Dialer
			ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
			up, err := d.DialContext(ctx, "tcp", to)
			cancel()
			if err != nil {
				slog.Warn("netstack: an accepted connection found nothing to connect to", "from", c.RemoteAddr().String(), "to", to, "err", err)
				return
			}
			defer up.Close()
			slog.Debug("netstack: accepted", "from", c.RemoteAddr().String(), "to", to)
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				netx.CloseWrite(up)
				close(done)
			}()
			io.Copy(c, up)
			netx.CloseWrite(c)
			<-done
		}()
	}
}

func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " /:=")
}

// Close stops the stack and closes the link below.
func (n *Netstack) Close() error {
	n.mu.Lock()
	n.closed = true
	st, l := n.st, n.link
	n.st, n.link = nil, nil
	cancel := n.cancel
	n.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if l != nil {
		l.conn.Close()
	}
	if st != nil {
		st.Close()
	}
	return nil
}

// link is the packet link below the stack, shared by every flow.
type link struct {
	conn funnel.DgramConn
	dead chan struct{} // closed when the link fails: the next flow dials again
}

func (l *link) alive() bool {
	select {
	case <-l.dead:
		return false
	default:
		return true
	}
}

// attach returns the stack with a live link below it, dialing the link
// when there is none (the first flow, or after the link failed).
func (n *Netstack) attach(ctx context.Context, f *funnel.Flow, next funnel.Next) (*ipstack.Stack, *link, error) {
	n.attachMu.Lock()
	defer n.attachMu.Unlock()
	n.mu.Lock()
	if n.closed || n.ctx == nil {
		n.mu.Unlock()
		return nil, nil, funnel.Errorf(funnel.KindGeneral, "netstack: the stack is not running (its profile was not opened, or has closed)")
	}
	st, err := n.start()
	l := n.link
	n.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	if l != nil && l.alive() {
		return st, l, nil
	}
	// The link outlives this flow: it is the stack's, not the flow's.
	lf := f.Clone()
	conn, err := next.DialDgram(context.WithoutCancel(ctx), lf)
	if err != nil {
		return nil, nil, err
	}
	addressed, _ := conn.(AddressedLink)
	if addressed == nil && !n.static.IsValid() {
		conn.Close()
		return nil, nil, funnel.Errorf(funnel.KindNetUnreachable, "netstack: the piece below gives the stack no address; set addr=")
	}
	l = &link{conn: conn, dead: make(chan struct{})}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		conn.Close()
		return nil, nil, funnel.Errorf(funnel.KindGeneral, "netstack: the stack has closed")
	}
	n.link = l
	// The link's goroutines end with the link (or the piece), so that a
	// link dialed after this one fails is the only one reading the stack.
	ctx, stop := context.WithCancel(n.ctx)
	n.mu.Unlock()
	go func() {
		<-l.dead
		stop()
	}()
	if addressed != nil {
		if err := st.AddAddress(addressed.LinkAddr()); err != nil {
			stop()
			conn.Close()
			return nil, nil, funnel.Errorf(funnel.KindGeneral, "netstack: %v", err)
		}
		go n.followAddress(ctx, st, l, addressed)
	}
	go n.toLink(ctx, st, l)
	go n.fromLink(st, l)
	return st, l, nil
}

// toLink sends what the stack sends: each packet is read straight into a
// frame, which the link takes over.
func (n *Netstack) toLink(ctx context.Context, st *ipstack.Stack, l *link) {
	for {
		fr := funnel.NewFrame()
		size, ok := st.ReadPacket(ctx, fr.Room()[:funnel.FrameMax])
		if !ok {
			fr.Release()
			return
		}
		fr.SetLen(size)
		fr.Time = time.Now()
		if err := l.conn.WriteFrame(fr); err != nil && !l.alive() {
			return
		}
	}
}

// fromLink hands the stack what the link receives, until the link fails.
func (n *Netstack) fromLink(st *ipstack.Stack, l *link) {
	defer close(l.dead)
	for {
		fr, err := l.conn.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			slog.Debug("netstack: the link below ended", "err", err)
			l.conn.Close()
			return
		}
		st.Inject(fr.Bytes())
		fr.Release()
	}
}

// followAddress moves the stack to the link's new address; connections
// on the old one cannot survive a new NAT mapping anyway.
func (n *Netstack) followAddress(ctx context.Context, st *ipstack.Stack, l *link, a AddressedLink) {
	cur := a.LinkAddr()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.dead:
			st.RemoveAddress(cur)
			return
		case <-a.LinkAddrChanged():
			now := a.LinkAddr()
			if now == cur || !now.IsValid() {
				continue
			}
			if err := st.AddAddress(now); err != nil {
				slog.Warn("netstack: taking the link's new address", "addr", now, "err", err)
				continue
			}
			st.RemoveAddress(cur)
			slog.Info("netstack: the link's address changed", "old", cur, "new", now)
			cur = now
		}
	}
}

// target is where a flow goes: an IPv6 address through the stack, or
// (other) the ipv4= profile, with the IPv4 addresses its name resolved to.
type target struct {
	dst   netip.AddrPort
	other bool
	v4    []netip.Addr // a name's IPv4 addresses; nil for an address
}

// destination finds where a flow goes. A name is resolved here, once:
// whether it has an IPv4 address decides where it goes, and the ipv4=
// profile is then given the addresses, not the name to resolve again.
func (n *Netstack) destination(ctx context.Context, f *funnel.Flow) (target, error) {
	d := f.Dest
	if !d.IsName() {
		ip := d.IP.Unmap()
		if ip.Is4() {
			if n.ipv4 != nil {
				return target{other: true}, nil
			}
			return target{}, funnel.Errorf(funnel.KindAddrNotSupported, "netstack: %s is an IPv4 address; this stack carries IPv6 only (give ipv4=PROFILE for the others)", d)
		}
		return target{dst: netip.AddrPortFrom(ip, d.Port)}, nil
	}
	network := "ip6"
	if n.ipv4 != nil {
		network = "ip"
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, network, d.Name)
	if err != nil {
		return target{}, funnel.Errorf(funnel.Classify(err), "netstack: resolving %s: %w", d.Name, err)
	}
	var t target
	var v6 netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4():
			if n.ipv4 != nil {
				t.other = true
				t.v4 = append(t.v4, ip)
			}
		case !v6.IsValid():
			v6 = ip
		}
	}
	if t.other {
		return t, nil
	}
	if !v6.IsValid() {
		return target{}, funnel.Errorf(funnel.KindHostUnreachable, "netstack: %s has no IPv6 address", d.Name)
	}
	return target{dst: netip.AddrPortFrom(v6, d.Port)}, nil
}

func (n *Netstack) otherProfile() (*funnel.Pipeline, error) {
	pl := n.ipv4.Pipeline()
	if pl == nil {
		return nil, funnel.Errorf(funnel.KindGeneral, "netstack: profile %s is not in the compiled set", n.ipv4.Name)
	}
	return pl, nil
}

// dialOther hands a stream flow to the ipv4= profile: at each of its
// name's IPv4 addresses in turn, as a dialer tries a name's addresses.
func (n *Netstack) dialOther(ctx context.Context, f *funnel.Flow, t target) (net.Conn, error) {
	pl, err := n.otherProfile()
	if err != nil {
		return nil, err
	}
	if len(t.v4) == 0 {
		return pl.DialStream(ctx, f)
	}
	for _, ip := range t.v4 {
		var c net.Conn
		c, err = pl.DialStream(ctx, f.WithDest(f.Dest.WithIP(ip)))
		if err == nil || ctx.Err() != nil {
			return c, err
		}
	}
	return nil, err
}

// DialStream connects through the user-space stack.
func (n *Netstack) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	t, err := n.destination(ctx, f)
	if err != nil {
		return nil, err
	}
	if t.other {
		return n.dialOther(ctx, f, t)
	}
	st, _, err := n.attach(ctx, f, next)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	c, err := st.DialTCP(dctx, t.dst)
	if err != nil {
		return nil, dialError("tcp", t.dst, err)
	}
	return c, nil
}

// DialDgram opens a UDP socket of the stack connected to the destination.
func (n *Netstack) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	t, err := n.destination(ctx, f)
	if err != nil {
		return nil, err
	}
	if t.other {
		pl, err := n.otherProfile()
		if err != nil {
			return nil, err
		}
		if len(t.v4) > 0 {
			// A datagram conversation has no connect to fail over on.
			f = f.WithDest(f.Dest.WithIP(t.v4[0]))
		}
		return pl.DialDgram(ctx, f)
	}
	st, _, err := n.attach(ctx, f, next)
	if err != nil {
		return nil, err
	}
	if ul := n.listenedFrom(f); ul != nil {
		// The program sends from the port it bound, which the stack
		// listens on for it: the datagrams leave from that port too.
		c, err := ul.dial(t.dst)
		if err != nil {
			return nil, dialError("udp", t.dst, err)
		}
		return c, nil
	}
	c, err := st.DialUDP(t.dst)
	if err != nil {
		return nil, dialError("udp", t.dst, err)
	}
	return newUDPConn(c), nil
}

func dialError(network string, dst netip.AddrPort, err error) error {
	kind := funnel.KindGeneral
	switch ipstack.ErrorKind(err) {
	case "refused":
		kind = funnel.KindRefused
	case "host":
		kind = funnel.KindHostUnreachable
	case "net":
		kind = funnel.KindNetUnreachable
	case "timeout":
		kind = funnel.KindTimeout
	default:
		if errors.Is(err, context.DeadlineExceeded) {
			kind = funnel.KindTimeout
		} else if errors.Is(err, context.Canceled) {
			kind = funnel.KindGeneral
		}
	}
	return funnel.Errorf(kind, "netstack: %s %s: %v", network, dst, err)
}

// udpConn is a connected UDP socket of the stack as a datagram flow.
type udpConn struct {
	c             net.Conn
	local, remote netip.AddrPort
}

func newUDPConn(c net.Conn) *udpConn {
	u := &udpConn{c: c}
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		u.local = a.AddrPort()
	}
	if a, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		u.remote = a.AddrPort()
	}
	return u
}

func (u *udpConn) ReadFrame() (*funnel.Frame, error) {
	fr := funnel.NewFrame()
	size, err := u.c.Read(fr.Room()[:funnel.FrameMax])
	if err != nil {
		fr.Release()
		if errors.Is(err, io.EOF) {
			// gonet's word for a socket closed under the reader (the
			// stack stopped): no failure of the flow's.
			return nil, net.ErrClosed
		}
		return nil, err
	}
	fr.SetLen(size)
	fr.Src, fr.Dst = u.remote, u.local
	return fr, nil
}

func (u *udpConn) WriteFrame(fr *funnel.Frame) error {
	_, err := u.c.Write(fr.Bytes())
	fr.Release()
	if err != nil {
		return fmt.Errorf("netstack: udp %s: %w", u.remote, err)
	}
	return nil
}

func (u *udpConn) SetReadDeadline(t time.Time) error { return u.c.SetReadDeadline(t) }
func (u *udpConn) Close() error                      { return u.c.Close() }

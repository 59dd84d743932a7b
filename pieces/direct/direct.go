// Package direct is the piece that reaches the network itself: it dials TCP
// and UDP with the operating system's sockets. Every chain that needs a
// network below its last piece ends in direct implicitly.
package direct

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/funtun/funtun/funnel"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "direct",
		Summary: "dial TCP and UDP with the system's sockets (the end of every chain)",
		Params: `source=ADDR      local address to dial from (IPv4 or IPv6, no port)
timeout=DURATION connect timeout, default 10s
fallback=DURATION Happy Eyeballs delay before trying the other address family, default 300ms
keepalive=DURATION TCP keepalive period, default 15s; 0 turns it off
mark=N           SO_MARK of every socket it opens (Linux; 0x… or decimal), so firewall rules can skip them; default $FUNTUN_MARK, else none
congestion=NAME  TCP congestion control of its TCP sockets (Linux), e.g. reno or cubic; default the system's`,
		EndsChains: true,
		Curves:     curves,
		New:        New,
	})
}

// Direct is a configured direct piece.
type Direct struct {
	source    netip.Addr
	timeout   time.Duration
	fallback  time.Duration
	keepalive time.Duration
	mark      int
	cc        string // TCP congestion control, "" for the system's
	plain     bool   // nothing configured: no parameters, no FUNTUN_MARK
	// The dialers, made once: net.Dialer is safe for concurrent use, and
	// a flow should not leave one behind as garbage.
	tcp, tcpLocal, udp *net.Dialer
}

// New builds a direct piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	d := &Direct{}
	var err error
	if d.mark, err = markParam(p); err != nil {
		return nil, err
	}
	if d.cc, err = congestionParam(p); err != nil {
		return nil, err
	}
	d.plain = p.Len() == 0 && d.mark == 0
	if s := p.String("source", ""); s != "" {
		if d.source, err = netip.ParseAddr(s); err != nil {
			return nil, p.Errorf("source", "%q is not an IP address", s)
		}
	}
	if d.timeout, err = p.Duration("timeout", 10*time.Second); err != nil {
		return nil, err
	}
	if d.fallback, err = p.Duration("fallback", 300*time.Millisecond); err != nil {
		return nil, err
	}
	if d.keepalive, err = p.Duration("keepalive", 15*time.Second); err != nil {
		return nil, err
	}
	d.tcp, d.udp = d.dialer("tcp"), d.dialer("udp")
	d.tcpLocal = d.dialer("tcp")
	d.tcpLocal.KeepAlive = -1
	return d, nil
}

// Curves: direct ends the chain for both streams and datagrams.
func (d *Direct) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}, {App: funnel.Dgram, Net: funnel.Kernel}}

func (d *Direct) dialer(network string) *net.Dialer {
	nd := &net.Dialer{Timeout: d.timeout, FallbackDelay: d.fallback, KeepAlive: d.keepalive}
	cc := d.cc
	if network != "tcp" {
		cc = ""
	}
	if d.mark != 0 || cc != "" {
		nd.Control = sockControl(d.mark, cc)
	}
	if d.keepalive == 0 {
		nd.KeepAlive = -1
	}
	if d.source.IsValid() {
		if network == "tcp" {
			nd.LocalAddr = &net.TCPAddr{IP: d.source.AsSlice()}
		} else {
			nd.LocalAddr = &net.UDPAddr{IP: d.source.AsSlice()}
		}
	}
	return nd
}

var (
	_ funnel.StreamDialer = (*Direct)(nil)
	_ funnel.DgramDialer  = (*Direct)(nil)
	_ funnel.Transparent  = (*Direct)(nil)
	_ funnel.KernelDialer = (*Direct)(nil)
)

// KernelDial: every stream flow to an address is one connect(2), made as
// DialStream makes it; the engine's fast path copies this. (Names and the
// Happy Eyeballs fallback stay with DialStream: the fast path serves
// addresses only.)
func (d *Direct) KernelDial() (funnel.DialPolicy, bool) {
	return funnel.DialPolicy{
		Timeout:    d.timeout,
		KeepAlive:  d.keepalive,
		Source:     d.source,
		Mark:       d.mark,
		Congestion: d.cc,
		ErrPrefix:  "direct",
		Plain:      d.plain,
	}, true
}

// Transparent: direct is where a handoff is answered.
func (d *Direct) Transparent() bool { return true }

// DialStream connects a TCP socket; a name is resolved here, trying both
// address families the Happy Eyeballs way (RFC 8305) when it has both.
func (d *Direct) DialStream(ctx context.Context, f *funnel.Flow, _ funnel.Next) (net.Conn, error) {
	if f.Handoff {
		ap, err := d.resolve(ctx, f.Dest)
		if err != nil {
			return nil, err
		}
		return funnel.AnswerHandoff(ap)
	}
	nd := d.tcp
	if !f.Dest.IsName() && f.Dest.IP.IsLoopback() {
		// Nothing between here and a local server can drop an idle
		// connection: keepalive would only cost four system calls.
		nd = d.tcpLocal
	}
	c, err := nd.DialContext(ctx, "tcp", f.Dest.String())
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	return c, nil
}

// DialDgram opens a connected UDP socket to the destination.
func (d *Direct) DialDgram(ctx context.Context, f *funnel.Flow, _ funnel.Next) (funnel.DgramConn, error) {
	c, err := d.udp.DialContext(ctx, "udp", f.Dest.String())
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	return funnel.NewUDPConn(c.(*net.UDPConn)), nil
}

func (d *Direct) resolve(ctx context.Context, a funnel.Addr) (netip.AddrPort, error) {
	if !a.IsName() {
		return a.AddrPort(), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", a.Name)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("direct: %w", err)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), a.Port), nil
}

// MarkEnv names the environment variable that gives every direct piece
// without mark= its SO_MARK: a hook whose firewall rules must skip
// funtun's own sockets (`funtun redirect --mark`) sets it for the whole
// process, so that profiles need not each say so.
const MarkEnv = "FUNTUN_MARK"

// markParam reads mark=N, or $FUNTUN_MARK without one; mark=0 asks for no
// mark whatever the environment says.
func markParam(p *funnel.Params) (int, error) {
	if p.Has("mark") {
		v := p.String("mark", "")
		m, err := parseMark(v)
		if err != nil {
			return 0, p.Errorf("mark", "%q %v", v, err)
		}
		if m != 0 && !markSupported {
			return 0, p.Errorf("mark", "SO_MARK exists only on Linux")
		}
		return m, nil
	}
	v := os.Getenv(MarkEnv)
	if v == "" {
		return 0, nil
	}
	m, err := parseMark(v)
	if err != nil {
		return 0, p.Fail("%s=%q in the environment %v", MarkEnv, v, err)
	}
	if !markSupported {
		return 0, p.Fail("%s is set, but SO_MARK exists only on Linux", MarkEnv)
	}
	return m, nil
}

// parseMark reads a firewall mark as nft and ip-rule write it: decimal or
// 0x-hexadecimal, 32 bits.
func parseMark(v string) (int, error) {
	m, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("is not a mark: a 32-bit number, decimal or 0x-hexadecimal")
	}
	return int(m), nil
}

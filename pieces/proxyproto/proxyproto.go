// Package proxyproto is the piece that speaks HAProxy's PROXY protocol
// (v1 text, v2 binary): on an outgoing flow it sends a header carrying the
// flow's source and destination before the application's bytes, so a
// server behind funtun (HAProxy's accept-proxy, nginx's proxy_protocol)
// sees the real client instead of funtun; on an incoming flow it reads and
// strips such a header and makes the address in it the flow's source.
//
// The wire format is github.com/pires/go-proxyproto's. Past the header the
// bytes are untouched: the piece returns the connection from below itself
// (or, when the client sent bytes right behind its header, that connection
// with those bytes served first), so the relay can still splice.
package proxyproto

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	proxyproto "github.com/pires/go-proxyproto"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "proxy-protocol",
		Summary: "send (outgoing) or read and strip (incoming) a HAProxy PROXY protocol header with the client's address",
		Params: `version=1|2       header sent on outgoing flows: 1 (text) or 2 (binary), default 2; incoming flows take either
timeout=DURATION  how long an incoming client has to send its header, and sending ours may take, default 5s
trust=CIDR,…      incoming flows: take headers only from these networks, refuse other clients; default any`,
		Curves: []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}},
		New:    New,
	})
}

// ProxyProtocol is a configured proxy-protocol piece.
type ProxyProtocol struct {
	version byte
	timeout time.Duration
	trust   []netip.Prefix // empty: any client may send a header
}

var (
	_ funnel.StreamDialer   = (*ProxyProtocol)(nil)
	_ funnel.StreamAcceptor = (*ProxyProtocol)(nil)
)

// New builds a proxy-protocol piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	pp := &ProxyProtocol{}
	switch v := p.String("version", "2"); v {
	case "1":
		pp.version = 1
	case "2":
		pp.version = 2
	default:
		return nil, p.Errorf("version", "%q is not 1 or 2", v)
	}
	var err error
	if pp.timeout, err = p.Duration("timeout", 5*time.Second); err != nil {
		return nil, err
	}
	if pp.timeout == 0 {
		return nil, p.Errorf("timeout", "must be more than 0: a client that never sends its header would hold the flow for ever")
	}
	if t := p.String("trust", ""); t != "" {
		for _, s := range strings.Split(t, ",") {
			s = strings.TrimSpace(s)
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, p.Errorf("trust", "%q is not a network such as 10.0.0.0/8 or an address", s)
				}
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
			pp.trust = append(pp.trust, pfx.Masked())
		}
	}
	return pp, nil
}

// Curves: a header, then the stream's own bytes.
func (pp *ProxyProtocol) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}}
}

// No Transparent: the piece writes bytes of its own on the connection, so
// a flow through it cannot be handed off to the application's own socket
// (the engine clears Flow.Handoff before it).

// DialStream dials below, sends the header in one write, and returns the
// connection from below itself.
func (pp *ProxyProtocol) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	c, err := next.DialStream(ctx, f)
	if err != nil {
		return nil, err
	}
	hdr, err := pp.header(f, c).Format()
	if err != nil {
		c.Close()
		return nil, funnel.Errorf(funnel.KindAddrNotSupported, "proxy-protocol: cannot write a v%d header for %s → %s: %v", pp.version, addrString(f.Source), f.Dest, err)
	}
	c.SetWriteDeadline(time.Now().Add(pp.timeout))
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
	// One write: the protocol wants the header in one segment, and a
	// receiver such as go-proxyproto refuses a v1 line that arrives in two.
	_, err = c.Write(hdr)
	stop()
	c.SetWriteDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, funnel.Errorf(funnel.Classify(err), "proxy-protocol: sending the header to %s: %w", f.Dest, err)
	}
	return c, nil
}

// header is the header for f: PROXY with its source and destination, or,
// when the source is no IP address (unknown, a Unix socket), v1's
// "PROXY UNKNOWN" and v2's LOCAL, which tell the server to use the
// connection's own addresses.
func (pp *ProxyProtocol) header(f *funnel.Flow, below net.Conn) *proxyproto.Header {
	src := netx.AddrPortOf(f.Source)
	if !src.IsValid() {
		return proxyproto.HeaderProxyFromAddrs(pp.version, nil, nil)
	}
	dst := destination(f, below, src)
	return proxyproto.HeaderProxyFromAddrs(pp.version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
}

// destination is where the flow is going: its destination when that is an
// address; for a name, the address the connection from below reached
// (which is the next proxy's when there is one); else the unspecified
// address of the source's family with the destination's port, so that the
// source, which is what the header is for, still goes across.
func destination(f *funnel.Flow, below net.Conn, src netip.AddrPort) netip.AddrPort {
	if !f.Dest.IsName() && f.Dest.IP.IsValid() {
		return netx.Unmap(f.Dest.AddrPort())
	}
	if ap := netx.AddrPortOf(below.RemoteAddr()); ap.IsValid() {
		return ap
	}
	if src.Addr().Is4() {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), f.Dest.Port)
	}
	return netip.AddrPortFrom(netip.IPv6Unspecified(), f.Dest.Port)
}

// AcceptStream reads the header the client sends first (v1 or v2), makes
// its source the flow's, and hands on the connection with the header
// stripped.
func (pp *ProxyProtocol) AcceptStream(ctx context.Context, f *funnel.Flow, conn net.Conn) (net.Conn, error) {
	peer := netx.AddrPortOf(conn.RemoteAddr())
	if len(pp.trust) > 0 && !pp.trusted(peer.Addr()) {
		conn.Close()
		return nil, funnel.Errorf(funnel.KindDenied, "proxy-protocol: client %s is not in trust=, so its PROXY header is not taken", addrString(conn.RemoteAddr()))
	}
	conn.SetReadDeadline(time.Now().Add(pp.timeout))
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	// Large enough for a v1 line in one read (go-proxyproto wants it so);
	// a v2 header with long TLVs is read in several.
	br := bufio.NewReaderSize(conn, 512)
	h, err := proxyproto.Read(br)
	stop()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, funnel.Errorf(funnel.Classify(ctx.Err()), "proxy-protocol: reading the header of client %s: %w", addrString(conn.RemoteAddr()), ctx.Err())
		}
		return nil, pp.readError(err, conn.RemoteAddr())
	}
	if h.Command.IsProxy() {
		if src := netx.AddrPortOf(h.SourceAddr); src.IsValid() {
			f.Source = net.TCPAddrFromAddrPort(src)
			log := f.Log
			if log == nil {
				log = slog.Default()
			}
			log.Debug("proxy-protocol: source from header", "peer", addrString(conn.RemoteAddr()), "src", src.String(), "dst", addrString(h.DestinationAddr), "version", h.Version)
		}
	}
	// Bytes the client sent right behind its header came in with it.
	var left []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		left = append([]byte(nil), b...)
	}
	return netx.WithPrefix(conn, left), nil
}

func (pp *ProxyProtocol) trusted(a netip.Addr) bool {
	for _, p := range pp.trust {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// readError says why no header could be taken from client, with a kind.
func (pp *ProxyProtocol) readError(err error, client net.Addr) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return funnel.Errorf(funnel.KindTimeout, "proxy-protocol: client %s sent no complete PROXY header within %s", addrString(client), pp.timeout)
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return funnel.Errorf(funnel.KindDenied, "proxy-protocol: client %s did not start with a PROXY protocol header (is it a proxy that sends one, e.g. HAProxy's send-proxy?)", addrString(client))
	}
	return funnel.Errorf(funnel.KindGeneral, "proxy-protocol: bad PROXY header from client %s: %v", addrString(client), err)
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return fmt.Sprint(a)
}

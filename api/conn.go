package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

// Dial connects to address through the pieces of template. ctx bounds the
// dial (every piece's part of it: a SOCKS5 handshake, a TLS handshake);
// once connected, ctx no longer matters, as with net.Dialer.DialContext.
//
// For "tcp4" and "tcp6" a literal address must be of that family; a name
// is handed to the pieces, which decide.
func (fn *Funnel) Dial(ctx context.Context, template, network, address string) (net.Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: flowAddr{network, address}, Err: err}
	}
	kind, err := netKind(network, "tcp", "udp")
	if err != nil {
		return nil, opErr(err)
	}
	dest, err := funnel.ParseAddr(address)
	if err != nil {
		return nil, opErr(err)
	}
	if err := checkFamily(network, dest); err != nil {
		return nil, opErr(err)
	}
	pl, err := fn.resolve(template)
	if err != nil {
		return nil, opErr(err)
	}
	f := fn.newFlow(kind, dest)
	r := fn.engine.Begin(f, pl)
	if kind == funnel.UDP {
		dg, err := r.DialDgram(ctx)
		if err != nil {
			r.End(err)
			return nil, opErr(err)
		}
		return &dgramConn{dg: dg, run: r, flow: f, remote: destAddr("udp", dest)}, nil
	}
	up, err := r.DialStream(ctx)
	if err == nil && up.Conn == nil {
		err = fmt.Errorf("profile %s answered a handoff nobody asked for", pl.Name)
	}
	if err != nil {
		r.End(err)
		return nil, opErr(err)
	}
	return &streamConn{Conn: up.Conn, run: r, flow: f, remote: destAddr("tcp", dest)}, nil
}

// netKind maps a Go network name onto a funnel network, allowing only the
// families given ("tcp", "udp").
func netKind(network string, allowed ...string) (funnel.Network, error) {
	base := network
	if n := len(network); n > 0 && (network[n-1] == '4' || network[n-1] == '6') {
		base = network[:n-1]
	}
	for _, a := range allowed {
		if base == a {
			return funnel.Network(a), nil
		}
	}
	return "", fmt.Errorf("network %q: use one of %v (with 4 or 6 for one family)", network, allowed)
}

func checkFamily(network string, a funnel.Addr) error {
	if a.IsName() || len(network) == 0 {
		return nil
	}
	switch network[len(network)-1] {
	case '4':
		if !a.IP.Unmap().Is4() {
			return fmt.Errorf("%s is not an IPv4 address", a.IP)
		}
	case '6':
		if a.IP.Is4() || a.IP.Is4In6() {
			return fmt.Errorf("%s is not an IPv6 address", a.IP)
		}
	}
	return nil
}

// flowAddr is an address the kernel never saw: a name the pieces resolve,
// or what the program asked for.
type flowAddr struct{ net, addr string }

func (a flowAddr) Network() string { return a.net }
func (a flowAddr) String() string  { return a.addr }

// destAddr is where the program asked to go, as a net.Addr: the address
// the funnel reaches may be another (a SOCKS5 server, a rewritten name).
func destAddr(network string, d funnel.Addr) net.Addr {
	if d.IsName() {
		return flowAddr{network, d.String()}
	}
	if network == "udp" {
		return net.UDPAddrFromAddrPort(d.AddrPort())
	}
	return net.TCPAddrFromAddrPort(d.AddrPort())
}

// streamConn is one stream flow's connection as the program holds it: the
// bytes it moves are the flow's counts, and closing it ends the flow.
type streamConn struct {
	net.Conn
	run    *funnel.Run
	flow   *funnel.Flow
	remote net.Addr // nil: the inner connection's
	once   sync.Once
}

func (c *streamConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.flow.Down.Add(int64(n))
	return n, err
}

func (c *streamConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.flow.Up.Add(int64(n))
	return n, err
}

// CloseWrite sends end-of-stream and keeps reading, as *net.TCPConn does;
// pieces pass it down (a TLS piece sends close_notify first).
func (c *streamConn) CloseWrite() error { return netx.CloseWrite(c.Conn) }

func (c *streamConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.run.End(nil) })
	return err
}

func (c *streamConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

// dgramConn is a connected datagram flow as a net.Conn: each Write is one
// datagram toward the destination, each Read one datagram back.
type dgramConn struct {
	dg     funnel.DgramConn
	run    *funnel.Run
	flow   *funnel.Flow
	remote net.Addr
	once   sync.Once
}

func (c *dgramConn) Read(b []byte) (int, error) {
	fr, err := c.dg.ReadFrame()
	if err != nil {
		return 0, err
	}
	n := copy(b, fr.Bytes())
	fr.Release()
	c.flow.Down.Add(int64(n))
	return n, nil
}

func (c *dgramConn) Write(b []byte) (int, error) {
	if len(b) > funnel.FrameMax {
		return 0, fmt.Errorf("datagram of %d bytes: at most %d", len(b), funnel.FrameMax)
	}
	fr := funnel.NewFrame()
	n := copy(fr.Room(), b)
	fr.SetLen(n)
	fr.Time = time.Now()
	if err := c.dg.WriteFrame(fr); err != nil {
		return 0, err
	}
	c.flow.Up.Add(int64(n))
	return n, nil
}

func (c *dgramConn) Close() error {
	err := c.dg.Close()
	c.once.Do(func() { c.run.End(nil) })
	return err
}

func (c *dgramConn) LocalAddr() net.Addr  { return flowAddr{"udp", "funnel"} }
func (c *dgramConn) RemoteAddr() net.Addr { return c.remote }

func (c *dgramConn) SetDeadline(t time.Time) error { return c.dg.SetReadDeadline(t) }

func (c *dgramConn) SetReadDeadline(t time.Time) error { return c.dg.SetReadDeadline(t) }

// SetWriteDeadline is accepted and has no effect: a datagram write hands
// the datagram to the pieces and does not wait for the network.
func (c *dgramConn) SetWriteDeadline(time.Time) error { return nil }

// isTimeout reports a deadline's expiry however a piece wrapped it.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// NameAddr is a destination for ListenPacket's WriteTo given as HOST:PORT,
// where HOST may be a name for the pieces to resolve (a hosts piece, or a
// SOCKS5 server far away).
func NameAddr(network, hostport string) net.Addr { return flowAddr{network, hostport} }

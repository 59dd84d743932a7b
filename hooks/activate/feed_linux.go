//go:build linux

package activate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// Feeder turns real listening sockets into sockets for a program: when the
// profile acts on incoming streams, each real socket gets a program-side
// listener of the same family and type that the funnel connects to for
// every flow; otherwise the program gets the real socket itself.
type Feeder struct {
	Engine   *funnel.Engine
	Selector funnel.Selector
	Hook     string // the flows' hook name: "activate", "preload"
	Log      *slog.Logger
	// DialProgram connects a flow to the program's side of a socket; nil
	// dials it plainly. release, when not nil, runs once the flow has
	// ended. The launcher registers the dialing socket's address there so
	// that the preloaded library can tell the program who the client was.
	DialProgram func(ctx context.Context, programSide net.Addr, f *funnel.Flow) (c net.Conn, release func(), err error)
	// ProxyHeader, 1 or 2, sends the program a PROXY protocol header
	// (HAProxy's, v1 text or v2 binary) with the client's address and the
	// real socket's before each connection's bytes; 0 sends none.
	ProxyHeader byte
	// OnListen, when not nil, learns each relayed socket once its
	// program-side listener exists. Closing real.Listener stops the
	// feeding of that socket.
	OnListen func(real *sdactivate.Socket, programSide net.Addr)
}

// Relays reports whether the pipeline acts on incoming streams (a piece
// implements funnel.StreamAcceptor). Without such a piece an incoming
// connection would reach the program with the very bytes it came with,
// so the program gets the real socket and no relay runs — the rule the
// preload hook applies to a program's own listen() too.
func Relays(pl *funnel.Pipeline) bool {
	for _, p := range pl.Pieces() {
		if _, ok := p.(funnel.StreamAcceptor); ok {
			return true
		}
	}
	return false
}

// Plan is what the program gets, in LISTEN_FDS order, and the relays that
// feed it.
type Plan struct {
	feeder  *Feeder
	sockets []*sdactivate.Socket
	files   []*os.File // the program's descriptors, fd 3 on
	names   []string
	relays  []*relay
	dir     string // holds program-side Unix sockets
	handed  bool   // the real sockets themselves go to the program
}

type relay struct {
	real        *sdactivate.Socket
	programSide net.Addr
}

// Prepare plans the program's sockets for socks, through the pipeline pl
// (which decides whether anything is relayed). On error nothing is left
// open that Prepare opened; socks stay the caller's to close.
func (fd *Feeder) Prepare(socks []*sdactivate.Socket, pl *funnel.Pipeline) (*Plan, error) {
	if fd.Log == nil {
		fd.Log = fd.Engine.Log
	}
	p := &Plan{feeder: fd, sockets: socks, handed: !Relays(pl)}
	for _, s := range socks {
		p.names = append(p.names, programName(s))
	}
	if p.handed {
		for _, s := range socks {
			// The program gets the socket as a service manager passes
			// it: in blocking mode (our net.Listener made the shared
			// description non-blocking), which a program that does not
			// expect EAGAIN from accept() relies on.
			if err := unix.SetNonblock(int(s.File.Fd()), false); err != nil {
				return nil, fmt.Errorf("%s: %v", s, err)
			}
			p.files = append(p.files, s.File)
		}
		return p, nil
	}
	for _, s := range socks {
		if s.Listener == nil {
			p.Close()
			return nil, fmt.Errorf("%s is a datagram socket, and profile %s acts on incoming streams (%s): datagram sockets pass to the program only unchanged, with a profile that leaves incoming flows alone (profile=direct)",
				s, pl.Name, acceptorNames(pl))
		}
		file, addr, err := p.programListener(s)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("cannot make the program's socket for %s: %v", s, err)
		}
		p.files = append(p.files, file)
		p.relays = append(p.relays, &relay{real: s, programSide: addr})
		if fd.OnListen != nil {
			fd.OnListen(s, addr)
		}
	}
	return p, nil
}

// programName is the socket's LISTEN_FDNAMES entry for the program. A
// socket passed without a name has the one go-systemd makes up
// ("LISTEN_FD_3"), which would be a lie about the program's fd 3: it
// gets "unknown", what sd_listen_fds_with_names() reports then.
func programName(s *sdactivate.Socket) string {
	if s.Name == "" || s.Name == "LISTEN_FD_"+strconv.Itoa(s.FD) {
		return "unknown"
	}
	return s.Name
}

func acceptorNames(pl *funnel.Pipeline) string {
	var names []string
	for i, piece := range pl.Pieces() {
		if _, ok := piece.(funnel.StreamAcceptor); ok {
			names = append(names, pl.Specs[i].Name)
		}
	}
	return strings.Join(names, ", ")
}

// HandsOver reports whether the program gets the real sockets themselves.
func (p *Plan) HandsOver() bool { return p.handed }

// Files are the program's descriptors, to become fd 3, 4, … in order.
func (p *Plan) Files() []*os.File { return p.files }

// Env is the program's LISTEN_FDS and LISTEN_FDNAMES (LISTEN_PID is set by
// Start in the program's own process).
func (p *Plan) Env() []string {
	return []string{"LISTEN_FDS=" + strconv.Itoa(len(p.files)), "LISTEN_FDNAMES=" + strings.Join(p.names, ":")}
}

// ProgramSide is where relayed socket i is fed (nil for a handed-over one).
func (p *Plan) ProgramSide(i int) net.Addr {
	if p.handed || i >= len(p.relays) {
		return nil
	}
	return p.relays[i].programSide
}

// Started drops our copies of the program's descriptors once it has them:
// then the program's side closes when the program does, and a handed-over
// socket is the program's alone.
func (p *Plan) Started() {
	for _, f := range p.files {
		f.Close()
	}
	if p.handed {
		for _, s := range p.sockets {
			s.Close()
		}
	}
	p.files = nil
}

// Close closes what the plan opened: the program-side sockets and their
// directory. The real sockets stay the caller's.
func (p *Plan) Close() {
	if !p.handed {
		for _, f := range p.files {
			f.Close()
		}
	}
	p.files = nil
	if p.dir != "" {
		os.RemoveAll(p.dir)
		p.dir = ""
	}
}

// Serve accepts on every relayed real socket until ctx ends and carries
// each connection through the profile to the program; it returns once
// every flow has ended. It closes the real listeners.
func (p *Plan) Serve(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range p.relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.acceptLoop(ctx, r, &wg)
		}()
	}
	wg.Wait()
}

func (p *Plan) acceptLoop(ctx context.Context, r *relay, flows *sync.WaitGroup) {
	fd := p.feeder
	err := netx.AcceptLoop(ctx, r.real.Listener, func(c net.Conn) {
		flows.Add(1)
		go func() {
			defer flows.Done()
			fd.serveConn(ctx, r, c)
		}()
	}, fd.Log)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fd.Log.Error(fd.Hook+": no longer accepting", "socket", r.real.String(), "err", err)
	}
}

func (fd *Feeder) serveConn(ctx context.Context, r *relay, c net.Conn) {
	pl, err := fd.Engine.Resolve(fd.Selector)
	if err != nil {
		fd.Log.Error(fd.Hook+": no profile for flow", "err", err)
		c.Close()
		return
	}
	f := fd.Engine.NewFlow(fd.Hook, funnel.TCP, destOf(c.LocalAddr()))
	f.Source = c.RemoteAddr()
	var release func()
	defer func() {
		if release != nil {
			release()
		}
	}()
	fd.Engine.ServeInbound(ctx, f, pl, c, func(ctx context.Context) (net.Conn, error) {
		if fd.DialProgram != nil {
			conn, rel, err := fd.DialProgram(ctx, r.programSide, f)
			release = rel
			return conn, err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, r.programSide.Network(), r.programSide.String())
		if err != nil || fd.ProxyHeader == 0 {
			return conn, err
		}
		if err := fd.sendProxyHeader(conn, f.Source, c.LocalAddr()); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	})
}

// sendProxyHeader tells the program who the client is, the way a load
// balancer tells a server behind it: nginx (listen … proxy_protocol),
// HAProxy (accept-proxy) and many others read it. The client is the
// flow's source, which a proxy-protocol piece in the profile has set from
// a load balancer's own header by now. A client without an IP address (a
// Unix socket's) gets v1's UNKNOWN / v2's LOCAL: the program then uses
// the connection's own addresses.
func (fd *Feeder) sendProxyHeader(conn net.Conn, client, real net.Addr) error {
	var h *proxyproto.Header
	src, dst := netx.AddrPortOf(client), netx.AddrPortOf(real)
	if src.IsValid() && dst.IsValid() && src.Addr().Is4() == dst.Addr().Is4() {
		h = proxyproto.HeaderProxyFromAddrs(fd.ProxyHeader, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	} else {
		h = proxyproto.HeaderProxyFromAddrs(fd.ProxyHeader, nil, nil)
	}
	b, err := h.Format()
	if err != nil {
		return fmt.Errorf("PROXY header for %s: %v", client, err)
	}
	// One write: receivers want the header in one segment.
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Write(b)
	conn.SetWriteDeadline(time.Time{})
	return err
}

// destOf is the flow's destination: the real socket's address, where the
// client connected (a Unix socket has none the flow can carry).
func destOf(a net.Addr) funnel.Addr {
	if ap := netx.AddrPortOf(a); ap.IsValid() {
		return funnel.Addr{IP: ap.Addr(), Port: ap.Port()}
	}
	return funnel.Addr{}
}

// programListener makes the program's side of a real listening socket: a
// kernel listening socket of the same family and type — a TCP socket on
// an ephemeral loopback port, or a Unix socket in a directory only we can
// enter — in blocking mode, as a service manager would pass it.
func (p *Plan) programListener(s *sdactivate.Socket) (*os.File, net.Addr, error) {
	realFD := int(s.File.Fd())
	switch a := s.Listener.Addr().(type) {
	case *net.TCPAddr:
		family := unix.AF_INET
		loop := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
		if ap := netx.AddrPortOf(a); ap.Addr().Is6() {
			family, loop = unix.AF_INET6, netip.AddrPortFrom(netip.IPv6Loopback(), 0)
		}
		file, addr, err := tcpListener(family, loop, realFD)
		if err != nil && family == unix.AF_INET6 {
			// A host without IPv6 on loopback: the program gets an IPv4
			// socket, which is what it could reach anyway.
			file, addr, err = tcpListener(unix.AF_INET, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0), realFD)
		}
		return file, addr, err
	case *net.UnixAddr:
		if p.dir == "" {
			dir, err := os.MkdirTemp("", "funtun-activate-")
			if err != nil {
				return nil, nil, err
			}
			p.dir = dir
		}
		path := filepath.Join(p.dir, "socket"+strconv.Itoa(len(p.relays)))
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, nil, os.NewSyscallError("socket", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(fd)
			return nil, nil, os.NewSyscallError("bind", err)
		}
		if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
			unix.Close(fd)
			return nil, nil, os.NewSyscallError("listen", err)
		}
		return os.NewFile(uintptr(fd), path), &net.UnixAddr{Name: path, Net: "unix"}, nil
	default:
		return nil, nil, fmt.Errorf("%s sockets cannot be relayed (TCP and Unix stream sockets can)", a.Network())
	}
}

func tcpListener(family int, loop netip.AddrPort, realFD int) (*os.File, net.Addr, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socket", err)
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: loop.Addr().As4()}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Addr: loop.Addr().As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, nil, os.NewSyscallError("bind", err)
	}
	// Accepted sockets inherit these from the listener: the program's
	// connections behave as the real socket's would.
	for _, opt := range [][2]int{{unix.IPPROTO_TCP, unix.TCP_NODELAY}, {unix.SOL_SOCKET, unix.SO_KEEPALIVE}} {
		if v, err := unix.GetsockoptInt(realFD, opt[0], opt[1]); err == nil && v != 0 {
			unix.SetsockoptInt(fd, opt[0], opt[1], v)
		}
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		unix.Close(fd)
		return nil, nil, os.NewSyscallError("listen", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, nil, os.NewSyscallError("getsockname", err)
	}
	var ap netip.AddrPort
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		ap = netip.AddrPortFrom(netip.AddrFrom4(got.Addr), uint16(got.Port))
	case *unix.SockaddrInet6:
		ap = netip.AddrPortFrom(netip.AddrFrom16(got.Addr), uint16(got.Port))
	}
	return os.NewFile(uintptr(fd), "program-side "+ap.String()), net.TCPAddrFromAddrPort(ap), nil
}

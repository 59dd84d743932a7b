//go:build linux

package preload

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Incoming flows. When the profile has a piece that acts on incoming
// streams (funnel.StreamAcceptor: a TLS server, a rewrite), the library
// gives us the program's socket at listen(); we listen on it — the very
// socket, so its address and options are the program's — and the program
// gets a hidden loopback listener in its place. Each connection travels up
// through the pieces (ServeInbound) and reaches the hidden listener from a
// socket of ours whose address we remember, so that the program's accept()
// can ask who the client really was.
type inboundTable struct {
	mu        sync.Mutex
	pending   map[netip.AddrPort]acceptedInfo    // by our socket's address toward the hidden listener
	listeners map[netip.AddrPort]*publicListener // by hidden address
}

type acceptedInfo struct {
	client, public []byte // raw sockaddrs in the program's socket family
}

type publicListener struct {
	ln      net.Listener
	through net.Listener // the profile's own listener for the program, if any
	public  netip.AddrPort
	hidden  netip.AddrPort
	family  int
	peer    *peer
	once    sync.Once
}

func (pl *publicListener) close() {
	pl.once.Do(func() {
		pl.ln.Close()
		if pl.through != nil {
			pl.through.Close()
		}
	})
}

// takesListen: does the profile do anything with a program's listening
// socket — a piece that acts on incoming streams, or a piece that listens
// for the program elsewhere (a tunnel's address)? Only then does the
// supervisor stop listen().
func takesListen(pl *funnel.Pipeline) bool { return hasAcceptor(pl) || pl.Listens() }

// hasAcceptor: does any piece act on incoming streams?
func hasAcceptor(pl *funnel.Pipeline) bool {
	for _, p := range pl.Pieces() {
		if _, ok := p.(funnel.StreamAcceptor); ok {
			return true
		}
	}
	return false
}

// listen answers LISTEN.
func (s *Server) listen(ctx context.Context, p *peer, req request, fd int, resp *response) {
	taken := false
	defer func() {
		if !taken {
			unix.Close(fd)
		}
	}()
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil {
		resp.setErr(int32(unix.EACCES))
		return
	}
	family, sotype, _, err := sockInfo(fd)
	acceptor, through := hasAcceptor(pl), pl.Listens()
	// Under the guard the program listens in its own namespace, where
	// the funnel cannot reach its hidden listener: it listens natively.
	if err != nil || sotype != unix.SOCK_STREAM || (family != unix.AF_INET && family != unix.AF_INET6) || (!acceptor && !through) || s.guard != nil {
		resp.setFlags(listenNative)
		return
	}
	hidden, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	backlog := int(req.Arg)
	if backlog <= 0 || backlog > 4096 {
		backlog = 4096
	}
	if err := unix.Listen(fd, backlog); err != nil {
		resp.setErr(int32(errnoOf(err)))
		return
	}
	sa, err := unix.Getsockname(fd)
	public, ok := addrPortOf(sa)
	if err != nil || !ok {
		resp.setErr(int32(unix.EIO))
		return
	}
	var profileLn net.Listener
	if through {
		profileLn = s.listenThroughProfile(ctx, p, pl, netx.Unmap(public))
		if profileLn == nil && !acceptor {
			// Listening already, which the library's own listen() does
			// again: harmless.
			resp.setFlags(listenNative)
			return
		}
	}
	file := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(file)
	file.Close() // FileListener has its own descriptor
	taken = true
	if err != nil {
		if profileLn != nil {
			profileLn.Close()
		}
		resp.setErr(int32(errnoOf(err)))
		return
	}
	publ := &publicListener{ln: ln, through: profileLn, public: netx.Unmap(public), hidden: netx.Unmap(hidden), family: family, peer: p}
	s.inbound.mu.Lock()
	if old := s.inbound.listeners[publ.hidden]; old != nil {
		old.close()
	}
	s.inbound.listeners[publ.hidden] = publ
	s.inbound.mu.Unlock()
	s.Log.Debug("preload: listening for the program", "pid", p.pid, "addr", public.String(), "hidden", publ.hidden.String())
	go s.acceptLoop(ctx, publ)
	if profileLn != nil {
		go s.acceptThrough(ctx, publ)
	}
	resp.setFlags(listenTaken)
	resp.setAddr2(rawSockaddr(public, family))
}

// acceptLoop takes the program's connections until ctx ends or the
// listener is given up (unlisten closes it).
func (s *Server) acceptLoop(ctx context.Context, publ *publicListener) {
	defer publ.close()
	err := netx.AcceptLoop(ctx, publ.ln, func(c net.Conn) { go s.serveIncoming(ctx, publ, c) }, s.Log)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.Log.Warn("preload: no longer accepting for the program", "pid", publ.peer.pid, "addr", publ.public.String(), "err", err)
	}
}

func (s *Server) serveIncoming(ctx context.Context, publ *publicListener, c net.Conn) {
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil {
		c.Close()
		return
	}
	client := netx.AddrPortOf(c.RemoteAddr())
	public := netx.AddrPortOf(c.LocalAddr())
	f := s.newFlow(publ.peer, funnel.TCP, funnel.Addr{IP: public.Addr(), Port: public.Port()})
	f.Source = c.RemoteAddr()
	info := acceptedFor(publ, client, public)
	var ours netip.AddrPort
	defer func() {
		if ours.IsValid() {
			s.inbound.mu.Lock()
			delete(s.inbound.pending, ours)
			s.inbound.mu.Unlock()
		}
	}()
	s.Engine.ServeInbound(ctx, f, pl, c, func(ctx context.Context) (net.Conn, error) {
		conn, err := dialHidden(publ.hidden, func(local netip.AddrPort) {
			ours = local
			s.inbound.mu.Lock()
			s.inbound.pending[local] = info
			s.inbound.mu.Unlock()
		})
		if errors.Is(err, unix.ECONNREFUSED) {
			// The program's listener is gone (it exited or closed it
			// behind our back): stop taking connections for it.
			s.unlistenIfGone(publ.hidden)
		}
		return conn, err
	})
}

// dialHidden connects to the program's hidden listener from a socket
// whose address is known — and registered — before the connection exists,
// so that the program's accept() always finds it.
func dialHidden(hidden netip.AddrPort, register func(netip.AddrPort)) (net.Conn, error) {
	family := unix.AF_INET6
	local := netip.AddrPortFrom(netip.IPv6Loopback(), 0)
	if hidden.Addr().Is4() {
		family = unix.AF_INET
		local = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, unixSockaddr(local, family)); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	ap, ok := addrPortOf(sa)
	if err != nil || !ok {
		unix.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	register(netx.Unmap(ap))
	if err := unix.Connect(fd, unixSockaddr(hidden, family)); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	file := os.NewFile(uintptr(fd), "hidden")
	conn, err := net.FileConn(file)
	file.Close()
	return conn, err
}

// accepted answers ACCEPTED: who is really behind a connection the
// program accepted on its hidden listener.
func (s *Server) accepted(req request, resp *response) {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	ap = netx.Unmap(ap)
	s.inbound.mu.Lock()
	info, found := s.inbound.pending[ap]
	if found {
		delete(s.inbound.pending, ap)
	}
	s.inbound.mu.Unlock()
	if !found {
		resp.setErr(int32(unix.ENOENT))
		return
	}
	resp.setAddr(info.client)
	resp.setAddr2(info.public)
}

// unlisten answers UNLISTEN: for a hidden address the program closed, or
// (arg 1) for an address it could not bind because we still hold it.
func (s *Server) unlisten(req request, resp *response) {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	ap = netx.Unmap(ap)
	var hidden []netip.AddrPort
	if req.Arg == 1 {
		s.inbound.mu.Lock()
		for h, publ := range s.inbound.listeners {
			if publ.public.Port() == ap.Port() {
				hidden = append(hidden, h)
			}
		}
		s.inbound.mu.Unlock()
	} else {
		hidden = append(hidden, ap)
	}
	released := false
	for _, h := range hidden {
		if s.unlistenIfGone(h) {
			released = true
		}
	}
	if !released {
		resp.setErr(int32(unix.ENOENT))
	}
}

// unlistenIfGone stops the public listener for a hidden address once
// nobody listens there any more. A dup of the hidden listener, or a forked
// child's copy, may still: a probe bind tells (the hidden listener allows
// address reuse, so only a listening socket makes it fail).
func (s *Server) unlistenIfGone(hidden netip.AddrPort) bool {
	s.inbound.mu.Lock()
	publ := s.inbound.listeners[hidden]
	s.inbound.mu.Unlock()
	if publ == nil || hiddenStillListening(hidden) {
		return false
	}
	s.inbound.mu.Lock()
	if s.inbound.listeners[hidden] == publ {
		delete(s.inbound.listeners, hidden)
	}
	s.inbound.mu.Unlock()
	publ.close()
	return true
}

func hiddenStillListening(hidden netip.AddrPort) bool {
	family := unix.AF_INET6
	if hidden.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	return unix.Bind(fd, unixSockaddr(hidden, family)) == unix.EADDRINUSE
}

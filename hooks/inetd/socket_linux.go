//go:build linux

package inetd

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
)

// socket is a service's listening (stream) or bound (dgram) socket: funtun
// waits on it in the Go poller and hands its descriptor to wait programs.
type socket struct {
	rc       syscall.RawConn
	fd       int
	local    netip.AddrPort
	deadline func(time.Time) error
	closer   func() error       // closes funtun's own descriptor (a passed socket's stays open)
	passed   *sdactivate.Socket // the service manager's, when it is one
}

func (s *socket) setDeadline(t time.Time) { s.deadline(t) }

func (s *socket) close() {
	if s.closer != nil {
		s.closer()
	}
}

func (s *socket) origin() string {
	if s.passed != nil {
		return "passed " + s.passed.String()
	}
	return "bound"
}

// drop takes away what made the socket readable (a datagram, a pending
// connection) when no program may have it.
func (s *socket) drop(stream bool) {
	if stream {
		// The listener blocks (for the programs); no program has it
		// now, so it may not block for this one accept, in case the
		// connection went away since the poll.
		unix.SetNonblock(s.fd, true)
		if nfd, _, err := unix.Accept4(s.fd, unix.SOCK_CLOEXEC); err == nil {
			unix.Close(nfd)
		}
		unix.SetNonblock(s.fd, false)
		return
	}
	var b [1]byte
	unix.Recvfrom(s.fd, b[:], unix.MSG_DONTWAIT)
}

// openSocket is the one place a line's socket comes from: a socket the
// service manager passed for it (named as the line's service, or failing
// that with the line's port), else one funtun binds.
func (srv *Server) openSocket(l *Line) (*socket, error) {
	if p := srv.passedFor(l); p != nil {
		if tl, ok := p.Listener.(*net.TCPListener); ok {
			return ownSocket(tl, tl.Addr(), p)
		}
		uc := p.Packet.(*net.UDPConn)
		return ownSocket(uc, uc.LocalAddr(), p)
	}
	lc := net.ListenConfig{}
	addr := l.Addr.String()
	if l.Stream {
		ln, err := lc.Listen(srv.ctx, l.Network, addr)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %s %s: %v", l.Network, addr, netx.OpCause(err))
		}
		defer ln.Close()
		return ownSocket(ln.(*net.TCPListener), ln.Addr(), nil)
	}
	pc, err := lc.ListenPacket(srv.ctx, l.Network, addr)
	if err != nil {
		return nil, fmt.Errorf("cannot bind %s %s: %v", l.Network, addr, netx.OpCause(err))
	}
	defer pc.Close()
	return ownSocket(pc.(*net.UDPConn), pc.LocalAddr(), nil)
}

// ownSocket takes a descriptor of its own for sc's socket, in the Go
// poller as an *os.File: a listener's RawConn cannot wait (its Read is
// refused), a file's can, and funtun calls accept4(2) itself. The caller
// may close sc; a passed socket's stays open for a later line.
func ownSocket(sc syscall.Conn, local net.Addr, p *sdactivate.Socket) (*socket, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	// Non-blocking before NewFile, which then puts it in the poller.
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	f := os.NewFile(uintptr(nfd), "inetd socket")
	frc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &socket{rc: frc, fd: nfd, local: netx.AddrPortOf(local), deadline: f.SetReadDeadline, closer: f.Close, passed: p}, nil
}

// passedFor finds a free passed socket of the line's kind whose name is the
// line's service (the .socket unit's FileDescriptorName=), or else whose
// port is the line's. Callers hold srv.mu.
func (srv *Server) passedFor(l *Line) *sdactivate.Socket {
	inUse := map[*sdactivate.Socket]bool{}
	for _, svc := range srv.services {
		if svc.sock.passed != nil {
			inUse[svc.sock.passed] = true
		}
	}
	fits := func(s *sdactivate.Socket) bool {
		if inUse[s] {
			return false
		}
		if l.Stream {
			_, ok := s.Listener.(*net.TCPListener)
			return ok
		}
		_, ok := s.Packet.(*net.UDPConn)
		return ok
	}
	for _, s := range srv.Passed {
		if fits(s) && (s.Name == l.Name || s.Name == l.Service) {
			return s
		}
	}
	for _, s := range srv.Passed {
		if fits(s) && netx.AddrPortOf(s.Addr()).Port() == l.Addr.Port() {
			return s
		}
	}
	return nil
}

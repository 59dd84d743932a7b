package socks5d

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/funtun/funtun/funnel"
	"golang.org/x/sys/unix"
)

// Event loops, one per P, serve the most common request with no goroutine
// per client: no authentication, CONNECT to a literal address,
// and a profile that is plain `direct`. Such a flow is two sockets and a
// splice between them, so the loop does on its own what the general path
// spreads over three goroutines, the Go poller and the net package's
// per-connection bookkeeping: on a short connection that machinery costs
// as much CPU as the kernel's TCP work itself (bench/socks5d.md).
//
// Everything else — authentication, names, BIND, UDP ASSOCIATE, --map,
// --allow refusals, malformed input, any other profile — is handed to the
// general path as a net.Conn together with the bytes read so far, so the
// protocol's corner cases live in one place (server.go).

// loopConn is one client served by the loop.
type loopConn struct {
	id       int32 // generation: tells a stale event from one for a reused descriptor
	cfd, ufd int   // client and upstream sockets; ufd is -1 until the dial
	state    loopState
	hs       *handshakeBuf // bytes of the handshake so far; nil once relaying
	deadline time.Time     // of the handshake or the dial
	remote   netip.AddrPort
	local    netip.AddrPort // where the client reached us
	dest     netip.AddrPort

	flow    *funnel.Flow
	release func()
	// dirs[up] moves client bytes to upstream, dirs[down] the reverse.
	dirs [2]loopDir
	// masks and registered hold what epoll has for cfd and ufd.
	masks      [2]uint32
	registered [2]bool
	unpaced    bool // the upstream socket left a pacing congestion control
	// Idle accounting: the byte total at the last sweep and since when it
	// has not moved.
	idleMark  int64
	idleSince time.Time
}

type loopState uint8

const (
	stateGreeting loopState = iota
	stateRequest
	stateDialing
	stateRelaying
)

const (
	up   = 0
	down = 1
)

// loopDir is one direction of a relay.
type loopDir struct {
	pipe    funnel.Pipe
	pending int  // bytes in pipe not yet written
	eof     bool // the source ended and the destination was shut for writing
}

type handshakeBuf struct {
	n   int
	buf [maxGreeting + maxRequest]byte
}

var handshakeBufs = sync.Pool{New: func() any { return new(handshakeBuf) }}

const bulkSplice = 32 << 10 // one splice this large makes a flow bulk

// fdRef says which connection and which of its sockets a descriptor is.
type fdRef struct {
	c       *loopConn
	upside  bool
	present bool
}

type eventLoop struct {
	s      *Server
	ctx    context.Context
	wg     *sync.WaitGroup
	ep     int
	lfd    int
	wake   int // eventfd: written to stop the loop
	local  netip.AddrPort
	refs   []fdRef
	conns  map[*loopConn]struct{}
	nextID int32
	// acceptPaused: out of descriptors, accepting stops until this time.
	acceptPaused time.Time
	lastSweep    time.Time
}

// loopEligible reports whether a listener can be served by the event loop.
func loopEligible(l net.Listener) bool {
	_, ok := l.(*net.TCPListener)
	return ok
}

// runLoop takes l over and serves it until ctx ends, with one event loop
// per CPU the Go runtime uses. The listening socket moves to a descriptor
// of our own (the Go poller lets go of l), which every loop watches with
// EPOLLEXCLUSIVE; whichever accepts a client serves it to the end.
func (s *Server) runLoop(ctx context.Context, l net.Listener, wg *sync.WaitGroup) error {
	tl := l.(*net.TCPListener)
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	lfd := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		lfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if dupErr != nil {
		return fmt.Errorf("taking over %s: %w", l.Addr(), dupErr)
	}
	defer unix.Close(lfd)
	local := addrPortOf(l.Addr())
	tl.Close()
	unix.SetNonblock(lfd, true)
	// Accepted sockets inherit these from the listener, so no client
	// costs a system call for them: no Nagle delay on replies and relayed
	// bytes; the congestion control (funnel.UnpaceFD); and no wake-up
	// until the client's greeting is there (SOCKS5 clients speak first),
	// which spares one trip through the loop per client.
	sysSetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	funnel.UnpaceFD(lfd, local.Addr())
	sysSetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, max(1, int(s.HandshakeTimeout/time.Second)))
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return os.NewSyscallError("eventfd", err)
	}
	// wakeAll is never read: it stays readable for every loop. The lock
	// keeps a late call from writing to the descriptor after its close.
	var wakeMu sync.Mutex
	wakeAll := func() {
		wakeMu.Lock()
		defer wakeMu.Unlock()
		if wake >= 0 {
			unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	}
	defer func() {
		wakeMu.Lock()
		defer wakeMu.Unlock()
		unix.Close(wake)
		wake = -1
	}()
	stop := context.AfterFunc(ctx, wakeAll)
	defer stop()

	n := max(1, runtime.GOMAXPROCS(0))
	errc := make(chan error, n)
	for range n {
		ev := &eventLoop{s: s, ctx: ctx, wg: wg, lfd: lfd, wake: wake, local: local, conns: map[*loopConn]struct{}{}, ep: -1}
		go func() { errc <- ev.start() }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
			// One loop failing stops the others.
			wakeAll()
		}
	}
	return first
}

func (ev *eventLoop) start() error {
	defer ev.close()
	var err error
	if ev.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, ev.lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ev.lfd), Pad: -1}); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, ev.wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev.wake), Pad: -2}); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return ev.run()
}

func (ev *eventLoop) close() {
	for c := range ev.conns {
		ev.finish(c, nil)
	}
	if ev.ep >= 0 {
		unix.Close(ev.ep)
	}
}

// sweepEvery is how often deadlines and idle flows are checked: often
// enough for the shortest timeout configured.
func (ev *eventLoop) sweepEvery() time.Duration {
	d := time.Second
	for _, t := range []time.Duration{ev.s.HandshakeTimeout / 4, ev.s.IdleTimeout / 4, directTimeout / 10} {
		if t > 0 && t < d {
			d = t
		}
	}
	return max(d, 10*time.Millisecond)
}

// run waits for events in the Go poller, not in epoll_wait: the loop's
// epoll descriptor is itself pollable, and its goroutine parks until it is
// readable. A goroutine blocked in a system call would hold its thread and
// have the runtime's monitor take its P away and give it back on every
// wait, which on a busy server costs more than the wait itself.
func (ev *eventLoop) run() error {
	ep := ev.ep
	unix.SetNonblock(ep, true)
	// f owns ep from here on (never f.Fd(): that would make it blocking
	// and end the deadlines).
	f := os.NewFile(uintptr(ep), "socks5d-loop")
	defer func() {
		ev.ep = -1
		f.Close()
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	events := make([]unix.EpollEvent, 128)
	every := ev.sweepEvery()
	ev.lastSweep = time.Now()
	for {
		f.SetReadDeadline(ev.lastSweep.Add(every))
		var stop bool
		var werr error
		err := rc.Read(func(uintptr) bool {
			for {
				n, err := sysEpollWait(ep, events)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					werr = os.NewSyscallError("epoll_wait", err)
					return true
				}
				if n == 0 {
					return false // park until the epoll descriptor is readable
				}
				if stop = ev.dispatch(events[:n]); stop {
					return true
				}
				if time.Since(ev.lastSweep) >= every {
					return true
				}
			}
		})
		if stop {
			return nil
		}
		if werr != nil {
			return werr
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		now := time.Now()
		ev.lastSweep = now
		ev.sweep(now)
	}
}

// dispatch acts on events; it reports whether the loop is to stop.
func (ev *eventLoop) dispatch(events []unix.EpollEvent) bool {
	for i := range events {
		e := &events[i]
		switch e.Pad {
		case -1:
			ev.accept()
			continue
		case -2:
			return true
		}
		fd := int(e.Fd)
		if fd >= len(ev.refs) {
			continue
		}
		ref := ev.refs[fd]
		if !ref.present || ref.c.id != e.Pad {
			continue // the descriptor was closed earlier in this batch
		}
		ev.handle(ref.c, ref.upside, e.Events)
	}
	return false
}

// accept takes every waiting client.
func (ev *eventLoop) accept() {
	s := ev.s
	if !ev.acceptPaused.IsZero() {
		return
	}
	for {
		fd, remote, err := sysAccept4(ev.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN, unix.EINTR:
				return
			case unix.ECONNABORTED:
				continue
			}
			// Out of descriptors or memory, or worse. Level-triggered:
			// stop asking until the sweep, or the loop would spin on a
			// queue it cannot empty.
			s.Log.Warn("accept", "listen", ev.local.String(), "err", err)
			ev.acceptPaused = time.Now().Add(50 * time.Millisecond)
			ev.setListen(false)
			return
		}
		if s.active.Add(1) > int64(s.MaxConns) {
			s.active.Add(-1)
			sysClose(fd)
			s.noteRefused()
			continue
		}
		if !ev.loopServes(remote) {
			ev.handOff(fd, remote, nil, false)
			continue
		}
		ev.nextID++
		if ev.nextID < 0 {
			ev.nextID = 0
		}
		c := &loopConn{id: ev.nextID, cfd: fd, ufd: -1, remote: remote, local: ev.local,
			deadline: time.Now().Add(s.HandshakeTimeout), hs: handshakeBufs.Get().(*handshakeBuf)}
		c.hs.n = 0
		ev.conns[c] = struct{}{}
		ev.setRef(fd, c, false)
		if !remote.Addr().IsLoopback() {
			// What the net package gives accepted connections: a
			// client that vanishes behind a middlebox is noticed.
			setKeepalive(fd)
		}
		// Clients write their greeting right after connecting: it is
		// usually here already, and then needs no trip through epoll.
		if ev.readHandshake(c) && c.state <= stateRequest {
			ev.setMask(c, false, unix.EPOLLIN)
		}
	}
}

// setListen pauses or resumes accepting (EPOLLEXCLUSIVE entries cannot be
// modified, only removed and added again).
func (ev *eventLoop) setListen(on bool) {
	if !on {
		unix.EpollCtl(ev.ep, unix.EPOLL_CTL_DEL, ev.lfd, nil)
		return
	}
	unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, ev.lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ev.lfd), Pad: -1})
}

// loopServes: what the loop can serve without knowing the request. The
// rest goes to the general path from the first byte.
func (ev *eventLoop) loopServes(remote netip.AddrPort) bool {
	s := ev.s
	if s.users.Load() != nil || s.mapping.Load() != nil || !remote.IsValid() {
		return false
	}
	if len(s.Allow) > 0 && !s.allowed(net.TCPAddrFromAddrPort(remote)) {
		return false
	}
	pl, err := s.Engine.Resolve(s.Selector)
	return err == nil && pl.PlainDirect()
}

func (ev *eventLoop) setRef(fd int, c *loopConn, upside bool) {
	if fd >= len(ev.refs) {
		n := max(2*len(ev.refs), fd+1, 256)
		refs := make([]fdRef, n)
		copy(refs, ev.refs)
		ev.refs = refs
	}
	ev.refs[fd] = fdRef{c: c, upside: upside, present: true}
}

// setMask tells epoll what one socket of c waits for. A socket that waits
// for nothing leaves the epoll set: epoll reports hang-ups whatever the
// mask, and a socket whose data we are not taking (the other side is full)
// would report its hang-up again and again.
func (ev *eventLoop) setMask(c *loopConn, upside bool, mask uint32) {
	i, fd := 0, c.cfd
	if upside {
		i, fd = 1, c.ufd
	}
	if c.registered[i] && c.masks[i] == mask {
		return
	}
	switch {
	case mask == 0:
		if c.registered[i] {
			sysEpollCtl(ev.ep, unix.EPOLL_CTL_DEL, fd, nil)
			c.registered[i] = false
		}
	case c.registered[i]:
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: mask, Fd: int32(fd), Pad: c.id})
	default:
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: mask, Fd: int32(fd), Pad: c.id})
		c.registered[i] = true
	}
	c.masks[i] = mask
}

func (ev *eventLoop) handle(c *loopConn, upside bool, events uint32) {
	switch c.state {
	case stateGreeting, stateRequest:
		if events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			ev.readHandshake(c)
		}
	case stateDialing:
		if upside {
			ev.dialDone(c)
		} else if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			// The client went away while we dial for it.
			ev.finish(c, errors.New("client closed during the dial"))
		} else {
			// Bytes sent ahead of our reply: the general path keeps
			// those; here they wait in the socket.
			ev.setMask(c, false, 0)
		}
	case stateRelaying:
		ev.relay(c, upside, events)
	}
}

// readHandshake reads what the client sent and acts on every complete
// message in it. It reports whether c is still the loop's.
func (ev *eventLoop) readHandshake(c *loopConn) bool {
	hs := c.hs
	n, err := sysRead(c.cfd, hs.buf[hs.n:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return true
	case err != nil || n == 0:
		// Gone during the handshake (a port scan, a health check): the
		// general path logs nothing at info level for it either.
		ev.s.Log.Debug("client closed during the handshake", "src", c.remote.String())
		ev.finish(c, nil)
		return false
	}
	hs.n += n
	if c.state == stateGreeting {
		b := hs.buf[:hs.n]
		if b[0] != socksVersion {
			// An HTTP request, SOCKS4: the general path says what it
			// is and closes, without waiting for more.
			ev.handOffConn(c, b, false)
			return false
		}
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return true
		}
		if !offers(b[2:2+int(b[1])], methodNone) {
			// Not ours to judge: the general path answers it.
			ev.handOffConn(c, b, false)
			return false
		}
		if _, err := sysWrite(c.cfd, []byte{socksVersion, methodNone}); err != nil {
			ev.finish(c, nil)
			return false
		}
		m := 2 + int(b[1])
		hs.n = copy(hs.buf[:], b[m:])
		c.state = stateRequest
	}
	return ev.request(c)
}

// request acts on a complete request in the handshake buffer.
func (ev *eventLoop) request(c *loopConn) bool {
	b := c.hs.buf[:c.hs.n]
	if len(b) < 4 {
		return true
	}
	var ip netip.Addr
	var rest []byte
	switch {
	case b[0] != socksVersion || b[1] != cmdConnect || b[2] != 0:
		ev.handOffConn(c, b, true)
		return false
	case b[3] == atypIPv4 && len(b) >= 4+4+2:
		ip = netip.AddrFrom4([4]byte(b[4:8]))
		rest = b[8:]
	case b[3] == atypIPv6 && len(b) >= 4+16+2:
		ip = netip.AddrFrom16([16]byte(b[4:20])).Unmap()
		rest = b[20:]
	case b[3] == atypIPv4 || b[3] == atypIPv6:
		return true // not all of it yet
	default:
		// A name (resolved by the profile's pieces), or a malformed
		// request.
		ev.handOffConn(c, b, true)
		return false
	}
	if len(rest) > 2 || !ip.IsValid() || ip.IsUnspecified() {
		// Bytes beyond the request (optimistic data) travel with the
		// general path, which writes them upstream first.
		ev.handOffConn(c, b, true)
		return false
	}
	c.dest = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rest))
	ev.dial(c)
	return true
}

// handOffConn gives a client to the general path.
func (ev *eventLoop) handOffConn(c *loopConn, read []byte, greeted bool) {
	if c.registered[0] {
		// The general path's descriptor shares this socket: our epoll
		// would go on reporting it.
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_DEL, c.cfd, nil)
	}
	ev.refs[c.cfd] = fdRef{}
	delete(ev.conns, c)
	fd := c.cfd
	c.cfd = -1
	ev.handOff(fd, c.remote, read, greeted)
	handshakeBufs.Put(c.hs)
	c.hs = nil
}

// handOff serves fd, counted in s.active already, on a goroutine of the
// general path.
func (ev *eventLoop) handOff(fd int, remote netip.AddrPort, read []byte, greeted bool) {
	s := ev.s
	f := os.NewFile(uintptr(fd), "socks5d-client")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		s.active.Add(-1)
		s.Log.Error("handing a client to the general path", "src", remote.String(), "err", err)
		return
	}
	if tc, ok := nc.(*net.TCPConn); ok && remote.Addr().IsLoopback() {
		// As the loop's own clients: no probes on loopback.
		tc.SetKeepAlive(false)
	}
	if !s.track(nc, true) {
		s.active.Add(-1)
		nc.Close()
		return
	}
	prefill := append([]byte(nil), read...)
	ev.wg.Add(1)
	go func() {
		finish := func() {
			s.track(nc, false)
			s.active.Add(-1)
			ev.wg.Done()
		}
		if !s.serveConnFrom(ev.ctx, nc, net.TCPAddrFromAddrPort(remote), finish, prefill, greeted) {
			finish()
		}
	}()
}

// dial starts the connection to c.dest, as the direct piece would make it.
func (ev *eventLoop) dial(c *loopConn) {
	s := ev.s
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil || !pl.PlainDirect() {
		// Reloaded into something else since the accept.
		b := c.hs.buf[:c.hs.n]
		ev.handOffConn(c, b, true)
		return
	}
	f := s.Engine.NewFlow("socks5d", funnel.TCP, funnel.Addr{IP: c.dest.Addr(), Port: c.dest.Port()})
	f.Source = net.TCPAddrFromAddrPort(c.remote)
	f.Profile = pl.Name
	c.flow, c.release = f, pl.Hold()
	c.state = stateDialing
	c.deadline = time.Now().Add(directTimeout)

	family := unix.AF_INET6
	if c.dest.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := sysSocket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		ev.dialFailed(c, os.NewSyscallError("socket", err))
		return
	}
	c.ufd = fd
	ev.setRef(fd, c, true)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if !c.dest.Addr().IsLoopback() {
		// What the direct piece's default keepalive=15s sets.
		setKeepalive(fd)
	}
	err = sysConnect(fd, c.dest)
	if err == unix.EINPROGRESS || err == unix.EINTR {
		// On loopback the handshake is done by the time connect
		// returns, and asking again says so (or says it was refused):
		// no trip through epoll for the most common destination.
		switch err = sysConnect(fd, c.dest); err {
		case unix.EISCONN:
			err = nil
		case unix.EALREADY, unix.EINPROGRESS, unix.EINTR:
			ev.setMask(c, true, unix.EPOLLOUT)
			return
		}
	}
	if err != nil {
		ev.dialFailed(c, os.NewSyscallError("connect", err))
		return
	}
	ev.connected(c)
}

// setKeepalive sets what the net package sets by default: probes after
// 15s idle, every 15s, 9 of them.
func setKeepalive(fd int) {
	sysSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9)
}

// directTimeout is the direct piece's default connect timeout (a variable
// for the tests).
var directTimeout = 10 * time.Second

func (ev *eventLoop) dialDone(c *loopConn) {
	soerr, err := sysGetsockoptInt(c.ufd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		err = syscall.Errno(soerr)
	}
	if err != nil {
		ev.dialFailed(c, os.NewSyscallError("connect", err))
		return
	}
	ev.connected(c)
}

// dialFailed answers the client with the reply the error calls for.
func (ev *eventLoop) dialFailed(c *loopConn, err error) {
	err = fmt.Errorf("direct: %w", &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(c.dest), Err: err})
	reply := appendReply(make([]byte, 0, 22), funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
	sysWrite(c.cfd, reply)
	ev.finish(c, err)
}

func (ev *eventLoop) connected(c *loopConn) {
	bound := c.local
	if ap := sysGetsockname(c.ufd); ap.IsValid() {
		bound = ap
	}
	var b [4 + 16 + 2]byte
	if _, err := sysWrite(c.cfd, appendReply(b[:0], replySucceeded, bound)); err != nil {
		ev.finish(c, fmt.Errorf("sending the reply to the client: %w", err))
		return
	}
	handshakeBufs.Put(c.hs)
	c.hs = nil
	c.state = stateRelaying
	c.idleSince = time.Now()
	ev.setMask(c, false, unix.EPOLLIN)
	ev.setMask(c, true, unix.EPOLLIN)
}

// relay moves what the event on one socket allows. Level-triggered epoll
// calls again while bytes wait, so each call moves one pipe's worth and
// never reads to EAGAIN.
func (ev *eventLoop) relay(c *loopConn, upside bool, events uint32) {
	// The direction this socket is the source of, and the one it is
	// the destination of.
	from, to := up, down
	if upside {
		from, to = down, up
	}
	if events&unix.EPOLLERR != 0 {
		if soerr, _ := sysGetsockoptInt(ev.fdOf(c, upside), unix.SOL_SOCKET, unix.SO_ERROR); soerr != 0 {
			ev.finish(c, endErr(syscall.Errno(soerr)))
			return
		}
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 && c.dirs[to].pending > 0 {
		if !ev.flush(c, to) {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.dirs[from].eof && c.dirs[from].pending == 0 {
		if !ev.pump(c, from) {
			return
		}
	}
	if c.dirs[up].eof && c.dirs[down].eof && c.dirs[up].pending == 0 && c.dirs[down].pending == 0 {
		ev.finish(c, nil)
		return
	}
	ev.updateMasks(c)
}

func (ev *eventLoop) fdOf(c *loopConn, upside bool) int {
	if upside {
		return c.ufd
	}
	return c.cfd
}

// src and dst of direction d.
func (c *loopConn) ends(d int) (src, dst int) {
	if d == up {
		return c.cfd, c.ufd
	}
	return c.ufd, c.cfd
}

func (ev *eventLoop) updateMasks(c *loopConn) {
	var m [2]uint32 // by socket: 0 client, 1 upstream
	for d := range 2 {
		srcSide, dstSide := 0, 1
		if d == down {
			srcSide, dstSide = 1, 0
		}
		if !c.dirs[d].eof && c.dirs[d].pending == 0 {
			m[srcSide] |= unix.EPOLLIN
		}
		if c.dirs[d].pending > 0 {
			m[dstSide] |= unix.EPOLLOUT
		}
	}
	ev.setMask(c, false, m[0])
	ev.setMask(c, true, m[1])
}

// pump splices what the source of d has into a pipe and on. It reports
// whether c is still alive.
func (ev *eventLoop) pump(c *loopConn, d int) bool {
	src, dst := c.ends(d)
	p, err := funnel.GetPipe()
	if err != nil {
		ev.finish(c, err)
		return false
	}
	n, err := sysSplice(src, p.W, funnel.PipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		p.Put()
		return true
	case err != nil:
		p.Put()
		ev.finish(c, endErr(os.NewSyscallError("splice", err)))
		return false
	case n == 0:
		p.Put()
		c.dirs[d].eof = true
		if c.dirs[d^1].eof {
			return true // both ended: finish closes both
		}
		sysShutdown(dst, unix.SHUT_WR)
		return true
	}
	c.dirs[d].pipe, c.dirs[d].pending = p, int(n)
	if n >= bulkSplice && !c.unpaced {
		// A bulk flow: only now is pacing a cost worth a system call
		// (funnel.UnpaceFD); short flows never pay it.
		c.unpaced = true
		funnel.UnpaceFD(c.ufd, c.dest.Addr())
	}
	return ev.flush(c, d)
}

// flush writes what the pipe of d holds to its destination.
func (ev *eventLoop) flush(c *loopConn, d int) bool {
	_, dst := c.ends(d)
	dir := &c.dirs[d]
	for dir.pending > 0 {
		n, err := sysSplice(dir.pipe.R, dst, dir.pending, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return true // epoll says when it has room
		}
		if err != nil {
			ev.finish(c, endErr(os.NewSyscallError("splice", err)))
			return false
		}
		dir.pending -= int(n)
		ev.count(c, d, n)
	}
	dir.pipe.Put()
	dir.pipe = funnel.Pipe{}
	return true
}

func (ev *eventLoop) count(c *loopConn, d int, n int64) {
	if d == up {
		c.flow.Up.Add(n)
	} else {
		c.flow.Down.Add(n)
	}
}

// endErr is what a relay error means for the flow's log: a peer that
// reset or went away ended the flow, it did not fail it (as in
// funnel.Relay).
func endErr(err error) error {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return nil
	}
	return err
}

// finish ends c: closes its sockets, ends its flow.
func (ev *eventLoop) finish(c *loopConn, err error) {
	if _, ok := ev.conns[c]; !ok {
		return
	}
	delete(ev.conns, c)
	for _, fd := range []int{c.cfd, c.ufd} {
		if fd >= 0 {
			ev.refs[fd] = fdRef{}
			sysClose(fd)
		}
	}
	for d := range c.dirs {
		if c.dirs[d].pending > 0 {
			// Bytes that will never be written: the pipe goes too.
			c.dirs[d].pipe.Close()
		}
	}
	if c.hs != nil {
		handshakeBufs.Put(c.hs)
		c.hs = nil
	}
	ev.s.active.Add(-1)
	if c.flow != nil {
		ev.s.Engine.End(c.flow, err)
		c.release()
	}
}

// sweep ends handshakes and dials past their deadline and flows idle for
// longer than --idle, and resumes accepting after a pause.
func (ev *eventLoop) sweep(now time.Time) {
	s := ev.s
	if !ev.acceptPaused.IsZero() && now.After(ev.acceptPaused) {
		ev.acceptPaused = time.Time{}
		ev.setListen(true)
	}
	for c := range ev.conns {
		switch c.state {
		case stateGreeting, stateRequest:
			if now.After(c.deadline) {
				s.Log.Debug("handshake timed out", "src", c.remote.String())
				ev.finish(c, nil)
			}
		case stateDialing:
			if now.After(c.deadline) {
				ev.dialFailed(c, os.NewSyscallError("connect", syscall.ETIMEDOUT))
			}
		case stateRelaying:
			if s.IdleTimeout <= 0 {
				continue
			}
			total := c.flow.Up.Load() + c.flow.Down.Load()
			if total != c.idleMark {
				c.idleMark, c.idleSince = total, now
			} else if now.Sub(c.idleSince) >= s.IdleTimeout {
				c.flow.Log.Debug("idle timeout: closing the flow", "idle", s.IdleTimeout)
				ev.finish(c, nil)
			}
		}
	}
}

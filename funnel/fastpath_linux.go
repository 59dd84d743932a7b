package funnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/internal/netx"
)

// The event loops behind ServeListener and Run.Relay (see fastpath.go).
// Each loop is a goroutine parked in the Go poller on its own epoll
// descriptor, with a table of the descriptors it serves. Its system calls
// are raw and non-blocking (fastpath_sys_linux.go).

// loopConn is one flow served by a loop: a client being greeted, a dial in
// progress, or a relay.
//
// An idle flow is this record and little else, so it is kept small (144
// bytes): what only a client being greeted needs (its address, the bytes
// so far) lives in the pooled handshakeBuf.
type loopConn struct {
	cfd, ufd int // client (app side) and upstream sockets; ufd is -1 until the dial
	// slot is c's index in the loop's slots, which every epoll event of c
	// carries; -1 once c has left the loop.
	slot int32
	// masks and registered hold what epoll has for cfd and ufd.
	masks      [2]uint32
	registered [2]bool
	state      loopState
	phase      uint8         // the hook's handshake state
	unpaced    bool          // the upstream socket left a pacing congestion control
	upLoopback bool          // the upstream socket's peer is on this host
	hs         *handshakeBuf // the handshake so far; nil once relaying (or for a forwarder)
	// mark is the deadline of the handshake or the dial (0: none), and,
	// once relaying, since when the byte total has not moved, on
	// loopClock (one field: a flow is in one state at a time).
	mark int64
	lst  *loopListener   // nil for an adopted relay
	ctx  context.Context // an adopted relay's: its end ends the flow

	run  *Run
	idle time.Duration
	done func(error)
	// dirs[up] moves client bytes to upstream, dirs[down] the reverse.
	dirs [2]loopDir
	// idleMark is the byte total at the last sweep.
	idleMark int64
}

// loopEpoch starts loopClock.
var loopEpoch = time.Now()

// loopClock is the monotonic time in nanoseconds: what a loopConn keeps
// its mark in (8 bytes, where a time.Time takes 24).
func loopClock() int64 { return int64(time.Since(loopEpoch)) }

type loopState uint8

const (
	stateHandshake loopState = iota
	stateDialing
	stateRelaying
)

const (
	dirUp   = 0
	dirDown = 1
)

// loopDir is one direction of a relay.
type loopDir struct {
	pipe    splicePipe
	pending int32 // bytes in pipe not yet written
	eof     bool  // the source ended and the destination was shut for writing
}

type handshakeBuf struct {
	remote netip.AddrPort // the client's address
	n      int
	buf    [MaxHandshake]byte
}

var handshakeBufs = sync.Pool{New: func() any { return new(handshakeBuf) }}

const bulkSplice = 32 << 10 // one splice this large makes a flow bulk

// loopListener is a listening socket the loops accept on.
type loopListener struct {
	e     *Engine
	fl    *FastListener
	ctx   context.Context
	fd    int
	local netip.AddrPort
	wg    sync.WaitGroup // flows of this listener still on a loop
}

// Epoll data of the descriptors that are not flows'.
const (
	padListener = -1
	padWake     = -2
)

type eventLoop struct {
	ep   int
	wake int // eventfd: written when cmds has work or the loop is to stop
	lst  *loopListener
	// slots are the loop's flows, nil where none is; an epoll event
	// carries its flow's index here (and the descriptor, which tells the
	// flow's two sockets apart). A slice of the flows, not a table by
	// descriptor number (which spans every descriptor of the process) or
	// a map: the smallest index for an idle flow, and a sweep walks it.
	slots []*loopConn
	// free are slots to reuse; freed are slots let go of since the last
	// batch of events was read, which may still hold events for them: they
	// become free before the next one.
	free, freed []int32
	// reply is what a Handshake writes its replies with, to replyTo; it
	// and answer (for Handshake.Answer) are the loop's, made once: one
	// client is served at a time, and a client costs no allocation for
	// them.
	reply   func([]byte) error
	replyTo int
	answer  [32]byte
	// acceptPaused: out of descriptors, accepting stops until this time.
	acceptPaused time.Time
	lastSweep    time.Time
	every        time.Duration

	mu   sync.Mutex
	cmds []loopCmd
	stop bool
	// watched: the contexts of adopted relays, each watched once however
	// many flows share it (hooks pass their server's), so that a flow
	// costs no registration of its own.
	watched map[context.Context]struct{}
}

// loopCmd is work handed to a loop from another goroutine.
type loopCmd struct {
	adopt *loopConn       // a relay to take over
	ended context.Context // its flows end
}

// serveLoop serves l on loops of its own, one per P, until ctx ends. The
// listening socket moves to a descriptor of ours (the Go poller lets go of
// l), which every loop watches with EPOLLEXCLUSIVE; whichever accepts a
// client serves it to the end. served is false when l cannot be taken
// over (the caller then serves it the general way).
func (e *Engine) serveLoop(ctx context.Context, tl *net.TCPListener, fl *FastListener) (served bool, err error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return false, nil
	}
	lfd := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		lfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || dupErr != nil {
		return false, nil
	}
	lst := &loopListener{e: e, fl: fl, ctx: ctx, fd: lfd, local: netx.AddrPortOf(tl.Addr())}
	tl.Close()
	defer unix.Close(lfd)
	unix.SetNonblock(lfd, true)
	// Accepted sockets inherit these from the listener, so no client
	// costs a system call for them: no Nagle delay on replies and relayed
	// bytes; the congestion control (unpaceFD); and, for protocols whose
	// clients speak first, no wake-up until they have.
	sysSetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	unpaceFD(lfd, lst.local.Addr())
	if fl.ClientSpeaksFirst {
		sysSetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, max(1, int(fl.HandshakeTimeout/time.Second)))
	}
	n := max(1, runtime.GOMAXPROCS(0))
	loops := make([]*eventLoop, 0, n)
	for range n {
		ev, err := newEventLoop(lst, min(fl.HandshakeTimeout/4, idleSweep(fl.Idle)))
		if err != nil {
			for _, l := range loops {
				l.close()
			}
			return true, err
		}
		loops = append(loops, ev)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, ev := range loops {
			ev.post(loopCmd{}, true)
		}
	})
	defer stop()
	errc := make(chan error, n)
	for _, ev := range loops {
		go func() { errc <- ev.run() }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
			// One loop failing stops the others.
			for _, ev := range loops {
				ev.post(loopCmd{}, true)
			}
		}
	}
	lst.wg.Wait()
	return true, first
}

func idleSweep(idle time.Duration) time.Duration {
	if idle <= 0 {
		return time.Second
	}
	return idle / 4
}

func newEventLoop(lst *loopListener, every time.Duration) (*eventLoop, error) {
	ev := &eventLoop{lst: lst, ep: -1, wake: -1,
		every: max(min(every, time.Second), 10*time.Millisecond)}
	ev.reply = func(b []byte) error {
		_, err := sysWrite(ev.replyTo, b)
		return err
	}
	var err error
	if ev.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if ev.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(ev.ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, ev.wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev.wake), Pad: padWake}); err != nil {
		ev.close()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if lst != nil {
		if err := unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, lst.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(lst.fd), Pad: padListener}); err != nil {
			ev.close()
			return nil, os.NewSyscallError("epoll_ctl", err)
		}
	}
	return ev, nil
}

// post hands work to the loop from another goroutine; stop asks it to end.
func (ev *eventLoop) post(cmd loopCmd, stop bool) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.wake < 0 {
		return // the loop has ended; its flows with it
	}
	if stop {
		ev.stop = true
	} else {
		ev.cmds = append(ev.cmds, cmd)
	}
	unix.Write(ev.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

func (ev *eventLoop) close() {
	for _, c := range ev.slots {
		if c != nil {
			ev.finish(c, nil)
		}
	}
	ev.mu.Lock()
	if ev.wake >= 0 {
		unix.Close(ev.wake)
		ev.wake = -1
	}
	cmds := ev.cmds
	ev.cmds = nil
	ev.mu.Unlock()
	for _, cmd := range cmds {
		if c := cmd.adopt; c != nil {
			// Taken over after the loop ended: end it here.
			ev.add(c)
			ev.finish(c, nil)
		}
	}
	if ev.ep >= 0 {
		unix.Close(ev.ep)
		ev.ep = -1
	}
}

// run waits for events in the Go poller, not in epoll_wait: the loop's
// epoll descriptor is itself pollable, and its goroutine parks until it is
// readable. A goroutine blocked in a system call would hold its thread and
// have the runtime's monitor take its P away and give it back on every
// wait, which on a busy server costs more than the wait itself.
func (ev *eventLoop) run() error {
	ep := ev.ep
	unix.SetNonblock(ep, true)
	// f owns a duplicate of ep (never f.Fd(): that would make it blocking
	// and end the deadlines).
	dup, err := unix.FcntlInt(uintptr(ep), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		ev.close()
		return os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(dup), "funtun-loop")
	defer func() {
		ev.close()
		f.Close()
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	events := make([]unix.EpollEvent, 128)
	ev.lastSweep = time.Now()
	for {
		f.SetReadDeadline(ev.lastSweep.Add(ev.every))
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
				if time.Since(ev.lastSweep) >= ev.every {
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
	// Slots let go of before these events were read have none among
	// them.
	ev.free = append(ev.free, ev.freed...)
	ev.freed = ev.freed[:0]
	for i := range events {
		e := &events[i]
		switch e.Pad {
		case padListener:
			ev.accept()
			continue
		case padWake:
			if ev.commands() {
				return true
			}
			continue
		}
		fd := int(e.Fd)
		if uint(e.Pad) >= uint(len(ev.slots)) {
			continue
		}
		c := ev.slots[e.Pad]
		if c == nil || fd != c.cfd && fd != c.ufd {
			continue // the flow ended earlier in this batch
		}
		ev.handle(c, fd == c.ufd, e.Events)
	}
	return false
}

// commands takes the work other goroutines posted; it reports whether the
// loop is to stop.
func (ev *eventLoop) commands() bool {
	var b [8]byte
	sysRead(ev.wake, b[:])
	ev.mu.Lock()
	cmds, stop := ev.cmds, ev.stop
	ev.cmds = nil
	ev.mu.Unlock()
	for _, cmd := range cmds {
		switch {
		case cmd.adopt != nil:
			ev.adopt(cmd.adopt)
		case cmd.ended != nil:
			delete(ev.watched, cmd.ended)
			for _, c := range ev.slots {
				if c != nil && c.ctx == cmd.ended {
					ev.finish(c, nil)
				}
			}
		}
	}
	return stop
}

// accept takes every waiting client.
func (ev *eventLoop) accept() {
	lst := ev.lst
	fl := lst.fl
	if !ev.acceptPaused.IsZero() {
		return
	}
	for {
		fd, remote, err := sysAccept4(lst.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
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
			fl.Log.Warn("accept", "listen", lst.local.String(), "err", err)
			ev.acceptPaused = time.Now().Add(50 * time.Millisecond)
			ev.setListen(false)
			return
		}
		switch fl.Admit(remote) {
		case AdmitRefuse:
			sysClose(fd)
			continue
		case AdmitGeneral:
			ev.handOver(fd, remote, nil, 0)
			continue
		}
		pl := lst.fastPipeline()
		if !remote.IsValid() || pl == nil {
			ev.handOver(fd, remote, nil, 0)
			continue
		}
		dest := fl.Dest
		if fl.DestOf != nil && fl.Handshake == nil {
			d, err := fl.DestOf(fd, sysGetsockname(fd), remote)
			if err != nil {
				sysClose(fd)
				fl.Finished()
				continue
			}
			dest = d
		}
		c := ev.newConn(fd)
		c.lst = lst
		lst.wg.Add(1)
		c.mark = loopClock() + int64(fl.HandshakeTimeout)
		if !remote.Addr().IsLoopback() {
			// What the net package gives accepted connections: a
			// client that vanishes behind a middlebox is noticed.
			setKeepalive(fd, 15)
		}
		if fl.Handshake == nil {
			ev.dial(c, remote, dest, pl)
			continue
		}
		c.hs = handshakeBufs.Get().(*handshakeBuf)
		c.hs.n = 0
		c.hs.remote = remote
		// With TCP_DEFER_ACCEPT the client's first bytes are here
		// already, and then need no trip through epoll.
		if ev.readHandshake(c) && c.state == stateHandshake {
			ev.setMask(c, false, unix.EPOLLIN)
		}
	}
}

func (ev *eventLoop) newConn(cfd int) *loopConn {
	c := &loopConn{cfd: cfd, ufd: -1}
	ev.add(c)
	return c
}

// add gives c a slot.
func (ev *eventLoop) add(c *loopConn) {
	if n := len(ev.free); n > 0 {
		c.slot = ev.free[n-1]
		ev.free = ev.free[:n-1]
		ev.slots[c.slot] = c
		return
	}
	c.slot = int32(len(ev.slots))
	ev.slots = append(ev.slots, c)
}

// remove takes c's slot back; it reports whether c had one.
func (ev *eventLoop) remove(c *loopConn) bool {
	if c.slot < 0 || int(c.slot) >= len(ev.slots) || ev.slots[c.slot] != c {
		return false
	}
	ev.slots[c.slot] = nil
	ev.freed = append(ev.freed, c.slot)
	c.slot = -1
	return true
}

// fastPipeline is the listener's pipeline if the loop dials its flows
// itself, else nil.
func (lst *loopListener) fastPipeline() *Pipeline {
	pl, err := lst.fl.Resolve()
	if err != nil {
		return nil
	}
	if _, ok := pl.KernelDial(); !ok {
		return nil
	}
	return pl
}

// setListen pauses or resumes accepting (EPOLLEXCLUSIVE entries cannot be
// modified, only removed and added again).
func (ev *eventLoop) setListen(on bool) {
	if !on {
		unix.EpollCtl(ev.ep, unix.EPOLL_CTL_DEL, ev.lst.fd, nil)
		return
	}
	unix.EpollCtl(ev.ep, unix.EPOLL_CTL_ADD, ev.lst.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ev.lst.fd), Pad: padListener})
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
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: mask, Fd: int32(fd), Pad: c.slot})
	default:
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: mask, Fd: int32(fd), Pad: c.slot})
		c.registered[i] = true
	}
	c.masks[i] = mask
}

func (ev *eventLoop) handle(c *loopConn, upside bool, events uint32) {
	switch c.state {
	case stateHandshake:
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
			// Bytes sent ahead of our answer wait in the socket.
			ev.setMask(c, false, 0)
		}
	case stateRelaying:
		ev.relay(c, upside, events)
	}
}

// readHandshake reads what the client sent and lets the hook's handshake
// act on it. It reports whether c is still the loop's.
func (ev *eventLoop) readHandshake(c *loopConn) bool {
	hs := c.hs
	fl := c.lst.fl
	n, err := sysRead(c.cfd, hs.buf[hs.n:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return true
	case err != nil || n == 0:
		// Gone during the handshake (a port scan, a health check): the
		// general path logs nothing at info level for it either.
		fl.Log.Debug("client closed during the handshake", "hook", fl.Hook, "src", hs.remote.String())
		ev.finish(c, nil)
		return false
	}
	hs.n += n
	ev.replyTo = c.cfd
	for {
		step := fl.Handshake.Input(&c.phase, hs.buf[:hs.n], ev.reply)
		if step.Kind == StepDial && step.Consumed < hs.n {
			// Bytes beyond the request (optimistic data) travel with
			// the general path, request and all, which writes them
			// upstream after its answer.
			ev.handOverConn(c, hs.remote)
			return false
		}
		if step.Consumed > 0 {
			hs.n = copy(hs.buf[:], hs.buf[step.Consumed:hs.n])
		}
		switch step.Kind {
		case StepMore:
			if hs.n == len(hs.buf) {
				ev.handOverConn(c, hs.remote)
				return false
			}
			if step.Consumed > 0 && hs.n > 0 {
				continue // the rest may be the next message
			}
			return true
		case StepDial:
			// Resolved again: a reload may have come since the
			// accept.
			ev.dial(c, hs.remote, step.Dest, c.lst.fastPipeline())
			return true
		case StepGeneral:
			ev.handOverConn(c, hs.remote)
			return false
		default:
			ev.finish(c, nil)
			return false
		}
	}
}

// handOverConn gives a client (at remote) to the general path, with what
// it sent.
func (ev *eventLoop) handOverConn(c *loopConn, remote netip.AddrPort) {
	if c.registered[0] {
		// The general path's descriptor shares this socket: our epoll
		// would go on reporting it.
		sysEpollCtl(ev.ep, unix.EPOLL_CTL_DEL, c.cfd, nil)
	}
	ev.remove(c)
	fd := c.cfd
	c.cfd = -1
	var read []byte
	if c.hs != nil {
		read = append(read, c.hs.buf[:c.hs.n]...)
		handshakeBufs.Put(c.hs)
		c.hs = nil
	}
	c.lst.wg.Done()
	ev.handOver(fd, remote, read, c.phase)
}

// handOver serves fd on a goroutine of the general path.
func (ev *eventLoop) handOver(fd int, remote netip.AddrPort, read []byte, phase uint8) {
	fl := ev.lst.fl
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fl.Log.Error("handing a client to the general path", "hook", fl.Hook, "src", remote.String(), "err", err)
		fl.Finished()
		return
	}
	if tc, ok := nc.(*net.TCPConn); ok && remote.Addr().IsLoopback() {
		// As the loop's own clients: no probes on loopback.
		tc.SetKeepAlive(false)
	}
	go fl.General(ev.lst.ctx, Handover{Conn: nc, Remote: remote, Read: read, Phase: phase})
}

// dial starts the connection to dest for the client at remote, as pl's
// KernelDialer piece would make it; pl nil (no longer a profile the loop
// dials) hands c over.
func (ev *eventLoop) dial(c *loopConn, remote, dest netip.AddrPort, pl *Pipeline) {
	lst := c.lst
	var pol DialPolicy
	ok := false
	if pl != nil {
		pol, ok = pl.KernelDial()
	}
	if !ok || !dest.IsValid() || dest.Addr().IsUnspecified() || pol.Source.IsValid() && pol.Source.Is4() != dest.Addr().Is4() {
		// Reloaded into something else since the accept, or a dial the
		// piece itself must make (and report).
		ev.handOverConn(c, remote)
		return
	}
	f := lst.e.NewFlow(lst.fl.Hook, TCP, Addr{IP: dest.Addr(), Port: dest.Port()})
	f.Source = net.TCPAddrFromAddrPort(remote)
	c.run = lst.e.Begin(f, pl)
	c.idle = lst.fl.Idle
	c.state = stateDialing
	c.mark = 0
	c.upLoopback = dest.Addr().IsLoopback()
	if pol.Timeout > 0 {
		c.mark = loopClock() + int64(pol.Timeout)
	}

	family := unix.AF_INET6
	if dest.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := sysSocket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		ev.dialFailed(c, os.NewSyscallError("socket", err))
		return
	}
	c.ufd = fd
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if pol.KeepAlive > 0 && (pol.KeepAliveLoopback || !c.upLoopback) {
		setKeepalive(fd, max(1, int(pol.KeepAlive/time.Second)))
	}
	if pol.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, pol.Mark); err != nil {
			ev.dialFailed(c, os.NewSyscallError("setsockopt SO_MARK", err))
			return
		}
	}
	if pol.Congestion != "" {
		if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, pol.Congestion); err != nil {
			ev.dialFailed(c, os.NewSyscallError("setsockopt TCP_CONGESTION "+pol.Congestion, err))
			return
		}
	}
	if pol.Source.IsValid() {
		if err := sysBind(fd, netip.AddrPortFrom(pol.Source, 0)); err != nil {
			ev.dialFailed(c, os.NewSyscallError("bind", err))
			return
		}
	}
	err = sysConnect(fd, dest)
	if err == unix.EINPROGRESS || err == unix.EINTR {
		// On loopback the handshake is done by the time connect
		// returns, and asking again says so (or says it was refused):
		// no trip through epoll for the most common destination.
		switch err = sysConnect(fd, dest); err {
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

// setKeepalive sets probes after secs idle, every secs, 9 of them (what
// the net package does).
func setKeepalive(fd, secs int) {
	sysSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9)
}

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

// dialFailed answers the client as the hook says, and ends the flow.
func (ev *eventLoop) dialFailed(c *loopConn, err error) {
	prefix := ""
	if c.run != nil {
		if pol, ok := c.run.Pipeline.KernelDial(); ok {
			prefix = pol.ErrPrefix
		}
	}
	err = dialErr(prefix, c.run.Flow.Dest.AddrPort(), err)
	if hs := c.lst.fl.Handshake; hs != nil {
		sysWrite(c.cfd, hs.Answer(ev.answer[:0], netip.AddrPort{}, err))
	}
	ev.finish(c, err)
}

func (ev *eventLoop) connected(c *loopConn) {
	if hs := c.lst.fl.Handshake; hs != nil {
		bound := c.lst.local
		if ap := sysGetsockname(c.ufd); ap.IsValid() {
			bound = ap
		}
		if _, err := sysWrite(c.cfd, hs.Answer(ev.answer[:0], bound, nil)); err != nil {
			ev.finish(c, fmt.Errorf("sending the answer to the client: %w", err))
			return
		}
	}
	if c.hs != nil {
		handshakeBufs.Put(c.hs)
		c.hs = nil
	}
	ev.startRelay(c)
}

func (ev *eventLoop) startRelay(c *loopConn) {
	c.state = stateRelaying
	c.mark = loopClock()
	ev.setMask(c, false, unix.EPOLLIN)
	ev.setMask(c, true, unix.EPOLLIN)
}

// relay moves what the event on one socket allows. Level-triggered epoll
// calls again while bytes wait, so each call moves one pipe's worth and
// never reads to EAGAIN.
func (ev *eventLoop) relay(c *loopConn, upside bool, events uint32) {
	// The direction this socket is the source of, and the one it is
	// the destination of.
	from, to := dirUp, dirDown
	if upside {
		from, to = dirDown, dirUp
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
	if c.dirs[dirUp].eof && c.dirs[dirDown].eof && c.dirs[dirUp].pending == 0 && c.dirs[dirDown].pending == 0 {
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
	if d == dirUp {
		return c.cfd, c.ufd
	}
	return c.ufd, c.cfd
}

func (ev *eventLoop) updateMasks(c *loopConn) {
	var m [2]uint32 // by socket: 0 client, 1 upstream
	for d := range 2 {
		srcSide, dstSide := 0, 1
		if d == dirDown {
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
	src, _ := c.ends(d)
	p, err := getPipe()
	if err != nil {
		ev.finish(c, err)
		return false
	}
	n, err := sysSplice(src, int(p.W), pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
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
		ev.ended(c, d)
		return true
	}
	c.dirs[d].pipe, c.dirs[d].pending = p, int32(n)
	if n >= bulkSplice && !c.unpaced {
		// A bulk flow: only now is pacing a cost worth a system call
		// (unpaceFD); short flows never pay it.
		c.unpaced = true
		if c.upLoopback {
			unpaceFD(c.ufd, netip.IPv6Loopback())
		}
	}
	return ev.flush(c, d)
}

// ended notes that the source of d has sent everything, and passes that on.
func (ev *eventLoop) ended(c *loopConn, d int) {
	c.dirs[d].eof = true
	if c.dirs[d^1].eof {
		return // both ended: finish closes both
	}
	_, dst := c.ends(d)
	sysShutdown(dst, unix.SHUT_WR)
}

// count adds n bytes moved in direction d to the flow's counters.
func (c *loopConn) count(d, n int) {
	if d == dirUp {
		c.run.Flow.Up.Add(int64(n))
	} else {
		c.run.Flow.Down.Add(int64(n))
	}
}

// flush writes what the pipe of d holds to its destination.
func (ev *eventLoop) flush(c *loopConn, d int) bool {
	_, dst := c.ends(d)
	dir := &c.dirs[d]
	for dir.pending > 0 {
		n, err := sysSplice(int(dir.pipe.R), dst, int(dir.pending), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
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
		dir.pending -= int32(n)
		c.count(d, int(n))
	}
	dir.pipe.Put()
	dir.pipe = splicePipe{}
	return true
}

// endErr is what a relay error means for the flow's log: a peer that
// reset or went away ended the flow, it did not fail it (as in Relay).
func endErr(err error) error {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return nil
	}
	return err
}

// finish ends c: closes its sockets, ends its flow. A flow the loop
// accepted and one it adopted end through functions of their own, which a
// stack trace (and the tests) can tell apart.
func (ev *eventLoop) finish(c *loopConn, err error) {
	if !ev.remove(c) {
		return
	}
	if c.lst != nil {
		ev.finishListened(c, err)
	} else {
		ev.finishAdopted(c, err)
	}
}

//go:noinline
func (ev *eventLoop) finishListened(c *loopConn, err error) { ev.end(c, err) }

//go:noinline
func (ev *eventLoop) finishAdopted(c *loopConn, err error) { ev.end(c, err) }

func (ev *eventLoop) end(c *loopConn, err error) {
	for _, fd := range [2]int{c.cfd, c.ufd} {
		if fd >= 0 {
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
	if c.lst != nil {
		c.lst.fl.Finished()
		c.lst.wg.Done()
	}
	if c.run != nil {
		c.run.finish(err, c.done)
	}
}

// sweep ends handshakes and dials past their deadline and flows idle for
// longer than their limit, and resumes accepting after a pause.
func (ev *eventLoop) sweep(now time.Time) {
	if !ev.acceptPaused.IsZero() && now.After(ev.acceptPaused) {
		ev.acceptPaused = time.Time{}
		ev.setListen(true)
	}
	clock := loopClock()
	for _, c := range ev.slots {
		if c == nil {
			continue
		}
		switch c.state {
		case stateHandshake:
			if clock > c.mark {
				c.lst.fl.Log.Debug("handshake timed out", "hook", c.lst.fl.Hook, "src", c.hs.remote.String())
				ev.finish(c, nil)
			}
		case stateDialing:
			if c.mark != 0 && clock > c.mark {
				ev.dialFailed(c, os.NewSyscallError("connect", syscall.ETIMEDOUT))
			}
		case stateRelaying:
			if c.idle <= 0 {
				continue
			}
			total := c.run.Flow.Up.Load() + c.run.Flow.Down.Load()
			if total != c.idleMark {
				c.idleMark, c.mark = total, clock
			} else if time.Duration(clock-c.mark) >= c.idle {
				c.run.Flow.Log.Debug("idle timeout: closing the flow", "idle", c.idle)
				ev.finish(c, nil)
			}
		}
	}
}

// The loops that take over relays of kernel sockets (Run.Relay), one per
// P, started on first use and shared by every engine: they serve flows of
// whatever hook and end with the process.
var relayLoops = struct {
	once  sync.Once
	loops []*eventLoop
	next  atomic.Uint32
}{}

func startRelayLoops() {
	n := max(1, runtime.GOMAXPROCS(0))
	for range n {
		// Sweeps once a second: idle limits of relays are minutes.
		ev, err := newEventLoop(nil, time.Second)
		if err != nil {
			// Out of descriptors at the first relay: relays keep
			// their goroutines (kernelRelay sees no loop).
			return
		}
		relayLoops.loops = append(relayLoops.loops, ev)
		go ev.run()
	}
}

// kernelRelay moves a relay of two kernel TCP sockets to a relay loop;
// false leaves it to the caller's goroutines.
func (e *Engine) kernelRelay(ctx context.Context, r *Run, app, network net.Conn, opt RelayOptions) bool {
	at, ok := app.(*net.TCPConn)
	if !ok {
		return false
	}
	nt, ok := network.(*net.TCPConn)
	if !ok {
		return false
	}
	relayLoops.once.Do(startRelayLoops)
	if len(relayLoops.loops) == 0 {
		return false
	}
	cfd, err := takeFD(at)
	if err != nil {
		return false
	}
	ufd, err := takeFD(nt)
	if err != nil {
		unix.Close(cfd)
		return false
	}
	// The Go conns are done with: the loop owns the duplicates.
	at.Close()
	nt.Close()
	c := &loopConn{cfd: cfd, ufd: ufd, slot: -1, run: r, idle: opt.Idle, done: opt.Done,
		upLoopback: netx.AddrPortOf(nt.RemoteAddr()).Addr().IsLoopback()}
	if ctx.Done() != nil {
		c.ctx = ctx
	}
	ev := relayLoops.loops[int(relayLoops.next.Add(1))%len(relayLoops.loops)]
	ev.post(loopCmd{adopt: c}, false)
	return true
}

// takeFD duplicates a connection's descriptor, non-blocking, for a loop.
func takeFD(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	unix.SetNonblock(fd, true)
	return fd, nil
}

// adopt starts relaying a pair handed over by kernelRelay.
func (ev *eventLoop) adopt(c *loopConn) {
	if c.ctx != nil {
		if c.ctx.Err() != nil {
			ev.add(c)
			ev.finish(c, nil)
			return
		}
		if _, ok := ev.watched[c.ctx]; !ok {
			if ev.watched == nil {
				ev.watched = map[context.Context]struct{}{}
			}
			ev.watched[c.ctx] = struct{}{}
			ctx := c.ctx
			context.AfterFunc(ctx, func() { ev.post(loopCmd{ended: ctx}, false) })
		}
	}
	ev.add(c)
	if c.idle > 0 {
		// Sweep often enough for the shortest idle limit served.
		ev.every = max(min(ev.every, c.idle/4), 10*time.Millisecond)
	}
	ev.startRelay(c)
}

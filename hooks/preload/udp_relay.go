//go:build linux

package preload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Every datagram relay of the funnel is a loopback UDP socket of ours
// that one program socket sends to and receives from. The program (or the
// library's per-socket table) remembers the relay's address for as long as
// its socket lives, and nothing tells the funnel when the program stops
// using it: a relay that ended after a quiet spell would leave the
// program's next datagram — a SIP keepalive every few minutes, a game's,
// a VPN client's — sent to a dead port. So a relay lives as long as the
// program's socket, and only its flow ends when idle (the log line, the
// counters, the upstream's state such as a SOCKS5 UDP ASSOCIATE); the next
// datagram either way starts a new flow on the same relay.
//
// An idle relay costs one descriptor and no goroutine: it waits in an
// epoll set of the server's (itself parked in the Go poller), and a
// goroutine reads it only while its flow runs. The same loop checks every
// goneCheck that the programs' sockets still exist, by inode in
// /proc/net/udp*: a program may close its socket, or exit, without a word,
// and the check binds nothing (a probe bind could take a port from a
// program that is about to bind it again).

// relayLimit bounds the relays of one server: half the descriptors the
// process may open (each relay is one), at most maxUDPRelays. Past it,
// the relay whose flow ended longest ago gives way (its program's later
// datagrams are lost, as they were before relays lived with their
// sockets), and when every relay has a flow running, a new one is
// refused.
func relayLimit() int {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil {
		return 1024
	}
	return int(max(min(rl.Cur/2, maxUDPRelays), 256))
}

const maxUDPRelays = 1 << 16

// goneCheck is how often the programs' sockets are checked for.
const goneCheck = 5 * time.Second

// refusedCheck spaces the checks a "port unreachable" from a program's
// socket asks for: a socket connected elsewhere answers every datagram so.
const refusedCheck = time.Second

var errTooManyRelays = fmt.Errorf("too many datagram relays at once, each with a flow running: %w", unix.ENOBUFS)

// relayPark is a server's set of datagram relays and watched sockets.
type relayPark struct {
	mu      sync.Mutex
	limit   int    // relays at most; 0 until the first, then relayLimit()
	running bool   // the loop runs (while anything is parked or watched)
	gen     uint64 // the loop's generation: an ended loop sees another's
	ep      int
	loop    *os.File
	nextID  uint64
	relays  map[uint64]*dgramRelay
	byAddr  map[netip.AddrPort]*dgramRelay // by the relay's own address
	watched map[*socketWatch]struct{}
}

// socketWatch is a program socket that gone is called for once it no
// longer exists.
type socketWatch struct {
	ino     uint64
	procNet string // where its network namespace's tables are read
	gone    func()
}

// dgramRelay is one relay: rc, connected to the program's socket, and
// the flow that runs on it now, if any.
type dgramRelay struct {
	park *relayPark
	id   uint64
	rc   *net.UDPConn
	addr netip.AddrPort // rc's own address, unmapped: where the program's socket sends
	spec relaySpec

	stopCtx   func() bool
	watch     *socketWatch
	lastCheck atomic.Int64
	lastUsed  atomic.Int64 // when a flow last ended or started, for eviction

	mu      sync.Mutex
	cur     *relayFlow
	reading bool // a goroutine reads rc (else it waits in the epoll set)
	done    bool
}

type relayFlow struct {
	run *funnel.Run
	dg  funnel.DgramConn
}

// relaySpec is what a relay's owner decides.
type relaySpec struct {
	rc   *net.UDPConn   // connected to the program's socket
	app  netip.AddrPort // the program's socket: the source of the datagrams it sends
	idle time.Duration  // a flow ends after this long without a datagram either way
	// open starts a flow when the program sends and none runs. When it
	// fails (a profile that refuses, logged as the flow's end) the
	// datagram is dropped, as a network drops it.
	open func() (*funnel.Run, funnel.DgramConn, error)
	// ino and procNet name the program's socket for the liveness check;
	// ino 0 leaves it to the owner (inbound_udp.go watches its bound
	// socket once for all its peers' relays).
	ino     uint64
	procNet string
	// refused runs when the program's port answered "unreachable" (at
	// most once per refusedCheck); nil checks ino.
	refused func()
	// forget runs once when the relay closes, for the owner's tables.
	forget func(*dgramRelay)
	// answer, when set, answers each datagram inside the funnel (the
	// DNS responder): no flow, no upstream.
	answer func(query []byte) []byte
}

// newRelay parks a relay for spec.rc, which it owns from now on (closed
// on failure too); it closes when ctx ends.
func (p *relayPark) newRelay(ctx context.Context, spec relaySpec) (*dgramRelay, error) {
	r := &dgramRelay{park: p, rc: spec.rc, spec: spec}
	r.addr = netx.Unmap(spec.rc.LocalAddr().(*net.UDPAddr).AddrPort())
	r.lastUsed.Store(time.Now().UnixNano())
	if r.spec.refused == nil {
		r.spec.refused = r.checkGone
	}
	if err := p.add(r); err != nil {
		spec.rc.Close()
		return nil, err
	}
	if spec.ino != 0 {
		r.watch = p.watch(spec.ino, spec.procNet, r.close)
	}
	stop := context.AfterFunc(ctx, r.close)
	r.mu.Lock()
	r.stopCtx = stop
	r.mu.Unlock()
	return r, nil
}

// add registers r in the epoll set, making room past the limit.
func (p *relayPark) add(r *dgramRelay) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limit == 0 {
		p.limit = relayLimit()
	}
	if len(p.relays) >= p.limit {
		victim := p.oldestIdle()
		if victim == nil {
			return errTooManyRelays
		}
		p.removeLocked(victim)
		// Not here: its owner's tables may be locked by the caller.
		go victim.close()
	}
	if err := p.startLocked(); err != nil {
		return err
	}
	p.nextID++
	r.id = p.nextID
	if err := p.ctl(unix.EPOLL_CTL_ADD, r); err != nil {
		p.stopIfEmptyLocked()
		return err
	}
	p.relays[r.id] = r
	p.byAddr[r.addr] = r
	return nil
}

// oldestIdle is the relay with no flow whose last flow ended longest ago.
// Called with p.mu held.
func (p *relayPark) oldestIdle() *dgramRelay {
	var oldest *dgramRelay
	for _, r := range p.relays {
		if !r.idle() {
			continue
		}
		if oldest == nil || r.lastUsed.Load() < oldest.lastUsed.Load() {
			oldest = r
		}
	}
	return oldest
}

// ctl puts r's socket in the epoll set (or changes or takes it out): it
// waits for the program's next datagram, reported once. Called with p.mu
// held.
func (p *relayPark) ctl(op int, r *dgramRelay) error {
	raw, err := r.rc.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(uint32(r.id)), Pad: int32(uint32(r.id >> 32))}
	if err := raw.Control(func(fd uintptr) { cerr = unix.EpollCtl(p.ep, op, int(fd), &ev) }); err != nil {
		return err
	}
	return os.NewSyscallError("epoll_ctl", cerr)
}

// arm waits for r's next datagram again.
func (p *relayPark) arm(r *dgramRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.relays[r.id] == r {
		p.ctl(unix.EPOLL_CTL_MOD, r)
	}
}

func (p *relayPark) remove(r *dgramRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.relays[r.id] == r {
		p.removeLocked(r)
		p.stopIfEmptyLocked()
	}
}

func (p *relayPark) removeLocked(r *dgramRelay) {
	delete(p.relays, r.id)
	if p.byAddr[r.addr] == r {
		delete(p.byAddr, r.addr)
	}
	// Before the close: a descriptor another file takes over keeps the
	// old registration otherwise, for as long as rc's file lives.
	p.ctl(unix.EPOLL_CTL_DEL, r)
}

// watch calls gone once the program's socket with inode ino is gone.
func (p *relayPark) watch(ino uint64, procNet string, gone func()) *socketWatch {
	w := &socketWatch{ino: ino, procNet: procNet, gone: gone}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.startLocked() != nil {
		return nil // no loop: nothing is checked, and the relay lives with the server
	}
	p.watched[w] = struct{}{}
	return w
}

func (p *relayPark) unwatch(w *socketWatch) {
	if w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.watched[w]; ok {
		delete(p.watched, w)
		p.stopIfEmptyLocked()
	}
}

// serves says whether ap, unmapped, is the address of one of these
// relays: a socket of the funnel's that reaches nothing but the funnel.
func (p *relayPark) serves(ap netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byAddr[ap]
	return ok
}

// count is the number of relays open now.
func (p *relayPark) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.relays)
}

// startLocked starts the loop unless it runs.
func (p *relayPark) startLocked() error {
	if p.running {
		return nil
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	unix.SetNonblock(ep, true)
	// The loop's file owns a duplicate (never f.Fd(), which would make
	// it blocking): ep stays usable for epoll_ctl until the loop ends.
	dup, err := unix.FcntlInt(uintptr(ep), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(ep)
		return os.NewSyscallError("fcntl", err)
	}
	p.ep, p.running = ep, true
	p.gen++
	p.loop = os.NewFile(uintptr(dup), "funtun-udp-relays")
	if p.relays == nil {
		p.relays = map[uint64]*dgramRelay{}
		p.byAddr = map[netip.AddrPort]*dgramRelay{}
		p.watched = map[*socketWatch]struct{}{}
	}
	go p.run(p.gen, p.loop)
	return nil
}

// stopIfEmptyLocked lets the loop end once nothing is left for it: a
// server that relays no datagrams keeps no goroutine.
func (p *relayPark) stopIfEmptyLocked() {
	if p.running && len(p.relays) == 0 && len(p.watched) == 0 {
		p.running = false
		unix.Close(p.ep)
		p.ep = -1
		p.loop.SetReadDeadline(time.Now()) // end it now
		p.loop = nil
	}
}

// run wakes relays the program sent to, and checks the watched sockets
// every goneCheck. It waits in the Go poller, not in epoll_wait, which
// would hold a thread.
func (p *relayPark) run(gen uint64, f *os.File) {
	defer f.Close()
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	events := make([]unix.EpollEvent, 64)
	nextCheck := time.Now().Add(goneCheck)
	for {
		f.SetReadDeadline(nextCheck)
		var ready []*dgramRelay
		err := raw.Read(func(fd uintptr) bool {
			n, err := unix.EpollWait(int(fd), events, 0)
			if err != nil && err != unix.EINTR {
				return true
			}
			if n <= 0 {
				return false // park until the epoll descriptor is readable
			}
			p.mu.Lock()
			for _, ev := range events[:n] {
				if r := p.relays[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; r != nil {
					ready = append(ready, r)
				}
			}
			p.mu.Unlock()
			return true
		})
		for _, r := range ready {
			r.wake()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			p.checkWatched()
			nextCheck = time.Now().Add(goneCheck)
		} else if err != nil {
			return
		}
		p.mu.Lock()
		ended := !p.running || p.gen != gen
		p.mu.Unlock()
		if ended {
			return
		}
	}
}

// checkWatched reads each namespace's socket tables once for all the
// sockets watched in it.
func (p *relayPark) checkWatched() {
	p.mu.Lock()
	byNet := map[string][]*socketWatch{}
	for w := range p.watched {
		byNet[w.procNet] = append(byNet[w.procNet], w)
	}
	p.mu.Unlock()
	for procNet, ws := range byNet {
		alive, ok := udpInodes(procNet)
		if !ok {
			continue // only a sure answer ends a relay
		}
		for _, w := range ws {
			if _, ok := alive[w.ino]; !ok {
				p.unwatch(w)
				w.gone()
			}
		}
	}
}

// attach makes (run, dg) the relay's flow, in place of any other, and
// carries its datagrams to the program until it goes idle. It returns
// nil (and ends the flow) when the relay is closed.
func (r *dgramRelay) attach(run *funnel.Run, dg funnel.DgramConn) *relayFlow {
	pf := &relayFlow{run: run, dg: dg}
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		dg.Close()
		run.End(nil)
		return nil
	}
	old := r.cur
	r.cur = pf
	r.mu.Unlock()
	r.lastUsed.Store(time.Now().UnixNano())
	if old != nil {
		old.dg.Close()
	}
	go func() {
		run.ReturnDgrams(dg, r.spec.idle, r.toProgram)
		r.mu.Lock()
		if r.cur == pf {
			r.cur = nil
		}
		reading := r.reading
		r.mu.Unlock()
		r.lastUsed.Store(time.Now().UnixNano())
		if reading {
			// The reader may park now; it checks at the latest after
			// one more idle period.
			r.rc.SetReadDeadline(time.Now())
		}
	}()
	return pf
}

func (r *dgramRelay) toProgram(b []byte) error {
	_, err := r.rc.Write(b)
	if errors.Is(err, unix.ECONNREFUSED) {
		// Nobody has the program's port (any more, or for a moment
		// between two sockets): a network drops such a datagram too.
		r.refused()
		return nil
	}
	return err
}

func (r *dgramRelay) refused() {
	now := time.Now().UnixNano()
	last := r.lastCheck.Load()
	if now-last < int64(refusedCheck) || !r.lastCheck.CompareAndSwap(last, now) {
		return
	}
	r.spec.refused()
}

// checkGone closes the relay when the program's socket is gone.
func (r *dgramRelay) checkGone() {
	if r.spec.ino != 0 && !udpInodeBound(r.spec.procNet, r.spec.ino) {
		r.close()
	}
}

// wake starts reading the program's datagrams, unless that runs.
func (r *dgramRelay) wake() {
	r.mu.Lock()
	if r.done || r.reading {
		r.mu.Unlock()
		return
	}
	r.reading = true
	r.mu.Unlock()
	go r.fromProgram()
}

// fromProgram carries the program's datagrams into the relay's flow,
// starting one when none runs, until the flow has ended and nothing came
// for an idle period: then the relay waits in the epoll set again.
func (r *dgramRelay) fromProgram() {
	raw, err := r.rc.SyscallConn()
	if err != nil {
		r.mu.Lock()
		r.reading = false
		r.mu.Unlock()
		return
	}
	for {
		r.rc.SetReadDeadline(time.Now().Add(r.spec.idle))
		err := waitReadable(raw)
		var fr *funnel.Frame
		n := 0
		if err == nil {
			// A frame only once a datagram is there: a quiet program
			// does not hold a 64 KiB buffer per socket.
			fr = funnel.NewFrame()
			n, err = r.rc.Read(fr.Room())
			if err != nil {
				fr.Release()
			}
		}
		if err != nil {
			switch {
			case errors.Is(err, unix.ECONNREFUSED):
				r.refused()
				continue
			case errors.Is(err, os.ErrDeadlineExceeded):
				r.mu.Lock()
				if r.cur != nil && !r.done {
					r.mu.Unlock()
					continue
				}
				r.reading = false
				done := r.done
				r.mu.Unlock()
				if !done {
					// A datagram that came since is reported at once.
					r.park.arm(r)
				}
				return
			default:
				r.mu.Lock()
				r.reading = false
				r.mu.Unlock()
				return
			}
		}
		fr.SetLen(n)
		if r.spec.answer != nil {
			if ans := r.spec.answer(fr.Bytes()); ans != nil {
				if _, err := r.rc.Write(ans); errors.Is(err, unix.ECONNREFUSED) {
					r.refused()
				}
			}
			fr.Release()
			continue
		}
		fr.Src = r.spec.app
		fr.Time = time.Now()
		pf := r.current()
		if pf == nil {
			fr.Release()
			continue
		}
		pf.run.Flow.Up.Add(int64(n))
		// A flow that went idle this very moment loses the datagram, as
		// a network may; the next one starts a new flow.
		if err := pf.dg.WriteFrame(fr); err != nil && !errors.Is(err, net.ErrClosed) {
			pf.run.End(err)
			pf.dg.Close()
		}
	}
}

// waitReadable waits (within the read deadline) until a datagram, or an
// error such as a "port unreachable", is there to read.
func waitReadable(raw syscall.RawConn) error {
	var soErr error
	err := raw.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			return false
		}
		soErr = err // taken from the socket by the peek: say it here
		return true
	})
	if err != nil {
		return err
	}
	return soErr
}

// current is the relay's running flow, or a new one.
func (r *dgramRelay) current() *relayFlow {
	r.mu.Lock()
	pf := r.cur
	r.mu.Unlock()
	if pf != nil || r.spec.open == nil {
		return pf
	}
	run, dg, err := r.spec.open()
	if err != nil {
		return nil
	}
	return r.attach(run, dg)
}

// idle: no flow runs and nobody reads.
func (r *dgramRelay) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur == nil && !r.reading
}

// closedNow: the relay has closed.
func (r *dgramRelay) closedNow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done
}

func (r *dgramRelay) close() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	pf := r.cur
	stop := r.stopCtx
	r.mu.Unlock()
	if stop != nil {
		stop()
	}
	r.park.unwatch(r.watch)
	r.park.remove(r)
	r.rc.Close()
	if pf != nil {
		pf.dg.Close()
	}
	if r.spec.forget != nil {
		r.spec.forget(r)
	}
}

// redial opens flows from p's socket at src to dest, for a relay whose
// earlier flow ended (its upstream state went with it).
func (s *Server) redial(ctx context.Context, p *peer, dest funnel.Addr, src net.Addr) func() (*funnel.Run, funnel.DgramConn, error) {
	return func() (*funnel.Run, funnel.DgramConn, error) {
		pl, err := s.Engine.Resolve(s.Selector)
		if err != nil {
			return nil, nil, err
		}
		f := s.newFlow(p, funnel.UDP, dest)
		f.Source = src
		r := s.Engine.Begin(f, pl)
		dg, err := r.DialDgram(ctx)
		if err != nil {
			r.End(err)
			return nil, nil, err
		}
		return r, dg, nil
	}
}

// peerOf is the program a flow came from, as newFlow takes it.
func peerOf(f *funnel.Flow) *peer { return &peer{pid: f.PID, user: f.User} }

// datagramIdle is how long a relayed datagram flow lasts without traffic.
func (s *Server) datagramIdle() time.Duration {
	if d := time.Duration(s.udp.idle.Load()); d > 0 {
		return d
	}
	return udpIdle
}

// procNet is where the socket tables of p's network namespace are read:
// the funnel's own, or under the guard the program's.
func (s *Server) procNet(p *peer) string {
	if s.guard != nil {
		return "/proc/" + strconv.Itoa(p.pid) + "/net"
	}
	return "/proc/self/net"
}

// socketInode is the inode of the socket fd, which names it in
// /proc/net/udp for as long as it lives, whoever holds it.
func socketInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

var udpTables = []string{"udp", "udp6", "udplite", "udplite6"}

// udpInodes is the set of UDP sockets in a namespace's tables; ok is
// false when none could be read.
func udpInodes(procNet string) (map[uint64]struct{}, bool) {
	set := map[uint64]struct{}{}
	readable := false
	for _, name := range udpTables {
		if netx.ScanSocketTable(procNet+"/"+name, func(_ uint16, ino uint64) bool { set[ino] = struct{}{}; return true }) {
			readable = true
		}
	}
	return set, readable
}

// udpInodeBound: is a UDP socket with this inode in the namespace's
// tables? (true when they cannot be read: only a sure answer ends.)
func udpInodeBound(procNet string, ino uint64) bool {
	found, readable := false, false
	for _, name := range udpTables {
		if netx.ScanSocketTable(procNet+"/"+name, func(_ uint16, i uint64) bool { found = i == ino; return !found }) {
			readable = true
		}
		if found {
			return true
		}
	}
	return !readable
}

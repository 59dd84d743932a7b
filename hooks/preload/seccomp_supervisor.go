//go:build linux

package preload

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/funtun/funtun/funnel"
	"golang.org/x/sys/unix"
)

// mode=seccomp: the program runs under a seccomp filter whose socket calls
// (connect, sendto with an address, sendmsg, sendmmsg; and the calls that
// show a peer, for the sockets redirected: seccomp_supervisor_recv.go;
// listen, under a piece for incoming flows: seccomp_supervisor_listen.go)
// wait for this supervisor, which takes a duplicate of the program's
// socket (pidfd_getfd), reads the call's arguments from the program's
// memory, and does with the duplicate what the Server does for the
// LD_PRELOAD library — the same code: a handoff, a connect to the relay
// hub, a DNS responder, a datagram relay. The kernel enforces the filter,
// so it holds for static programs, Go programs, raw system calls and every
// child, whatever their environment.

// The kernel's structures (linux/seccomp.h); x/sys has the ioctl numbers
// only. Their sizes are part of those numbers (0x50 and 0x18).
type seccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Data  seccompData
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

const (
	// SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19): once the
	// supervisor has taken a call, a signal no longer interrupts it. Without
	// it the program's signals (Go's preemption signal, many times a
	// second) abort calls the supervisor is carrying out, and the
	// restarted call would connect the same socket a second time.
	filterFlagWaitKillableRecv = 0x20

	// Bounds of what is read from the program: the kernel's own limits.
	sockaddrMax = 128 // sizeof(struct sockaddr_storage)
	dgramMax    = 65535
	iovMax      = 1024 // UIO_MAXIOV
	controlMax  = 16 << 10
)

// errGone: the call was abandoned (the program died, or a fatal signal
// ended the call) while the supervisor read its arguments.
var errGone = errors.New("the trapped call is gone")

// errNoSupervisor is why the program cannot be started under the
// supervisor.
type errNoSupervisor struct{ err error }

func (e errNoSupervisor) Error() string {
	return "cannot install the seccomp filter of mode=seccomp: " + e.err.Error()
}
func (e errNoSupervisor) Unwrap() error { return e.err }

// supervisor answers the notifications of one listener.
type supervisor struct {
	srv      *Server
	listener int
	abis     []sockABI
	allowRaw bool
	// guarded: the supervisor is the guard under the library (mode=auto
	// for a dynamic program), which does most of the work itself; see
	// guardedSend and libraryReports.
	guarded bool

	routesMu sync.Mutex
	routes   map[dgramRouteKey]dgramRoute

	hidden hiddenPeers

	// For the end and the handover to the keeper
	// (seccomp_supervisor_keeper.go): the reader's stop and end, the calls
	// still being carried out and the context they run in.
	stopFD     int // an eventfd: written, the reader stops
	stopClose  func() bool
	readerDone chan struct{}
	hungUp     atomic.Bool // no filtered process is left
	inflight   sync.WaitGroup
	cancel     context.CancelFunc
	closeOnce  sync.Once
}

// dgramRouteKey is one program socket (by inode: a socket's stays its own
// while it lives, whichever process or descriptor uses it) and one
// destination as the program wrote it.
type dgramRouteKey struct {
	ino  uint64
	dest string
}

// dgramRoute is where the funnel wants that socket's datagrams to that
// destination to go: the destination itself, a relay of the Server's, or
// its DNS responder; under the guard, also one of the funnel's own
// sockets that the library already sends to. It is asked again after dgramRouteTTL, well inside
// udpIdle, so a relay the answer names is still there.
type dgramRoute struct {
	to      netip.AddrPort
	scope   uint32
	expires time.Time
}

const dgramRouteTTL = 30 * time.Second

// startSupervised returns the launcher's start function for mode=seccomp
// (and, guarded, for the guard under the library):
// it installs the filter on a thread of its own (as startWithoutIOUring
// does for the io_uring filter), so that the program the thread forks
// inherits it and the funnel's threads never have it, and serves the
// listener it got until ctx ends or no filtered process is left. No step
// runs between fork and exec: the listener is ours from the start.
//
// keep, when not nil, gets the supervisor once it serves: the launcher
// hands its listener over to a keeper when the program exits
// (Supervision.HandOver).
//
// pass, under the guard, is the value the library puts in connect's unused
// fourth and fifth arguments on its plain-direct fast path (see
// supervisorFilter); 0 for none.
func (s *Server) startSupervised(ctx context.Context, allowIOUring, allowRaw, guarded bool, keep *Supervision, pass uint64) func(func() (*os.Process, error)) (*os.Process, error) {
	return func(start func() (*os.Process, error)) (*os.Process, error) {
		abis, err := sockABIs(runtime.GOARCH)
		if err != nil {
			return nil, errNoSupervisor{err}
		}
		if err := canTakeSockets(); err != nil {
			return nil, errNoSupervisor{err}
		}
		// The launcher has compiled the profile already. Under the guard
		// the library gives listening sockets to the funnel itself, and its
		// hidden listener's own listen() must not be taken a second time:
		// listen is left alone there.
		trapListen := false
		if pl, err := s.Engine.Resolve(s.Selector); err == nil && !guarded {
			trapListen = takesListen(pl)
		}
		filter, err := sockFilter(supervisorFilter(abis, allowIOUring, trapListen, guarded, pass))
		if err != nil {
			return nil, errNoSupervisor{err}
		}
		type result struct {
			proc *os.Process
			err  error
		}
		done := make(chan result, 1)
		go func() {
			// Never unlocked: the thread carries the filter and ends with
			// this goroutine.
			runtime.LockOSThread()
			listener, err := installNotifyFilter(filter)
			if err != nil {
				done <- result{err: errNoSupervisor{err}}
				return
			}
			sv := &supervisor{srv: s, listener: listener, abis: abis, allowRaw: allowRaw, guarded: guarded, routes: map[dgramRouteKey]dgramRoute{}}
			if err := sv.serve(ctx); err != nil {
				unix.Close(listener)
				done <- result{err: errNoSupervisor{err}}
				return
			}
			if keep != nil {
				keep.set(sv)
			}
			proc, err := start()
			done <- result{proc, err}
		}()
		r := <-done
		return r.proc, r.err
	}
}

// canTakeSockets makes sure pidfd_getfd works here (Linux 5.6) before
// the filter goes on: once on, it stays, and without the call every
// connect of the program would fail.
func canTakeSockets() error {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w (Linux 5.6 or later is needed)", err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, pidfd, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd: %w (Linux 5.6 or later is needed)", err)
	}
	unix.Close(fd)
	return nil
}

// installNotifyFilter sets no_new_privs (an unprivileged filter needs it)
// and installs filter on the calling thread only, returning its listener.
func installNotifyFilter(filter []unix.SockFilter) (int, error) {
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return -1, fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | filterFlagWaitKillableRecv)
	fd, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
	if errno == unix.EINVAL {
		// Before Linux 5.19: signals may interrupt a call in progress;
		// handle() copes with the restarted call (see connectTrapped).
		fd, _, errno = unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&prog)))
	}
	runtime.KeepAlive(filter)
	switch errno {
	case 0:
		return int(fd), nil
	case unix.EINVAL:
		return -1, errors.New("this kernel has no seccomp user notification (Linux 5.6 or later is needed)")
	case unix.ENOSYS:
		return -1, errors.New("this kernel has no seccomp filters")
	}
	return -1, fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER): %w", errno)
}

// serve starts the goroutine that receives notifications: one reader,
// which waits in poll(2) itself (a stopped program waits for each answer,
// and the kernel wakes the reader's thread directly, where Go's poller
// would take a hop through the scheduler: a Unix-socket sendmsg under the
// guard costs that round trip), and one goroutine per call that may wait,
// so that a connect that takes long (a SOCKS upstream) holds up nothing
// else. The listener reports a hangup once every
// filtered process has exited.
func (sv *supervisor) serve(ctx context.Context) error {
	// The program waits for each answer: a wake-up that switches to the
	// supervisor on the same CPU (Linux 6.6) halves the round trip. Older
	// kernels say EINVAL, and the wake-up is an ordinary one.
	unix.Syscall(unix.SYS_IOCTL, uintptr(sv.listener), unix.SECCOMP_IOCTL_NOTIF_SET_FLAGS, unix.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
	stopFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	// The calls carried out run in a context of their own, which the
	// handover ends; the listener itself closes with ctx (unless handed
	// over) or when no filtered process is left.
	callCtx, cancel := context.WithCancel(ctx)
	sv.stopFD, sv.cancel, sv.readerDone = stopFD, cancel, make(chan struct{})
	sv.stopClose = context.AfterFunc(ctx, func() {
		sv.stopReader()
		sv.closeListener()
	})
	go func() {
		defer close(sv.readerDone)
		for {
			pfd := []unix.PollFd{{Fd: int32(sv.listener), Events: unix.POLLIN}, {Fd: int32(stopFD), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, -1); err != nil {
				if err == unix.EINTR {
					continue
				}
				sv.srv.Log.Error("preload: seccomp supervisor stopped: the program's socket calls now fail", "err", err)
				return
			}
			if pfd[1].Revents != 0 {
				return // stopped: closed with ctx, or handed over
			}
			if pfd[0].Revents&unix.POLLIN == 0 {
				if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
					sv.hungUp.Store(true)
					return
				}
				continue
			}
			n := seccompNotif{} // the kernel insists on a zeroed buffer
			switch err := ioctlPtr(sv.listener, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n)); err {
			case nil:
			case unix.ENOENT, unix.EINTR, unix.EAGAIN:
				// The caller went away before we took its call.
				continue
			default:
				sv.srv.Log.Error("preload: seccomp supervisor stopped: the program's socket calls now fail", "err", err)
				return
			}
			if sv.handle(callCtx, n) {
				// Let the call's goroutine start on this P now, rather
				// than wait for it while the reader sits in poll.
				runtime.Gosched()
			}
		}
	}()
	return nil
}

// stopReader ends the reader's loop and waits for it.
func (sv *supervisor) stopReader() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(sv.stopFD, one[:])
	<-sv.readerDone
}

// closeListener closes the listener once the calls in progress have
// answered (within handOverWait): closed, the stopped calls of any
// process still filtered fail with ENOSYS.
func (sv *supervisor) closeListener() {
	sv.closeOnce.Do(func() {
		sv.drain()
		unix.Close(sv.listener)
		unix.Close(sv.stopFD)
	})
}

// drain ends the context of the calls in progress and waits, within
// handOverWait, for their answers.
func (sv *supervisor) drain() {
	sv.cancel()
	done := make(chan struct{})
	go func() { sv.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(handOverWait):
	}
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// answer is the result of a trapped call: continue it in the kernel as
// the program made it, or return val or -errno.
type answer struct {
	cont  bool
	val   int64
	errno unix.Errno
}

func answerErrno(e unix.Errno) answer { return answer{errno: e} }
func answerVal(v int64) answer        { return answer{val: v} }
func answerContinue() answer          { return answer{cont: true} }
func answerErr(err error) answer {
	if err == nil {
		return answerVal(0)
	}
	return answerErrno(errnoOf(err))
}

// handle answers one notification. What needs no waiting — most calls,
// which continue — is answered here, on the reader's goroutine; a call
// that may wait (a connect through the funnel, a datagram sent or received
// for the program, a listen) goes on in a goroutine of its own, so that
// it holds up no other.
func (sv *supervisor) handle(ctx context.Context, n seccompNotif) (started bool) {
	t := &trapped{sv: sv, id: n.ID, pid: int(n.Pid), pidfd: -1}
	a, err, later := sv.dispatch(ctx, t, n.Data)
	if later != nil && t.pidfd >= 0 {
		// What goes on later may name the caller's process (a flow, a
		// listener): asked of the pidfd now, while it is open.
		t.process()
	}
	if t.pidfd >= 0 {
		unix.Close(t.pidfd)
		t.pidfd = -1
	}
	if later != nil {
		sv.inflight.Add(1)
		go func() {
			defer sv.inflight.Done()
			a, err := later()
			sv.reply(t, a, err)
		}()
		return true
	}
	sv.reply(t, a, err)
	return false
}

func (sv *supervisor) reply(t *trapped, a answer, err error) {
	if errors.Is(err, errGone) {
		return
	}
	resp := seccompNotifResp{ID: t.id}
	switch {
	case a.cont:
		resp.Flags = unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE
	case a.errno != 0:
		resp.Error = -int32(a.errno)
	default:
		resp.Val = a.val
	}
	// ENOENT: the program is gone, or a fatal signal ended the call.
	ioctlPtr(sv.listener, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp))
}

// later is the part of a call's answer that may wait.
type later func() (answer, error)

func (sv *supervisor) dispatch(ctx context.Context, t *trapped, d seccompData) (answer, error, later) {
	abi, call, found := lookupCall(sv.abis, d.Arch, d.Nr)
	if !found {
		// The filter sends nothing else; a call we cannot read must
		// not pass unseen.
		return answerErrno(unix.ENOSYS), nil, nil
	}
	t.ptr32 = abi.ptr32
	args := d.Args
	if abi.ptr32 {
		for i := range args {
			args[i] = uint64(uint32(args[i]))
		}
	}
	if call == callSocketcall {
		// The call number is a register, the arguments are in memory:
		// read once, here, and never again.
		c, known := socketcallCalls[args[0]]
		if !known {
			return answerContinue(), nil, nil
		}
		words, err := t.read(args[1], 6*4)
		if err != nil {
			return answerErrno(unix.EFAULT), err, nil
		}
		call = c
		for i := range args {
			args[i] = uint64(binary.NativeEndian.Uint32(words[4*i:]))
		}
	}
	fd := int(int32(args[0]))
	sock, err := t.socket(fd)
	if err != nil {
		return answerErr(err), err, nil
	}
	// Ours to close, or the later part's.
	keep := false
	defer func() {
		if !keep && sock.fd >= 0 {
			unix.Close(sock.fd)
		}
	}()
	handOver := func(f later) (answer, error, later) {
		keep = true
		return answer{}, nil, func() (answer, error) {
			defer unix.Close(sock.fd)
			return f()
		}
	}
	switch {
	case sock.family != unix.AF_INET && sock.family != unix.AF_INET6:
		// AF_UNIX, AF_NETLINK…: nothing of the funnel's. Decided by the
		// socket, which the program cannot change under us, never by an
		// address in its memory, which the kernel reads again.
		return answerContinue(), nil, nil
	case call == callGetpeername:
		a, err := sv.getpeername(t, sock, args[1], args[2])
		return a, err, nil
	case call == callRecvfrom, call == callRecvmsg, call == callRecvmmsg:
		if !sv.recvKnown(sock) {
			return answerContinue(), nil, nil
		}
		return handOver(func() (answer, error) {
			switch call {
			case callRecvfrom:
				return sv.recvfrom(t, sock, args)
			case callRecvmmsg:
				return sv.recvmmsg(t, sock, args[1], args[2], int(args[3]))
			}
			n, err := sv.recvmsg(t, sock, args[1], int(args[2]))
			if err != nil {
				return answerErr(err), err
			}
			return answerVal(int64(n)), nil
		})
	case !sock.carried():
		// Raw, ICMP echo, SCTP…: nothing in the funnel carries them.
		if sv.allowRaw {
			return answerContinue(), nil, nil
		}
		sv.srv.Log.Warn("preload: refused a socket that would bypass the funnel (raw, packet or ICMP echo: no piece of the profile sees its packets; funtun --allow-raw allows them)",
			"pid", t.pid, "socket", socketKind(sock.family, sock.sotype, sock.proto))
		return answerErrno(unix.EACCES), nil, nil
	}
	switch call {
	case callConnect:
		addr, a, err, done := sv.connectAddr(t, sock, args[1], args[2])
		if done {
			return a, err, nil
		}
		return handOver(func() (answer, error) { return sv.connectTrapped(ctx, t, sock, addr) })
	case callSendto:
		if sock.sotype != unix.SOCK_DGRAM {
			return streamSend(args[3])
		}
		return handOver(func() (answer, error) { return sv.sendto(ctx, t, sock, args) })
	case callSendmsg:
		if sock.sotype != unix.SOCK_DGRAM {
			return streamSend(args[2])
		}
		return handOver(func() (answer, error) {
			n, err := sv.sendmsg(ctx, t, sock, args[1], int(args[2]))
			if err != nil {
				return answerErr(err), err
			}
			return answerVal(int64(n)), nil
		})
	case callSendmmsg:
		if sock.sotype != unix.SOCK_DGRAM {
			return streamSend(args[3])
		}
		return handOver(func() (answer, error) { return sv.sendmmsg(ctx, t, sock, args[1], args[2], int(args[3])) })
	case callListen:
		return handOver(func() (answer, error) { return sv.listenTrapped(ctx, t, sock, fd, int(int32(args[1]))) })
	}
	return answerErrno(unix.ENOSYS), nil, nil
}

// streamSend: on a stream socket the kernel ignores sendto's and sendmsg's
// address (the socket's peer is where the bytes go, and its connect was
// ours), except with MSG_FASTOPEN, which connects to it.
func streamSend(flags uint64) (answer, error, later) {
	if flags&unix.MSG_FASTOPEN != 0 {
		return answerErrno(unix.EOPNOTSUPP), nil, nil
	}
	return answerContinue(), nil, nil
}

// peer is who made a call; its user is the owner of its /proc entry,
// which follows a program that changed its uid.
func (sv *supervisor) peer(t *trapped) *peer {
	// A notification names the calling thread; flows and listeners
	// belong to its process, which the library's peers are too.
	pid := t.process()
	uid := uint32(sv.srv.uid)
	var st unix.Stat_t
	if unix.Stat("/proc/"+strconv.Itoa(pid), &st) == nil {
		uid = st.Uid
	}
	return &peer{pid: pid, uid: uid, user: sv.srv.userName(uid)}
}

// trapped is one call the program waits in.
type trapped struct {
	sv    *supervisor
	id    uint64
	pid   int // the calling thread
	pidfd int
	tgid  int // its process, once known (process)
	ptr32 bool
}

// process is the calling thread's process (thread group). Asked of the
// pidfd where the kernel can say (PIDFD_GET_INFO, Linux 6.13): reading
// /proc/TID/status instead costs 50 µs here, a third of a handoff.
func (t *trapped) process() int {
	if t.tgid != 0 {
		return t.tgid
	}
	if t.pidfd >= 0 {
		if tgid, ok := pidfdThreadGroup(t.pidfd); ok {
			t.tgid = tgid
			return tgid
		}
	}
	if tgid, ok := threadGroup(t.pid); ok {
		t.tgid = tgid
		return tgid
	}
	return t.pid
}

// pidfdInfo is struct pidfd_info's first version (PIDFD_INFO_SIZE_VER0).
type pidfdInfo struct {
	Mask                                    uint64
	CgroupID                                uint64
	Pid, Tgid, Ppid, Ruid, Rgid, Euid, Egid uint32
	Suid, Sgid, Fsuid, Fsgid                uint32
	ExitCode                                int32
}

// pidfdGetInfo is PIDFD_GET_INFO: _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11,
// struct pidfd_info) for the 64 bytes above.
const pidfdGetInfo = 0xC040FF0B

var _ [64 - unsafe.Sizeof(pidfdInfo{})]byte

func pidfdThreadGroup(pidfd int) (int, bool) {
	info := pidfdInfo{Mask: 1} // PIDFD_INFO_PID
	if err := ioctlPtr(pidfd, pidfdGetInfo, unsafe.Pointer(&info)); err != nil || info.Tgid == 0 {
		return 0, false
	}
	return int(info.Tgid), true
}

// valid says the program still waits in this call: after it, what was
// read from its memory or taken from its descriptor table is the state of
// that call, not of a process that has reused its pid.
func (t *trapped) valid() bool {
	id := t.id
	return ioctlPtr(t.sv.listener, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)) == nil
}

// read copies n bytes at addr in the program. The program may change them
// a moment later: what is read is used, and the pointer never again.
func (t *trapped) read(addr uint64, n int) ([]byte, error) {
	buf := make([]byte, n)
	if n == 0 {
		return buf, nil
	}
	if err := t.readv(buf, []unix.RemoteIovec{{Base: uintptr(addr), Len: n}}); err != nil {
		return nil, err
	}
	return buf, nil
}

func (t *trapped) readv(buf []byte, remote []unix.RemoteIovec) error {
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	got, err := unix.ProcessVMReadv(t.pid, local, remote, 0)
	if !t.valid() {
		return errGone
	}
	if err != nil || got != len(buf) {
		return unix.EFAULT
	}
	return nil
}

// write copies b to addr in the program (sendmmsg's msg_len).
func (t *trapped) write(addr uint64, b []byte) error {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	got, err := unix.ProcessVMWritev(t.pid, local, []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}, 0)
	if err != nil || got != len(b) {
		return unix.EFAULT
	}
	return nil
}

// trappedSocket is our duplicate of the program's socket.
type trappedSocket struct {
	fd                    int
	family, sotype, proto int
}

// carried: a socket whose flows the funnel carries (TCP, MPTCP, UDP).
func (s trappedSocket) carried() bool {
	switch s.sotype {
	case unix.SOCK_STREAM:
		return s.proto == unix.IPPROTO_TCP || s.proto == unix.IPPROTO_MPTCP
	case unix.SOCK_DGRAM:
		return s.proto == unix.IPPROTO_UDP || s.proto == unix.IPPROTO_UDPLITE
	}
	return false
}

// socket takes a duplicate of the program's descriptor fd.
func (t *trapped) socket(fd int) (trappedSocket, error) {
	s := trappedSocket{fd: -1}
	if fd < 0 {
		return s, unix.EBADF
	}
	pidfd, tgid, err := openCaller(t.pid)
	t.pidfd, t.tgid = pidfd, tgid
	if err != nil {
		t.pidfd = -1
		if err == unix.ESRCH || err == unix.ENOENT {
			return s, errGone
		}
		return s, err
	}
	// The pid was the caller's when the call was still waiting.
	if !t.valid() {
		return s, errGone
	}
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		if err == unix.EPERM {
			t.sv.srv.Log.Warn("preload: cannot take the program's socket (pidfd_getfd: permission denied; a program that made itself undumpable, or ptrace restrictions)", "pid", t.pid)
			return s, unix.EACCES
		}
		return s, err
	}
	s.fd = dup
	// The family alone decides a Unix socket's call (it continues): the
	// guard under the library sees many.
	if s.family, err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || (s.family != unix.AF_INET && s.family != unix.AF_INET6) {
		return s, err
	}
	if s.sotype, err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return s, err
	}
	s.proto, err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return s, err
}

// pidfdThread (PIDFD_THREAD, Linux 6.9) opens a pidfd for a thread that
// leads no thread group: a notification names the calling thread, and a
// Go program calls from any of its threads.
const pidfdThread = unix.O_EXCL

// openCaller opens a pidfd for the thread tid; before Linux 6.9, for its
// thread group, which shares the thread's descriptors unless it was
// cloned without them (no program we know of does that and connects).
//
// tgid is the thread's process where that came out on the way (0 where
// not: trapped.process asks).
func openCaller(tid int) (fd, tgid int, err error) {
	fd, err = unix.PidfdOpen(tid, pidfdThread)
	if err != unix.EINVAL {
		return fd, 0, err
	}
	// Before 6.9 a pidfd is a thread group leader's: one for tid is.
	if fd, err = unix.PidfdOpen(tid, 0); err != unix.ENOENT {
		return fd, tid, err
	}
	tgid, ok := threadGroup(tid)
	if !ok {
		return -1, 0, unix.ESRCH
	}
	fd, err = unix.PidfdOpen(tgid, 0)
	return fd, tgid, err
}

// connectTrapped is connect(2): the same CONNECT the library sends.
// connectAddr reads connect's address and answers at once what needs no
// flow: done says so.
func (sv *supervisor) connectAddr(t *trapped, sock trappedSocket, addrPtr, addrLen uint64) (addr []byte, a answer, err error, done bool) {
	if addrLen > sockaddrMax || addrLen < 2 {
		return nil, answerErrno(unix.EINVAL), nil, true
	}
	addr, err = t.read(addrPtr, int(addrLen))
	if err != nil {
		return nil, answerErr(err), err, true
	}
	if binary.NativeEndian.Uint16(addr) == unix.AF_UNSPEC {
		// Dissolves an association; reaches nobody.
		return nil, answerErr(rawConnect(sock.fd, addr)), nil, true
	}
	if len(addr) > addrMax {
		addr = addr[:addrMax]
	}
	if sv.plainDirect(addr) {
		// A connect again on a connected socket gets the kernel's own
		// answer here.
		sv.logKernelConnect(t, sock.sotype, addr)
		return nil, answerContinue(), nil, true
	}
	return addr, answer{}, nil, false
}

// connectTrapped is the rest of connect(2): the same CONNECT the library
// sends, with the address connectAddr read.
func (sv *supervisor) connectTrapped(ctx context.Context, t *trapped, sock trappedSocket, addr []byte) (answer, error) {
	if sock.sotype == unix.SOCK_STREAM {
		// A connect again on a socket already connected or connecting
		// (an old way to wait for a non-blocking connect; or a call a
		// signal restarted on an older kernel) gets the kernel's answer,
		// not a second flow.
		if info, err := unix.GetsockoptTCPInfo(sock.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			switch info.State {
			case unix.BPF_TCP_ESTABLISHED:
				return answerErrno(unix.EISCONN), nil
			case unix.BPF_TCP_SYN_SENT:
				return answerErrno(unix.EALREADY), nil
			}
		}
	}
	if sock.sotype == unix.SOCK_DGRAM && !sv.carriesDgrams(addr) {
		// Resolvers connect a UDP socket to every address they sort
		// (glibc's getaddrinfo, Go's), to learn the source the kernel
		// would pick, and send nothing: under a profile for streams only
		// that is no failed flow worth a warning. A datagram sent later
		// is refused, and logged, as a flow.
		sv.srv.Log.Debug("preload: a UDP connect the profile cannot carry", "pid", t.pid)
		return answerErr(funnel.Errorf(funnel.KindNotSupported, "no datagrams")), nil
	}
	req := request{Version: wireVersion, Op: opConnect, Arg: int32(sock.sotype), Addr: addr}
	fd, err := unix.FcntlInt(uintptr(sock.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return answerErr(err), nil
	}
	errno, _ := sv.srv.connect(ctx, sv.peer(t), req, fd) // closes fd
	if errno == 0 || errno == unix.EINPROGRESS {
		sv.noteHidden(sock.fd, addr)
	}
	return answerErrno(errno), nil
}

// plainDirect: under a profile that is plain direct (every flow one
// connect to exactly the address asked for), the program's own call may
// go on in the kernel — the library's fast path, for the supervisor —
// unless the address is one the funnel must see: a synthetic one (a name)
// or a system resolver's port 53. The kernel reads the address again when
// the call goes on; a program that changed it in between, on purpose,
// could reach a resolver directly, which the profile allows anyway.
func (sv *supervisor) plainDirect(addr []byte) bool {
	if sv.srv.guard != nil {
		// Under guard=netns the program's own connect reaches loopback
		// only: everything goes through the funnel, as for the library.
		return false
	}
	ap, _, ok := parseSockaddr(addr)
	if !ok || isSynthetic(ap.Addr()) || isSystemResolver(ap) {
		return false
	}
	pl, err := sv.srv.Engine.Resolve(sv.srv.Selector)
	if err != nil {
		return false
	}
	pol, ok := pl.KernelDial()
	return ok && pol.Plain
}

// logKernelConnect logs, under --debug, a connect left to the kernel, as
// the library reports its own: the funnel never sees its bytes or its
// result.
func (sv *supervisor) logKernelConnect(t *trapped, sotype int, addr []byte) {
	if !sv.srv.Log.Enabled(context.Background(), slog.LevelInfo) || sv.libraryReports(t.pid) {
		return
	}
	if f := sv.srv.libraryFlow(sv.peer(t), request{Arg: int32(sotype), Addr: addr}); f != nil {
		how := "flow connected by the program (mode=seccomp, plain direct)"
		if sv.guarded {
			how = "flow connected by the program past the library (seccomp guard, plain direct)"
		}
		sv.srv.Engine.EndUncounted(f, how)
	}
}

// carriesDgrams: may a UDP socket connect to addr under the profile? The
// system's resolvers always (the funnel answers them).
func (sv *supervisor) carriesDgrams(addr []byte) bool {
	ap, _, ok := parseSockaddr(addr)
	if !ok || isSystemResolver(ap) {
		return true
	}
	pl, err := sv.srv.Engine.Resolve(sv.srv.Selector)
	return err != nil || pl.Accepts(funnel.Dgram)
}

func rawConnect(fd int, sa []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
	if errno != 0 {
		return errno
	}
	return nil
}

// sendto on a datagram socket, with an address (the filter passes the
// others): the datagram is read from the program and sent from its socket
// to where the funnel says.
func (sv *supervisor) sendto(ctx context.Context, t *trapped, sock trappedSocket, args [6]uint64) (answer, error) {
	buf, size, flags, addrPtr, addrLen := args[1], args[2], int(args[3]), args[4], args[5]
	if addrLen > sockaddrMax {
		return answerErrno(unix.EINVAL), nil
	}
	if size > dgramMax {
		return answerErrno(unix.EMSGSIZE), nil
	}
	var to []byte
	if addrLen > 0 {
		var err error
		if to, err = t.read(addrPtr, int(addrLen)); err != nil {
			return answerErr(err), err
		}
	}
	if to != nil && sv.plainDirect(to) {
		return answerContinue(), nil
	}
	payload, err := t.read(buf, int(size))
	if err != nil {
		return answerErr(err), err
	}
	n, err := sv.sendDgram(ctx, t, sock, to, [][]byte{payload}, nil, flags)
	if err != nil {
		return answerErr(err), nil
	}
	return answerVal(int64(n)), nil
}

// msghdr's layout: the offsets of msg_name, msg_namelen, msg_iov,
// msg_iovlen, msg_control, msg_controllen, and its size.
type msghdrLayout struct {
	name, namelen, iov, iovlen, control, controllen, size int
	ptr                                                   int // pointer and size_t width
}

var (
	msghdr64 = msghdrLayout{name: 0, namelen: 8, iov: 16, iovlen: 24, control: 32, controllen: 40, size: 56, ptr: 8}
	msghdr32 = msghdrLayout{name: 0, namelen: 4, iov: 8, iovlen: 12, control: 16, controllen: 20, size: 28, ptr: 4}
)

func (t *trapped) layout() msghdrLayout {
	if t.ptr32 {
		return msghdr32
	}
	return msghdr64
}

func (l msghdrLayout) word(b []byte, off int) uint64 {
	if l.ptr == 4 {
		return uint64(binary.NativeEndian.Uint32(b[off:]))
	}
	return binary.NativeEndian.Uint64(b[off:])
}

// sendmsg on a datagram socket: the message at msgPtr is read once —
// header, address, data and control — and sent from the program's socket.
func (sv *supervisor) sendmsg(ctx context.Context, t *trapped, sock trappedSocket, msgPtr uint64, flags int) (int, error) {
	l := t.layout()
	hdr, err := t.read(msgPtr, l.size)
	if err != nil {
		return 0, err
	}
	namePtr, nameLen := l.word(hdr, l.name), uint64(binary.NativeEndian.Uint32(hdr[l.namelen:]))
	iovPtr, iovLen := l.word(hdr, l.iov), l.word(hdr, l.iovlen)
	ctlPtr, ctlLen := l.word(hdr, l.control), l.word(hdr, l.controllen)
	if iovLen > iovMax {
		return 0, unix.EMSGSIZE
	}
	if ctlLen > controlMax {
		return 0, unix.ENOBUFS
	}
	var to []byte
	if namePtr != 0 && nameLen > 0 {
		if nameLen > sockaddrMax {
			return 0, unix.EINVAL
		}
		if to, err = t.read(namePtr, int(nameLen)); err != nil {
			return 0, err
		}
	}
	var payload []byte
	if iovLen > 0 {
		iovs, err := t.read(iovPtr, int(iovLen)*2*l.ptr)
		if err != nil {
			return 0, err
		}
		remote := make([]unix.RemoteIovec, 0, iovLen)
		total := 0
		for i := 0; i < int(iovLen); i++ {
			base, n := l.word(iovs, 2*l.ptr*i), l.word(iovs, 2*l.ptr*i+l.ptr)
			if n == 0 {
				continue
			}
			if n > dgramMax || total+int(n) > dgramMax {
				return 0, unix.EMSGSIZE
			}
			total += int(n)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(base), Len: int(n)})
		}
		if total > 0 {
			payload = make([]byte, total)
			// process_vm_readv takes at most IOV_MAX remote pieces, as
			// many as sendmsg.
			if err := t.readv(payload, remote); err != nil {
				return 0, err
			}
		}
	}
	var control []byte
	if ctlPtr != 0 && ctlLen > 0 {
		if control, err = t.read(ctlPtr, int(ctlLen)); err != nil {
			return 0, err
		}
		if t.ptr32 && strconv.IntSize == 64 {
			if control, err = nativeControl(control); err != nil {
				return 0, err
			}
		}
	}
	return sv.sendDgram(ctx, t, sock, to, [][]byte{payload}, control, flags)
}

// nativeControl rewrites control messages from the compat layout (a
// 32-bit cmsg_len, 4-byte alignment) into ours, for sendmsg on our
// duplicate.
func nativeControl(b []byte) ([]byte, error) {
	const hdr32 = 12
	var out []byte
	for len(b) >= hdr32 {
		n := int(binary.NativeEndian.Uint32(b))
		if n < hdr32 || n > len(b) {
			return nil, unix.EINVAL
		}
		level, typ := int32(binary.NativeEndian.Uint32(b[4:])), int32(binary.NativeEndian.Uint32(b[8:]))
		data := b[hdr32:n]
		m := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&m[0]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(m[unix.CmsgLen(0):], data)
		out = append(out, m...)
		adv := (n + 3) &^ 3
		if adv > len(b) {
			break
		}
		b = b[adv:]
	}
	return out, nil
}

// sendmmsg: each message as sendmsg, its msg_len written back, up to the
// first failure, as the kernel does.
func (sv *supervisor) sendmmsg(ctx context.Context, t *trapped, sock trappedSocket, vec, vlen uint64, flags int) (answer, error) {
	if vlen > iovMax {
		vlen = iovMax
	}
	l := t.layout()
	stride := uint64(l.size + 4)
	if l.ptr == 8 {
		stride = uint64(l.size + 8) // msg_len and its padding
	}
	sent := 0
	for i := uint64(0); i < vlen; i++ {
		n, err := sv.sendmsg(ctx, t, sock, vec+i*stride, flags)
		if err != nil {
			if errors.Is(err, errGone) {
				return answer{}, err
			}
			if sent == 0 {
				return answerErr(err), nil
			}
			break
		}
		var lenBuf [4]byte
		binary.NativeEndian.PutUint32(lenBuf[:], uint32(n))
		if err := t.write(vec+i*stride+uint64(l.size), lenBuf[:]); err != nil {
			if sent == 0 {
				return answerErrno(unix.EFAULT), nil
			}
			break
		}
		sent++
	}
	return answerVal(int64(sent)), nil
}

// sendDgram sends a datagram from the program's socket (our duplicate of
// it): to nobody in particular (the socket's peer, which a connect of
// ours chose) or, given an address, to where the funnel routes it.
func (sv *supervisor) sendDgram(ctx context.Context, t *trapped, sock trappedSocket, to []byte, payload [][]byte, control []byte, flags int) (int, error) {
	var dest unix.Sockaddr
	if len(to) > 0 {
		var err error
		if dest, err = sv.route(ctx, t, sock, to); err != nil {
			return 0, err
		}
	}
	for {
		n, err := unix.SendmsgBuffers(sock.fd, payload, control, dest, flags)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

// route is where a datagram of this socket to the address the program
// wrote goes: the UDP_ASSOC answer the library would get, remembered for
// a while so that a datagram costs no new flow.
func (sv *supervisor) route(ctx context.Context, t *trapped, sock trappedSocket, to []byte) (unix.Sockaddr, error) {
	var st unix.Stat_t
	if err := unix.Fstat(sock.fd, &st); err != nil {
		return nil, err
	}
	key := dgramRouteKey{ino: st.Ino, dest: string(to)}
	now := time.Now()
	sv.routesMu.Lock()
	r, found := sv.routes[key]
	sv.routesMu.Unlock()
	if found && now.Before(r.expires) {
		return r.sockaddr(sock.family), nil
	}
	asked, scope, valid := parseSockaddr(to)
	if !valid {
		return nil, unix.EAFNOSUPPORT
	}
	if sv.plainDirect(to) {
		// Where it was going, as read once.
		return dgramRoute{to: asked, scope: scope}.sockaddr(sock.family), nil
	}
	if sv.guarded && sv.srv.udp.park.serves(unmapAP(asked)) {
		// The library's own datagram to the relay or DNS responder the
		// funnel gave it: already through the profile once. Sent where
		// it was going, as read once, and remembered like any route.
		r = dgramRoute{to: asked, scope: scope, expires: now.Add(dgramRouteTTL)}
		sv.remember(key, r, now)
		return r.sockaddr(sock.family), nil
	}
	if len(to) > addrMax {
		to = to[:addrMax]
	}
	dup, err := unix.FcntlInt(uintptr(sock.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var resp response
	sv.srv.udpAssoc(ctx, sv.peer(t), request{Version: wireVersion, Op: opUDPAssoc, Addr: to}, dup, &resp) // closes dup
	if e := int32(binary.NativeEndian.Uint32(resp[respErr:])); e != 0 {
		return nil, unix.Errno(e)
	}
	n := binary.NativeEndian.Uint32(resp[respAddrLen:])
	ap, scope, valid := parseSockaddr(resp[respAddr : respAddr+int(n)])
	if !valid {
		return nil, unix.EIO
	}
	r = dgramRoute{to: ap, scope: scope, expires: now.Add(dgramRouteTTL)}
	if unmapAP(asked) != unmapAP(ap) {
		sv.hidden.add(st.Ino, ap, to)
	}
	sv.remember(key, r, now)
	return r.sockaddr(sock.family), nil
}

func (sv *supervisor) remember(key dgramRouteKey, r dgramRoute, now time.Time) {
	sv.routesMu.Lock()
	defer sv.routesMu.Unlock()
	if len(sv.routes) > 4096 {
		for k, v := range sv.routes {
			if now.After(v.expires) {
				delete(sv.routes, k)
			}
		}
	}
	sv.routes[key] = r
}

// sockaddr is a fresh Sockaddr for each send: the system call writes its
// raw form into it, so one shared by concurrent sends would race.
func (r dgramRoute) sockaddr(family int) unix.Sockaddr {
	sa := unixSockaddr(r.to, family)
	if s6, is6 := sa.(*unix.SockaddrInet6); is6 {
		s6.ZoneId = r.scope
	}
	return sa
}

// Compile-time check that the structures have the kernel's sizes.
var (
	_ [unsafe.Sizeof(seccompNotif{}) - 0x50]byte
	_ [0x50 - unsafe.Sizeof(seccompNotif{})]byte
	_ [unsafe.Sizeof(seccompNotifResp{}) - 0x18]byte
	_ [0x18 - unsafe.Sizeof(seccompNotifResp{})]byte
)

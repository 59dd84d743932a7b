//go:build linux

package preload

import (
	"encoding/binary"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Processes the program leaves running when it exits (a daemon it
// started, a browser's zygote, a tmux server) keep the filter: with no
// listener left, every call it stops fails with ENOSYS — a recvmsg on a
// Unix socket too, and a program that retries that spins forever. So when
// the program exits while filtered processes remain, the launcher hands
// the listener to a keeper: funtun again (/proc/self/exe), in a session of
// its own, which answers as the library does once its funnel is gone —
// what reaches no network (Unix sockets, the receive calls, a stream's
// send) continues, what would (connect, a datagram sent to an address, a
// listen for the profile's pieces) fails closed with ECONNREFUSED — and
// exits when the last of them has.

const keeperArg = "__funtun-seccomp-keeper"

func init() {
	// Before main and every command: the keeper does nothing else.
	if len(os.Args) >= 2 && os.Args[1] == keeperArg {
		os.Exit(keepOrphans(3))
	}
}

// Supervision is the launcher's handle on the supervisor it started, if
// it started one.
type Supervision struct {
	mu sync.Mutex
	sv *supervisor
}

func (k *Supervision) set(sv *supervisor) {
	k.mu.Lock()
	k.sv = sv
	k.mu.Unlock()
}

// handOverWait bounds the wait for calls the supervisor is still carrying
// out (their context is ended first, so they finish at once unless a piece
// ignores it).
const handOverWait = 5 * time.Second

// HandOver is called when the program has exited: when filtered processes
// remain, the listener goes to a keeper; the supervisor stops either way.
func (k *Supervision) HandOver() {
	k.mu.Lock()
	sv := k.sv
	k.sv = nil
	k.mu.Unlock()
	if sv == nil {
		return
	}
	if !sv.stopClose() {
		return // ctx has ended: the listener is closing
	}
	// The reader stops, the calls in progress answer (their context ends
	// first), and the listener goes to a keeper if anyone is left to
	// stop a call.
	sv.stopReader()
	sv.closeOnce.Do(func() {
		sv.drain()
		defer unix.Close(sv.listener)
		defer unix.Close(sv.stopFD)
		if sv.hungUp.Load() {
			return
		}
		pfd := []unix.PollFd{{Fd: int32(sv.listener), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 0); err != nil || pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return // nobody left
		}
		if err := startKeeper(sv.listener); err != nil {
			sv.srv.Log.Warn("preload: cannot leave the seccomp listener to a keeper: processes the program left running get ENOSYS for their socket calls", "err", err)
		}
	})
}

func startKeeper(listener int) error {
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	// The listener is close-on-exec here; the keeper gets a copy as fd 3.
	pid, err := syscall.ForkExec("/proc/self/exe", []string{"funtun", keeperArg}, &syscall.ProcAttr{
		Env:   []string{},
		Files: []uintptr{null.Fd(), null.Fd(), null.Fd(), uintptr(listener)},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	// Its parent, funtun, exits next; init reaps it.
	_ = pid
	return nil
}

// keepOrphans answers the notifications of listener until no filtered
// process is left.
func keepOrphans(listener int) int {
	abis, err := sockABIs(runtime.GOARCH)
	if err != nil {
		return 1
	}
	sv := &supervisor{listener: listener, abis: abis}
	for {
		pfd := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return 1
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				return 0
			}
			continue
		}
		var n seccompNotif
		if err := ioctlPtr(listener, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n)); err != nil {
			if err == unix.ENOENT || err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			return 1
		}
		t := &trapped{sv: sv, id: n.ID, pid: int(n.Pid), pidfd: -1}
		a := sv.orphanAnswer(t, n.Data)
		sv.reply(t, a, nil)
	}
}

// orphanAnswer is the keeper's answer to one call.
func (sv *supervisor) orphanAnswer(t *trapped, d seccompData) answer {
	abi, call, found := lookupCall(sv.abis, d.Arch, d.Nr)
	if !found {
		return answerErrno(unix.ENOSYS)
	}
	t.ptr32 = abi.ptr32
	args := d.Args
	if abi.ptr32 {
		for i := range args {
			args[i] = uint64(uint32(args[i]))
		}
	}
	if call == callSocketcall {
		c, known := socketcallCalls[args[0]]
		if !known {
			return answerContinue()
		}
		words, err := t.read(args[1], 6*4)
		if err != nil {
			return answerErrno(unix.EFAULT)
		}
		call = c
		for i := range args {
			args[i] = uint64(binary.NativeEndian.Uint32(words[4*i:]))
		}
	}
	switch call {
	case callGetpeername, callRecvfrom, callRecvmsg, callRecvmmsg:
		// They only write to the program's memory.
		return answerContinue()
	}
	family, sotype, err := t.socketKind(int(int32(args[0])))
	if err != nil {
		return answerErr(err)
	}
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return answerContinue()
	}
	switch call {
	case callSendto:
		if sotype != unix.SOCK_DGRAM && args[3]&unix.MSG_FASTOPEN == 0 {
			return answerContinue()
		}
	case callSendmsg:
		if sotype != unix.SOCK_DGRAM && args[2]&unix.MSG_FASTOPEN == 0 {
			return answerContinue()
		}
	case callSendmmsg:
		if sotype != unix.SOCK_DGRAM && args[3]&unix.MSG_FASTOPEN == 0 {
			return answerContinue()
		}
	}
	return answerErrno(unix.ECONNREFUSED)
}

// socketKind is the family and type of the program's descriptor fd.
func (t *trapped) socketKind(fd int) (family, sotype int, err error) {
	if fd < 0 {
		return 0, 0, unix.EBADF
	}
	pidfd, _, err := openCaller(t.pid)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(pidfd)
	if !t.valid() {
		return 0, 0, errGone
	}
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(dup)
	if family, err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return 0, 0, err
	}
	sotype, err = unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_TYPE)
	return family, sotype, err
}

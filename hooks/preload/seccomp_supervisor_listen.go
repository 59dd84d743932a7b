//go:build linux

package preload

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Incoming flows under mode=seccomp, when the profile has a piece that
// acts on them: listen() is the moment, as for the library (inbound.go).
// The funnel listens on the program's own socket (its address and options
// are the program's) and the program gets, at the same descriptor number,
// a hidden listener on loopback that the funnel's side of each connection
// reaches after the pieces — put there by the kernel
// (SECCOMP_IOCTL_NOTIF_ADDFD), in place, while the program waits in its
// listen(). Unlike the library, nothing shows the program the real client
// or its public address: accept() and getsockname() give loopback ones.

// seccompNotifAddfd is struct seccomp_notif_addfd (its size, 0x18, is in
// the ioctl's number).
type seccompNotifAddfd struct {
	ID         uint64
	Flags      uint32
	SrcFD      uint32
	NewFD      uint32
	NewFDFlags uint32
}

var (
	_ [unsafe.Sizeof(seccompNotifAddfd{}) - 0x18]byte
	_ [0x18 - unsafe.Sizeof(seccompNotifAddfd{})]byte
)

func (sv *supervisor) listenTrapped(ctx context.Context, t *trapped, sock trappedSocket, fd int, backlog int) (answer, error) {
	pl, err := sv.srv.Engine.Resolve(sv.srv.Selector)
	if err != nil || sock.sotype != unix.SOCK_STREAM || !takesListen(pl) {
		return answerContinue(), nil
	}
	hidden, hiddenAddr, err := hiddenListener(sock.family, backlog)
	if err != nil {
		return answerErr(err), nil
	}
	defer unix.Close(hidden)
	// The program's descriptor keeps its flags on the new file:
	// O_NONBLOCK lives in the file, FD_CLOEXEC in the program's table.
	if fl, err := unix.FcntlInt(uintptr(sock.fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK != 0 {
		unix.SetNonblock(hidden, true)
	}
	var fdFlags uint32
	if closeOnExec(t.pid, fd) {
		fdFlags = unix.O_CLOEXEC
	}
	public, err := unix.FcntlInt(uintptr(sock.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return answerErr(err), nil
	}
	var resp response
	req := request{Version: wireVersion, Op: opListen, Arg: int32(backlog), Addr: rawSockaddr(hiddenAddr, sock.family)}
	sv.srv.listen(ctx, sv.peer(t), req, public, &resp) // owns public
	if e := int32(native.Uint32(resp[respErr:])); e != 0 {
		return answerErrno(unix.Errno(e)), nil
	}
	if native.Uint32(resp[respFlags:])&listenTaken == 0 {
		return answerContinue(), nil
	}
	add := seccompNotifAddfd{ID: t.id, Flags: unix.SECCOMP_ADDFD_FLAG_SETFD, SrcFD: uint32(hidden), NewFD: uint32(fd), NewFDFlags: fdFlags}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(sv.listener), unix.SECCOMP_IOCTL_NOTIF_ADDFD, uintptr(unsafe.Pointer(&add))); errno != 0 {
		// The program is gone or its call ended: the funnel's listener
		// ends when a connection finds no hidden one (unlistenIfGone).
		sv.srv.unlistenIfGone(hiddenAddr)
		if errno == unix.ENOENT {
			return answer{}, errGone
		}
		return answerErrno(errno), nil
	}
	return answerVal(0), nil
}

// hiddenListener is a listening socket on loopback of the family.
func hiddenListener(family, backlog int) (int, netip.AddrPort, error) {
	s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	loop := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	if family == unix.AF_INET6 {
		loop = netip.AddrPortFrom(netip.IPv6Loopback(), 0)
	}
	// A port the hidden listener's probe (hiddenStillListening) can bind
	// over once it is gone.
	unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(s, unixSockaddr(loop, family)); err != nil {
		unix.Close(s)
		return -1, netip.AddrPort{}, err
	}
	if backlog <= 0 || backlog > 4096 {
		backlog = 4096
	}
	if err := unix.Listen(s, backlog); err != nil {
		unix.Close(s)
		return -1, netip.AddrPort{}, err
	}
	sa, err := unix.Getsockname(s)
	ap, ok := addrPortOf(sa)
	if err != nil || !ok {
		unix.Close(s)
		return -1, netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return s, unmapAP(ap), nil
}

// closeOnExec reads FD_CLOEXEC of the program's descriptor from its
// fdinfo ("flags:", octal, O_CLOEXEC among them).
func closeOnExec(pid, fd int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			fl, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && fl&unix.O_CLOEXEC != 0
		}
	}
	return false
}

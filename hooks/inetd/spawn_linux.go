//go:build linux

package inetd

import (
	"bufio"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// start runs the line's program with stdio as its stdin and stdout and a
// pipe to funtun's log as its stderr, in a session of its own, as the
// line's user. onExit runs once it has been reaped. The caller keeps stdio
// and closes it when it likes: the child has its own copy.
//
// It forks through syscall.ForkExec (clone with CLONE_VFORK: no copy of
// funtun's page tables) rather than os/exec, whose Wait parks a thread
// in waitid(2) per child: a pidfd in the Go poller tells when the child
// has exited, so a thousand running programs cost no thread.
func (srv *Server) start(l *Line, stdio int, env []string, onExit func(pid int, ws unix.WaitStatus)) (int, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	pidfd := -1
	sys := &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd}
	if l.Cred != nil {
		sys.Credential = &syscall.Credential{Uid: l.Cred.UID, Gid: l.Cred.GID, Groups: l.Cred.Groups}
	}
	pid, err := syscall.ForkExec(l.Path, l.Args, &syscall.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []uintptr{uintptr(stdio), uintptr(stdio), uintptr(p[1])},
		Sys:   sys,
	})
	if err == nil {
		srv.kidsMu.Lock()
		srv.children[pid] = struct{}{}
		srv.kids.Add(1)
		srv.kidsMu.Unlock()
	}
	unix.Close(p[1])
	if err != nil {
		unix.Close(p[0])
		return 0, err
	}
	go srv.logStderr(l, pid, p[0])
	go srv.reap(pid, pidfd, onExit)
	return pid, nil
}

// reap waits for pid's exit, reaps it, and calls onExit.
func (srv *Server) reap(pid, pidfd int, onExit func(int, unix.WaitStatus)) {
	defer srv.kids.Done()
	var ws unix.WaitStatus
	// waitpid under kidsMu: once the pid is reaped the system may give
	// it to another process, and Stop must not signal that one.
	tryReap := func(flags int) bool {
		srv.kidsMu.Lock()
		defer srv.kidsMu.Unlock()
		for {
			got, err := unix.Wait4(pid, &ws, flags, nil)
			if err == unix.EINTR {
				continue
			}
			if got == pid || err != nil {
				delete(srv.children, pid)
				return true
			}
			return false
		}
	}
	if pidfd >= 0 && unix.SetNonblock(pidfd, true) == nil {
		f := os.NewFile(uintptr(pidfd), "pidfd")
		if rc, err := f.SyscallConn(); err == nil {
			// A pidfd turns readable when the process exits.
			rc.Read(func(uintptr) bool { return tryReap(unix.WNOHANG) })
		}
		f.Close()
	} else if pidfd >= 0 {
		unix.Close(pidfd)
	}
	if _, running := srv.lookupChild(pid); running {
		// No pidfd (an old kernel): wait in a thread of its own,
		// without the lock, then reap.
		unix.Waitid(unix.P_PID, pid, nil, unix.WEXITED|unix.WNOWAIT, nil)
		tryReap(0)
	}
	onExit(pid, ws)
}

func (srv *Server) lookupChild(pid int) (struct{}, bool) {
	srv.kidsMu.Lock()
	defer srv.kidsMu.Unlock()
	v, ok := srv.children[pid]
	return v, ok
}

// logStderr logs what the program writes to its stderr, a line at a time
// with its line, service and pid. Overlong lines are cut in pieces.
func (srv *Server) logStderr(l *Line, pid, fd int) {
	unix.SetNonblock(fd, true)
	f := os.NewFile(uintptr(fd), "stderr")
	defer f.Close()
	br := bufio.NewReaderSize(f, 2048)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			n := len(b)
			if b[n-1] == '\n' {
				n--
			}
			if n > 0 && b[n-1] == '\r' {
				n--
			}
			srv.Log.Info("inetd: program stderr", "line", l.Pos(), "service", l.Service, "pid", pid, "stderr", string(b[:n]))
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

//go:build !linux

package socks5d

import (
	"os"
	"syscall"
)

// streamSocketpair makes a connected pair of Unix stream sockets, both
// close-on-exec. Not every system takes SOCK_CLOEXEC in socketpair(2)
// (macOS does not), so hold the fork lock while the flag is set, as the
// standard library does, lest a program started meanwhile inherit them.
func streamSocketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return [2]int{-1, -1}, os.NewSyscallError("socketpair", err)
	}
	syscall.CloseOnExec(fds[0])
	syscall.CloseOnExec(fds[1])
	return fds, nil
}

package socks5d

import (
	"os"
	"syscall"
)

// streamSocketpair makes a connected pair of Unix stream sockets, both
// close-on-exec, in one call.
func streamSocketpair() ([2]int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return [2]int{-1, -1}, os.NewSyscallError("socketpair", err)
	}
	return fds, nil
}

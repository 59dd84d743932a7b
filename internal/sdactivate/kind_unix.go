//go:build unix

package sdactivate

import "golang.org/x/sys/unix"

// socketKind asks the kernel what the descriptor is, because
// net.FileListener accepts a connected TCP socket (Accept=yes) and only
// fails later, in Accept.
func socketKind(fd int) (socketKindT, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err == unix.ENOTSOCK {
		return kindOther, nil
	}
	if err != nil {
		return kindOther, err
	}
	switch typ {
	case unix.SOCK_DGRAM:
		return kindDatagram, nil
	case unix.SOCK_STREAM:
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return kindOther, err
		}
		if listening != 0 {
			return kindListening, nil
		}
		return kindConnected, nil
	}
	return kindOther, nil
}

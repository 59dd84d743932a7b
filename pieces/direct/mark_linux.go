package direct

import (
	"syscall"

	"golang.org/x/sys/unix"
)

const markSupported = true

// markControl sets SO_MARK before connect, so the very first packet
// already carries it (the firewall rule that skips funtun's sockets sees
// the SYN).
func markControl(mark int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		}); err != nil {
			return err
		}
		if serr != nil {
			return &markError{serr}
		}
		return nil
	}
}

type markError struct{ err error }

func (e *markError) Error() string {
	return "setsockopt SO_MARK: " + e.err.Error() + " (needs CAP_NET_ADMIN)"
}
func (e *markError) Unwrap() error { return e.err }

package direct

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/funtun/funtun/funnel"

	"golang.org/x/sys/unix"
)

const markSupported = true

// sockControl sets SO_MARK and the congestion control before connect,
// so the very first packet already carries the mark (the firewall rule
// that skips funtun's sockets sees the SYN).
func sockControl(mark int, cc string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if mark != 0 {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
					serr = &markError{err}
					return
				}
			}
			if cc != "" {
				if err := unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); err != nil {
					serr = fmt.Errorf("setsockopt TCP_CONGESTION %s: %w", cc, err)
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}
}

// congestionParam reads congestion=NAME and checks it against what the
// kernel has, so a typo fails when the profile compiles, not at the first
// connect.
func congestionParam(p *funnel.Params) (string, error) {
	cc := p.String("congestion", "")
	if cc == "" {
		return "", nil
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		return cc, nil // no procfs to ask: the connect will say
	}
	avail := strings.Fields(string(b))
	if !slices.Contains(avail, cc) {
		return "", p.Errorf("congestion", "%q is not available here (available: %s; `modprobe tcp_%s` may add it)", cc, strings.Join(avail, " "), cc)
	}
	return cc, nil
}

type markError struct{ err error }

func (e *markError) Error() string {
	return "setsockopt SO_MARK: " + e.err.Error() + " (needs CAP_NET_ADMIN)"
}
func (e *markError) Unwrap() error { return e.err }

//go:build !linux

package direct

import (
	"syscall"

	"github.com/funtun/funtun/funnel"
)

// SO_MARK and TCP_CONGESTION are set the Linux way; New refuses mark=
// and congestion= elsewhere, so sockControl is never reached.
const markSupported = false

func sockControl(int, string) func(network, address string, c syscall.RawConn) error { return nil }

// congestionParam refuses congestion=: TCP_CONGESTION is set the Linux
// way only.
func congestionParam(p *funnel.Params) (string, error) {
	if cc := p.String("congestion", ""); cc != "" {
		return "", p.Errorf("congestion", "choosing the congestion control is supported on Linux only")
	}
	return "", nil
}

//go:build !linux

package funnel

import (
	"context"
	"net"
)

// Without epoll and splice, listeners are served the general way and
// relays keep their goroutines.

func (e *Engine) serveLoop(context.Context, *net.TCPListener, *FastListener) (bool, error) {
	return false, nil
}

func (e *Engine) kernelRelay(context.Context, *Run, net.Conn, net.Conn, RelayOptions) bool {
	return false
}

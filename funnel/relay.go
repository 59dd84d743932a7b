package funnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/funtun/funtun/internal/netx"
)

// Relay joins two connections until both directions end: bytes from app go
// to network (counted in up) and back (counted in down). Each direction
// half-closes its destination when its source ends, so protocols that signal
// "done" with a shutdown keep working. When both ends are kernel TCP sockets
// the bytes never enter user space: see spliceCopy.
func Relay(app, network net.Conn, up, down *atomic.Int64) error {
	done := make(chan error, 1)
	RelayAsync(app, network, up, down, func(err error) { done <- err })
	return <-done
}

// RelayAsync is Relay that returns at once: it starts one goroutine per
// direction and calls done, from the direction that ends last, with what
// Relay would have returned. The caller's goroutine can then end, and with
// it the stack it grew during the handshake and the dial: an idle flow holds
// just the two small stacks of goroutines parked in the poller.
func RelayAsync(app, network net.Conn, up, down *atomic.Int64, done func(error)) {
	if at, ok := app.(*net.TCPConn); ok {
		if nt, ok := network.(*net.TCPConn); ok {
			unpaceLoopback(at)
			unpaceLoopback(nt)
		}
	}
	r := &asyncRelay{app: app, network: network, done: done}
	r.left.Store(2)
	go r.run(network, app, up, &r.upErr)
	go r.run(app, network, down, &r.downErr)
}

type asyncRelay struct {
	app, network   net.Conn
	upErr, downErr error
	left           atomic.Int32
	done           func(error)
}

func (r *asyncRelay) run(dst, src net.Conn, count *atomic.Int64, errp *error) {
	err := copyHalf(dst, src, count)
	*errp = err
	if err != nil {
		// An error one way ends the flow: unblock the other way.
		r.app.Close()
		r.network.Close()
	}
	// The atomic orders this direction's error before the other's read.
	if r.left.Add(-1) != 0 {
		return
	}
	r.app.Close()
	r.network.Close()
	switch {
	case r.upErr != nil && !isClosedErr(r.upErr):
		err = r.upErr
	case r.downErr != nil && !isClosedErr(r.downErr):
		err = r.downErr
	default:
		err = nil
	}
	r.done(err)
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func copyHalf(dst, src net.Conn, count *atomic.Int64) error {
	var err error
	st, sok := src.(*net.TCPConn)
	dt, dok := dst.(*net.TCPConn)
	if sok && dok {
		err = spliceCopy(dt, st, count)
	} else {
		err = bufferCopy(dst, src, count)
	}
	if err == nil {
		netx.CloseWrite(dst)
	}
	return err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func bufferCopy(dst, src net.Conn, count *atomic.Int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			if count != nil {
				count.Add(int64(n))
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// Package netx holds the small network pieces that hooks and pieces share,
// each written once: the accept loop, the idle watcher, the prefixed
// connection, the half-close pass-through and the address converters.
package netx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"
)

// Accept backs off between these bounds after a temporary error.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
	// warnEvery spaces the warnings about temporary errors: under a flood
	// that keeps the process out of descriptors, one line a second says
	// as much as thousands.
	warnEvery = time.Second
)

// AcceptLoop accepts connections on l and hands each to serve until ctx
// ends. serve runs on the accepting goroutine, so it must be quick: start
// a goroutine for anything that waits.
//
// A temporary error (out of descriptors, a connection aborted before it
// was accepted, a deadline set on the listener) pauses accepting for a
// while that doubles from 5 ms up to 1 s and starts over after the next
// success; it is logged to log (slog.Default when nil) at most once a
// second. Any other error ends the loop and is returned, wrapping
// net.ErrClosed when someone other than ctx closed l.
//
// When ctx ends, AcceptLoop closes l to end a pending Accept and returns
// nil; a connection accepted in that moment is closed, not served.
func AcceptLoop(ctx context.Context, l net.Listener, serve func(net.Conn), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var b backoff
	var lastWarn time.Time
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !Temporary(err) {
				return fmt.Errorf("accepting on %s: %w", l.Addr(), err)
			}
			d := b.next()
			if now := time.Now(); now.Sub(lastWarn) >= warnEvery {
				lastWarn = now
				log.Warn("accept failed; pausing", "listen", l.Addr().String(), "err", err, "pause", d)
			}
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		b.reset()
		if ctx.Err() != nil {
			c.Close()
			return nil
		}
		serve(c)
	}
}

// Temporary reports whether an Accept error will likely pass by itself:
// the process or the system out of descriptors or buffers, a connection
// aborted before it was accepted, or a timeout (a deadline on the
// listener).
func Temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range temporaryErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

var temporaryErrnos = []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM}

// backoff is the pause after consecutive temporary errors: 5 ms, doubling
// up to 1 s.
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = minBackoff
	} else {
		b.d = min(2*b.d, maxBackoff)
	}
	return b.d
}

func (b *backoff) reset() { b.d = 0 }

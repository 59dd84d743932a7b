package rewrite

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/funtun/funtun/internal/netx"
)

// chunk bounds what one step of the rewriting takes in, so that a huge
// Write does not grow the held buffer beyond max plus this.
const chunk = 32 << 10

// conn rewrites what is written to it (up) and what is read from it (down).
type conn struct {
	net.Conn
	up, down replacer // nil: that direction passes untouched

	rmu     sync.Mutex
	readBuf []byte
	ready   []byte // rewritten bytes that Read has not handed out yet
	off     int
	rerr    error // the far side's end (io.EOF) or a broken connection, after ready

	wmu      sync.Mutex
	wbuf     []byte
	wclosed  bool
	closeErr error
}

func (c *conn) Read(p []byte) (int, error) {
	if c.down == nil {
		return c.Conn.Read(p)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for c.off == len(c.ready) {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.readBuf == nil {
			c.readBuf = make([]byte, chunk)
		}
		n, err := c.Conn.Read(c.readBuf)
		c.ready = c.down.push(c.ready[:0], c.readBuf[:n])
		c.off = 0
		switch {
		case err == io.EOF:
			// The held tail can be no match's beginning any more.
			c.ready = c.down.end(c.ready)
			c.rerr = io.EOF
		case isTimeout(err):
			// A deadline is not the end: the caller may read again.
			if c.off == len(c.ready) {
				return 0, err
			}
		case err != nil:
			c.rerr = err
		}
	}
	n := copy(p, c.ready[c.off:])
	c.off += n
	return n, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *conn) Write(p []byte) (int, error) {
	if c.up == nil {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return 0, net.ErrClosed
	}
	for done := 0; done < len(p); {
		n := min(chunk, len(p)-done)
		c.wbuf = c.up.push(c.wbuf[:0], p[done:done+n])
		if len(c.wbuf) > 0 {
			if _, err := c.Conn.Write(c.wbuf); err != nil {
				return done, err
			}
		}
		done += n
	}
	return len(p), nil
}

// flushUp sends the held tail of the up direction: at the end of the
// application's stream it can no longer begin a match. The caller holds wmu.
func (c *conn) flushUp() error {
	if c.up == nil || c.wclosed {
		return c.closeErr
	}
	c.wclosed = true
	c.wbuf = c.up.end(c.wbuf[:0])
	if len(c.wbuf) > 0 {
		_, c.closeErr = c.Conn.Write(c.wbuf)
	}
	return c.closeErr
}

// CloseWrite ends the up direction: the held tail goes out, then the
// half-close, so protocols that signal "done" with a shutdown keep working.
func (c *conn) CloseWrite() error {
	c.wmu.Lock()
	err := c.flushUp()
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	// No half-close below: closing is what the relay would do instead.
	return netx.CloseWrite(c.Conn)
}

// Close sends the held tail when it can do so without waiting for a Write
// in progress: Close is also how a relay unblocks a stuck direction, so it
// must never wait behind one.
func (c *conn) Close() error {
	if c.wmu.TryLock() {
		if c.up != nil && !c.wclosed {
			// A peer that stopped reading must not hold Close forever.
			c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			c.flushUp()
		}
		c.wmu.Unlock()
	}
	return c.Conn.Close()
}

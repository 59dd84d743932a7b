package rewrite

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/internal/netx"
)

// chunk bounds what one step of the rewriting takes in, so that a huge
// Write does not grow the held buffer beyond max plus this.
const chunk = 32 << 10

// conn rewrites what is written to it (up) and what is read from it (down).
//
// Bytes that may begin a match are held back until the next bytes show
// whether they do, but never longer than hold: a partial match at the end
// of what has come so far is no match once hold passes with nothing more,
// so a request whose last bytes look like the start of a match still goes
// out while its sender waits for the answer. Down, Read waits at most hold
// for the connection below when it holds bytes (the read goes on in the
// background and the next Read takes its result: no deadline is set on the
// connection below, whose deadlines stay the caller's). Up, a timer sends
// the held bytes when no Write follows within hold.
type conn struct {
	net.Conn
	up, down replacer // nil: that direction passes untouched
	hold     time.Duration

	rmu     sync.Mutex
	readBuf []byte
	ready   []byte // rewritten bytes that Read has not handed out yet
	off     int
	rerr    error           // the far side's end (io.EOF) or a broken connection, after ready
	pending chan readResult // a read below still running after a hold ran out
	rtimer  *time.Timer

	wmu       sync.Mutex
	wbuf      []byte
	wclosed   bool
	closeErr  error
	werr      error // a timed release that failed, for the next Write
	wtimer    *time.Timer
	releaseAt time.Time
	closed    atomic.Bool
}

type readResult struct {
	n   int
	err error
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
		n, late, err := c.readBelow()
		c.off = 0
		if late {
			// Nothing more came within hold: what is held is no match.
			c.ready = c.down.flush(c.ready[:0])
			continue
		}
		c.ready = c.down.push(c.ready[:0], c.readBuf[:n])
		if c.hold == 0 {
			c.ready = c.down.flush(c.ready)
		}
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

// readBelow reads from the connection below into readBuf. While bytes are
// held it waits at most hold: late reports that nothing came in that time,
// and the read goes on in the background for a later call to collect. The
// caller holds rmu.
func (c *conn) readBelow() (n int, late bool, err error) {
	if c.pending == nil {
		if c.hold == 0 || c.down.held() == 0 {
			n, err = c.Conn.Read(c.readBuf)
			return n, false, err
		}
		ch := make(chan readResult, 1)
		below, buf := c.Conn, c.readBuf
		go func() {
			n, err := below.Read(buf)
			ch <- readResult{n, err}
		}()
		c.pending = ch
	}
	if c.down.held() == 0 {
		r := <-c.pending
		c.pending = nil
		return r.n, false, r.err
	}
	if c.rtimer == nil {
		c.rtimer = time.NewTimer(c.hold)
	} else {
		c.rtimer.Reset(c.hold)
	}
	select {
	case r := <-c.pending:
		c.rtimer.Stop()
		c.pending = nil
		return r.n, false, r.err
	case <-c.rtimer.C:
		return 0, true, nil
	}
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
	if c.werr != nil {
		return 0, c.werr
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
	if c.up.held() == 0 {
		return len(p), nil
	}
	if c.hold == 0 {
		c.wbuf = c.up.flush(c.wbuf[:0])
		if _, err := c.Conn.Write(c.wbuf); err != nil {
			return len(p), err
		}
		return len(p), nil
	}
	c.releaseAt = time.Now().Add(c.hold)
	if c.wtimer == nil {
		c.wtimer = time.AfterFunc(c.hold, c.releaseUp)
	} else {
		c.wtimer.Reset(c.hold)
	}
	return len(p), nil
}

// releaseUp runs when hold has passed since a Write left bytes held: no
// Write came to finish the match, so they go out as they are. An error is
// the next Write's.
func (c *conn) releaseUp() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed || c.closed.Load() || c.werr != nil || c.up.held() == 0 {
		return
	}
	if time.Now().Before(c.releaseAt) {
		return // a Write came meanwhile and set the timer again
	}
	c.wbuf = c.up.flush(c.wbuf[:0])
	if len(c.wbuf) > 0 {
		if _, err := c.Conn.Write(c.wbuf); err != nil {
			c.werr = err
		}
	}
}

// flushUp sends the held tail of the up direction: at the end of the
// application's stream it can no longer begin a match. The caller holds wmu.
func (c *conn) flushUp() error {
	if c.up == nil || c.wclosed {
		return c.closeErr
	}
	c.wclosed = true
	if c.wtimer != nil {
		c.wtimer.Stop()
	}
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
	c.closed.Store(true)
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

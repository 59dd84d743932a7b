package shape

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/internal/netx"
)

// chunkSize is the most one delayed chunk holds.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// chunk is stream bytes held until due. The writer side also queues the
// half-close, so that it reaches the peer after the bytes before it; the
// reader side queues the read error after the bytes that came with it.
type chunk struct {
	buf        *[]byte
	data       []byte
	due        time.Time
	err        error
	closeWrite bool
}

func putChunk(c chunk) {
	if c.buf != nil {
		chunkPool.Put(c.buf)
	}
}

// streamConn shapes a stream. Write goes toward the network and spends the
// up bucket, Read comes from it and spends the down bucket.
type streamConn struct {
	net.Conn
	up, down *bucket
	step     int // the most bytes one wait covers: the burst
	delay    time.Duration
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup

	wmu         sync.Mutex
	wsleep      sleeper
	writeClosed bool

	rmu     sync.Mutex
	rsleep  sleeper
	cur     chunk // partly read
	haveCur bool
	readErr error

	out, in *ring[chunk] // only with delay
	sendErr atomic.Pointer[error]
	readDL  atomic.Int64 // unix ns, 0 for none; only with delay
}

// streamQueue bounds each direction's delay queue in chunks, so a delayed
// stream holds at most this many times chunkSize per direction.
const streamQueue = 64

func (s *Shape) wrapStream(c net.Conn) net.Conn {
	up, down := s.buckets()
	sc := &streamConn{Conn: c, up: up, down: down, step: int(min(s.burst, 1<<30)), delay: s.delay, done: make(chan struct{})}
	sc.wsleep.done, sc.rsleep.done = sc.done, sc.done
	if s.delay > 0 {
		sc.out, sc.in = newRing[chunk](streamQueue, streamQueue), newRing[chunk](streamQueue, streamQueue)
		sc.wg.Add(2)
		go sc.send()
		go sc.pump()
	}
	return sc
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeClosed {
		return 0, errors.New("shape: write after CloseWrite")
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), c.step)
		if c.out != nil {
			n = min(n, chunkSize)
		}
		if err := c.wsleep.sleep(c.up.take(n)); err != nil {
			return written, err
		}
		if c.out == nil {
			m, err := c.Conn.Write(p[:n])
			written += m
			if err != nil {
				return written, err
			}
		} else {
			bp := chunkPool.Get().(*[]byte)
			ch := chunk{buf: bp, data: (*bp)[:copy(*bp, p[:n])], due: time.Now().Add(c.delay)}
			if err := c.enqueue(ch); err != nil {
				putChunk(ch)
				return written, err
			}
			written += n
		}
		p = p[n:]
	}
	return written, nil
}

// enqueue waits for room: a full queue pushes back on the writer the way a
// full socket buffer does.
func (c *streamConn) enqueue(ch chunk) error {
	for {
		if p := c.sendErr.Load(); p != nil {
			return *p
		}
		if c.out.push(ch) {
			return nil
		}
		if err := c.wsleep.until(time.Time{}, c.out.space); err != nil {
			return err
		}
	}
}

// send writes queued chunks when they are due. After a failed write it
// keeps emptying the queue, so writers waiting for room see the error.
func (c *streamConn) send() {
	defer c.wg.Done()
	sl := sleeper{done: c.done}
	for {
		ch, ok, _ := c.out.peek()
		if !ok {
			if sl.until(time.Time{}, c.out.notify) != nil {
				return
			}
			continue
		}
		if time.Now().Before(ch.due) {
			if sl.until(ch.due, nil) != nil {
				return
			}
			continue
		}
		if ch, ok = c.out.pop(); !ok {
			continue
		}
		if c.sendErr.Load() == nil {
			var err error
			if ch.closeWrite {
				err = netx.CloseWrite(c.Conn)
			} else {
				_, err = c.Conn.Write(ch.data)
			}
			if err != nil {
				c.sendErr.Store(&err)
			}
		}
		putChunk(ch)
	}
}

// pump reads as bytes arrive, so that their delay counts from arrival.
// A full queue stops it reading, which the peer feels as a full window.
func (c *streamConn) pump() {
	defer c.wg.Done()
	sl := sleeper{done: c.done}
	for {
		select {
		case <-c.done:
			return
		default:
		}
		bp := chunkPool.Get().(*[]byte)
		n, err := c.Conn.Read(*bp)
		ch := chunk{buf: bp, data: (*bp)[:n], due: time.Now().Add(c.delay), err: err}
		for !c.in.push(ch) {
			if sl.until(time.Time{}, c.in.space) != nil {
				putChunk(ch)
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(p) > c.step {
		p = p[:c.step]
	}
	if c.in == nil {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.rsleep.sleep(c.down.take(n))
		}
		return n, err
	}
	for {
		if c.readErr != nil {
			return 0, c.readErr
		}
		if c.haveCur && len(c.cur.data) > 0 {
			break
		}
		if c.haveCur {
			c.readErr = c.cur.err
			putChunk(c.cur)
			c.cur, c.haveCur = chunk{}, false
			continue
		}
		if err := c.nextChunk(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.cur.data)
	c.cur.data = c.cur.data[n:]
	c.rsleep.sleep(c.down.take(n))
	return n, nil
}

// nextChunk waits for the next chunk to be due, or the read deadline, or
// the close, and makes it current.
func (c *streamConn) nextChunk() error {
	for {
		var dl time.Time
		if ns := c.readDL.Load(); ns != 0 {
			dl = time.Unix(0, ns)
			if !time.Now().Before(dl) {
				return os.ErrDeadlineExceeded
			}
		}
		ch, ok, _ := c.in.peek()
		if !ok {
			if err := c.rsleep.until(dl, c.in.notify); err != nil {
				return err
			}
			continue
		}
		if time.Now().Before(ch.due) {
			if err := c.rsleep.until(earlier(ch.due, dl), c.in.notify); err != nil {
				return err
			}
			continue
		}
		if ch, ok = c.in.pop(); ok {
			c.cur, c.haveCur = ch, true
			return nil
		}
	}
}

// CloseWrite half-closes after every byte written before it, delay and all.
func (c *streamConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeClosed {
		return nil
	}
	c.writeClosed = true
	if c.out == nil {
		return netx.CloseWrite(c.Conn)
	}
	return c.enqueue(chunk{closeWrite: true, due: time.Now().Add(c.delay)})
}

// Close drops whatever is still delayed: the flow is over.
func (c *streamConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		err = c.Conn.Close()
		c.wg.Wait()
		if c.out != nil {
			c.out.drain(putChunk)
			c.in.drain(putChunk)
		}
	})
	return err
}

func (c *streamConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.SetReadDeadline(t)
}

// SetReadDeadline bounds the wait for delayed bytes when there is a delay
// (the reading below has none), or is the connection's own otherwise.
func (c *streamConn) SetReadDeadline(t time.Time) error {
	if c.in == nil {
		return c.Conn.SetReadDeadline(t)
	}
	if t.IsZero() {
		c.readDL.Store(0)
	} else {
		c.readDL.Store(t.UnixNano())
	}
	poke(c.in.notify)
	return nil
}

package shape

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
)

// frameAt is a datagram held until due; frames are retained, not copied.
// A read error travels the queue too, in its place among the frames.
type frameAt struct {
	fr  *funnel.Frame
	err error
	due time.Time
}

// dgramConn shapes datagrams. Without delay it paces in the caller's own
// goroutine; with delay one goroutine per direction lets frames out of a
// ring once their time has come.
type dgramConn struct {
	next     funnel.DgramConn
	up, down *bucket
	delay    time.Duration
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
	log      *slog.Logger

	wmu    sync.Mutex
	wsleep sleeper
	rmu    sync.Mutex
	rsleep sleeper

	out, in *ring[frameAt] // only with delay
	readDL  atomic.Int64   // unix ns, 0 for none; only with delay
	sendErr atomic.Pointer[error]
	drops   atomic.Uint64
	queue   int
}

func newDgramConn(next funnel.DgramConn, up, down *bucket, delay time.Duration, queue int, log *slog.Logger) *dgramConn {
	d := &dgramConn{next: next, up: up, down: down, delay: delay, done: make(chan struct{}), log: log, queue: queue}
	d.wsleep.done, d.rsleep.done = d.done, d.done
	if delay > 0 {
		d.out, d.in = newRing[frameAt](64, queue), newRing[frameAt](64, queue)
		d.wg.Add(2)
		go d.send()
		go d.pump()
	}
	return d
}

func (d *dgramConn) WriteFrame(fr *funnel.Frame) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if err := d.wsleep.sleep(d.up.take(fr.Len())); err != nil {
		fr.Release()
		return err
	}
	if d.out == nil {
		return d.next.WriteFrame(fr)
	}
	if p := d.sendErr.Swap(nil); p != nil {
		fr.Release()
		return *p
	}
	if !d.out.push(frameAt{fr: fr, due: time.Now().Add(d.delay)}) {
		// A full queue drops, as a router's would; the sender never blocks.
		fr.Release()
		d.drops.Add(1)
	}
	return nil
}

// send lets queued frames out when they are due. A failed send is
// reported to the next WriteFrame; later frames still go, because UDP
// errors (a port unreachable) pass.
func (d *dgramConn) send() {
	defer d.wg.Done()
	sl := sleeper{done: d.done}
	for {
		it, ok, _ := d.out.peek()
		if !ok {
			if sl.until(time.Time{}, d.out.notify) != nil {
				return
			}
			continue
		}
		if time.Now().Before(it.due) {
			if sl.until(it.due, nil) != nil {
				return
			}
			continue
		}
		if it, ok = d.out.pop(); !ok {
			continue
		}
		if err := d.next.WriteFrame(it.fr); err != nil {
			d.sendErr.Store(&err)
		}
	}
}

// maxErrorRun stops the pump when reads fail back to back: a socket that
// only errs would otherwise spin.
const maxErrorRun = 16

// pump reads frames as they arrive, so that each one's delay counts from
// its arrival and not from when the application asks.
func (d *dgramConn) pump() {
	defer d.wg.Done()
	run := 0
	for {
		select {
		case <-d.done:
			return
		default:
		}
		fr, err := d.next.ReadFrame()
		due := time.Now().Add(d.delay)
		if err != nil {
			run++
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || run >= maxErrorRun {
				d.in.finish(err)
				return
			}
			d.in.push(frameAt{err: err, due: due})
			continue
		}
		run = 0
		select {
		case <-d.done:
			fr.Release()
			return
		default:
		}
		if !d.in.push(frameAt{fr: fr, due: due}) {
			fr.Release()
			d.drops.Add(1)
		}
	}
}

func (d *dgramConn) ReadFrame() (*funnel.Frame, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	if d.in == nil {
		fr, err := d.next.ReadFrame()
		if err != nil {
			return nil, err
		}
		if err := d.rsleep.sleep(d.down.take(fr.Len())); err != nil {
			fr.Release()
			return nil, err
		}
		return fr, nil
	}
	for {
		var dl time.Time
		if ns := d.readDL.Load(); ns != 0 {
			dl = time.Unix(0, ns)
			if !time.Now().Before(dl) {
				return nil, os.ErrDeadlineExceeded
			}
		}
		it, ok, end := d.in.peek()
		if !ok {
			if end != nil {
				return nil, end
			}
			if err := d.rsleep.until(dl, d.in.notify); err != nil {
				return nil, err
			}
			continue
		}
		if time.Now().Before(it.due) {
			if err := d.rsleep.until(earlier(it.due, dl), d.in.notify); err != nil {
				return nil, err
			}
			continue
		}
		if it, ok = d.in.pop(); !ok {
			continue
		}
		if it.err != nil {
			return nil, it.err
		}
		if err := d.rsleep.sleep(d.down.take(it.fr.Len())); err != nil {
			it.fr.Release()
			return nil, err
		}
		return it.fr, nil
	}
}

func (d *dgramConn) SetReadDeadline(t time.Time) error {
	if d.in == nil {
		return d.next.SetReadDeadline(t)
	}
	if t.IsZero() {
		d.readDL.Store(0)
	} else {
		d.readDL.Store(t.UnixNano())
	}
	poke(d.in.notify)
	return nil
}

// Close drops what is still queued: the flow is over.
func (d *dgramConn) Close() error {
	var err error
	d.once.Do(func() {
		close(d.done)
		err = d.next.Close()
		d.wg.Wait()
		if d.out != nil {
			release := func(it frameAt) {
				if it.fr != nil {
					it.fr.Release()
				}
			}
			d.out.drain(release)
			d.in.drain(release)
		}
		if n := d.drops.Load(); n > 0 && d.log != nil {
			d.log.Info("shape: dropped datagrams because the delay queue was full", "dropped", n, "queue", d.queue)
		}
	})
	return err
}

// Addresses pass through for pieces above that look for them.
func (d *dgramConn) RemoteAddr() net.Addr {
	if a, ok := d.next.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr()
	}
	return nil
}

func (d *dgramConn) LocalAddr() net.Addr {
	if a, ok := d.next.(interface{ LocalAddr() net.Addr }); ok {
		return a.LocalAddr()
	}
	return nil
}

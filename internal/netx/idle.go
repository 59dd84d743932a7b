package netx

import (
	"sync"
	"time"
)

// IdleWatch calls onIdle once counter (bytes or datagrams moved so far,
// say a flow's Up+Down) has not changed over a whole period. It checks
// every period, so onIdle runs between one and two periods after the last
// change. It reads the counter rather than wrapping the connections, which
// stay bare (a relay can still splice them), and it holds no goroutine
// while it waits: a timer checks and re-arms itself.
//
// stop ends the watch: once it returns, onIdle will not start (it may
// have started before, and may still be running if stop is called from
// another goroutine). A period of 0 or less watches nothing.
func IdleWatch(period time.Duration, counter func() int64, onIdle func()) (stop func()) {
	if period <= 0 {
		return func() {}
	}
	w := &idleWatch{period: period, counter: counter, onIdle: onIdle}
	// The lock keeps the first check from running before t and last are
	// set, however short the period.
	w.mu.Lock()
	w.t = time.AfterFunc(period, w.check)
	w.last = counter()
	w.mu.Unlock()
	return w.stop
}

type idleWatch struct {
	period  time.Duration
	counter func() int64
	onIdle  func()

	mu   sync.Mutex
	t    *time.Timer
	last int64
	done bool
}

func (w *idleWatch) check() {
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	if now := w.counter(); now != w.last {
		w.last = now
		w.t.Reset(w.period)
		w.mu.Unlock()
		return
	}
	w.done = true
	w.mu.Unlock()
	// Outside the lock: onIdle may close connections whose relay then
	// calls stop.
	w.onIdle()
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.done = true
	w.t.Stop()
	w.mu.Unlock()
}

package shape

import "sync"

// ring is a bounded FIFO between one producer and one consumer goroutine.
// Its slots are allocated up front and grow by doubling up to the limit,
// so a flow in steady state moves items through it without allocating.
type ring[T any] struct {
	mu    sync.Mutex
	items []T
	head  int
	n     int
	limit int
	end   error // the producer's last word, seen after every item
	// notify is poked when an item or the end arrives (or anything else
	// the consumer should look at again); space when an item leaves.
	notify chan struct{}
	space  chan struct{}
}

func newRing[T any](initial, limit int) *ring[T] {
	return &ring[T]{
		items:  make([]T, min(initial, limit)),
		limit:  limit,
		notify: make(chan struct{}, 1),
		space:  make(chan struct{}, 1),
	}
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// push adds v at the tail; false when the ring is full at its limit.
func (r *ring[T]) push(v T) bool {
	r.mu.Lock()
	if r.n == len(r.items) {
		if len(r.items) >= r.limit {
			r.mu.Unlock()
			return false
		}
		grown := make([]T, min(2*len(r.items), r.limit))
		for i := range r.n {
			grown[i] = r.items[(r.head+i)%len(r.items)]
		}
		r.items, r.head = grown, 0
	}
	r.items[(r.head+r.n)%len(r.items)] = v
	r.n++
	r.mu.Unlock()
	poke(r.notify)
	return true
}

// peek is the head without taking it; when the ring is empty it reports
// the producer's end, if any.
func (r *ring[T]) peek() (v T, ok bool, end error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return v, false, r.end
	}
	return r.items[r.head], true, nil
}

// pop takes the head.
func (r *ring[T]) pop() (v T, ok bool) {
	r.mu.Lock()
	if r.n == 0 {
		r.mu.Unlock()
		return v, false
	}
	var zero T
	v = r.items[r.head]
	r.items[r.head] = zero
	r.head = (r.head + 1) % len(r.items)
	r.n--
	r.mu.Unlock()
	poke(r.space)
	return v, true
}

// finish records the producer's end (an error, or io.EOF).
func (r *ring[T]) finish(err error) {
	r.mu.Lock()
	if r.end == nil {
		r.end = err
	}
	r.mu.Unlock()
	poke(r.notify)
}

// drain empties the ring, handing each item to f, for cleanup at close.
func (r *ring[T]) drain(f func(T)) {
	for {
		v, ok := r.pop()
		if !ok {
			return
		}
		f(v)
	}
}

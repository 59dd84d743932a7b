// Package shape makes a link slower on purpose: a token bucket caps the
// rate of each direction and a queue adds one-way latency, for trying out
// applications on a poor network without leaving the machine.
package shape

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "shape",
		Summary: "limit the rate and add latency (token bucket and delay queue)",
		Params: `rate=SIZE        bytes per second in each direction (k, M, G: powers of 1024); 0 = unlimited
burst=SIZE       bytes that may pass at once after a quiet spell, default rate/10, at least 64k
per=flow|profile one bucket per flow (default), or one shared by every flow of the profile
delay=DURATION   one-way latency added to every chunk or datagram, both directions
queue=N          datagrams held per direction while delayed, default 1024; more are dropped`,
		Curves: curves,
		New:    New,
	})
}

const minBurst = 64 << 10

// Shape is a configured shape piece.
type Shape struct {
	rate       int64
	burst      int64
	delay      time.Duration
	queue      int
	perProfile bool
	// up and down are the profile's buckets when per=profile.
	up, down *bucket
}

var (
	_ funnel.StreamDialer   = (*Shape)(nil)
	_ funnel.StreamAcceptor = (*Shape)(nil)
	_ funnel.DgramDialer    = (*Shape)(nil)
	_ funnel.Transparent    = (*Shape)(nil)
)

// New builds a shape piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	s := &Shape{}
	var err error
	if s.rate, err = p.Size("rate", 0); err != nil {
		return nil, err
	}
	if s.burst, err = p.Size("burst", max(s.rate/10, minBurst)); err != nil {
		return nil, err
	}
	if p.Has("burst") {
		if s.rate == 0 {
			return nil, p.Errorf("burst", "only means something with a rate=")
		}
		if s.burst < 512 {
			return nil, p.Errorf("burst", "%d bytes is too small to carry a packet; use at least 512", s.burst)
		}
	}
	switch per := p.String("per", "flow"); per {
	case "flow":
	case "profile":
		s.perProfile = true
	default:
		return nil, p.Errorf("per", "%q is neither flow nor profile", per)
	}
	if s.delay, err = p.Duration("delay", 0); err != nil {
		return nil, err
	}
	q, err := p.Int("queue", 1024, 1, 1<<16)
	if err != nil {
		return nil, err
	}
	s.queue = int(q)
	if s.perProfile && s.rate > 0 {
		s.up, s.down = newBucket(s.rate, s.burst), newBucket(s.rate, s.burst)
	}
	return s, nil
}

// Curves: shaping keeps the shape.
func (*Shape) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}

// idle is a shape that shapes nothing: it stays out of the way entirely,
// so the relay can still splice.
func (s *Shape) idle() bool { return s.rate == 0 && s.delay == 0 }

func (s *Shape) buckets() (up, down *bucket) {
	if s.rate == 0 {
		return nil, nil
	}
	if s.perProfile {
		return s.up, s.down
	}
	return newBucket(s.rate, s.burst), newBucket(s.rate, s.burst)
}

// Transparent: a shape with neither rate nor delay hands the connection
// below back unchanged.
func (s *Shape) Transparent() bool { return s.idle() }

// DialStream shapes an outgoing stream.
func (s *Shape) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	if s.idle() {
		return next.DialStream(ctx, f)
	}
	c, err := next.DialStream(ctx, f)
	if err != nil {
		return nil, err
	}
	return s.wrapStream(c), nil
}

// AcceptStream shapes an incoming stream the same way, seen from the
// application: what it writes is "up".
func (s *Shape) AcceptStream(_ context.Context, _ *funnel.Flow, c net.Conn) (net.Conn, error) {
	if s.idle() {
		return c, nil
	}
	return s.wrapStream(c), nil
}

// DialDgram shapes a datagram flow.
func (s *Shape) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	if s.idle() {
		return next.DialDgram(ctx, f)
	}
	dc, err := next.DialDgram(ctx, f)
	if err != nil {
		return nil, err
	}
	up, down := s.buckets()
	return newDgramConn(dc, up, down, s.delay, s.queue, f.Log), nil
}

// bucket is a token bucket that lends: a taker always gets its bytes and is
// told how long to wait before using them, so that takers queue up fairly
// in the order they asked, and nothing is allocated or woken by a timer
// the bucket owns.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64 // may go below zero: bytes lent against the future
	last   time.Time
}

func newBucket(rate, burst int64) *bucket {
	return &bucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// take spends n bytes and returns how long the caller must wait before
// sending them; a nil bucket is no limit.
func (b *bucket) take(n int) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	debt := -b.tokens
	b.mu.Unlock()
	if debt <= 0 {
		return 0
	}
	return time.Duration(debt / b.rate * float64(time.Second))
}

// sleeper waits on one reusable timer, and gives up when the connection
// closes, so waiting allocates nothing and never outlives the flow.
type sleeper struct {
	t    *time.Timer
	done <-chan struct{}
}

func (s *sleeper) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	return s.until(time.Now().Add(d), nil)
}

// until waits for t (the zero time: no limit), or for a poke on wake, or
// for the close. It reports net.ErrClosed on close and nil otherwise; the
// caller looks again at whatever it waits for.
func (s *sleeper) until(t time.Time, wake <-chan struct{}) error {
	var fire <-chan time.Time
	if !t.IsZero() {
		d := time.Until(t)
		if d <= 0 {
			return nil
		}
		if s.t == nil {
			s.t = time.NewTimer(d)
		} else {
			s.t.Reset(d)
		}
		fire = s.t.C
	}
	select {
	case <-fire:
		return nil
	case <-wake:
	case <-s.done:
		if fire != nil {
			s.t.Stop()
		}
		return net.ErrClosed
	}
	if fire != nil {
		s.t.Stop()
	}
	return nil
}

// earlier is the sooner of two instants, where zero means never.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

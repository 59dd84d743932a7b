package funnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/internal/netx"
)

// Run is one flow from begin to end, owned by the engine: it holds the
// flow's compiled set, dials through the pipeline, relays, and ends the flow
// with its one log line. Every hook goes through it, so no hook re-writes
// the sequence (hold, dial, answer the client, relay, end, release), and a
// hook that must answer its client between the dial and the relay (SOCKS5)
// does so between Dial and Relay.
//
//	r := engine.Begin(flow, pipeline)
//	up, err := r.DialStream(ctx)
//	if err != nil { answer(err); r.End(err); return }
//	answer(nil)
//	r.Relay(ctx, client, up.Conn, RelayOptions{})
type Run struct {
	Flow     *Flow
	Pipeline *Pipeline
	e        *Engine
	ended    atomic.Bool
}

// Begin starts a flow through pl: the set pl belongs to stays alive (its
// pieces open) until the flow ends.
func (e *Engine) Begin(f *Flow, pl *Pipeline) *Run {
	ok := pl.tryHold()
	for tries := 0; !ok && tries < 3; tries++ {
		// A reload retired pl's set between the hook's Resolve and now,
		// and its pieces have closed: the flow takes the same profile
		// from the set in force.
		npl, err := e.Catalog.ResolveIn(e.Catalog.Current(), pl.selector())
		if err != nil {
			break
		}
		pl = npl
		ok = pl.tryHold()
	}
	if !ok {
		// The profile is gone: its closed pieces fail the flow.
		pl.set.hold()
	}
	if f.Profile == "" {
		f.Profile = pl.Name
	}
	if f.Log == nil {
		f.Log = e.Log
	}
	return &Run{Flow: f, Pipeline: pl, e: e}
}

// release lets go of the flow's set (Begin held it).
func (r *Run) release() { r.Pipeline.set.release() }

// Upstream is what dialing a stream flow gives: a connection through the
// chain, or, when the flow asked for a handoff and nothing in the chain
// touches the bytes, the address where the hook is to connect the
// application's own socket (then Conn is nil and no relay runs).
type Upstream struct {
	Conn    net.Conn
	Handoff netip.AddrPort
}

// HandedOff reports whether the chain answered with an address.
func (u Upstream) HandedOff() bool { return u.Conn == nil && u.Handoff.IsValid() }

// DialStream dials the flow through its pipeline. On error the flow is
// still running: the hook answers its client in its own language, then
// calls End with the error.
func (r *Run) DialStream(ctx context.Context) (Upstream, error) {
	if r.Flow.Handoff && len(r.Pipeline.pieces) > 0 && !isTransparent(r.Pipeline.pieces[0]) {
		// The first piece holds the bytes: no handoff can come of this
		// dial, and the flow (the Run's own) says so at once, where the
		// chain would otherwise copy it to clear the request.
		r.Flow.Handoff = false
	}
	c, err := r.Pipeline.DialStream(ctx, r.Flow)
	var h *HandoffAnswer
	if errors.As(err, &h) {
		return Upstream{Handoff: h.Addr}, nil
	}
	if err != nil {
		return Upstream{}, err
	}
	return Upstream{Conn: c}, nil
}

// DialDgram dials a datagram flow through its pipeline; as DialStream, an
// error leaves the flow for the hook to End.
func (r *Run) DialDgram(ctx context.Context) (DgramConn, error) {
	return r.Pipeline.DialDgram(ctx, r.Flow)
}

// AcceptStream carries an incoming connection up through the pieces.
func (r *Run) AcceptStream(ctx context.Context, netConn net.Conn) (net.Conn, error) {
	return r.Pipeline.AcceptStream(ctx, r.Flow, netConn)
}

// RelayOptions tune Run.Relay.
type RelayOptions struct {
	// Idle ends the flow after this long without a byte either way
	// (checked every Idle, so it ends between one and two periods after
	// the last byte); 0 never does.
	Idle time.Duration
	// Prefix is sent toward the network before anything the app side
	// sends: bytes a hook read ahead of its reply (optimistic data).
	Prefix []byte
	// Done runs once the flow has ended and been logged.
	Done func(error)
}

// Relay joins app and network until both directions end, then ends the
// flow. It returns at once: the caller's goroutine, and the stack it grew
// through a handshake and a dial, can end. When both are kernel TCP sockets
// they move to the engine's event loops (see KernelRelay): an idle flow
// then costs a table entry, not goroutines. ctx ending ends the flow.
func (r *Run) Relay(ctx context.Context, app, network net.Conn, opt RelayOptions) {
	f := r.Flow
	if len(opt.Prefix) > 0 {
		network.SetWriteDeadline(time.Now().Add(10 * time.Second))
		n, err := network.Write(opt.Prefix)
		network.SetWriteDeadline(time.Time{})
		f.Up.Add(int64(n))
		if err != nil {
			app.Close()
			network.Close()
			r.finish(fmt.Errorf("sending what the client sent early: %w", err), opt.Done)
			return
		}
	}
	if r.e.kernelRelay(ctx, r, app, network, opt) {
		return
	}
	stopIdle := watchIdle(f, opt.Idle, app, network)
	stopCtx := context.AfterFunc(ctx, func() { app.Close(); network.Close() })
	RelayAsync(app, network, f.Up, f.Down, func(err error) {
		stopIdle()
		stopCtx()
		r.finish(err, opt.Done)
	})
}

// RelayWait is Relay that waits for the flow's end and returns its error.
func (r *Run) RelayWait(ctx context.Context, app, network net.Conn, opt RelayOptions) error {
	done := make(chan error, 1)
	inner := opt.Done
	opt.Done = func(err error) {
		if inner != nil {
			inner(err)
		}
		done <- err
	}
	r.Relay(ctx, app, network, opt)
	return <-done
}

func (r *Run) finish(err error, done func(error)) {
	r.End(err)
	if done != nil {
		done(err)
	}
}

// End ends the flow: its log line, and the release of its set. Only the
// first call counts, so a hook may End on every error path without care.
func (r *Run) End(err error) {
	if r.ended.Swap(true) {
		return
	}
	r.e.End(r.Flow, err)
	r.release()
}

// EndHandedOff ends a flow whose application socket was handed off: its
// line says so and counts no bytes, which never pass the funnel.
func (r *Run) EndHandedOff() {
	if r.ended.Swap(true) {
		return
	}
	r.e.EndUncounted(r.Flow, "flow handed off")
	r.release()
}

// Abandon ends a flow that turned out to be another's (a request asked
// twice): its set is released, and no log line is written for it.
func (r *Run) Abandon() {
	if r.ended.Swap(true) {
		return
	}
	r.release()
}

// ReturnDgrams carries a datagram flow's replies back to its client: each
// frame conn gives counts as Down and its payload goes to send, until
// conn or send fails or no byte moved either way for idle (checked every
// idle period; 0 never). Then it closes conn and ends the flow; an idle
// end or a closed conn is no failure.
func (r *Run) ReturnDgrams(conn DgramConn, idle time.Duration, send func([]byte) error) {
	f := r.Flow
	var idled atomic.Bool
	stop := netx.IdleWatch(idle, func() int64 { return f.Up.Load() + f.Down.Load() }, func() {
		idled.Store(true)
		conn.Close()
	})
	var err error
	for {
		fr, rerr := conn.ReadFrame()
		if rerr != nil {
			if !idled.Load() && !errors.Is(rerr, net.ErrClosed) {
				err = rerr
			}
			break
		}
		f.Down.Add(int64(fr.Len()))
		werr := send(fr.Bytes())
		fr.Release()
		if werr != nil {
			err = werr
			break
		}
	}
	stop()
	conn.Close()
	r.End(err)
}

// watchIdle closes a flow's connections once no byte moved either way for
// a whole period. It reads the relay's counters, so the connections stay
// unwrapped and spliceable, and holds no goroutine while it waits.
func watchIdle(f *Flow, period time.Duration, conns ...net.Conn) (stop func()) {
	if period <= 0 {
		return func() {}
	}
	return netx.IdleWatch(period, func() int64 { return f.Up.Load() + f.Down.Load() }, func() {
		f.Log.Debug("idle timeout: closing the flow", "idle", period)
		for _, c := range conns {
			c.Close()
		}
	})
}

// HandoffAnswer is how a terminal piece answers a flow that asked for a
// handoff (Flow.Handoff): instead of a connection it returns this as its
// error, transparent pieces above pass it up unchanged, and Run.DialStream
// turns it into Upstream.Handoff. It is never a failure the hook sees.
type HandoffAnswer struct{ Addr netip.AddrPort }

func (h *HandoffAnswer) Error() string {
	return "handoff to " + h.Addr.String() + " (not a failure: Run.DialStream answers it)"
}

// AnswerHandoff is what a terminal piece returns for a flow whose
// Flow.Handoff is set: the hook will connect the application's own socket
// to addr.
func AnswerHandoff(addr netip.AddrPort) (net.Conn, error) {
	return nil, &HandoffAnswer{Addr: addr}
}

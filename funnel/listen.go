package funnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// StreamListener is implemented by pieces that take incoming stream
// connections on the application's behalf at an address no kernel socket
// of the application can be reached at: a user-space TCP/IP stack on its
// tunnel address. When the application listens, its hook asks the
// pipeline (Pipeline.ListenStream) and carries each connection the
// listener accepts as an incoming flow (Engine.ServeInbound), as it would
// one that reached the application's own socket.
type StreamListener interface {
	// ListenStream listens for f, whose Dest is the address and port the
	// application listens on (an unspecified address for all of this
	// host's). It returns ErrNoListener when it has nothing to offer for
	// that address. The listener's connections come from the network
	// edge of the piece: their RemoteAddr is the client, their LocalAddr
	// the address the client reached.
	ListenStream(ctx context.Context, f *Flow, next Next) (net.Listener, error)
}

// ErrNoListener says that no piece of a profile listens for the address
// asked: the application's own socket is all there is.
var ErrNoListener = errors.New("no piece of the profile listens there")

// DgramListener is the datagram analog of StreamListener: a piece that
// receives datagrams for the application at an address no kernel socket of
// the application can be reached at (a user-space stack on its tunnel
// address). When the application binds a datagram socket, its hook asks
// the pipeline (Pipeline.ListenDgram) and carries each conversation the
// piece hands out as an incoming flow to the application's own socket.
type DgramListener interface {
	// ListenDgram receives for f, whose Dest is the address and port the
	// application's socket is bound to (an unspecified address for all of
	// this host's). It returns ErrNoListener when it has nothing to offer
	// for that address.
	ListenDgram(ctx context.Context, f *Flow, next Next) (Conversations, error)
}

// Conversation is one peer's datagrams on a listening piece's port: a
// DgramConn that says its two ends, as a connected socket does.
type Conversation interface {
	DgramConn
	LocalAddr() net.Addr  // the address the peer reached
	RemoteAddr() net.Addr // the peer
}

// Conversations is a listening datagram socket of a piece, split by
// peer, as a stream listener is split by connection: Accept gives a
// Conversation for each peer that sends to it, with the first datagram
// still to read. Its frames carry the peer as Src and the address the peer
// reached as Dst, and what is written to it goes back to the peer from
// that same address and port (a SIP or RTP peer expects its answer from
// the port it sent to).
type Conversations interface {
	Accept() (Conversation, error)
	Addr() net.Addr
	Close() error
}

// Listens reports whether a piece of the profile, or of a profile it
// branches to, may listen for the application (StreamListener). It builds
// and binds nothing: a hook asks it before it changes how the
// application's socket listens.
func (pl *Pipeline) Listens() bool {
	return pl.hasPiece(Stream, func(p Piece) bool { _, ok := p.(StreamListener); return ok }, map[*Pipeline]bool{})
}

// ListensDgram is Listens for datagrams (DgramListener).
func (pl *Pipeline) ListensDgram() bool {
	return pl.hasPiece(Dgram, func(p Piece) bool { _, ok := p.(DgramListener); return ok }, map[*Pipeline]bool{})
}

func (pl *Pipeline) hasPiece(shape Shape, is func(Piece) bool, seen map[*Pipeline]bool) bool {
	if seen[pl] || !pl.Accepts(shape) {
		return false
	}
	seen[pl] = true
	for _, p := range pl.pieces {
		if is(p) {
			return true
		}
	}
	for _, r := range pl.refs {
		if sub := r.Pipeline(); sub != nil && sub.hasPiece(shape, is, seen) {
			return true
		}
	}
	return false
}

// ListenStream listens for the application where the profile's pieces can
// (see StreamListener): the first piece that listens, app side first, or,
// when none does, each profile this one branches to (a route's), merged
// into one listener. It returns ErrNoListener when nothing listens for
// f.Dest. The profile's set stays open until the listener is closed.
func (pl *Pipeline) ListenStream(ctx context.Context, f *Flow) (net.Listener, error) {
	lns, release, err := listenAll(pl, Stream, ctx, f, func(p Piece, next Next) (net.Listener, bool, error) {
		sl, ok := p.(StreamListener)
		if !ok {
			return nil, false, nil
		}
		ln, err := sl.ListenStream(ctx, f, next)
		return ln, true, err
	})
	if err != nil {
		return nil, err
	}
	return newMerged[net.Conn](lns, release, "tcp"), nil
}

// ListenDgram is ListenStream for datagrams (see DgramListener): the
// conversations of every piece that listens, as one.
func (pl *Pipeline) ListenDgram(ctx context.Context, f *Flow) (Conversations, error) {
	lns, release, err := listenAll(pl, Dgram, ctx, f, func(p Piece, next Next) (Conversations, bool, error) {
		dl, ok := p.(DgramListener)
		if !ok {
			return nil, false, nil
		}
		c, err := dl.ListenDgram(ctx, f, next)
		return c, true, err
	})
	if err != nil {
		return nil, err
	}
	return newMerged[Conversation](lns, release, "udp"), nil
}

// listenAll holds pl's set and asks its pieces (try) to listen for f;
// the set is released by the returned function, or at once on error.
func listenAll[L io.Closer](pl *Pipeline, shape Shape, ctx context.Context, f *Flow, try func(Piece, Next) (L, bool, error)) ([]L, func(), error) {
	release := pl.Hold()
	f.Inbound = true
	if f.Profile == "" {
		f.Profile = pl.Name
	}
	lns, err := listenIn(pl, shape, try, map[*Pipeline]bool{})
	if err == nil && len(lns) == 0 {
		err = ErrNoListener
	}
	if err != nil {
		for _, l := range lns {
			l.Close()
		}
		release()
		return nil, nil, err
	}
	return lns, release, nil
}

func listenIn[L io.Closer](pl *Pipeline, shape Shape, try func(Piece, Next) (L, bool, error), seen map[*Pipeline]bool) ([]L, error) {
	if seen[pl] || !pl.Accepts(shape) {
		return nil, nil
	}
	seen[pl] = true
	for i, p := range pl.pieces {
		ln, ok, err := try(p, pl.links[i].next())
		if !ok {
			continue
		}
		if errors.Is(err, ErrNoListener) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("profile %s: piece %s: %w", pl.Name, pl.Specs[i].Name, err)
		}
		return []L{ln}, nil
	}
	var out []L
	for _, r := range pl.refs {
		sub := r.Pipeline()
		if sub == nil {
			continue
		}
		lns, err := listenIn(sub, shape, try, seen)
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, err
		}
		out = append(out, lns...)
	}
	return out, nil
}

// accepter is what a listener of either shape is.
type accepter[C io.Closer] interface {
	Accept() (C, error)
	Addr() net.Addr
	Close() error
}

// merged accepts from several listeners as one, and lets go of the
// profile's set when it closes.
type merged[C io.Closer] struct {
	lns     []accepter[C]
	network string
	conns   chan C
	done    chan struct{}
	once    sync.Once
	release func()

	mu      sync.Mutex
	closing bool  // Close was called: Accept says net.ErrClosed
	err     error // why the last listener ended, when nobody closed it
	running int
}

func newMerged[C io.Closer, L accepter[C]](lns []L, release func(), network string) *merged[C] {
	m := &merged[C]{network: network, conns: make(chan C), done: make(chan struct{}), release: release, running: len(lns)}
	for _, l := range lns {
		m.lns = append(m.lns, l)
	}
	for _, l := range m.lns {
		go m.feed(l)
	}
	return m
}

func (m *merged[C]) feed(l accepter[C]) {
	for {
		c, err := l.Accept()
		if err != nil {
			m.mu.Lock()
			m.running--
			last := m.running == 0
			if last && !m.closing {
				m.err = err
			}
			m.mu.Unlock()
			if last {
				m.shut()
			}
			return
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *merged[C]) Accept() (C, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		m.mu.Lock()
		err := m.err
		m.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		var none C
		return none, &net.OpError{Op: "accept", Net: m.network, Addr: m.Addr(), Err: err}
	}
}

func (m *merged[C]) Close() error {
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	m.shut()
	return nil
}

func (m *merged[C]) shut() {
	m.once.Do(func() {
		close(m.done)
		for _, l := range m.lns {
			l.Close()
		}
		m.release()
	})
}

// Addr is the first listener's address.
func (m *merged[C]) Addr() net.Addr { return m.lns[0].Addr() }

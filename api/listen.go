package api

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

// maxHandshakes bounds the accepted connections whose pieces are still at
// work (TLS handshakes) and those waiting for Accept: past it the listener
// stops accepting, and the kernel's backlog holds the rest.
const maxHandshakes = 64

// Listen accepts connections on address (network "tcp", "tcp4" or
// "tcp6"). Each accepted connection comes from the network and is carried
// up through the pieces of template — a tls piece terminates TLS — before
// Accept returns it; one whose pieces fail (a bad handshake) is logged and
// closed, and Accept waits for the next. The template is looked up for each
// connection, so a Reload applies to the next one. ctx bounds only the
// setting up, as with net.ListenConfig.
func (fn *Funnel) Listen(ctx context.Context, template, network, address string) (net.Listener, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Addr: flowAddr{network, address}, Err: err}
	}
	if _, err := netKind(network, "tcp"); err != nil {
		return nil, opErr(err)
	}
	sel, err := selector(template)
	if err != nil {
		return nil, opErr(err)
	}
	// Fail now, not at the first connection, when the template is unknown
	// or cannot accept a stream.
	pl, err := fn.engine.Resolve(sel)
	if err != nil {
		return nil, opErr(err)
	}
	if !pl.Accepts(funnel.Stream) {
		return nil, opErr(errors.New("template " + pl.Name + " does not carry streams"))
	}
	var lc net.ListenConfig
	inner, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, err
	}
	l := &listener{
		fn:     fn,
		sel:    sel,
		inner:  inner,
		ready:  make(chan net.Conn, maxHandshakes),
		closed: make(chan struct{}),
		slots:  make(chan struct{}, maxHandshakes),
		ctx:    context.WithoutCancel(ctx),
	}
	go l.acceptLoop()
	return l, nil
}

type listener struct {
	fn    *Funnel
	sel   funnel.Selector
	inner net.Listener
	ctx   context.Context

	ready  chan net.Conn
	slots  chan struct{} // one per connection accepted and not yet taken by Accept
	closed chan struct{}
	once   sync.Once

	mu  sync.Mutex
	err error // why the accept loop stopped
}

func (l *listener) acceptLoop() {
	err := netx.AcceptLoop(l.ctx, l.inner, func(c net.Conn) {
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			c.Close()
			return
		}
		go l.carryUp(c)
	}, l.fn.opts.Logger)
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
	l.Close()
}

// carryUp runs the incoming pieces on c and queues what the program gets.
func (l *listener) carryUp(c net.Conn) {
	pl, err := l.fn.engine.Resolve(l.sel)
	if err != nil {
		l.fn.opts.Logger.Error("no template for an accepted connection; closed", "template", l.sel.String(), "err", err)
		c.Close()
		<-l.slots
		return
	}
	f := l.fn.newFlow(funnel.TCP, funnel.AddrFromNet(c.LocalAddr()))
	f.Inbound = true
	f.Source = c.RemoteAddr()
	r := l.fn.engine.Begin(f, pl)
	c.SetDeadline(time.Now().Add(l.fn.opts.HandshakeTimeout))
	app, err := r.AcceptStream(l.ctx, c)
	if err != nil {
		c.Close()
		r.End(err)
		<-l.slots
		return
	}
	c.SetDeadline(time.Time{})
	sc := &streamConn{Conn: app, run: r, flow: f}
	select {
	case l.ready <- sc:
	case <-l.closed:
		sc.Close()
		<-l.slots
	}
}

// Accept returns the next connection that has passed the pieces.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		<-l.slots
		return c, nil
	case <-l.closed:
	}
	l.mu.Lock()
	err := l.err
	l.mu.Unlock()
	if err == nil || errors.Is(err, context.Canceled) {
		err = net.ErrClosed
	}
	return nil, &net.OpError{Op: "accept", Net: l.inner.Addr().Network(), Addr: l.inner.Addr(), Err: err}
}

// Close stops accepting. Connections already returned by Accept stay open.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		err = l.inner.Close()
		// Queued connections nobody will take end with the listener.
		go func() {
			for {
				select {
				case c := <-l.ready:
					c.Close()
				case <-time.After(l.fn.opts.HandshakeTimeout + time.Second):
					return
				}
			}
		}()
	})
	return err
}

func (l *listener) Addr() net.Addr { return l.inner.Addr() }

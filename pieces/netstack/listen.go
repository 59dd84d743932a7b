package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
)

// The way in for a program that listens. A hooked program that listens on
// all of its host's addresses (0.0.0.0 or ::) is listening on the tunnel
// too, as far as it knows: the stack listens on the same port of its own
// address, and the hook carries each connection it accepts to the
// program's socket as an incoming flow of the engine (funnel.StreamListener).
// A program that listens on one address (127.0.0.1, a LAN address) did not
// ask for the tunnel, and gets nothing here.

// The link retry after a failure: a program that only listens has no
// outgoing flow to bring the tunnel back, so its listener does.
const (
	relinkFirst = time.Second
	relinkMax   = 30 * time.Second
)

// ListenStream listens on f.Dest's port of the stack's address, and keeps
// the link below up for as long as the listener is open: a program that
// only listens must be reachable without first making a connection.
func (n *Netstack) ListenStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Listener, error) {
	d := f.Dest
	if d.IsName() || !d.IP.IsUnspecified() || d.Port == 0 {
		return nil, funnel.ErrNoListener
	}
	n.mu.Lock()
	if n.closed || n.ctx == nil {
		n.mu.Unlock()
		return nil, funnel.Errorf(funnel.KindGeneral, "netstack: the stack is not running (its profile was not opened, or has closed)")
	}
	if n.listening[d.Port] || slices.Contains(n.accept, d.Port) {
		// A program listening on both 0.0.0.0 and :: asks twice; the
		// first has the port, and the second keeps its own socket.
		n.mu.Unlock()
		f.Log.Debug("netstack: the stack's port is taken already; the program's socket alone listens", "port", d.Port)
		return nil, funnel.ErrNoListener
	}
	st, err := n.start()
	pieceDone := n.ctx.Done()
	if err == nil {
		n.listening[d.Port] = true
	}
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l, err := st.ListenTCPAny(d.Port)
	if err != nil {
		n.unlisten(d.Port)
		return nil, funnel.Errorf(funnel.KindGeneral, "netstack: listening on port %d of the stack: %v", d.Port, err)
	}
	sl := &stackListener{Listener: l, n: n, port: d.Port, done: make(chan struct{})}
	go n.keepLinked(ctx, sl.done, sl.port, sl.Addr, pieceDone, f, next)
	return sl, nil
}

// keepLinked brings the link up for a listener of the stack on port (addr
// says where it listens), and again whenever the link fails, until done
// (the listener closed) or the piece closes.
func (n *Netstack) keepLinked(ctx context.Context, done <-chan struct{}, port uint16, addr func() net.Addr, pieceDone <-chan struct{}, f *funnel.Flow, next funnel.Next) {
	log := f.Log
	wait := relinkFirst
	ended := func() bool {
		select {
		case <-done:
			return true
		case <-pieceDone:
			return true
		default:
			return false
		}
	}
	for !ended() {
		began := time.Now()
		_, l, err := n.attach(ctx, f, next)
		if err == nil {
			log.Info("netstack: listening for the program", "net", addr().Network(), "addr", addr().String())
			select {
			case <-l.dead:
			case <-done:
				return
			case <-pieceDone:
				return
			}
			if time.Since(began) > relinkMax {
				wait = relinkFirst // a link that lasted is no failing one
			}
			err = errLinkEnded
		}
		if ended() {
			return
		}
		log.Warn("netstack: listening, but the link below is not up; trying again", "net", addr().Network(), "port", port, "err", err, "retry", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-done:
			t.Stop()
			return
		case <-pieceDone:
			t.Stop()
			return
		}
		wait = min(2*wait, relinkMax)
	}
}

var errLinkEnded = errors.New("the link below ended")

// address is the stack's address now: the link's, or addr=.
func (n *Netstack) address() netip.Addr {
	n.mu.Lock()
	l := n.link
	n.mu.Unlock()
	if l != nil && l.alive() {
		if a, ok := l.conn.(AddressedLink); ok {
			return a.LinkAddr()
		}
	}
	return n.static
}

// stackListener is a listener of the stack on one port of whatever
// address the link gives it, now and after a change.
type stackListener struct {
	net.Listener
	n    *Netstack
	port uint16
	done chan struct{}
	once sync.Once
}

func (sl *stackListener) Close() error {
	err := sl.Listener.Close()
	sl.once.Do(func() {
		close(sl.done)
		sl.n.unlisten(sl.port)
	})
	return err
}

func (n *Netstack) unlisten(port uint16) {
	n.mu.Lock()
	delete(n.listening, port)
	n.mu.Unlock()
}

// Addr is the port on the stack's present address (the unspecified one
// while the link is down), for log lines that say where to connect.
func (sl *stackListener) Addr() net.Addr {
	a := sl.n.address()
	if !a.IsValid() {
		a = netip.IPv6Unspecified()
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, sl.port))
}

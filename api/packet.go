package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

// inboxSize bounds the datagrams received and not yet read: past it the
// newest are dropped, as a kernel socket's full receive buffer does.
const inboxSize = 256

// ListenPacket returns a datagram socket (network "udp", "udp4" or
// "udp6") whose datagrams pass through the pieces of template.
//
// WriteTo sends through a flow of its own per destination (a *net.UDPAddr,
// or any net.Addr whose String is HOST:PORT, a name included); ReadFrom
// returns the answers with the destination they came back from. A
// destination's flow ends after Options.DatagramIdle without a datagram.
//
// With a plain-direct template nothing touches the datagrams, so the
// program gets the kernel's own socket bound to address — which is then
// also how to receive on a fixed port. With pieces in the way, address
// must leave the port to the funnel ("", ":0", "127.0.0.1:0"): what a piece
// sends from is its own affair (a SOCKS5 server's relay, say).
func (fn *Funnel) ListenPacket(ctx context.Context, template, network, address string) (net.PacketConn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "listen", Net: network, Addr: flowAddr{network, address}, Err: err}
	}
	if _, err := netKind(network, "udp"); err != nil {
		return nil, opErr(err)
	}
	sel, err := selector(template)
	if err != nil {
		return nil, opErr(err)
	}
	pl, err := fn.engine.Resolve(sel)
	if err != nil {
		return nil, opErr(err)
	}
	if _, plain := pl.KernelDial(); plain {
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, network, address)
	}
	if !pl.Accepts(funnel.Dgram) {
		return nil, opErr(fmt.Errorf("template %s does not carry datagrams (`funtun profiles show %s` lists its shapes)", pl.Name, pl.Name))
	}
	if address != "" {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			if _, port, herr := net.SplitHostPort(address); herr != nil || (port != "0" && port != "") {
				return nil, opErr(fmt.Errorf("template %s carries datagrams through pieces: leave the port to the funnel (\":0\"), or use a plain-direct template to receive on a fixed port", pl.Name))
			}
		} else if ap.Port() != 0 {
			return nil, opErr(fmt.Errorf("template %s carries datagrams through pieces: leave the port to the funnel (\":0\"), or use a plain-direct template to receive on a fixed port", pl.Name))
		}
	}
	pc := &packetConn{
		fn:       fn,
		sel:      sel,
		network:  network,
		ctx:      context.WithoutCancel(ctx),
		sessions: map[string]*session{},
		inbox:    make(chan datagram, inboxSize),
		closed:   make(chan struct{}),
		wake:     make(chan struct{}),
	}
	return pc, nil
}

type datagram struct {
	fr   *funnel.Frame
	from net.Addr
}

type packetConn struct {
	fn      *Funnel
	sel     funnel.Selector
	network string
	ctx     context.Context

	mu       sync.Mutex
	sessions map[string]*session // by destination HOST:PORT
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes

	inbox     chan datagram
	closed    chan struct{}
	closeOnce sync.Once
}

// session is one destination's datagram flow.
type session struct {
	run  *funnel.Run
	flow *funnel.Flow
	dg   funnel.DgramConn
	addr net.Addr
	// stopIdle ends the watch that ends the session after DatagramIdle
	// without a datagram either way.
	stopIdle func()
	once     sync.Once
}

func (s *session) end(err error) {
	s.once.Do(func() {
		s.stopIdle()
		s.dg.Close()
		s.run.End(err)
	})
}

func (pc *packetConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "write", Net: pc.network, Addr: addr, Err: err}
	}
	if addr == nil {
		return 0, opErr(errors.New("no destination"))
	}
	if len(b) > funnel.FrameMax {
		return 0, opErr(fmt.Errorf("datagram of %d bytes: at most %d", len(b), funnel.FrameMax))
	}
	s, err := pc.session(addr)
	if err != nil {
		return 0, opErr(err)
	}
	fr := funnel.NewFrame()
	n := copy(fr.Room(), b)
	fr.SetLen(n)
	fr.Time = time.Now()
	if err := s.dg.WriteFrame(fr); err != nil {
		pc.drop(s, err)
		return 0, opErr(err)
	}
	s.flow.Up.Add(int64(n))
	return n, nil
}

// session finds or starts the flow toward addr.
func (pc *packetConn) session(addr net.Addr) (*session, error) {
	key := addr.String()
	pc.mu.Lock()
	if s, ok := pc.sessions[key]; ok {
		pc.mu.Unlock()
		return s, nil
	}
	pc.mu.Unlock()
	select {
	case <-pc.closed:
		return nil, net.ErrClosed
	default:
	}
	dest, err := funnel.ParseAddr(key)
	if err != nil {
		return nil, err
	}
	if err := checkFamily(pc.network, dest); err != nil {
		return nil, err
	}
	pl, err := pc.fn.engine.Resolve(pc.sel)
	if err != nil {
		return nil, err
	}
	f := pc.fn.newFlow(funnel.UDP, dest)
	r := pc.fn.engine.Begin(f, pl)
	dg, err := r.DialDgram(pc.ctx)
	if err != nil {
		r.End(err)
		return nil, err
	}
	s := &session{run: r, flow: f, dg: dg, addr: addr, stopIdle: func() {}}
	pc.mu.Lock()
	if other, ok := pc.sessions[key]; ok {
		// Another writer started one meanwhile: keep the first.
		pc.mu.Unlock()
		dg.Close()
		r.Abandon()
		return other, nil
	}
	select {
	case <-pc.closed:
		pc.mu.Unlock()
		s.end(nil)
		return nil, net.ErrClosed
	default:
	}
	pc.sessions[key] = s
	s.stopIdle = netx.IdleWatch(pc.fn.opts.DatagramIdle, func() int64 { return f.Up.Load() + f.Down.Load() }, func() { pc.drop(s, nil) })
	pc.mu.Unlock()
	go pc.receive(s)
	return s, nil
}

func (pc *packetConn) receive(s *session) {
	for {
		fr, err := s.dg.ReadFrame()
		if err != nil {
			pc.drop(s, err)
			return
		}
		s.flow.Down.Add(int64(fr.Len()))
		select {
		case pc.inbox <- datagram{fr, s.addr}:
		default:
			fr.Release()
		}
	}
}

// drop ends a session; a read error after Close or an idle end is the
// normal way out, not the flow's failure.
func (pc *packetConn) drop(s *session, err error) {
	pc.mu.Lock()
	if pc.sessions[s.addr.String()] == s {
		delete(pc.sessions, s.addr.String())
	}
	pc.mu.Unlock()
	if errors.Is(err, net.ErrClosed) || isTimeout(err) {
		err = nil
	}
	s.end(err)
}

func (pc *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		pc.mu.Lock()
		deadline, wake := pc.deadline, pc.wake
		pc.mu.Unlock()
		var expired <-chan time.Time
		stop := func() bool { return false }
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, nil, pc.readErr(os.ErrDeadlineExceeded)
			}
			t := time.NewTimer(d)
			expired, stop = t.C, t.Stop
		}
		select {
		case dg := <-pc.inbox:
			stop()
			n := copy(b, dg.fr.Bytes())
			dg.fr.Release()
			return n, dg.from, nil
		case <-pc.closed:
			stop()
			return 0, nil, pc.readErr(net.ErrClosed)
		case <-expired:
			return 0, nil, pc.readErr(os.ErrDeadlineExceeded)
		case <-wake:
			// The deadline changed: wait again under the new one.
			stop()
		}
	}
}

func (pc *packetConn) readErr(err error) error {
	return &net.OpError{Op: "read", Net: pc.network, Addr: pc.LocalAddr(), Err: err}
}

func (pc *packetConn) Close() error {
	pc.closeOnce.Do(func() {
		close(pc.closed)
		pc.mu.Lock()
		all := pc.sessions
		pc.sessions = map[string]*session{}
		pc.mu.Unlock()
		for _, s := range all {
			s.end(nil)
		}
		for {
			select {
			case dg := <-pc.inbox:
				dg.fr.Release()
			default:
				return
			}
		}
	})
	return nil
}

// LocalAddr is the funnel's: each destination's datagrams leave from
// wherever its pieces send them.
func (pc *packetConn) LocalAddr() net.Addr { return flowAddr{"udp", "funnel"} }

func (pc *packetConn) SetDeadline(t time.Time) error { return pc.SetReadDeadline(t) }

func (pc *packetConn) SetReadDeadline(t time.Time) error {
	pc.mu.Lock()
	pc.deadline = t
	close(pc.wake)
	pc.wake = make(chan struct{})
	pc.mu.Unlock()
	return nil
}

// SetWriteDeadline is accepted and has no effect: WriteTo hands the
// datagram to the pieces and does not wait for the network.
func (pc *packetConn) SetWriteDeadline(time.Time) error { return nil }

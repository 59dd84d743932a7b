package netstack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The way in for datagrams. A hooked program whose UDP socket is bound to
// all of its host's addresses (a SIP phone on 0.0.0.0:5060 or [::]:5060)
// receives on the tunnel too, as far as it knows: the stack binds the same
// port of its own address, and each peer that sends there becomes a
// conversation (funnel.DgramListener) that the hook carries to the
// program's socket as an incoming flow. The program's answers leave from
// that stack port, and so do its datagrams to new IPv6 peers (DialDgram of
// a flow from the program's bound port): SIP and RTP peers answer, and
// expect answers, on the port they saw.

// convQueue is how many datagrams a conversation holds for a hook that is
// slower than the network; more are dropped, as a full socket buffer
// drops them.
const convQueue = 64

// acceptQueue is how many new peers wait for the hook's Accept.
const acceptQueue = 16

// ListenDgram binds f.Dest's port on the stack's address, and keeps the
// link below up while it is bound.
func (n *Netstack) ListenDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.Conversations, error) {
	d := f.Dest
	if d.IsName() || !d.IP.IsUnspecified() || d.Port == 0 {
		return nil, funnel.ErrNoListener
	}
	n.mu.Lock()
	if n.closed || n.ctx == nil {
		n.mu.Unlock()
		return nil, funnel.Errorf(funnel.KindGeneral, "netstack: the stack is not running (its profile was not opened, or has closed)")
	}
	if n.udpListening[d.Port] != nil {
		// A program bound to both 0.0.0.0 and :: asks twice; the first
		// has the port, and the second keeps its own socket.
		n.mu.Unlock()
		f.Log.Debug("netstack: the stack's UDP port is taken already; the program's socket alone receives", "port", d.Port)
		return nil, funnel.ErrNoListener
	}
	st, err := n.start()
	pieceDone := n.ctx.Done()
	var ul *udpListener
	if err == nil {
		var pc *gonet.UDPConn
		if pc, err = st.ListenUDPAny(d.Port); err != nil {
			err = funnel.Errorf(funnel.KindGeneral, "netstack: binding UDP port %d of the stack: %v", d.Port, err)
		} else {
			ul = newUDPListener(n, pc, d.Port)
			n.udpListening[d.Port] = ul
		}
	}
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	go ul.receive()
	go n.keepLinked(ctx, ul.done, ul.port, ul.Addr, pieceDone, f, next)
	return ul, nil
}

// listenedFrom is the stack's listener for a datagram flow that a program
// sends from a port it bound on all addresses, if the stack listens there.
func (n *Netstack) listenedFrom(f *funnel.Flow) *udpListener {
	src := netx.AddrPortOf(f.Source)
	if !src.IsValid() || !src.Addr().Unmap().IsUnspecified() {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.udpListening[src.Port()]
}

// udpListener is one UDP port of the stack, split into conversations by
// peer.
type udpListener struct {
	n       *Netstack
	pc      *gonet.UDPConn
	port    uint16
	accepts chan *conversation
	done    chan struct{}
	once    sync.Once

	mu    sync.Mutex
	convs map[netip.AddrPort]*conversation

	dropped atomic.Int64 // datagrams no conversation had room for
}

var _ funnel.Conversations = (*udpListener)(nil)

func newUDPListener(n *Netstack, pc *gonet.UDPConn, port uint16) *udpListener {
	return &udpListener{
		n: n, pc: pc, port: port,
		accepts: make(chan *conversation, acceptQueue),
		done:    make(chan struct{}),
		convs:   map[netip.AddrPort]*conversation{},
	}
}

// receive hands each datagram to its peer's conversation, making one
// (for Accept) when the peer is new, until the listener closes.
func (ul *udpListener) receive() {
	defer ul.Close()
	for {
		fr := funnel.NewFrame()
		size, from, err := ul.pc.ReadFrom(fr.Room()[:funnel.FrameMax])
		if err != nil {
			fr.Release()
			select {
			case <-ul.done:
			default:
				slog.Warn("netstack: the stack's UDP port stopped receiving", "port", ul.port, "err", err)
			}
			return
		}
		fr.SetLen(size)
		fr.Src = netx.AddrPortOf(from)
		fr.Dst = netip.AddrPortFrom(ul.n.address(), ul.port)
		fr.Time = time.Now()
		ul.deliver(fr)
	}
}

func (ul *udpListener) deliver(fr *funnel.Frame) {
	peer := fr.Src
	ul.mu.Lock()
	c := ul.convs[peer]
	fresh := c == nil
	if fresh {
		c = ul.newConversation(peer)
	}
	ul.mu.Unlock()
	if !c.put(fr) {
		ul.dropped.Add(1)
	}
	if !fresh {
		return
	}
	select {
	case ul.accepts <- c:
	default:
		// Nobody takes new peers fast enough: this one is turned away
		// (its next datagram tries again).
		ul.dropped.Add(1)
		c.Close()
	}
}

// newConversation registers a conversation with peer, in place of any
// other. Called with ul.mu held.
func (ul *udpListener) newConversation(peer netip.AddrPort) *conversation {
	c := &conversation{ul: ul, peer: peer, udpPeer: net.UDPAddrFromAddrPort(peer), queue: make(chan *funnel.Frame, convQueue), closed: make(chan struct{})}
	ul.convs[peer] = c
	return c
}

// dial opens a conversation toward peer from the listener's port, for a
// datagram flow the program starts: the peer's answers come back to it.
func (ul *udpListener) dial(peer netip.AddrPort) (*conversation, error) {
	select {
	case <-ul.done:
		return nil, net.ErrClosed
	default:
	}
	ul.mu.Lock()
	defer ul.mu.Unlock()
	return ul.newConversation(peer), nil
}

// Accept gives the conversation of the next new peer.
func (ul *udpListener) Accept() (funnel.Conversation, error) {
	select {
	case c := <-ul.accepts:
		return c, nil
	case <-ul.done:
		return nil, &net.OpError{Op: "accept", Net: "udp", Addr: ul.Addr(), Err: net.ErrClosed}
	}
}

// Close unbinds the port; conversations in progress end with it.
func (ul *udpListener) Close() error {
	ul.once.Do(func() {
		close(ul.done)
		ul.pc.Close()
		ul.mu.Lock()
		convs := ul.convs
		ul.convs = map[netip.AddrPort]*conversation{}
		ul.mu.Unlock()
		for _, c := range convs {
			c.Close()
		}
		ul.n.mu.Lock()
		if ul.n.udpListening[ul.port] == ul {
			delete(ul.n.udpListening, ul.port)
		}
		ul.n.mu.Unlock()
		if d := ul.dropped.Load(); d > 0 {
			slog.Debug("netstack: datagrams dropped on the stack's UDP port", "port", ul.port, "dropped", d)
		}
	})
	return nil
}

// Addr is the port on the stack's present address.
func (ul *udpListener) Addr() net.Addr {
	a := ul.n.address()
	if !a.IsValid() {
		a = netip.IPv6Unspecified()
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, ul.port))
}

// conversation is one peer's datagrams on a listener's port.
type conversation struct {
	ul      *udpListener
	peer    netip.AddrPort
	udpPeer *net.UDPAddr
	queue   chan *funnel.Frame
	closed  chan struct{}
	once    sync.Once

	deadlineMu sync.Mutex
	deadline   time.Time
}

var _ funnel.Conversation = (*conversation)(nil)

// put queues fr for the reader; false (fr released) when the queue is
// full or the conversation closed.
func (c *conversation) put(fr *funnel.Frame) bool {
	select {
	case <-c.closed:
		fr.Release()
		return false
	default:
	}
	select {
	case c.queue <- fr:
		return true
	default:
		fr.Release()
		return false
	}
}

func (c *conversation) ReadFrame() (*funnel.Frame, error) {
	c.deadlineMu.Lock()
	deadline := c.deadline
	c.deadlineMu.Unlock()
	var expired <-chan time.Time
	if !deadline.IsZero() {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		expired = t.C
	}
	select {
	case fr := <-c.queue:
		return fr, nil
	case <-c.closed:
		return nil, net.ErrClosed
	case <-expired:
		return nil, os.ErrDeadlineExceeded
	}
}

// WriteFrame sends fr to the peer from the listener's port.
func (c *conversation) WriteFrame(fr *funnel.Frame) error {
	select {
	case <-c.closed:
		fr.Release()
		return net.ErrClosed
	default:
	}
	_, err := c.ul.pc.WriteTo(fr.Bytes(), c.udpPeer)
	fr.Release()
	if err != nil {
		return fmt.Errorf("netstack: udp %s from port %d: %w", c.peer, c.ul.port, err)
	}
	return nil
}

func (c *conversation) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.deadline = t
	c.deadlineMu.Unlock()
	return nil
}

// Close ends the conversation; the peer's next datagram starts another.
func (c *conversation) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.ul.mu.Lock()
		if c.ul.convs[c.peer] == c {
			delete(c.ul.convs, c.peer)
		}
		c.ul.mu.Unlock()
		for {
			select {
			case fr := <-c.queue:
				fr.Release()
			default:
				return
			}
		}
	})
	return nil
}

// LocalAddr and RemoteAddr say the conversation's ends, as a connected
// socket's do.
func (c *conversation) LocalAddr() net.Addr { return c.ul.Addr() }
func (c *conversation) RemoteAddr() net.Addr {
	return c.udpPeer
}

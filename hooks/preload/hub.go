//go:build linux

package preload

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/internal/netx"
)

// relayHub is the loopback listener that the program's sockets are
// connected to when pieces act on their flows: one per address family for
// the whole funnel (a listener per flow would spend an ephemeral port on
// each and run out of them under many short connections). A connection is
// matched to its flow by its source, the program's socket's own address.
type relayHub struct {
	ln      *net.TCPListener
	addr    netip.AddrPort
	mu      sync.Mutex
	waiting map[netip.AddrPort]waiter
	// expiry runs while flows wait, and fails those that waited too long:
	// one timer for the hub, not one per flow (a flow that waits costs a
	// map entry and its callback).
	expiry *time.Timer
	// early holds connections accepted before their flow registered (the
	// handshake completes inside connect(), before we know the source).
	early map[netip.AddrPort]earlyConn
}

// maxEarly bounds the connections held before their flow registers.
const maxEarly = 1024

type earlyConn struct {
	c    net.Conn
	when time.Time
}

// relayHubs are made on first use and live as long as the process.
type relayHubs struct {
	log *slog.Logger
	// listen makes the hub's listener where the program's sockets reach
	// it (Server.listenLoopbackTCP).
	listen func(string, net.IP) (*net.TCPListener, error)
	mu     sync.Mutex
	v4, v6 *relayHub
	err4   error
}

func newRelayHub(listen func(string, net.IP) (*net.TCPListener, error), network string, ip net.IP, log *slog.Logger) (*relayHub, error) {
	ln, err := listen(network, ip)
	if err != nil {
		return nil, err
	}
	h := &relayHub{
		ln:      ln,
		addr:    netx.AddrPortOf(ln.Addr()),
		waiting: map[netip.AddrPort]waiter{},
		early:   map[netip.AddrPort]earlyConn{},
	}
	// The hub serves as long as the process lives: no context ends it.
	go netx.AcceptLoop(context.Background(), ln, h.arrived, log)
	return h, nil
}

// hub returns the hub a socket of family reaches, and the address to
// connect it to (a fresh Sockaddr each time: unix.Connect writes into it).
func (hs *relayHubs) hub(fd, family int) (*relayHub, unix.Sockaddr, error) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if family == unix.AF_INET6 {
		if hs.v6 == nil {
			hs.v6, _ = newRelayHub(hs.listen, "tcp6", net.IPv6loopback, hs.log)
		}
		if hs.v6 != nil {
			return hs.v6, unixSockaddr(hs.v6.addr, unix.AF_INET6), nil
		}
		// No IPv6 on loopback: a dual-stack socket reaches the IPv4 hub.
	}
	if hs.v4 == nil && hs.err4 == nil {
		hs.v4, hs.err4 = newRelayHub(hs.listen, "tcp4", net.IPv4(127, 0, 0, 1), hs.log)
	}
	if hs.err4 != nil {
		return nil, nil, hs.err4
	}
	sa, ok := socketAddr(fd, family, hs.v4.addr, handoffTarget{})
	if !ok {
		return nil, nil, errors.New("an IPv6-only socket cannot reach the funnel's relay: IPv6 loopback is unavailable")
	}
	return hs.v4, sa, nil
}

// arrived matches a connection to the flow waiting for it, or keeps it
// until that flow registers.
func (h *relayHub) arrived(c net.Conn) {
	from := netx.AddrPortOf(c.RemoteAddr())
	h.mu.Lock()
	if w, ok := h.waiting[from]; ok {
		delete(h.waiting, from)
		h.mu.Unlock()
		w.then(c, nil)
		return
	}
	// Not registered yet, or nobody's: keep it a while. Stale ones go.
	now := time.Now()
	for k, e := range h.early {
		if now.Sub(e.when) > relayAcceptWait {
			e.c.Close()
			delete(h.early, k)
		}
	}
	if old, ok := h.early[from]; ok {
		old.c.Close()
	}
	if len(h.early) >= maxEarly {
		// Far more than programs connecting at once: someone else is
		// knocking on the port.
		h.mu.Unlock()
		c.Close()
		return
	}
	h.early[from] = earlyConn{c: c, when: now}
	h.mu.Unlock()
}

// waiter is a flow waiting for its program's connection.
type waiter struct {
	then     func(net.Conn, error)
	deadline time.Time
}

// expiryPeriod is how often the hub looks for flows that waited longer
// than relayAcceptWait: such a flow fails within one period after that.
const expiryPeriod = relayAcceptWait / 8

// expect calls then with the connection from the program's socket at
// from once it arrives (at once if it has), or with an error once it has
// waited relayAcceptWait. No goroutine waits meanwhile: then runs on the
// hub's accepting goroutine or its expiry timer's, so it must not block.
// Whoever removes the entry from waiting (arrived or expire) calls then.
func (h *relayHub) expect(from netip.AddrPort, then func(net.Conn, error)) {
	from = netx.Unmap(from)
	h.mu.Lock()
	if e, ok := h.early[from]; ok {
		delete(h.early, from)
		h.mu.Unlock()
		then(e.c, nil)
		return
	}
	if old, ok := h.waiting[from]; ok {
		// The program's source address again, while an earlier flow
		// still waits from it: that flow's socket is gone.
		defer old.then(nil, errors.New("the program's socket never reached the relay"))
	}
	h.waiting[from] = waiter{then: then, deadline: time.Now().Add(relayAcceptWait)}
	if h.expiry == nil {
		h.expiry = time.AfterFunc(expiryPeriod, h.expire)
	}
	h.mu.Unlock()
}

// expire fails the flows that waited too long, and comes back while any
// flow waits.
func (h *relayHub) expire() {
	now := time.Now()
	var late []waiter
	h.mu.Lock()
	for from, w := range h.waiting {
		if now.After(w.deadline) {
			late = append(late, w)
			delete(h.waiting, from)
		}
	}
	if len(h.waiting) > 0 {
		h.expiry.Reset(expiryPeriod)
	} else {
		h.expiry = nil
	}
	h.mu.Unlock()
	for _, w := range late {
		w.then(nil, errors.New("the program's socket never reached the relay"))
	}
}

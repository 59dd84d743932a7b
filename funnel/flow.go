package funnel

import (
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// Network is the transport a flow asked for.
type Network string

const (
	TCP Network = "tcp"
	UDP Network = "udp"
)

// Shape is the top shape a flow of this network enters a profile with.
func (n Network) Shape() Shape {
	if n == UDP {
		return Dgram
	}
	return Stream
}

var flowIDs atomic.Uint64

// Flow is one connection or datagram conversation. Its metadata reaches every
// piece: pieces that change the destination (hosts, socks5 dialing its
// server) work on a Clone so that the hook's view stays intact.
type Flow struct {
	ID      uint64
	Hook    string   // the entrance: "forward", "socks5d", "preload", ...
	Source  net.Addr // who asked: the client's address
	User    string   // SOCKS username, or the local user of a hooked program
	PID     int      // process of a hooked program, 0 when unknown
	Dest    Addr     // where the application wants to go
	Network Network
	Profile string // the profile's name, or "chain" for an inline one
	Inbound bool   // accepted from the network, travelling up to the app
	// Handoff asks the terminal piece for a *Handoff instead of a
	// connection when nothing above it touches the bytes (the preload hook
	// then connects the program's own socket). Run.DialStream clears it
	// when the profile's first piece holds the bytes.
	Handoff bool
	Start   time.Time
	Log     *slog.Logger

	// Up and Down count bytes through the whole flow, app to network and
	// back; the hook's relay fills them and the end-of-flow log reads them.
	Up, Down *atomic.Int64
}

// NewFlow starts a flow with a fresh ID and counters.
func NewFlow(hook string, network Network, dest Addr) *Flow {
	f := &Flow{
		ID:      flowIDs.Add(1),
		Hook:    hook,
		Dest:    dest,
		Network: network,
		Start:   time.Now(),
		Log:     slog.Default(),
	}
	// One allocation for both counters.
	counts := new([2]atomic.Int64)
	f.Up, f.Down = &counts[0], &counts[1]
	return f
}

// Clone is a copy that shares the counters.
func (f *Flow) Clone() *Flow {
	g := *f
	return &g
}

// WithDest is a clone aimed at another destination.
func (f *Flow) WithDest(d Addr) *Flow {
	g := f.Clone()
	g.Dest = d
	return g
}

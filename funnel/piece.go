package funnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Piece is one configured Puzzle Piece in a compiled profile. Curves says
// which shapes it joins; for every curve it must implement the matching
// interface below (StreamDialer for a stream app edge, DgramDialer for dgram).
// A curve whose Net is Kernel ends the chain: the piece reaches the operating
// system (or another profile) itself.
type Piece interface {
	Curves() []Curve
}

// Next is the rest of the chain below a piece, toward the network.
type Next interface {
	DialStream(ctx context.Context, f *Flow) (net.Conn, error)
	DialDgram(ctx context.Context, f *Flow) (DgramConn, error)
}

// StreamDialer carries an outgoing stream flow: it returns the app-side
// connection, built on what next gives it. A piece that leaves the bytes
// alone returns next's connection itself, so that the relay can still
// join two kernel sockets with splice.
type StreamDialer interface {
	DialStream(ctx context.Context, f *Flow, next Next) (net.Conn, error)
}

// StreamAcceptor carries an incoming stream flow up toward the application:
// conn is the network side, the result is what the application gets (TLS is
// a server here, where it is a client in DialStream). Pieces without it pass
// incoming streams through untouched.
type StreamAcceptor interface {
	AcceptStream(ctx context.Context, f *Flow, conn net.Conn) (net.Conn, error)
}

// DgramDialer carries an outgoing datagram flow.
type DgramDialer interface {
	DialDgram(ctx context.Context, f *Flow, next Next) (DgramConn, error)
}

// Transparent is implemented by pieces whose DialStream hands back the
// connection from below unchanged when Transparent() is true (hosts, deny,
// route, direct, an idle shape). A flow asking for a handoff keeps asking
// only through such pieces: any other piece holds the bytes, so the engine
// clears Flow.Handoff before it, and no piece has to remember to.
type Transparent interface {
	Transparent() bool
}

func isTransparent(p Piece) bool {
	t, ok := p.(Transparent)
	return ok && t.Transparent()
}

// Closer is implemented by pieces that hold resources for the whole profile
// (an open pcap file); a reload closes the old set once its flows are done
// with it. See Opener for when Close is called.
type Closer interface {
	Close() error
}

// Opener is implemented by pieces that hold resources for the whole set
// (a capture file, a socket, a listener). The contract, which keeps
// `funtun profiles check`, `funtun pieces`, `funtun profiles show` and a
// reload that fails free of side effects:
//
//   - Building a piece (its Factory) parses and validates only: it may read
//     a file (a hosts table, a certificate) and check that a path could be
//     written (access(2)), but it opens nothing long-lived, creates and
//     truncates nothing, and binds nothing.
//   - Open runs once, when the compiled set goes live: when a Catalog swaps
//     it in (Catalog.Load, Set.Open), or, for an inline chain='…' compiled
//     lazily against a live set (Set.Chain), when that chain is first
//     resolved (or, on a reload, when the new set takes over the chains
//     of the old). A set that only compiles (profiles check, profiles
//     show) is never opened.
//   - If Open fails, the set does not go live: a reload keeps the old set
//     and reports the error with the profile's FILE:LINE:COL and the piece
//     (a *PosError); the first load leaves that profile out, like one that
//     does not compile. The pieces of the set already opened are closed.
//   - Close (Closer) runs once after the last flow of that set has ended
//     (Pipeline.Hold), and only for pieces whose Open succeeded; a piece
//     with Close but no Open counts as open from when it is built.
type Opener interface {
	Open() error
}

// Factory makes a configured piece from its parameters. It must consume
// every parameter it knows (Params.String and friends) and leave the rest;
// the compiler refuses what is left as unknown parameters.
type Factory func(p *Params, b Builder) (Piece, error)

// Builder is what a factory may ask of the compiler beyond its parameters.
type Builder interface {
	// Ref names another profile (for route); it fails when the name is
	// unknown, and loops are refused once every profile is compiled.
	Ref(name string) (*ProfileRef, error)
}

// PieceInfo describes a registered piece, for `funtun pieces` and docs.
type PieceInfo struct {
	Name    string
	Summary string // one line
	Params  string // one parameter a line: "sni=NAME  server name to send"
	// Example is parameters that build the piece, for pieces that need
	// some ("from=hello to=HOWDY"); `funtun pieces NAME` shows it.
	Example string
	// Curves declares the piece's shapes without building it, for
	// `funtun pieces NAME` and docs. When parameters choose among curves,
	// it is their union; the compiler uses the built piece's Curves() and
	// refuses one that is not declared here (when Curves is set).
	Curves []Curve
	// EndsChains marks the piece that a chain whose last piece needs a
	// network below it ends in implicitly (direct); one piece declares it.
	EndsChains bool
	New        Factory
}

var (
	registryMu sync.RWMutex
	registry   = map[string]PieceInfo{}
)

// Register adds a piece kind; pieces call it from init().
func Register(info PieceInfo) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[info.Name]; dup {
		panic("funnel: piece registered twice: " + info.Name)
	}
	if info.EndsChains {
		if name, ok := networkEndLocked(); ok {
			panic("funnel: pieces " + name + " and " + info.Name + " both declare EndsChains")
		}
	}
	registry[info.Name] = info
}

// Lookup finds a registered piece.
func Lookup(name string) (PieceInfo, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	i, ok := registry[name]
	return i, ok
}

// networkEnd names the piece that ends chains implicitly.
func networkEnd() (string, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return networkEndLocked()
}

func networkEndLocked() (string, bool) {
	for name, i := range registry {
		if i.EndsChains {
			return name, true
		}
	}
	return "", false
}

// Pieces lists the registered pieces by name.
func Pieces() []PieceInfo {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]PieceInfo, 0, len(registry))
	for _, i := range registry {
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// checkImplements is the compiler's guard against a piece that declares a
// curve it cannot carry.
func checkImplements(name string, p Piece) error {
	for _, c := range p.Curves() {
		switch c.App {
		case Stream:
			if _, ok := p.(StreamDialer); !ok {
				return fmt.Errorf("piece %q declares a stream curve but has no DialStream", name)
			}
		case Dgram:
			if _, ok := p.(DgramDialer); !ok {
				return fmt.Errorf("piece %q declares a dgram curve but has no DialDgram", name)
			}
		}
	}
	return nil
}

// checkDeclared is the guard that keeps PieceInfo.Curves true: every curve
// of the built piece must be one its registration declares.
func checkDeclared(info PieceInfo, p Piece) error {
	if len(info.Curves) == 0 {
		return nil
	}
	for _, c := range p.Curves() {
		if !slices.Contains(info.Curves, c) {
			return fmt.Errorf("piece %q carries %s→%s, which its registration (PieceInfo.Curves) does not declare", info.Name, c.App, c.Net)
		}
	}
	return nil
}

// KernelDialer is implemented by a terminal piece whose stream flows are
// one connect(2) of a kernel socket to exactly the flow's destination when
// that is an address (direct). It says how it makes that socket, so that
// the engine's fast path (and a hook's: the preload library connects the
// program's own socket) can make the same connection without a goroutine,
// and without knowing the piece. ok is false when the piece is configured
// in a way the fast path cannot copy.
type KernelDialer interface {
	KernelDial() (policy DialPolicy, ok bool)
}

// DialPolicy is how a KernelDialer makes its sockets.
type DialPolicy struct {
	Timeout   time.Duration // connect timeout; 0 is the kernel's own
	KeepAlive time.Duration // TCP keepalive idle and interval; 0 turns it off
	// KeepAliveLoopback keeps keepalive on loopback destinations too
	// (nothing between here and a local server drops idle connections).
	KeepAliveLoopback bool
	Source            netip.Addr // local address to bind first, if valid
	Mark              int        // SO_MARK, if not 0
	// Congestion is the TCP congestion control of the dialed socket
	// (TCP_CONGESTION), if not "": a relay on a gateway may not want its
	// upstream to pace a flow the client already paces.
	Congestion string
	// ErrPrefix starts the piece's dial errors ("direct"), so the fast
	// path's errors read as the piece's own.
	ErrPrefix string
	// Plain says the piece has nothing configured of its own, so that a
	// connect(2) of the application's own socket, made without any
	// options, stands in for it (the preload library's fast path).
	Plain bool
}

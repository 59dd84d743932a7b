package funnel

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
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
// (an open pcap file, a shared token bucket); a reload closes the old set
// once its flows are done with it.
type Closer interface {
	Close() error
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
	// some ("from=hello to=HOWDY"); `funtun pieces NAME` shows it and
	// builds the piece from it to show its shapes.
	Example string
	New     Factory
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
	registry[info.Name] = info
}

// Lookup finds a registered piece.
func Lookup(name string) (PieceInfo, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	i, ok := registry[name]
	return i, ok
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

package funnel

import "strings"

// Shape names a protocol stack that an edge accepts.
type Shape string

const (
	// Stream is reliable ordered bytes: TCP, TLS, a pipe to a child process.
	Stream Shape = "stream"
	// Dgram keeps message boundaries: UDP, a length-framed stream.
	Dgram Shape = "dgram"
	// PacketIP6 is raw IPv6 packets.
	PacketIP6 Shape = "packet/ip6"
	// Kernel marks an edge that ends in the operating system (or in another
	// profile): nothing may be joined below it.
	Kernel Shape = "kernel"
)

// Curve is one traffic path across a piece: what it takes on its app edge
// and what it then needs on its net edge (the spec's Curves).
type Curve struct {
	App Shape
	Net Shape
	// Also is a second shape the piece needs from below on this curve:
	// a SOCKS5 UDP flow needs a stream (the control connection) and
	// datagrams (the relay). Empty for most pieces.
	Also Shape
}

// ShapeSet is a small ordered set of shapes.
type ShapeSet []Shape

func (s ShapeSet) Has(x Shape) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

func (s ShapeSet) add(x Shape) ShapeSet {
	if s.Has(x) {
		return s
	}
	return append(s, x)
}

func (s ShapeSet) String() string {
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = string(x)
	}
	return strings.Join(parts, " or ")
}

// AppShapes lists the shapes a piece accepts on its app edge.
func AppShapes(cs []Curve) ShapeSet {
	var s ShapeSet
	for _, c := range cs {
		s = s.add(c.App)
	}
	return s
}

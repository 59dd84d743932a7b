// Package funnel is the engine of the Funnel Tunnel: flows, Puzzle Pieces
// with their edges and shapes, profile compilation, the piece registry, the
// stream relay and the pooled datagram frames.
//
// Pieces and hooks live in their own packages and register themselves here;
// nothing in this package knows any piece by name.
package funnel

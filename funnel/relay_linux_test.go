//go:build linux

package funnel

import (
	"io"
	"net"
	"os"
	"testing"
)

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// Idle spliced flows must not park a pipe pair per direction: the relay
// takes a pipe only while bytes are in flight.
func TestRelayIdleHoldsNoPipes(t *testing.T) {
	const flows = 50
	type pair struct{ client, server net.Conn }
	var pairs []pair
	for i := 0; i < flows; i++ {
		c, s, _, _, _ := relayed(t, nil)
		pairs = append(pairs, pair{c, s})
	}
	// One round trip each, so every relay has spliced at least once.
	buf := make([]byte, 5)
	for _, p := range pairs {
		p.client.Write([]byte("hello"))
		io.ReadFull(p.server, buf)
		p.server.Write([]byte("world"))
		io.ReadFull(p.client, buf)
	}
	fds := openFDs(t)
	// 4 sockets per flow (two pairs) plus a small fixed number for the
	// process and the bounded pipe free list.
	limit := flows*4 + 2*maxFreePipes + 32
	if fds > limit {
		t.Errorf("%d descriptors open for %d idle flows; at most %d expected (are idle relays holding pipes?)", fds, flows, limit)
	}
	if fds < flows*4 {
		t.Errorf("only %d descriptors open: the test is not measuring what it thinks", fds)
	}
}

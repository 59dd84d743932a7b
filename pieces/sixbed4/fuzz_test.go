package sixbed4

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

var (
	fuzzPrefix = netip.MustParsePrefix("2001:db8:6bed:4::/64")
	fuzzRouter = netip.MustParseAddrPort("127.0.0.1:9")
	fuzzSelf   = netip.MustParseAddrPort("127.0.0.1:40000")
	fuzzPeer   = netip.MustParseAddrPort("127.0.0.2:40001")
)

// fuzzTunnel is a tunnel holding an address, as after the router
// answered, on a loopback socket: what it sends stays on loopback.
func fuzzTunnel(t testing.TB) *tunnel {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{router: fuzzRouter, lanip: 1, direct: true, reachable: time.Second, failed: time.Second, keepalive: time.Second, timeout: time.Second}
	tn := newTunnel(cfg, conn)
	tn.setAddr(wire.Address(fuzzPrefix, fuzzSelf, 1))
	t.Cleanup(tn.close)
	return tn
}

func total(m map[string]int64) (n int64) {
	for _, v := range m {
		n += v
	}
	return n
}

// dataPacket is a UDP-in-IPv6 packet from src to dst.
func dataPacket(src, dst netip.Addr, payload int) []byte {
	b := make([]byte, 40+8+payload)
	b[0] = 0x60
	b[4], b[5] = byte((8+payload)>>8), byte(8+payload)
	b[6], b[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return b
}

// FuzzTunnelInput feeds the tunnel socket's handler arbitrary datagrams,
// from the router and from a peer: nothing may panic, and every datagram
// is either delivered to the stack above or counted.
func FuzzTunnelInput(f *testing.F) {
	self := wire.Address(fuzzPrefix, fuzzSelf, 1)
	peer := wire.Address(fuzzPrefix, fuzzPeer, 1)
	f.Add(wire.RouterAdvertisement(wire.AllNodes, wire.Address(fuzzPrefix, fuzzSelf, 0)), true)
	f.Add(wire.NeighborSolicitation(peer, self), false)
	f.Add(wire.NeighborAdvertisement(peer, self, false), false)
	f.Add(dataPacket(peer, self, 20), false)
	f.Add(dataPacket(netip.MustParseAddr("2001:db8:6bed:4::66"), self, 20), false) // spoofed
	f.Add(dataPacket(netip.MustParseAddr("2001:db8:1::1"), self, 20), true)
	f.Add(dataPacket(peer, self, 1300), false) // oversized
	f.Add([]byte{0x60, 0, 0, 0}, true)         // truncated
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, b []byte, fromRouter bool) {
		tn := fuzzTunnel(t)
		from := fuzzPeer
		if fromRouter {
			from = fuzzRouter
		}
		before := total(tn.counts.snapshot())
		tn.handle(b, from)
		if total(tn.counts.snapshot()) == before {
			t.Fatalf("datagram of %d bytes from %s was neither delivered nor counted", len(b), from)
		}
		for {
			select {
			case fr := <-tn.up:
				fr.Release()
				continue
			default:
			}
			break
		}
	})
}

func TestSpoofedAndMalformedAreDroppedAndCounted(t *testing.T) {
	tn := fuzzTunnel(t)
	self := tn.LinkAddr()
	peer := wire.Address(fuzzPrefix, fuzzPeer, 1)
	other := wire.Address(fuzzPrefix, netip.MustParseAddrPort("127.0.0.3:5"), 1)

	tn.handle(dataPacket(peer, self, 10), fuzzPeer)
	if len(tn.up) != 1 {
		t.Fatalf("a packet from a peer with its own address was not delivered: %v", tn.counts.snapshot())
	}
	// Its source names another peer's IPv4 address and port.
	tn.handle(dataPacket(other, self, 10), fuzzPeer)
	tn.handle(dataPacket(netip.MustParseAddr("2001:db8:1::1"), self, 10), fuzzPeer)
	tn.handle(dataPacket(peer, self, 1300), fuzzPeer)
	tn.handle(dataPacket(peer, self, 10)[:30], fuzzPeer)
	// An advertisement that does not come from the router's address.
	tn.handle(wire.RouterAdvertisement(wire.AllNodes, wire.Address(fuzzPrefix, fuzzPeer, 0)), fuzzPeer)
	c := tn.counts.snapshot()
	if len(tn.up) != 1 {
		t.Errorf("%d packets delivered, want 1", len(tn.up))
	}
	for reason, want := range map[string]int64{
		"drop: spoofed source":             3,
		"drop: " + wire.ErrTooLong.Error(): 1,
		"drop: " + wire.ErrShort.Error():   1,
	} {
		if c[reason] != want {
			t.Errorf("counter %q = %d, want %d (all: %v)", reason, c[reason], want, c)
		}
	}
	if tn.LinkAddr() != self {
		t.Errorf("an advertisement from a peer changed the address to %s", tn.LinkAddr())
	}
}

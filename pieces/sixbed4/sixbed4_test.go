package sixbed4

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/netstack"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

func TestParameterErrors(t *testing.T) {
	for chain, want := range map[string]string{
		"netstack | 6bed4 router=2001:db8::1":          "not an IPv4 address",
		"netstack | 6bed4 router=nowhere":              "is not IPV4:PORT",
		"netstack | 6bed4 router=0.0.0.0:25790":        "needs an address and a port",
		"netstack | 6bed4 lanip=0":                     "lanip",
		"netstack | 6bed4 lanip=16384":                 "lanip",
		"netstack | 6bed4 keepalive=45s":               "at most 30s",
		"netstack | 6bed4 timeout=0s":                  "must be more than 0",
		"netstack | 6bed4 reachable=0s":                "must be more than 0",
		"netstack | 6bed4 colour=blue":                 `no parameter "colour"`,
		"6bed4":                                        "carries neither streams nor datagrams",
		"netstack addr=10.0.0.1 | 6bed4":               "not a unicast IPv6 address",
		"netstack mtu=1000 | 6bed4":                    "mtu",
		"netstack accept=http | 6bed4":                 "is not a TCP port",
		"netstack ipv4=nowhere | 6bed4":                `no profile named "nowhere"`,
		"netstack | 6bed4 router=192.0.2.1 | netstack": "already ends the chain",
	} {
		_, err := testutil.CompileChain(chain)
		if err == nil {
			t.Errorf("%q compiled; want an error saying %q", chain, want)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "test:1:") {
			t.Errorf("%q: error %q should say %q at its position", chain, err, want)
		}
	}
	if _, err := testutil.CompileChain("netstack | 6bed4 router=192.0.2.1 lanip=7 keepalive=20s direct=false"); err != nil {
		t.Errorf("a good chain does not compile: %v", err)
	}
}

// The router's corrective advertisement (the peer's NAT mapping changed)
// moves the peer to its new address and tells the stack above.
func TestCorrectiveAdvertisementMovesTheAddress(t *testing.T) {
	tn := fuzzTunnel(t)
	old := tn.LinkAddr()
	changed := tn.LinkAddrChanged()
	moved := netip.MustParseAddrPort("127.0.0.1:40999")
	tn.handle(wire.RouterAdvertisement(old, wire.Address(fuzzPrefix, moved, 0)), fuzzRouter)
	select {
	case <-changed:
	case <-time.After(time.Second):
		t.Fatal("the stack above was not told of the new address")
	}
	if got, want := tn.LinkAddr(), wire.Address(fuzzPrefix, moved, 1); got != want {
		t.Fatalf("address after the corrective advertisement: %s, want %s", got, want)
	}
	// An advertisement from somewhere other than fe80:: is not the router's.
	forged := wire.RouterAdvertisement(wire.AllNodes, wire.Address(fuzzPrefix, fuzzPeer, 0))
	forged[8] = 0x20 // source 20xx:: instead of fe80::, checksum now wrong too
	tn.handle(forged, fuzzRouter)
	if got := tn.LinkAddr(); got != wire.Address(fuzzPrefix, moved, 1) {
		t.Fatalf("a forged advertisement moved the address to %s", got)
	}
}

package wire

import (
	"net/netip"
	"testing"
)

func TestAddressLayout(t *testing.T) {
	prefix := netip.MustParsePrefix("2001:db8:6bed:4::/64")
	// 203 is 0b11001011: its two low bits fall on the interface
	// identifier's u/g bits and move to the top of the 15th byte.
	public := netip.MustParseAddrPort("203.0.113.7:25790")
	got := Address(prefix, public, 1)
	want := netip.MustParseAddr("2001:db8:6bed:4:c800:7107:64be:c001")
	if got != want {
		t.Fatalf("Address = %s, want %s", got, want)
	}
	if ep := Endpoint(got); ep != public {
		t.Errorf("Endpoint(%s) = %s, want %s", got, ep, public)
	}
	if n := LANIP(got); n != 1 {
		t.Errorf("LANIP = %d, want 1", n)
	}
	if b := got.As16(); b[8]&0x03 != 0 {
		t.Errorf("u/g bits of %s are set", got)
	}
	if r := WithLANIP(got, 0); r != netip.MustParseAddr("2001:db8:6bed:4:c800:7107:64be:c000") {
		t.Errorf("WithLANIP(0) = %s", r)
	}
	if r := WithLANIP(got, MaxLANIP); LANIP(r) != MaxLANIP || Endpoint(r) != public {
		t.Errorf("WithLANIP(max) = %s: lanip %d endpoint %s", r, LANIP(r), Endpoint(r))
	}
}

func TestRouterAdvertisementRoundTrip(t *testing.T) {
	prefix := netip.MustParsePrefix("2001:db8:6bed:4::/64")
	public := netip.MustParseAddrPort("10.1.2.3:40000")
	p114 := Address(prefix, public, 0)
	ra := RouterAdvertisement(AllNodes, p114)
	p, err := Parse(ra)
	if err != nil {
		t.Fatal(err)
	}
	if p.Src != RouterLinkLocal || p.Dst != AllNodes || p.HopLimit != NDHopLimit {
		t.Fatalf("advertisement header: %+v", p)
	}
	got, err := RouterPrefix(&p)
	if err != nil {
		t.Fatal(err)
	}
	if got != p114 {
		t.Fatalf("RouterPrefix = %s, want %s", got, p114)
	}
	ra[len(ra)-1] ^= 0xff
	if _, err := Parse(ra); err != ErrChecksum {
		t.Fatalf("a damaged advertisement parsed: %v", err)
	}
}

func TestNeighborMessages(t *testing.T) {
	a := netip.MustParseAddr("2001:db8:6bed:4:a00:2:9c40:1")
	b := netip.MustParseAddr("2001:db8:6bed:4:a00:3:9c40:1")
	p, err := Parse(NeighborSolicitation(a, b))
	if err != nil {
		t.Fatal(err)
	}
	if tgt, ok := NeighborTarget(&p); !ok || tgt != b || p.Src != a || p.Dst != b {
		t.Fatalf("solicitation: target %s ok %v, %s -> %s", tgt, ok, p.Src, p.Dst)
	}
	p, err = Parse(NeighborAdvertisement(b, a, false))
	if err != nil {
		t.Fatal(err)
	}
	if tgt, ok := NeighborTarget(&p); !ok || tgt != b || p.Src != b || p.Dst != a {
		t.Fatalf("advertisement: target %s ok %v, %s -> %s", tgt, ok, p.Src, p.Dst)
	}
	rs, err := Parse(RouterSolicitation())
	if err != nil || !rs.IsND() || rs.Dst != AllRouters {
		t.Fatalf("solicitation: %v %+v", err, rs)
	}
}

func TestParseRefuses(t *testing.T) {
	good := NeighborSolicitation(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"))
	long := make([]byte, MTU+1)
	copy(long, good)
	lowHop := append([]byte(nil), good...)
	lowHop[7] = 64
	icmpShort := append(append([]byte(nil), good[:40]...), 0x87, 0)
	icmpShort[4], icmpShort[5] = 0, 2
	v4 := append([]byte(nil), good...)
	v4[0] = 0x45
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":          {nil, ErrShort},
		"truncated":      {good[:30], ErrShort},
		"cut payload":    {good[:len(good)-4], ErrLength},
		"oversized":      {long, ErrTooLong},
		"IPv4":           {v4, ErrVersion},
		"ND from afar":   {lowHop, ErrHopLimit},
		"ICMP too short": {icmpShort, ErrICMPShort},
	}
	for name, c := range cases {
		if _, err := Parse(c.b); err != c.want {
			t.Errorf("%s: Parse = %v, want %v", name, err, c.want)
		}
	}
}

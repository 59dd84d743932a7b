package netx

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
)

func TestAddrPortOf(t *testing.T) {
	mp := netip.MustParseAddrPort
	for _, tc := range []struct {
		in   net.Addr
		want netip.AddrPort
	}{
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 80}, mp("192.0.2.1:80")},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 53}, mp("[2001:db8::1]:53")},
		{&net.UDPAddr{IP: net.ParseIP("fe80::1"), Port: 53, Zone: "lo"}, mp("[fe80::1%lo]:53")},
		// What a dual-stack socket reports for an IPv4 peer.
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1").To16(), Port: 443}, mp("192.0.2.1:443")},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, netip.AddrPort{}},
		{nil, netip.AddrPort{}},
		{(*net.TCPAddr)(nil), netip.AddrPort{}},
	} {
		if got := AddrPortOf(tc.in); got != tc.want {
			t.Errorf("AddrPortOf(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestAddrPortOfRealSockets(t *testing.T) {
	client, server := tcpPair(t)
	if got, want := AddrPortOf(server.RemoteAddr()), AddrPortOf(client.LocalAddr()); got != want || !got.Addr().Is4() {
		t.Errorf("peer %v, local %v", got, want)
	}
	// An IPv4 client of a dual-stack listener shows as itself.
	l, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack listener here: %v", err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Skipf("dual-stack listener not reachable over IPv4: %v", err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := AddrPortOf(s.RemoteAddr()); got != AddrPortOf(c.LocalAddr()) || !got.Addr().Is4() {
		t.Errorf("dual-stack peer %v (raw %v), want %v", got, s.RemoteAddr(), c.LocalAddr())
	}
}

func TestNetAddr(t *testing.T) {
	ap := netip.MustParseAddrPort("[2001:db8::7]:8080")
	if a, ok := NetAddr("tcp", ap).(*net.TCPAddr); !ok || AddrPortOf(a) != ap {
		t.Errorf("NetAddr(tcp) = %v", NetAddr("tcp", ap))
	}
	if a, ok := NetAddr("udp6", ap).(*net.UDPAddr); !ok || AddrPortOf(a) != ap {
		t.Errorf("NetAddr(udp6) = %v", NetAddr("udp6", ap))
	}
	if a := NetAddr("tcp", netip.AddrPort{}); a != nil {
		t.Errorf("NetAddr of an invalid address = %#v, want nil", a)
	}
	if a := NetAddr("unix", ap); a != nil {
		t.Errorf("NetAddr(unix) = %#v, want nil", a)
	}
	if got := Unmap(netip.MustParseAddrPort("[::ffff:10.0.0.1]:9")); got != netip.MustParseAddrPort("10.0.0.1:9") {
		t.Errorf("Unmap: %v", got)
	}
}

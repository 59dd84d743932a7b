package socks5wire

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
)

func TestAddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		a    funnel.Addr
		want []byte
	}{
		{funnel.MakeAddr("192.0.2.7", 80), []byte{1, 192, 0, 2, 7, 0, 80}},
		{funnel.MakeAddr("2001:db8::1", 53), []byte{4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53}},
		{funnel.MakeAddr("a.b", 8080), []byte{3, 3, 'a', '.', 'b', 0x1f, 0x90}},
		{funnel.MakeAddr(strings.Repeat("x", 255), 1), append(append([]byte{3, 255}, strings.Repeat("x", 255)...), 0, 1)},
	} {
		got, err := AppendAddr(nil, tc.a)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("AppendAddr(%v) = % x, %v; want % x", tc.a, got, err, tc.want)
			continue
		}
		if n, ok := AddrLen(got[0], got[1]); !ok || n != len(got) {
			t.Errorf("AddrLen(% x) = %d, %v; want %d", got[:2], n, ok, len(got))
		}
		// Trailing bytes stay unread.
		a, n, err := ParseAddr(append(got, 'X'))
		if err != nil || n != len(got) || a != tc.a {
			t.Errorf("ParseAddr(% x) = %v, %d, %v; want %v, %d", got, a, n, err, tc.a, len(got))
		}
	}
	// The unspecified address: UDP ASSOCIATE's "I do not know yet".
	if got, _ := AppendAddr(nil, funnel.Addr{Port: 9}); !bytes.Equal(got, []byte{1, 0, 0, 0, 0, 0, 9}) {
		t.Errorf("unspecified address: % x", got)
	}
	if _, err := AppendAddr(nil, funnel.MakeAddr(strings.Repeat("x", 256), 1)); funnel.Classify(err) != funnel.KindAddrNotSupported {
		t.Errorf("a 256-byte name: %v", err)
	}
}

func TestParseAddrRefuses(t *testing.T) {
	for _, b := range [][]byte{
		nil,
		{1},
		{1, 127, 0, 0, 1, 0},              // port cut short
		{4, 0, 0, 0},                      // IPv6 cut short
		{3, 5, 'a', 'b', 0, 80},           // name cut short
		{3, 0, 0, 80},                     // empty name
		{3, 3, 'a', 0, 'b', 0, 80},        // NUL
		{3, 4, 'a', ' ', 'b', 'c', 0, 80}, // space
		append(append([]byte{3, 12}, "fe80::1%eth0"...), 0, 80),
		{9, 1, 2, 3, 4, 0, 80}, // unknown type
	} {
		if a, n, err := ParseAddr(b); err == nil {
			t.Errorf("ParseAddr(% x) = %v, %d; want an error", b, a, n)
		}
	}
	// A mapped address comes back as IPv4.
	b := AppendAddrPort(nil, netip.MustParseAddrPort("[::ffff:10.1.2.3]:7"))
	if a, _, err := ParseAddr(b); err != nil || a != funnel.MakeAddr("10.1.2.3", 7) {
		t.Errorf("mapped address: % x parses as %v, %v", b, a, err)
	}
	b = append([]byte{4}, netip.MustParseAddr("::ffff:10.1.2.3").AsSlice()...)
	if a, _, err := ParseAddr(append(b, 0, 7)); err != nil || a != funnel.MakeAddr("10.1.2.3", 7) {
		t.Errorf("mapped address as ATYP 4 parses as %v, %v", a, err)
	}
}

func TestAppendReply(t *testing.T) {
	for _, tc := range []struct {
		code  byte
		bound netip.AddrPort
		want  []byte
	}{
		{ReplySucceeded, netip.MustParseAddrPort("127.0.0.1:1080"), []byte{5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38}},
		{ReplySucceeded, netip.MustParseAddrPort("[::1]:2"), []byte{5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2}},
		{ReplyHostUnreachable, netip.AddrPort{}, []byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}},
	} {
		if got := AppendReply(nil, tc.code, tc.bound); !bytes.Equal(got, tc.want) {
			t.Errorf("AppendReply(%d, %v) = % x, want % x", tc.code, tc.bound, got, tc.want)
		}
	}
	if len(AppendReply(nil, 0, netip.MustParseAddrPort("[::1]:2"))) > MaxReply {
		t.Error("a reply longer than MaxReply")
	}
}

func TestReplyText(t *testing.T) {
	if ReplyText(ReplyConnRefused) != "connection refused" || ReplyText(9) != "" || ReplyText(255) != "" {
		t.Errorf("ReplyText: %q %q %q", ReplyText(ReplyConnRefused), ReplyText(9), ReplyText(255))
	}
	// The funnel's kinds share the numbering.
	for code := byte(1); code <= ReplyAddrNotSupported; code++ {
		if funnel.Kind(code).SOCKSReply() != code {
			t.Errorf("kind %d answers reply %d", code, funnel.Kind(code).SOCKSReply())
		}
	}
}

func TestUDPHeaderLen(t *testing.T) {
	cases := []struct {
		b    []byte
		n    int
		ok   bool
		name string
	}{
		{[]byte{0, 0, 0, 1, 1, 2, 3, 4, 0, 53, 'x'}, 10, true, "ipv4"},
		{append([]byte{0, 0, 0, 4}, make([]byte, 18)...), 22, true, "ipv6"},
		{[]byte{0, 0, 0, 3, 1, 'a', 0, 53}, 8, true, "name"},
		{[]byte{0, 0, 1, 1, 1, 2, 3, 4, 0, 53}, 0, false, "fragment"},
		{[]byte{0, 0, 0, 3, 0, 0, 53}, 0, false, "empty name"},
		{[]byte{0, 0, 0, 1, 1, 2}, 0, false, "short"},
		{[]byte{0, 0, 0, 9, 1, 2, 3, 4, 0, 53}, 0, false, "bad atyp"},
	}
	for _, c := range cases {
		n, ok := UDPHeaderLen(c.b)
		if ok != c.ok || (ok && n != c.n) {
			t.Errorf("%s: UDPHeaderLen = %d, %v; want %d, %v", c.name, n, ok, c.n, c.ok)
		}
	}
}

// FuzzUDPHeader checks the datagram header parser against itself: a
// header UDPHeaderLen accepts must parse to the length it announced.
func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'x'})
	f.Add([]byte{0, 0, 0, 3, 4, 'a', '.', 'b', 'c', 0, 53})
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ok := UDPHeaderLen(b)
		if !ok {
			return
		}
		if n > len(b) {
			t.Fatalf("header length %d beyond the datagram's %d bytes", n, len(b))
		}
		if _, m, err := ParseAddr(b[3:n]); err == nil && m != n-3 {
			t.Fatalf("address took %d bytes, header said %d", m, n-3)
		}
	})
}

// FuzzParseAddr: what parses must encode back to the bytes it came from
// (an IPv4-mapped IPv6 address excepted: it comes back as IPv4), within
// MaxAddr, and never read beyond what AddrLen announced.
func FuzzParseAddr(f *testing.F) {
	f.Add([]byte{1, 127, 0, 0, 1, 0, 80})
	f.Add([]byte{3, 9, 'd', 'e', 'm', 'o', '.', 't', 'e', 's', 't', 1, 187})
	f.Add([]byte{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53})
	f.Add([]byte{3, 7, '1', '.', '2', '.', '3', '.', '4', 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, n, err := ParseAddr(b)
		if err != nil {
			return
		}
		if want, _ := AddrLen(b[0], b[1]); n != want || n > len(b) || n > MaxAddr {
			t.Fatalf("took %d bytes of % x", n, b)
		}
		enc, err := AppendAddr(nil, a)
		if err != nil {
			t.Fatalf("%v parsed from % x does not encode: %v", a, b[:n], err)
		}
		again, m, err := ParseAddr(enc)
		if err != nil || again != a || m != len(enc) {
			t.Fatalf("%v encodes as % x, which parses as %v, %v", a, enc, again, err)
		}
		// A name that reads as an address becomes that address, and a
		// mapped address IPv4: only then may the bytes differ.
		if !bytes.Equal(enc, b[:n]) && b[0] != AtypDomain && !(b[0] == AtypIPv6 && a.IP.Is4()) {
			t.Fatalf("% x re-encodes as % x", b[:n], enc)
		}
	})
}

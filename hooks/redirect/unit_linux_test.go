//go:build linux

package redirect

import (
	"log/slog"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestParseMark(t *testing.T) {
	for in, want := range map[string]int{"0x66756e": 0x66756e, "42": 42, "0": 0, "0xffffffff": 0xffffffff} {
		if got, err := parseMark(in); err != nil || got != want {
			t.Errorf("parseMark(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fun", "-1", "0x100000000"} {
		if _, err := parseMark(in); err == nil {
			t.Errorf("parseMark(%q) accepted", in)
		}
	}
}

// The own-listener check: an exact address, or any local address for a
// wildcard listener on the same port; other ports and hosts pass.
func TestOwnListener(t *testing.T) {
	rd := &Redirector{own: []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:7474"),
		netip.MustParseAddrPort("[::]:7575"),
	}}
	local := func(a netip.Addr) bool { return a == netip.MustParseAddr("10.0.0.1") || a.IsLoopback() }
	for dst, want := range map[string]bool{
		"127.0.0.1:7474":          true,
		"[::ffff:127.0.0.1]:7474": true,
		"10.0.0.1:7474":           false, // not what that listener is bound to
		"10.0.0.1:7575":           true,  // the wildcard one, on a local address
		"[::1]:7575":              true,
		"192.0.2.1:7575":          false, // someone else's host: a TPROXY'd flow
		"127.0.0.1:80":            false,
	} {
		if got := rd.ownListener(netip.MustParseAddrPort(dst), local); got != want {
			t.Errorf("ownListener(%s) = %v, want %v", dst, got, want)
		}
	}
}

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestOrigDstOf(t *testing.T) {
	// sockaddr_in 192.0.2.7:53, after an unrelated message.
	sin := make([]byte, unix.SizeofSockaddrInet4)
	sin[0] = unix.AF_INET
	sin[2], sin[3] = 0, 53
	copy(sin[4:], []byte{192, 0, 2, 7})
	oob := append(cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0}), cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sin)...)
	if got, ok := origDstOf(oob); !ok || got != netip.MustParseAddrPort("192.0.2.7:53") {
		t.Errorf("IPv4: %v %v", got, ok)
	}
	sin6 := make([]byte, unix.SizeofSockaddrInet6)
	sin6[0] = unix.AF_INET6
	sin6[2], sin6[3] = 0x1f, 0x90
	a := netip.MustParseAddr("2001:db8::7").As16()
	copy(sin6[8:], a[:])
	if got, ok := origDstOf(cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sin6)); !ok || got != netip.MustParseAddrPort("[2001:db8::7]:8080") {
		t.Errorf("IPv6: %v %v", got, ok)
	}
	if _, ok := origDstOf(cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0})); ok {
		t.Error("found a destination where there is none")
	}
}

func TestMaxConns(t *testing.T) {
	rd := &Redirector{MaxConns: 2, Log: slog.New(slog.DiscardHandler)}
	if !rd.admit() || !rd.admit() {
		t.Fatal("refused below the limit")
	}
	if rd.admit() {
		t.Fatal("admitted a third with --max-conns 2")
	}
	rd.finished()
	if !rd.admit() {
		t.Fatal("refused after one ended")
	}
	if rd.Active() != 2 || rd.refused.Load() != 1 {
		t.Errorf("active %d refused %d", rd.Active(), rd.refused.Load())
	}
}

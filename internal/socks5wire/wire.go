// Package socks5wire is the SOCKS5 wire format (RFC 1928, with RFC 1929
// username/password authentication) that the socks5 piece speaks as a
// client and the socks5d hook as a server: the protocol's numbers, the
// address codec, the reply and the UDP datagram header. It reads and
// writes byte slices only; each side keeps its own way of reading a
// socket.
package socks5wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/funtun/funtun/funnel"
)

// Versions: of the protocol, and of RFC 1929's sub-negotiation.
const (
	Version     = 5
	AuthVersion = 1
)

// Authentication methods (RFC 1928 section 3).
const (
	MethodNone     = 0x00
	MethodPassword = 0x02
	// MethodNoAcceptable is the server's "none of the methods offered".
	MethodNoAcceptable = 0xff
)

// RFC 1929 status: 0 lets the client in, anything else refuses it.
const (
	AuthSucceeded = 0
	AuthFailed    = 1
)

// Commands.
const (
	CmdConnect      = 1
	CmdBind         = 2
	CmdUDPAssociate = 3
)

// Address types.
const (
	AtypIPv4   = 1
	AtypDomain = 3
	AtypIPv6   = 4
)

// Reply codes. The funnel's failure kinds (funnel.Kind) use the same
// numbering, so a code passes between the two unchanged.
const (
	ReplySucceeded        = 0
	ReplyGeneral          = 1
	ReplyNotAllowed       = 2
	ReplyNetUnreachable   = 3
	ReplyHostUnreachable  = 4
	ReplyConnRefused      = 5
	ReplyTTLExpired       = 6
	ReplyCmdNotSupported  = 7
	ReplyAddrNotSupported = 8
)

// The longest messages, for fixed buffers: an address is ATYP, a length
// byte, a 255-byte name and the port; a greeting offers at most 255
// methods; a password request carries two 255-byte strings; a request and
// a reply are VER CMD/REP RSV and an address.
const (
	MaxAddr     = 1 + 1 + 255 + 2
	MaxGreeting = 2 + 255
	MaxAuth     = 3 + 255 + 255
	MaxRequest  = 3 + MaxAddr
	MaxReply    = 3 + MaxAddr
)

var replyText = [...]string{
	ReplySucceeded:        "succeeded",
	ReplyGeneral:          "general SOCKS server failure",
	ReplyNotAllowed:       "connection not allowed by ruleset",
	ReplyNetUnreachable:   "network unreachable",
	ReplyHostUnreachable:  "host unreachable",
	ReplyConnRefused:      "connection refused",
	ReplyTTLExpired:       "TTL expired",
	ReplyCmdNotSupported:  "command not supported",
	ReplyAddrNotSupported: "address type not supported",
}

// ReplyText names a reply code the way RFC 1928 does, and "" for a code
// it does not define.
func ReplyText(code byte) string {
	if int(code) < len(replyText) {
		return replyText[code]
	}
	return ""
}

// AppendAddr writes ATYP, the address and the port. A name stays a name
// (ATYP DOMAINNAME) so that the far side resolves it; one longer than 255
// bytes is a funnel.KindAddrNotSupported error. The unspecified address
// (UDP ASSOCIATE's "I do not know yet") is written as 0.0.0.0.
func AppendAddr(b []byte, a funnel.Addr) ([]byte, error) {
	switch {
	case a.IsName():
		if len(a.Name) > 255 {
			return nil, funnel.Errorf(funnel.KindAddrNotSupported, "host name longer than 255 bytes: %.40s...", a.Name)
		}
		b = append(b, AtypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4():
		ip := a.IP.As4()
		b = append(b, AtypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, AtypIPv6)
		b = append(b, ip[:]...)
	default:
		b = append(b, AtypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// AppendAddrPort writes ATYP, the address and the port, an IPv4-mapped
// address as IPv4; an invalid address is written as 0.0.0.0:0, which
// replies use for "none".
func AppendAddrPort(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	switch {
	case ip.Is4():
		a := ip.As4()
		b = append(b, AtypIPv4)
		b = append(b, a[:]...)
	case ip.Is6():
		a := ip.As16()
		b = append(b, AtypIPv6)
		b = append(b, a[:]...)
	default:
		b = append(b, AtypIPv4, 0, 0, 0, 0)
		return append(b, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// AppendReply writes a reply: VER REP RSV ATYP BND.ADDR BND.PORT.
func AppendReply(b []byte, code byte, bound netip.AddrPort) []byte {
	b = append(b, Version, code, 0)
	return AppendAddrPort(b, bound)
}

// AddrLen is the length of an address on the wire (ATYP, address, port)
// from its first two bytes: ATYP and, for a name, the name's length (for
// the other types second is not looked at). ok is false for an address
// type RFC 1928 does not define.
func AddrLen(atyp, second byte) (n int, ok bool) {
	switch atyp {
	case AtypIPv4:
		return 1 + 4 + 2, true
	case AtypIPv6:
		return 1 + 16 + 2, true
	case AtypDomain:
		return 1 + 1 + int(second) + 2, true
	}
	return 0, false
}

// ErrShortAddr is an address cut short.
var ErrShortAddr = errors.New("socks5: address cut short")

// ParseAddr reads ATYP, the address and the port from the front of b and
// says how many bytes that took. An IPv4-mapped IPv6 address comes back
// as IPv4. A name must pass CheckName. It does not allocate for IP
// addresses.
func ParseAddr(b []byte) (funnel.Addr, int, error) {
	if len(b) < 2 {
		return funnel.Addr{}, 0, ErrShortAddr
	}
	n, ok := AddrLen(b[0], b[1])
	if !ok {
		return funnel.Addr{}, 0, fmt.Errorf("socks5: unknown address type %d (known: 1 IPv4, 3 domain name, 4 IPv6)", b[0])
	}
	if len(b) < n {
		return funnel.Addr{}, 0, ErrShortAddr
	}
	port := binary.BigEndian.Uint16(b[n-2:])
	switch b[0] {
	case AtypIPv4:
		return funnel.Addr{IP: netip.AddrFrom4([4]byte(b[1:5])), Port: port}, n, nil
	case AtypIPv6:
		return funnel.Addr{IP: netip.AddrFrom16([16]byte(b[1:17])).Unmap(), Port: port}, n, nil
	}
	name := string(b[2 : n-2])
	if err := CheckName(name); err != nil {
		return funnel.Addr{}, 0, err
	}
	return funnel.MakeAddr(name, port), n, nil
}

// CheckName refuses names that no resolver would find but that could
// confuse what comes after: a NUL cutting a C string short, an empty name
// (which would read as "no address"), and a '%', which would turn
// "fe80::1%eth0" into a scoped address aimed at one of our interfaces.
func CheckName(name string) error {
	if name == "" {
		return errors.New("empty host name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c == 0x7f || c == '%' {
			return fmt.Errorf("host name %q has a space, a control character or a %%", name)
		}
	}
	return nil
}

// UDPHeaderLen checks a UDP datagram's header, RSV RSV FRAG ATYP DST.ADDR
// DST.PORT, and returns its length. It refuses fragments (FRAG != 0: RFC
// 1928 lets an implementation drop them), unknown address types, empty
// names and headers longer than b. It does not look at the name's bytes:
// ParseAddr(b[3:n]) does.
func UDPHeaderLen(b []byte) (int, bool) {
	if len(b) < 5 || b[2] != 0 {
		return 0, false
	}
	n, ok := AddrLen(b[3], b[4])
	if !ok || (b[3] == AtypDomain && b[4] == 0) {
		return 0, false
	}
	n += 3
	return n, len(b) >= n
}

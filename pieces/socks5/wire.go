package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/funtun/funtun/funnel"
)

// RFC 1928 and RFC 1929 constants.
const (
	version        = 5
	authVersion    = 1
	methodNone     = 0x00
	methodPassword = 0x02
	methodRefused  = 0xff

	cmdConnect      = 1
	cmdUDPAssociate = 3

	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4
)

// appendAddr writes ATYP, the address and the port. A name stays a name
// (ATYP DOMAINNAME) so that the far side resolves it.
func appendAddr(b []byte, a funnel.Addr) ([]byte, error) {
	switch {
	case a.IsName():
		if len(a.Name) > 255 {
			return nil, funnel.Errorf(funnel.KindAddrNotSupported, "host name longer than 255 bytes: %.40s...", a.Name)
		}
		b = append(b, atypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4():
		ip := a.IP.As4()
		b = append(b, atypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, atypIPv6)
		b = append(b, ip[:]...)
	default:
		// The unspecified address: UDP ASSOCIATE's "I do not know yet".
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// greeting is the method offer: no authentication, plus user/password when
// we have credentials (the server picks; offering both keeps working with a
// server that does not ask for them).
func greeting(withPassword bool) []byte {
	if withPassword {
		return []byte{version, 2, methodNone, methodPassword}
	}
	return []byte{version, 1, methodNone}
}

// passwordRequest is the RFC 1929 sub-negotiation.
func passwordRequest(user, pass string) []byte {
	b := make([]byte, 0, 3+len(user)+len(pass))
	b = append(b, authVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

// request is a CONNECT or UDP ASSOCIATE request, and how error messages
// name it.
func request(cmd byte, dest funnel.Addr) ([]byte, string, error) {
	what := "CONNECT " + dest.String()
	if cmd == cmdUDPAssociate {
		what = "UDP ASSOCIATE"
	}
	b, err := appendAddr([]byte{version, cmd, 0}, dest)
	return b, what, err
}

// replyText names the RFC 1928 reply codes. The funnel's failure kinds use
// the same numbering, so a SOCKS hook above this piece can pass the
// upstream's code on unchanged.
var replyText = [...]string{
	1: "general SOCKS server failure",
	2: "connection not allowed by ruleset",
	3: "network unreachable",
	4: "host unreachable",
	5: "connection refused",
	6: "TTL expired",
	7: "command not supported",
	8: "address type not supported",
}

func replyError(server string, code byte, what string) error {
	if code == 0 {
		return nil
	}
	kind, text := funnel.KindGeneral, fmt.Sprintf("unknown reply code %d", code)
	if int(code) < len(replyText) {
		kind, text = funnel.Kind(code), replyText[code]
	}
	return funnel.Errorf(kind, "socks5 server %s: %s: %s", server, what, text)
}

// readReply reads a reply's fixed part, then its address, and returns the
// bound address. It reads exactly the reply, so nothing of the data that
// follows is taken from the connection.
func readReply(r io.Reader, server, what string) (funnel.Addr, error) {
	// VER REP RSV, then ATYP, the address (at most a length byte and 255
	// name bytes) and the port.
	var buf [3 + 1 + 1 + 255 + 2]byte
	if _, err := io.ReadFull(r, buf[:5]); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: reading the reply: %w", server, err)
	}
	if buf[0] != version {
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: reply has version %d, not 5 (is it a SOCKS5 server?)", server, buf[0])
	}
	if err := replyError(server, buf[1], what); err != nil {
		return funnel.Addr{}, err
	}
	var n int // bytes still to read after the address's first byte
	switch buf[3] {
	case atypIPv4:
		n = 4 - 1 + 2
	case atypIPv6:
		n = 16 - 1 + 2
	case atypDomain:
		n = int(buf[4]) + 2
	default:
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: reply has address type %d", server, buf[3])
	}
	if _, err := io.ReadFull(r, buf[5:5+n]); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: reading the reply: %w", server, err)
	}
	a, _, err := parseAddr(buf[3 : 5+n])
	return a, err
}

var errShortHeader = errors.New("socks5: short address")

// parseAddr reads ATYP, address and port from b and says how many bytes
// that took. It does not allocate for IP addresses.
func parseAddr(b []byte) (funnel.Addr, int, error) {
	if len(b) < 1 {
		return funnel.Addr{}, 0, errShortHeader
	}
	switch b[0] {
	case atypIPv4:
		if len(b) < 1+4+2 {
			return funnel.Addr{}, 0, errShortHeader
		}
		ip := netip.AddrFrom4([4]byte(b[1:5]))
		return funnel.Addr{IP: ip, Port: binary.BigEndian.Uint16(b[5:])}, 7, nil
	case atypIPv6:
		if len(b) < 1+16+2 {
			return funnel.Addr{}, 0, errShortHeader
		}
		ip := netip.AddrFrom16([16]byte(b[1:17])).Unmap()
		return funnel.Addr{IP: ip, Port: binary.BigEndian.Uint16(b[17:])}, 19, nil
	case atypDomain:
		if len(b) < 2 || len(b) < 2+int(b[1])+2 {
			return funnel.Addr{}, 0, errShortHeader
		}
		n := int(b[1])
		return funnel.MakeAddr(string(b[2:2+n]), binary.BigEndian.Uint16(b[2+n:])), 2 + n + 2, nil
	}
	return funnel.Addr{}, 0, fmt.Errorf("socks5: unknown address type %d", b[0])
}

package socks5d

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/funtun/funtun/funnel"
)

// RFC 1928 and RFC 1929 numbers.
const (
	socksVersion = 5
	authVersion  = 1

	methodNone        = 0x00
	methodPassword    = 0x02
	methodNoneOffered = 0xff

	cmdConnect      = 1
	cmdBind         = 2
	cmdUDPAssociate = 3

	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4

	replySucceeded        = 0
	replyGeneral          = 1
	replyNotAllowed       = 2
	replyHostUnreachable  = 4
	replyCmdNotSupported  = 7
	replyAddrNotSupported = 8
)

// The largest messages of the handshake: a greeting offers at most 255
// methods, a password request carries two 255-byte strings, a request a
// 255-byte name.
const (
	maxGreeting = 2 + 255
	maxAuth     = 3 + 255 + 255
	maxRequest  = 4 + 1 + 255 + 2
)

// wireReader reads the handshake straight from the client's socket into a
// small buffer, without a bufio.Reader in between: whatever a client sent
// ahead of our replies (a pipelined request, the first bytes of its
// payload) stays in the buffer, and what is left after the request goes to
// the upstream connection before the relay starts. The client connection
// itself thus stays a bare *net.TCPConn that the relay can splice.
type wireReader struct {
	r          io.Reader
	start, end int
	buf        [1024]byte
}

var errTooLong = errors.New("socks5d: handshake message longer than the protocol allows")

// peek returns the next n bytes without consuming them, reading as needed.
func (w *wireReader) peek(n int) ([]byte, error) {
	if n > len(w.buf) {
		return nil, errTooLong
	}
	if w.start+n > len(w.buf) {
		copy(w.buf[:], w.buf[w.start:w.end])
		w.end -= w.start
		w.start = 0
	}
	for w.end-w.start < n {
		m, err := w.r.Read(w.buf[w.end:])
		w.end += m
		if w.end-w.start >= n {
			break
		}
		if err != nil {
			if err == io.EOF && w.end > w.start {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return w.buf[w.start : w.start+n], nil
}

// next consumes n bytes.
func (w *wireReader) next(n int) ([]byte, error) {
	b, err := w.peek(n)
	if err != nil {
		return nil, err
	}
	w.start += n
	return b, nil
}

// leftover is what the client sent beyond the handshake.
func (w *wireReader) leftover() []byte { return w.buf[w.start:w.end] }

// protoError is a malformed or unsupported message: reply is the RFC 1928
// code to answer with before closing, or 0 when the protocol has no reply
// for it (a greeting with the wrong version: the peer does not speak
// SOCKS5 and a SOCKS5 reply would mean nothing to it).
type protoError struct {
	reply byte
	msg   string
}

func (e *protoError) Error() string { return e.msg }

func protoErrorf(reply byte, format string, args ...any) error {
	return &protoError{reply: reply, msg: fmt.Sprintf(format, args...)}
}

// readGreeting reads VER NMETHODS METHODS and returns the methods offered.
func readGreeting(w *wireReader) ([]byte, error) {
	h, err := w.next(2)
	if err != nil {
		return nil, err
	}
	if h[0] != socksVersion {
		if h[0] == 4 {
			return nil, protoErrorf(0, "client speaks SOCKS4, not SOCKS5 (use socks5:// or socks5h:// in the client)")
		}
		return nil, protoErrorf(0, "greeting has version %d, not 5: not a SOCKS5 client", h[0])
	}
	n := int(h[1])
	if n == 0 {
		return nil, protoErrorf(0, "greeting offers no authentication method")
	}
	return w.next(n)
}

// readPassword reads the RFC 1929 sub-negotiation: VER ULEN UNAME PLEN PASSWD.
func readPassword(w *wireReader) (user, pass string, err error) {
	h, err := w.next(2)
	if err != nil {
		return "", "", err
	}
	if h[0] != authVersion {
		return "", "", protoErrorf(0, "username/password request has version %d, not 1", h[0])
	}
	ulen := int(h[1])
	// The username and the password length byte in one read.
	b, err := w.next(ulen + 1)
	if err != nil {
		return "", "", err
	}
	user = string(b[:ulen])
	plen := int(b[ulen])
	p, err := w.next(plen)
	if err != nil {
		return "", "", err
	}
	return user, string(p), nil
}

// request is a parsed RFC 1928 request.
type request struct {
	cmd  byte
	dest funnel.Addr
}

// readRequest reads VER CMD RSV ATYP DST.ADDR DST.PORT. A malformed request
// is a *protoError carrying the reply the client should get. The address is
// read in full even for an unsupported command, so that the reply is
// well-formed at the place the client expects it.
func readRequest(w *wireReader) (request, error) {
	h, err := w.next(4)
	if err != nil {
		return request{}, err
	}
	if h[0] != socksVersion {
		return request{}, protoErrorf(replyGeneral, "request has version %d, not 5", h[0])
	}
	req := request{cmd: h[1]}
	atyp := h[3]
	var dest funnel.Addr
	switch atyp {
	case atypIPv4:
		b, err := w.next(4 + 2)
		if err != nil {
			return request{}, err
		}
		dest = funnel.Addr{IP: netip.AddrFrom4([4]byte(b[:4])), Port: binary.BigEndian.Uint16(b[4:])}
	case atypIPv6:
		b, err := w.next(16 + 2)
		if err != nil {
			return request{}, err
		}
		dest = funnel.Addr{IP: netip.AddrFrom16([16]byte(b[:16])).Unmap(), Port: binary.BigEndian.Uint16(b[16:])}
	case atypDomain:
		l, err := w.next(1)
		if err != nil {
			return request{}, err
		}
		n := int(l[0])
		b, err := w.next(n + 2)
		if err != nil {
			return request{}, err
		}
		name := string(b[:n])
		if err := checkName(name); err != nil {
			return request{}, protoErrorf(replyHostUnreachable, "%v", err)
		}
		dest = funnel.MakeAddr(name, binary.BigEndian.Uint16(b[n:]))
	default:
		return request{}, protoErrorf(replyAddrNotSupported, "request has address type %d (known: 1 IPv4, 3 domain name, 4 IPv6)", atyp)
	}
	req.dest = dest
	switch req.cmd {
	case cmdConnect, cmdBind, cmdUDPAssociate:
	default:
		return req, protoErrorf(replyCmdNotSupported, "request has command %d (known: 1 CONNECT, 2 BIND, 3 UDP ASSOCIATE)", req.cmd)
	}
	return req, nil
}

// checkName refuses names that no resolver would find but that could
// confuse what comes after: a NUL cutting a C string short, an empty name,
// and a '%', which would turn "fe80::1%eth0" into a scoped address aimed
// at one of our interfaces.
func checkName(name string) error {
	if name == "" {
		return errors.New("request names an empty host name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c == 0x7f || c == '%' {
			return fmt.Errorf("request's host name %q has a space, a control character or a %%", name)
		}
	}
	return nil
}

// appendReply builds VER REP RSV ATYP BND.ADDR BND.PORT.
func appendReply(b []byte, code byte, bound netip.AddrPort) []byte {
	b = append(b, socksVersion, code, 0)
	return appendAddrPort(b, bound)
}

// appendAddrPort writes ATYP, the address and the port; an invalid address
// is written as 0.0.0.0:0, which RFC 1928 replies use for "none".
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	switch {
	case ip.Is4():
		a := ip.As4()
		b = append(b, atypIPv4)
		b = append(b, a[:]...)
	case ip.Is6():
		a := ip.As16()
		b = append(b, atypIPv6)
		b = append(b, a[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
		return append(b, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// addrPortOf turns a net.Addr of any TCP or UDP kind into an AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

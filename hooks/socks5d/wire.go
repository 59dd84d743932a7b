package socks5d

import (
	"errors"
	"fmt"
	"io"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
)

// The server's side of RFC 1928 and RFC 1929: reading the handshake
// straight from the client's socket. The protocol's numbers and the
// address codec are socks5wire's, shared with the socks5 piece.

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
	if h[0] != socks5wire.Version {
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
	if h[0] != socks5wire.AuthVersion {
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
	h, err := w.peek(4)
	if err != nil {
		return request{}, err
	}
	if h[0] != socks5wire.Version {
		return request{}, protoErrorf(socks5wire.ReplyGeneral, "request has version %d, not 5", h[0])
	}
	req := request{cmd: h[1]}
	atyp := h[3]
	var nameLen byte
	if atyp == socks5wire.AtypDomain {
		if h, err = w.peek(5); err != nil {
			return request{}, err
		}
		nameLen = h[4]
	}
	n, ok := socks5wire.AddrLen(atyp, nameLen)
	if !ok {
		return request{}, protoErrorf(socks5wire.ReplyAddrNotSupported, "request has address type %d (known: 1 IPv4, 3 domain name, 4 IPv6)", atyp)
	}
	b, err := w.next(3 + n)
	if err != nil {
		return request{}, err
	}
	// The lengths are right: only a name can be refused here.
	if req.dest, _, err = socks5wire.ParseAddr(b[3:]); err != nil {
		return request{}, protoErrorf(socks5wire.ReplyHostUnreachable, "request: %v", err)
	}
	switch req.cmd {
	case socks5wire.CmdConnect, socks5wire.CmdBind, socks5wire.CmdUDPAssociate:
	default:
		return req, protoErrorf(socks5wire.ReplyCmdNotSupported, "request has command %d (known: 1 CONNECT, 2 BIND, 3 UDP ASSOCIATE)", req.cmd)
	}
	return req, nil
}

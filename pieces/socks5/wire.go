package socks5

import (
	"fmt"
	"io"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
)

// The client's side of RFC 1928 and RFC 1929; the numbers and the address
// codec are socks5wire's, shared with the socks5d hook.

// greeting is the method offer: no authentication, plus user/password when
// we have credentials (the server picks; offering both keeps working with a
// server that does not ask for them).
func greeting(withPassword bool) []byte {
	if withPassword {
		return []byte{socks5wire.Version, 2, socks5wire.MethodNone, socks5wire.MethodPassword}
	}
	return []byte{socks5wire.Version, 1, socks5wire.MethodNone}
}

// passwordRequest is the RFC 1929 sub-negotiation.
func passwordRequest(user, pass string) []byte {
	b := make([]byte, 0, 3+len(user)+len(pass))
	b = append(b, socks5wire.AuthVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

// request is a CONNECT or UDP ASSOCIATE request, and how error messages
// name it.
func request(cmd byte, dest funnel.Addr) ([]byte, asked, error) {
	b, err := socks5wire.AppendAddr([]byte{socks5wire.Version, cmd, 0}, dest)
	return b, asked{cmd: cmd, dest: dest}, err
}

// asked names a request in an error message. It is worded only when an
// error is: a request that succeeds costs no string.
type asked struct {
	cmd  byte
	dest funnel.Addr
}

func (a asked) String() string {
	if a.cmd == socks5wire.CmdUDPAssociate {
		return "UDP ASSOCIATE"
	}
	return "CONNECT " + a.dest.String()
}

// replyError says a failure reply in the funnel's kinds, which use RFC
// 1928's numbering, so a SOCKS hook above this piece can pass the
// upstream's code on unchanged.
func replyError(server string, code byte, what asked) error {
	if code == socks5wire.ReplySucceeded {
		return nil
	}
	kind, text := funnel.KindGeneral, fmt.Sprintf("unknown reply code %d", code)
	if t := socks5wire.ReplyText(code); t != "" {
		kind, text = funnel.Kind(code), t
	}
	return funnel.Errorf(kind, "socks5 server %s: %s: %s", server, what, text)
}

// readReply reads a reply's fixed part, then its address, and returns the
// bound address. It reads exactly the reply, so nothing of the data that
// follows is taken from the connection.
func readReply(r io.Reader, server string, what asked) (funnel.Addr, error) {
	// VER REP RSV, then ATYP and the address's first byte (a name's
	// length), then the rest of the address and the port. Servers answer
	// with an IP address (a name is rare): the buffer is sized for IPv6,
	// and a longer one is made only for a name.
	var small [3 + 1 + 16 + 2]byte
	buf := small[:]
	if _, err := io.ReadFull(r, buf[:5]); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: reading the reply: %w", server, err)
	}
	if buf[0] != socks5wire.Version {
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: reply has version %d, not 5 (is it a SOCKS5 server?)", server, buf[0])
	}
	if err := replyError(server, buf[1], what); err != nil {
		return funnel.Addr{}, err
	}
	n, ok := socks5wire.AddrLen(buf[3], buf[4])
	if !ok {
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: reply has address type %d", server, buf[3])
	}
	if 3+n > len(buf) {
		buf = make([]byte, 3+n)
		copy(buf, small[:5])
	}
	if _, err := io.ReadFull(r, buf[5:3+n]); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: reading the reply: %w", server, err)
	}
	a, _, err := socks5wire.ParseAddr(buf[3 : 3+n])
	if err != nil {
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: reply's bound address: %v", server, err)
	}
	return a, nil
}

package netx

import "net"

// CloseWriter is a connection that can half-close: *net.TCPConn,
// *net.UnixConn, *tls.Conn, and every piece's wrapping conn that passes
// the half-close on.
type CloseWriter interface{ CloseWrite() error }

// CloseWrite half-closes c when it can, and closes it otherwise: the peer
// must learn that no more bytes come, and a connection without a
// half-close can only say so by closing. This is what a wrapping conn's
// CloseWrite does with the conn below it, and what a relay does when one
// direction ends.
func CloseWrite(c net.Conn) error {
	if cw, ok := c.(CloseWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// HalfClose half-closes c when it can and reports whether it could; it
// leaves c alone otherwise, for a caller with its own answer to a
// connection without a half-close.
func HalfClose(c net.Conn) (ok bool, err error) {
	if cw, ok := c.(CloseWriter); ok {
		return true, cw.CloseWrite()
	}
	return false, nil
}

// PrefixConn serves Prefix, bytes read ahead from Conn (a handshake's
// reader that took more than the handshake), before Conn's own.
// CloseWrite reaches Conn. Reading is not safe from two goroutines at
// once, as on any net.Conn.
type PrefixConn struct {
	net.Conn
	// Prefix is what is still to be read ahead of Conn.
	Prefix []byte
}

// WithPrefix returns c itself when prefix is empty, and a PrefixConn
// otherwise. The PrefixConn keeps prefix: the caller copies it first when
// the buffer is to be reused.
func WithPrefix(c net.Conn, prefix []byte) net.Conn {
	if len(prefix) == 0 {
		return c
	}
	return &PrefixConn{Conn: c, Prefix: prefix}
}

func (p *PrefixConn) Read(b []byte) (int, error) {
	if len(p.Prefix) > 0 {
		n := copy(b, p.Prefix)
		p.Prefix = p.Prefix[n:]
		if len(p.Prefix) == 0 {
			p.Prefix = nil
		}
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite half-closes Conn, or closes it when it cannot half-close.
func (p *PrefixConn) CloseWrite() error { return CloseWrite(p.Conn) }

// Unwrap returns the connection below. It is the same stream only once
// Prefix has been read (len(p.Prefix) == 0): a relay that wants the
// kernel socket to splice sends the rest of Prefix itself first.
func (p *PrefixConn) Unwrap() net.Conn { return p.Conn }

var (
	_ CloseWriter = (*PrefixConn)(nil)
	_ net.Conn    = (*PrefixConn)(nil)
)

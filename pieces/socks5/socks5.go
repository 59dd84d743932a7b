// Package socks5 is the piece that reaches destinations through an upstream
// SOCKS5 server (RFC 1928, with RFC 1929 user/password authentication):
// CONNECT for streams, UDP ASSOCIATE for datagrams. It reaches the server
// itself through the rest of the chain, so two socks5 pieces in a row go
// through two servers.
package socks5

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "socks5",
		Example: `server=127.0.0.1:1080`,
		Summary: "reach the destination through an upstream SOCKS5 server (CONNECT, UDP ASSOCIATE)",
		Params: `server=HOST:PORT  the SOCKS5 server (required)
user=NAME         user name for RFC 1929 authentication
pass=PASSWORD     password for RFC 1929 authentication (needs user=)
timeout=DURATION  longest wait for the server's handshake answers, default 10s; 0 waits as long as the flow allows`,
		Curves: curves,
		New:    New,
	})
}

// Socks5 is a configured socks5 piece.
type Socks5 struct {
	server     funnel.Addr
	serverName string // server as text, worded once and not per flow
	user, pass string
	timeout    time.Duration
}

var (
	_ funnel.StreamDialer = (*Socks5)(nil)
	_ funnel.DgramDialer  = (*Socks5)(nil)
)

// New builds a socks5 piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	s := &Socks5{}
	server, err := p.Required("server", "HOST:PORT")
	if err != nil {
		return nil, err
	}
	if s.server, err = funnel.ParseAddr(server); err != nil {
		return nil, p.Errorf("server", "%v", err)
	}
	if s.server.Port == 0 {
		return nil, p.Errorf("server", "port 0 is not a server's port")
	}
	s.serverName = s.server.String()
	s.user, s.pass = p.String("user", ""), p.String("pass", "")
	switch {
	case len(s.user) > 255:
		return nil, p.Errorf("user", "longer than the 255 bytes SOCKS5 allows")
	case len(s.pass) > 255:
		return nil, p.Errorf("pass", "longer than the 255 bytes SOCKS5 allows")
	case s.pass != "" && s.user == "":
		return nil, p.Errorf("pass", "a password needs user= as well")
	}
	if s.timeout, err = p.Duration("timeout", 10*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// Curves: streams travel over the server's TCP connection. Datagrams need
// that TCP connection too (it holds the association open) plus a datagram
// path to the server's relay, so the compiler checks both below.
func (s *Socks5) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{
	{App: funnel.Stream, Net: funnel.Stream},
	{App: funnel.Dgram, Net: funnel.Stream, Also: funnel.Dgram},
}

// towardServer is the flow as the piece below sees it: aimed at the SOCKS5
// server. (The engine has already turned off any handoff: socks5 is not
// Transparent.)
func (s *Socks5) towardServer(f *funnel.Flow, network funnel.Network, dest funnel.Addr) *funnel.Flow {
	g := f.WithDest(dest)
	g.Network = network
	return g
}

func (s *Socks5) dialServer(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	conn, err := next.DialStream(ctx, s.towardServer(f, funnel.TCP, s.server))
	if err != nil {
		return nil, fmt.Errorf("reaching socks5 server %s: %w", s.server, err)
	}
	return conn, nil
}

// DialStream asks the server to CONNECT and then leaves the bytes alone: the
// connection it returns is the one below it, so a TCP socket stays one and
// the relay can splice.
func (s *Socks5) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	conn, err := s.dialServer(ctx, f, next)
	if err != nil {
		return nil, err
	}
	if _, err := s.handshake(ctx, conn, socks5wire.CmdConnect, f.Dest); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// handshake negotiates a method, authenticates, sends the request and
// returns the server's bound address, within the timeout and the context.
func (s *Socks5) handshake(ctx context.Context, conn net.Conn, cmd byte, dest funnel.Addr) (funnel.Addr, error) {
	var deadline time.Time
	flowDeadline := false
	if s.timeout > 0 {
		deadline = time.Now().Add(s.timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline, flowDeadline = d, true
	}
	conn.SetDeadline(deadline)
	// A cancelled flow must not wait for a silent server: a deadline in the
	// past wakes the blocked read.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	bound, err := s.negotiate(conn, cmd, dest)
	if !stop() && ctx.Err() != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: %w", s.server, ctx.Err())
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		limit := fmt.Sprintf("within timeout=%s", s.timeout)
		if flowDeadline {
			limit = "before the flow's deadline"
		}
		return funnel.Addr{}, funnel.Errorf(funnel.KindTimeout, "socks5 server %s: no answer to the handshake %s", s.server, limit)
	}
	if err != nil {
		return funnel.Addr{}, err
	}
	conn.SetDeadline(time.Time{})
	return bound, nil
}

func (s *Socks5) negotiate(conn net.Conn, cmd byte, dest funnel.Addr) (funnel.Addr, error) {
	req, what, err := request(cmd, dest)
	if err != nil {
		return funnel.Addr{}, err
	}
	if _, err := conn.Write(greeting(s.user != "")); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: %w", s.server, err)
	}
	var answer [2]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: reading its method choice: %w", s.server, err)
	}
	if answer[0] != socks5wire.Version {
		return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: answered with version %d, not 5 (is it a SOCKS5 server?)", s.server, answer[0])
	}
	switch answer[1] {
	case socks5wire.MethodNone:
	case socks5wire.MethodPassword:
		if s.user == "" {
			return funnel.Addr{}, funnel.Errorf(funnel.KindGeneral, "socks5 server %s: chose password authentication, which we did not offer", s.server)
		}
		if err := s.authenticate(conn); err != nil {
			return funnel.Addr{}, err
		}
	case socks5wire.MethodNoAcceptable:
		if s.user == "" {
			return funnel.Addr{}, funnel.Errorf(funnel.KindDenied, "socks5 server %s: requires authentication; give user= and pass=", s.server)
		}
		return funnel.Addr{}, funnel.Errorf(funnel.KindDenied, "socks5 server %s: accepts neither user/password nor no authentication", s.server)
	default:
		return funnel.Addr{}, funnel.Errorf(funnel.KindNotSupported, "socks5 server %s: chose authentication method %d, which we do not speak", s.server, answer[1])
	}
	if _, err := conn.Write(req); err != nil {
		return funnel.Addr{}, fmt.Errorf("socks5 server %s: %w", s.server, err)
	}
	return readReply(conn, s.serverName, what)
}

func (s *Socks5) authenticate(conn net.Conn) error {
	if _, err := conn.Write(passwordRequest(s.user, s.pass)); err != nil {
		return fmt.Errorf("socks5 server %s: %w", s.server, err)
	}
	var status [2]byte
	if _, err := io.ReadFull(conn, status[:]); err != nil {
		return fmt.Errorf("socks5 server %s: reading the authentication answer: %w", s.server, err)
	}
	if status[1] != socks5wire.AuthSucceeded {
		return funnel.Errorf(funnel.KindDenied, "socks5 server %s: authentication failed for user %q (wrong user or password)", s.server, s.user)
	}
	return nil
}

// Package httpconnect is the piece that reaches destinations through an
// upstream HTTP proxy with the CONNECT method (RFC 9110, section 9.3.6),
// optionally with Basic proxy authentication. It reaches the proxy itself
// through the rest of the chain, so it stacks with other proxy pieces.
package httpconnect

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "http-connect",
		Example: `server=127.0.0.1:8888`,
		Summary: "reach the destination through an upstream HTTP proxy (CONNECT)",
		Params: `server=HOST:PORT  the HTTP proxy (required)
user=NAME         user name for Basic proxy authentication
pass=PASSWORD     password for Basic proxy authentication (needs user=)
timeout=DURATION  longest wait for the proxy's answer, default 10s; 0 waits as long as the flow allows`,
		Curves: curves,
		New:    New,
	})
}

// HTTPConnect is a configured http-connect piece.
type HTTPConnect struct {
	server  funnel.Addr
	user    string
	auth    string // the Proxy-Authorization value, empty without user=
	timeout time.Duration
}

var (
	_ funnel.StreamDialer = (*HTTPConnect)(nil)
)

// New builds an http-connect piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	h := &HTTPConnect{}
	server, err := p.Required("server", "HOST:PORT")
	if err != nil {
		return nil, err
	}
	if h.server, err = funnel.ParseAddr(server); err != nil {
		return nil, p.Errorf("server", "%v", err)
	}
	if h.server.Port == 0 {
		return nil, p.Errorf("server", "port 0 is not a proxy's port")
	}
	h.user = p.String("user", "")
	pass := p.String("pass", "")
	switch {
	case strings.Contains(h.user, ":"):
		// Basic authentication joins user and password with a colon.
		return nil, p.Errorf("user", "a user name for Basic authentication cannot hold ':'")
	case pass != "" && h.user == "":
		return nil, p.Errorf("pass", "a password needs user= as well")
	case strings.ContainsAny(h.user+pass, "\r\n"):
		return nil, p.Fail("user and pass cannot hold line breaks")
	}
	if h.user != "" {
		h.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(h.user+":"+pass))
	}
	if h.timeout, err = p.Duration("timeout", 10*time.Second); err != nil {
		return nil, err
	}
	return h, nil
}

// Curves: a stream in, the proxy's stream out.
func (h *HTTPConnect) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}}

// DialStream reaches the proxy through the piece below and asks it to
// CONNECT. A name is sent as it is, for the proxy to resolve.
func (h *HTTPConnect) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	g := f.WithDest(h.server)
	g.Network = funnel.TCP
	conn, err := next.DialStream(ctx, g)
	if err != nil {
		return nil, fmt.Errorf("reaching HTTP proxy %s: %w", h.server, err)
	}
	c, err := h.connect(ctx, conn, f.Dest)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// connect sends the request and reads the answer within the timeout and the
// context.
func (h *HTTPConnect) connect(ctx context.Context, conn net.Conn, dest funnel.Addr) (net.Conn, error) {
	var deadline time.Time
	limit := fmt.Sprintf("within timeout=%s", h.timeout)
	if h.timeout > 0 {
		deadline = time.Now().Add(h.timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline, limit = d, "before the flow's deadline"
	}
	conn.SetDeadline(deadline)
	// A deadline in the past wakes a read blocked on a silent proxy.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	c, err := h.exchange(conn, dest)
	if !stop() && ctx.Err() != nil {
		return nil, fmt.Errorf("HTTP proxy %s: %w", h.server, ctx.Err())
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, funnel.Errorf(funnel.KindTimeout, "HTTP proxy %s: no answer to CONNECT %s %s", h.server, dest, limit)
	}
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func (h *HTTPConnect) exchange(conn net.Conn, dest funnel.Addr) (net.Conn, error) {
	target := dest.String() // host:port, [v6]:port, or name:port unresolved
	var req strings.Builder
	fmt.Fprintf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if h.auth != "" {
		fmt.Fprintf(&req, "Proxy-Authorization: %s\r\n", h.auth)
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return nil, fmt.Errorf("HTTP proxy %s: %w", h.server, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, funnel.Errorf(funnel.KindGeneral, "HTTP proxy %s: closed the connection without answering CONNECT %s", h.server, target)
		}
		return nil, fmt.Errorf("HTTP proxy %s: reading the answer to CONNECT %s (is it an HTTP proxy?): %w", h.server, target, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, h.statusError(resp, target)
	}
	// A 2xx answer to CONNECT has no body: whatever follows the header is
	// the destination's first bytes, and some of them may be in br already.
	// Only then is the connection wrapped to yield them first; otherwise
	// the piece returns the proxy's connection itself.
	early, _ := br.Peek(br.Buffered())
	return netx.WithPrefix(conn, early), nil
}

// statusError names what went wrong in the funnel's kinds, so the hook that
// carries the flow can say it in its own language.
func (h *HTTPConnect) statusError(resp *http.Response, target string) error {
	status := resp.Status
	var kind funnel.Kind
	var why string
	switch resp.StatusCode {
	case http.StatusProxyAuthRequired, http.StatusUnauthorized:
		kind = funnel.KindDenied
		if h.user == "" {
			why = "the proxy requires authentication; give user= and pass="
		} else {
			why = fmt.Sprintf("proxy authentication failed for user %q (wrong user or password)", h.user)
		}
	case http.StatusForbidden:
		kind, why = funnel.KindDenied, "the proxy denied access: this client, destination or port is not allowed, or authentication failed"
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		kind, why = funnel.KindRefused, "the proxy could not connect"
	case http.StatusGatewayTimeout:
		kind, why = funnel.KindTimeout, "the proxy timed out connecting"
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		kind, why = funnel.KindNotSupported, "the proxy does not support CONNECT"
	case http.StatusBadRequest:
		kind, why = funnel.KindGeneral, "the proxy did not accept the request"
	default:
		kind, why = funnel.KindGeneral, "the proxy refused"
		if resp.StatusCode >= 500 {
			why = "the proxy failed"
		}
	}
	return funnel.Errorf(kind, "HTTP proxy %s: CONNECT %s: %s (%s)", h.server, target, why, status)
}

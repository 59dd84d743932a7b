// Package tls is the piece that speaks TLS: a client on the way out (the
// application's plaintext leaves encrypted, like stunnel's client mode) and
// a server on the way in (incoming TLS is terminated before it reaches the
// application). Certificates and keys are read when the profile compiles,
// so a bad file is reported with the profile's file, line and column, and
// the handshake completes inside the dial, so a certificate that is not
// trusted fails the flow the way a refused connection does.
package tls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "tls",
		Summary: "TLS client toward the network, TLS server for incoming flows",
		Params: `sni=NAME          server name to send and verify, default the destination's name (or its IP address)
alpn=P1,P2        application protocols to offer (client) or accept (server), e.g. h2,http/1.1
ca=FILE           PEM certificates to trust instead of the system's roots; on incoming flows,
                  clients must then present a certificate signed by one of them
cert=FILE         PEM certificate: ours as a client when the server asks, the server's on incoming flows
key=FILE          PEM private key for cert=
insecure=BOOL     do not verify the server's certificate (testing only), default false
min=1.2|1.3       lowest TLS version to accept, default 1.2
timeout=DURATION  how long the handshake may take, default 10s`,
		Curves: curves,
		New:    New,
	})
}

// TLS is a configured tls piece.
type TLS struct {
	sni      string
	alpn     []string
	roots    *x509.CertPool // nil: the system's roots
	cert     *tls.Certificate
	insecure bool
	min      uint16
	timeout  time.Duration
	sessions tls.ClientSessionCache
	server   *tls.Config // nil without cert=
}

var (
	_ funnel.StreamDialer   = (*TLS)(nil)
	_ funnel.StreamAcceptor = (*TLS)(nil)
)

// New builds a tls piece; every file is read and parsed here.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	t := &TLS{sni: p.String("sni", ""), sessions: tls.NewLRUClientSessionCache(256)}
	if a := p.String("alpn", ""); a != "" {
		for _, proto := range strings.Split(a, ",") {
			proto = strings.TrimSpace(proto)
			if proto == "" || len(proto) > 255 {
				return nil, p.Errorf("alpn", "%q is not a comma-separated list of protocol names such as h2,http/1.1", a)
			}
			t.alpn = append(t.alpn, proto)
		}
	}
	var err error
	if t.insecure, err = p.Bool("insecure", false); err != nil {
		return nil, err
	}
	if ca := p.String("ca", ""); ca != "" {
		if t.insecure {
			return nil, p.Errorf("insecure", "insecure=true would ignore ca=%s; give one or the other", ca)
		}
		if t.roots, err = readCA(p, ca); err != nil {
			return nil, err
		}
	}
	certFile, keyFile := p.String("cert", ""), p.String("key", "")
	switch {
	case certFile != "" && keyFile != "":
		if t.cert, err = readKeyPair(p, certFile, keyFile); err != nil {
			return nil, err
		}
	case certFile != "":
		return nil, p.Errorf("cert", "needs key=FILE with the private key of %s", certFile)
	case keyFile != "":
		return nil, p.Errorf("key", "needs cert=FILE with the certificate for %s", keyFile)
	}
	switch v := p.String("min", "1.2"); v {
	case "1.2":
		t.min = tls.VersionTLS12
	case "1.3":
		t.min = tls.VersionTLS13
	default:
		return nil, p.Errorf("min", "%q is not 1.2 or 1.3", v)
	}
	if t.timeout, err = p.Duration("timeout", 10*time.Second); err != nil {
		return nil, err
	}
	if t.timeout == 0 {
		return nil, p.Errorf("timeout", "must be more than 0: a handshake that never ends would hold the flow for ever")
	}
	if t.cert != nil {
		t.server = &tls.Config{
			Certificates: []tls.Certificate{*t.cert},
			NextProtos:   t.alpn,
			MinVersion:   t.min,
		}
		if t.roots != nil {
			t.server.ClientCAs = t.roots
			t.server.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return t, nil
}

// resolve finds a file named in a profile: ~/ is the home directory, and a
// relative name is taken from the profile file's directory, so a profile
// and its certificates can move together.
func resolve(p *funnel.Params, name string) string {
	if rest, ok := strings.CutPrefix(name, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if filepath.IsAbs(name) {
		return name
	}
	if st, err := os.Stat(p.Pos.File); err == nil && st.Mode().IsRegular() {
		return filepath.Join(filepath.Dir(p.Pos.File), name)
	}
	return name
}

// certificates parses every CERTIFICATE block of a PEM file.
func certificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %v", n, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate in it (want -----BEGIN CERTIFICATE-----)")
	}
	return out, nil
}

func readCA(p *funnel.Params, name string) (*x509.CertPool, error) {
	path := resolve(p, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, p.Errorf("ca", "%v", err)
	}
	certs, err := certificates(data)
	if err != nil {
		return nil, p.Errorf("ca", "%s: %v", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

func readKeyPair(p *funnel.Params, certName, keyName string) (*tls.Certificate, error) {
	certPath, keyPath := resolve(p, certName), resolve(p, keyName)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, p.Errorf("cert", "%v", err)
	}
	certs, err := certificates(certPEM)
	if err != nil {
		return nil, p.Errorf("cert", "%s: %v", certPath, err)
	}
	if now := time.Now(); now.After(certs[0].NotAfter) {
		return nil, p.Errorf("cert", "%s expired on %s", certPath, certs[0].NotAfter.Format(time.DateOnly))
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, p.Errorf("key", "%v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, p.Errorf("key", "%s with cert %s: %v", keyPath, certPath, err)
	}
	return &pair, nil
}

// Curves: TLS records over a stream.
func (t *TLS) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}}

// serverName is what the client sends as SNI and checks the certificate
// against: an IP address is checked against the certificate's IP entries
// and not sent as SNI (RFC 6066 forbids it).
func (t *TLS) serverName(f *funnel.Flow) string {
	if t.sni != "" {
		return t.sni
	}
	return f.Dest.Host()
}

// DialStream connects below, then runs the client handshake to the end, so
// that a certificate problem is a dial error, not a read error later.
func (t *TLS) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	name := t.serverName(f)
	if name == "" {
		return nil, funnel.Errorf(funnel.KindAddrNotSupported, "tls: the flow has no destination name or address to verify; give sni=NAME")
	}
	raw, err := next.DialStream(ctx, f)
	if err != nil {
		return nil, err
	}
	// Knowing whether the server asked for a client certificate turns its
	// bare "handshake failure" alert into advice.
	asked := false
	cfg := &tls.Config{
		ServerName:         name,
		RootCAs:            t.roots,
		NextProtos:         t.alpn,
		MinVersion:         t.min,
		InsecureSkipVerify: t.insecure,
		ClientSessionCache: t.sessions,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			if t.cert == nil {
				return &tls.Certificate{}, nil
			}
			return t.cert, nil
		},
	}
	c := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, t.clientError(err, name, f.Dest, asked)
	}
	return &conn{Conn: c, raw: raw}, nil
}

// AcceptStream runs the server handshake on an incoming flow.
func (t *TLS) AcceptStream(ctx context.Context, f *funnel.Flow, netSide net.Conn) (net.Conn, error) {
	if t.server == nil {
		return nil, funnel.Errorf(funnel.KindNotSupported, "tls: an incoming flow needs a server certificate: give cert=FILE key=FILE")
	}
	c := tls.Server(netSide, t.server)
	hctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		netSide.Close()
		return nil, t.serverError(err, netSide.RemoteAddr())
	}
	return &conn{Conn: c, raw: netSide}, nil
}

// clientError says why a handshake toward a server failed in words that
// point at the parameter to change, with a kind the hook can report.
func (t *TLS) clientError(err error, name string, dest funnel.Addr, askedForCert bool) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		record   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case timedOut(err):
		return funnel.Errorf(funnel.KindTimeout, "tls: handshake with %s did not finish within %s", dest, t.timeout)
	case errors.As(err, &unknown):
		return funnel.Errorf(funnel.KindDenied, "tls: certificate for %s not trusted: %v (give ca=FILE or, for testing only, insecure=true)", name, unknown)
	case errors.As(err, &hostname):
		return funnel.Errorf(funnel.KindDenied, "tls: certificate of %s is not valid for %s: %v (give sni=NAME with a name it is valid for)", dest, name, hostname)
	case errors.As(err, &invalid):
		return funnel.Errorf(funnel.KindDenied, "tls: certificate for %s rejected: %v", name, invalid)
	case errors.As(err, &verify):
		return funnel.Errorf(funnel.KindDenied, "tls: certificate for %s rejected: %v", name, err)
	case errors.As(err, &record):
		return funnel.Errorf(funnel.KindGeneral, "tls: %s does not speak TLS: %v", dest, err)
	case askedForCert && t.cert == nil:
		return funnel.Errorf(funnel.KindDenied, "tls: %s wants a client certificate: give cert=FILE key=FILE (%v)", dest, err)
	case askedForCert && errors.As(err, &op) && op.Op == "remote error":
		return funnel.Errorf(funnel.KindDenied, "tls: %s refused our client certificate: %v (is cert= signed by a CA it trusts?)", dest, err)
	case errors.As(err, &op) && op.Op == "remote error":
		if strings.Contains(err.Error(), "application protocol") {
			return funnel.Errorf(funnel.KindNotSupported, "tls: %s speaks none of alpn=%s: %v", dest, strings.Join(t.alpn, ","), err)
		}
		return funnel.Errorf(funnel.KindGeneral, "tls: %s refused the handshake: %v", dest, err)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return funnel.Errorf(funnel.KindGeneral, "tls: %s closed the connection during the handshake (is it a TLS server?)", dest)
	}
	return funnel.Errorf(funnel.Classify(err), "tls: handshake with %s: %w", dest, err)
}

func (t *TLS) serverError(err error, client net.Addr) error {
	var op *net.OpError
	switch {
	case timedOut(err):
		return funnel.Errorf(funnel.KindTimeout, "tls: client %s did not finish the handshake within %s", client, t.timeout)
	case errors.As(err, &op) && op.Op == "remote error" && strings.Contains(err.Error(), "certificate"):
		return funnel.Errorf(funnel.KindDenied, "tls: client %s refused our certificate: %v (does it trust the CA that signed cert=?)", client, err)
	case strings.Contains(err.Error(), "certificate"):
		return funnel.Errorf(funnel.KindDenied, "tls: client %s: %v (ca= asks every client for a certificate signed by it)", client, err)
	}
	// A client that does not trust our certificate often just hangs up or
	// sends an alert we cannot read, so say the likely cause.
	return funnel.Errorf(funnel.KindGeneral, "tls: handshake with client %s: %w (does the client trust the CA that signed cert=?)", client, err)
}

func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// conn is the TLS connection with a half-close that reaches TCP: close_notify
// alone tells a TLS peer that we are done, but a plain relay between us and
// it only sees the FIN.
type conn struct {
	*tls.Conn
	raw net.Conn
}

func (c *conn) CloseWrite() error {
	if err := c.Conn.CloseWrite(); err != nil {
		return err
	}
	// Below a conn without a half-close, close_notify has said it: the
	// read side stays open for the peer's answer.
	_, err := netx.HalfClose(c.raw)
	return err
}

package socks5d

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/tls"
	"golang.org/x/net/proxy"
)

func bindReq(expect netip.AddrPort) []byte {
	return socks5wire.AppendAddrPort([]byte{5, 2, 0}, expect)
}

func TestBind(t *testing.T) {
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng}, "tcp")
	peerIP := netip.MustParseAddr("127.0.0.2")

	r := dialRaw(t, addr)
	r.noAuth()
	r.send(bindReq(netip.AddrPortFrom(peerIP, 0))...)
	code, bound := r.readReply()
	if code != 0 || !bound.Addr().IsLoopback() || bound.Port() == 0 {
		t.Fatalf("first BIND reply: code %d, address %s; want 0 and a loopback port", code, bound)
	}

	// A connection from another host than announced is not the client's.
	stranger, err := net.DialTimeout("tcp", bound.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stranger.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := stranger.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a stranger's connection was served (%d bytes)", n)
	}
	stranger.Close()

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: peerIP.AsSlice()}, Timeout: 5 * time.Second}
	peer, err := d.Dial("tcp", bound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	code, from := r.readReply()
	if code != 0 || from.String() != peer.LocalAddr().String() {
		t.Fatalf("second BIND reply: code %d, peer %s; want 0 and %s", code, from, peer.LocalAddr())
	}
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(peer, "from the peer\n")
	r.expect([]byte("from the peer\n")...)
	r.send([]byte("from the client\n")...)
	got := make([]byte, len("from the client\n"))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "from the client\n" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

func TestBindTimeout(t *testing.T) {
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, BindTimeout: 200 * time.Millisecond}, "tcp")
	r := dialRaw(t, addr)
	r.noAuth()
	r.send(bindReq(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))...)
	if code, _ := r.readReply(); code != 0 {
		t.Fatalf("first reply %d, want 0", code)
	}
	if code, _ := r.readReply(); code != 6 {
		t.Fatalf("second reply %d, want 6 (TTL expired: nobody connected in time)", code)
	}
	r.expectClosed()
}

// unixEcho echoes on a Unix socket.
func unixEcho(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "echo.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		io.WriteString(c, "unix: ")
		io.Copy(c, c)
	})
	return path
}

func writeMap(t *testing.T, text string) *Map {
	t.Helper()
	path := filepath.Join(t.TempDir(), "services.map")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := LoadMap(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMapServesLocalServices(t *testing.T) {
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	sock := unixEcho(t)
	m := writeMap(t, fmt.Sprintf(`# the server-side variant
mail.example.org:25 -> %s
*.example.org:80    -> unix:%s
echo.test:7         -> exec:/bin/cat
10.1.2.3:*          -> %s
gone.test:25        -> 127.0.0.1:%d
`, echo, sock, echo, closedPort(t)))
	eng := testEngine(t, nil)
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: "rewrite from=hello to=HOWDY"}}
	s.SetMap(m)
	addr := startServer(t, s, "tcp")
	d, err := proxy.SOCKS5("tcp", addr, nil, &net.Dialer{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dest, want string }{
		{"mail.example.org:25", "HOWDY there\n"},
		{"MAIL.Example.org:25", "HOWDY there\n"},
		{"www.example.org:80", "unix: HOWDY there\n"},
		{"a.b.example.org:80", "unix: HOWDY there\n"},
		{"echo.test:7", "HOWDY there\n"},
		{"10.1.2.3:22", "HOWDY there\n"},
	} {
		t.Run(c.dest, func(t *testing.T) {
			conn, err := d.Dial("tcp", c.dest)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, "hello there\n")
			got := make([]byte, len(c.want))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != c.want {
				t.Fatalf("read %q, %v; want %q", got, err, c.want)
			}
		})
	}
	for _, c := range []struct{ dest, want string }{
		{"example.org:80", "connection not allowed by ruleset"}, // *.example.org is only below it
		{"mail.example.org:26", "connection not allowed by ruleset"},
		{"gone.test:25", "connection refused"},
	} {
		t.Run(c.dest, func(t *testing.T) {
			conn, err := d.Dial("tcp", c.dest)
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("dial: %v; want %q", err, c.want)
			}
		})
	}
}

// The example: a SOCKS client's CONNECT to mail.example.org:25
// lands on the local service with TLS terminated first by the profile.
func TestMapTerminatesTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t, "mail.example.org")
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	m := writeMap(t, "mail.example.org:465 -> "+echo.String()+"\n")
	eng := testEngine(t, nil)
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: "tls cert=" + certFile + " key=" + keyFile}}
	s.SetMap(m)
	addr := startServer(t, s, "tcp")
	d, err := proxy.SOCKS5("tcp", addr, nil, &net.Dialer{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := d.Dial("tcp", "mail.example.org:465")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{ServerName: "mail.example.org", RootCAs: pool})
	if err := c.Handshake(); err != nil {
		t.Fatalf("TLS handshake through the map: %v", err)
	}
	io.WriteString(c, "EHLO client\r\n")
	got := make([]byte, len("EHLO client\r\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "EHLO client\r\n" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func selfSigned(t *testing.T, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestMapFileErrors(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{"mail.example.org:25 127.0.0.1:25", "want PATTERN:PORT -> TARGET"},
		{"mail.example.org -> 127.0.0.1:25", "missing port in address"},
		{"mail.example.org:x -> 127.0.0.1:25", `port "x" is not a number from 0 to 65535 or *`},
		{"mail*.example.org:25 -> 127.0.0.1:25", "a * stands only for a whole host"},
		{"a.test:25 -> unix:relative.sock", "a Unix socket needs an absolute path"},
		{"a.test:25 -> exec:cat", "exec: needs a program's absolute path"},
		{"a.test:25 -> exec:/nonexistent/prog", "no such file or directory"},
		{"a.test:25 -> somewhere", "want HOST:PORT"},
	} {
		path := filepath.Join(t.TempDir(), "m")
		os.WriteFile(path, []byte("# comment\n"+c.line+"\n"), 0o644)
		_, err := LoadMap(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path+":2: ") {
			t.Errorf("%q: %v; want %s:2: ... %s", c.line, err, path, c.want)
		}
	}
}

package tls_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/tls"
)

// pki is a throw-away set of certificates in a temporary directory: a CA
// that signs the server's certificate (valid for localhost and 127.0.0.1),
// another CA that signs a client certificate, and an unrelated CA.
type pki struct {
	dir                             string
	ca, serverCert, serverKey       string
	clientCA, clientCert, clientKey string
	otherCA                         string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	p := pki{dir: dir}
	caCert, caKey := makeCA(t, "funtun test CA")
	p.ca = writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	srvDER, srvKey := makeLeaf(t, caCert, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	p.serverCert = writePEM(t, dir, "server.pem", "CERTIFICATE", srvDER)
	p.serverKey = writeKey(t, dir, "server.key", srvKey)
	clientCACert, clientCAKey := makeCA(t, "funtun client CA")
	p.clientCA = writePEM(t, dir, "client-ca.pem", "CERTIFICATE", clientCACert.Raw)
	cliDER, cliKey := makeLeaf(t, clientCACert, clientCAKey, "alice", x509.ExtKeyUsageClientAuth)
	p.clientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", cliDER)
	p.clientKey = writeKey(t, dir, "client.key", cliKey)
	other, _ := makeCA(t, "someone else's CA")
	p.otherCA = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw)
	return p
}

var serial int64

func template(cn string) *x509.Certificate {
	serial++
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

func makeCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := template(cn)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func makeLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := template(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeKey(t *testing.T, dir, name string, key *ecdsa.PrivateKey) string {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}

// sServer runs `openssl s_server` on a free loopback port and returns it.
func sServer(t *testing.T, p pki, args ...string) int {
	t.Helper()
	openssl := testutil.NeedTool(t, "openssl")
	port := testutil.FreePort(t)
	args = append([]string{"s_server", "-accept", "127.0.0.1:" + strconv.Itoa(port), "-cert", p.serverCert, "-key", p.serverKey}, args...)
	testutil.StartDaemon(t, openssl, args...)
	testutil.WaitListen(t, "127.0.0.1:"+strconv.Itoa(port))
	return port
}

func dial(t *testing.T, pl *funnel.Pipeline, host string, port int) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(host, uint16(port))))
	if err == nil {
		c.SetDeadline(time.Now().Add(15 * time.Second))
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// sServer is single-threaded: a test closes each connection before it
// dials the next.
func closed(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// reversed sends a line to `s_server -rev` and reads its answer.
func reversed(t *testing.T, c net.Conn, line string) string {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", line, err)
	}
	return strings.TrimSuffix(got, "\n")
}

type connState interface {
	ConnectionState() tls.ConnectionState
}

func TestDialOpenSSLWithCA(t *testing.T) {
	p := newPKI(t)
	port := sServer(t, p, "-rev")
	pl := testutil.Pipeline(t, "tls ca="+p.ca)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		c, err := dial(t, pl, host, port)
		if err != nil {
			t.Fatalf("dial %s: %v", host, err)
		}
		if got := reversed(t, c, "hello funnel"); got != "lennuf olleh" {
			t.Fatalf("s_server -rev answered %q, want %q", got, "lennuf olleh")
		}
		st := c.(connState).ConnectionState()
		if len(st.VerifiedChains) == 0 {
			t.Fatalf("dial %s: no verified chain", host)
		}
		closed(t, c)
	}
}

func TestDialWrongCA(t *testing.T) {
	p := newPKI(t)
	port := sServer(t, p, "-rev")
	for _, chain := range []string{"tls ca=" + p.otherCA, "tls"} {
		_, err := dial(t, testutil.Pipeline(t, chain), "127.0.0.1", port)
		if err == nil {
			t.Fatalf("%s: dial succeeded against a server signed by another CA", chain)
		}
		msg := err.Error()
		if !strings.Contains(msg, "tls: certificate for 127.0.0.1 not trusted") || !strings.Contains(msg, "give ca=FILE") {
			t.Errorf("%s: error %q does not say the certificate is not trusted and what to do", chain, msg)
		}
		if k := funnel.Classify(err); k != funnel.KindDenied {
			t.Errorf("%s: kind %v, want %v", chain, k, funnel.KindDenied)
		}
	}
}

func TestDialWrongName(t *testing.T) {
	p := newPKI(t)
	port := sServer(t, p, "-rev")
	_, err := dial(t, testutil.Pipeline(t, "tls sni=wrong.test ca="+p.ca), "127.0.0.1", port)
	if err == nil || !strings.Contains(err.Error(), "not valid for wrong.test") || !strings.Contains(err.Error(), "sni=NAME") {
		t.Fatalf("got %v, want an error saying the certificate is not valid for wrong.test", err)
	}
	// sni= names the certificate's name while the flow goes to an address.
	c, err := dial(t, testutil.Pipeline(t, "tls sni=localhost ca="+p.ca), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if st := c.(connState).ConnectionState(); st.ServerName != "localhost" {
		t.Fatalf("server name %q, want localhost", st.ServerName)
	}
}

func TestDialInsecure(t *testing.T) {
	p := newPKI(t)
	port := sServer(t, p, "-rev")
	c, err := dial(t, testutil.Pipeline(t, "tls insecure=true"), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if got := reversed(t, c, "abc"); got != "cba" {
		t.Fatalf("got %q, want cba", got)
	}
	if st := c.(connState).ConnectionState(); len(st.VerifiedChains) != 0 {
		t.Fatal("insecure=true verified a chain; it should not have tried")
	}
}

func TestDialALPN(t *testing.T) {
	p := newPKI(t)
	port := sServer(t, p, "-rev", "-alpn", "foo,bar")
	c, err := dial(t, testutil.Pipeline(t, "tls alpn=baz,bar ca="+p.ca), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.(connState).ConnectionState().NegotiatedProtocol; got != "bar" {
		t.Fatalf("negotiated %q, want bar", got)
	}
	if got := reversed(t, c, "alpn"); got != "npla" {
		t.Fatalf("got %q, want npla", got)
	}
}

func TestDialClientCert(t *testing.T) {
	p := newPKI(t)
	// TLS 1.2 so that a refused client certificate fails the handshake
	// itself; with 1.3 the server's verdict arrives after it.
	port := sServer(t, p, "-rev", "-tls1_2", "-Verify", "1", "-CAfile", p.clientCA, "-verify_return_error")
	c, err := dial(t, testutil.Pipeline(t, fmt.Sprintf("tls ca=%s cert=%s key=%s", p.ca, p.clientCert, p.clientKey)), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if got := reversed(t, c, "with cert"); got != "trec htiw" {
		t.Fatalf("got %q", got)
	}
	closed(t, c)
	_, err = dial(t, testutil.Pipeline(t, "tls ca="+p.ca), "127.0.0.1", port)
	if err == nil || !strings.Contains(err.Error(), "wants a client certificate: give cert=FILE key=FILE") {
		t.Fatalf("without cert: got %v, want an error asking for cert= and key=", err)
	}
	// A certificate the server does not trust (here: the server's own).
	_, err = dial(t, testutil.Pipeline(t, fmt.Sprintf("tls ca=%s cert=%s key=%s", p.ca, p.serverCert, p.serverKey)), "127.0.0.1", port)
	if err == nil || !strings.Contains(err.Error(), "refused our client certificate") {
		t.Fatalf("with an untrusted cert: got %v, want an error saying the server refused it", err)
	}
}

func TestDialNotTLS(t *testing.T) {
	origin := httpOrigin(t)
	_, err := dial(t, testutil.Pipeline(t, "tls insecure=true"), "127.0.0.1", origin.(*net.TCPAddr).Port)
	if err == nil || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Fatalf("got %v, want an error saying the server does not speak TLS", err)
	}
}

func TestDialHandshakeTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	silent := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			silent <- c // accept, then say nothing
		}
	}()
	_, err = dial(t, testutil.Pipeline(t, "tls insecure=true timeout=300ms"), "127.0.0.1", l.Addr().(*net.TCPAddr).Port)
	if err == nil || funnel.Classify(err) != funnel.KindTimeout || !strings.Contains(err.Error(), "did not finish within 300ms") {
		t.Fatalf("got %v (kind %v), want a handshake timeout", err, funnel.Classify(err))
	}
	select {
	case c := <-silent:
		c.Close()
	default:
	}
}

func TestCompileErrors(t *testing.T) {
	p := newPKI(t)
	garbage := filepath.Join(p.dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate\n"), 0o600)
	for _, tc := range []struct{ chain, want string }{
		{"tls cert=" + p.serverCert, `test:1:10: piece "tls": cert: needs key=FILE`},
		{"tls key=" + p.serverKey, `piece "tls": key: needs cert=FILE`},
		{"tls ca=/nonexistent/ca.pem", `test:1:8: piece "tls": ca: open /nonexistent/ca.pem: no such file or directory`},
		{"tls ca=" + garbage, `piece "tls": ca: ` + garbage + `: no PEM certificate in it`},
		{"tls cert=" + garbage + " key=" + p.serverKey, `piece "tls": cert: ` + garbage + `: no PEM certificate`},
		{"tls cert=" + p.serverCert + " key=" + p.clientKey, `piece "tls": key: ` + p.clientKey + ` with cert ` + p.serverCert + `: tls: private key does not match public key`},
		{"tls cert=" + p.serverCert + " key=" + garbage, `piece "tls": key: ` + garbage},
		{"tls min=1.1", `piece "tls": min: "1.1" is not 1.2 or 1.3`},
		{"tls alpn=h2,,x", `piece "tls": alpn: "h2,,x" is not a comma-separated list`},
		{"tls insecure=true ca=" + p.ca, `piece "tls": insecure: insecure=true would ignore ca=`},
		{"tls insecure=perhaps", `insecure: "perhaps" is not true or false`},
		{"tls timeout=0s", `piece "tls": timeout: must be more than 0`},
		{"tls verify=no", `piece "tls" has no parameter "verify"`},
	} {
		_, err := testutil.CompileChain(tc.chain)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got  %v\n want an error containing %q", tc.chain, err, tc.want)
		}
	}
}

// TestRelativeFilesFollowTheProfile: a profile file names its certificates
// relative to itself.
func TestRelativeFilesFollowTheProfile(t *testing.T) {
	p := newPKI(t)
	profile := filepath.Join(p.dir, "secure.profile")
	text := "tls ca=ca.pem cert=client.pem key=client.key\n"
	os.WriteFile(profile, []byte(text), 0o600)
	if _, err := funnel.CompileSet([]funnel.Source{{Name: "secure", Origin: profile, Text: text}}); err != nil {
		t.Fatal(err)
	}
}

// httpOrigin serves a fixed page on loopback.
func httpOrigin(t *testing.T) net.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain origin says hello to %s\n", r.URL.Path)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr()
}

// inbound accepts connections on loopback and serves each as an incoming
// flow through pl (the engine's ServeInbound, as `funtun forward
// --inbound` does), relaying to the plain server at app. Errors of failed
// flows arrive on the returned channel.
func inbound(t *testing.T, pl *funnel.Pipeline, app net.Addr) (int, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	errs := make(chan error, 16)
	engine := &funnel.Engine{Log: slog.New(slog.DiscardHandler)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				f := funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(app))
				f.Log = engine.Log
				err := engine.ServeInbound(ctx, f, pl, c, func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", app.String())
				})
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, errs
}

func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := testutil.NeedTool(t, "curl")
	out, err := exec.Command(bin, append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
	return string(out), err
}

func TestInboundCurl(t *testing.T) {
	p := newPKI(t)
	origin := httpOrigin(t)
	port, _ := inbound(t, testutil.Pipeline(t, fmt.Sprintf("tls cert=%s key=%s", p.serverCert, p.serverKey)), origin)
	url := fmt.Sprintf("https://localhost:%d/secret", port)
	resolve := fmt.Sprintf("localhost:%d:127.0.0.1", port)
	got, err := curl(t, "--cacert", p.ca, "--resolve", resolve, url)
	if err != nil || got != "plain origin says hello to /secret\n" {
		t.Fatalf("curl: %v: %q", err, got)
	}
	// curl without our CA refuses the server, and says so.
	got, err = curl(t, "--resolve", resolve, url)
	if err == nil || !strings.Contains(got, "certificate") {
		t.Fatalf("curl without --cacert: %v: %q; want a certificate error", err, got)
	}
}

func TestInboundClientCertCurl(t *testing.T) {
	p := newPKI(t)
	origin := httpOrigin(t)
	port, errs := inbound(t, testutil.Pipeline(t, fmt.Sprintf("tls cert=%s key=%s ca=%s", p.serverCert, p.serverKey, p.clientCA)), origin)
	url := fmt.Sprintf("https://127.0.0.1:%d/mtls", port)
	got, err := curl(t, "--cacert", p.ca, "--cert", p.clientCert, "--key", p.clientKey, url)
	if err != nil || got != "plain origin says hello to /mtls\n" {
		t.Fatalf("curl with a client certificate: %v: %q", err, got)
	}
	if got, err = curl(t, "--cacert", p.ca, url); err == nil {
		t.Fatalf("curl without a client certificate got through: %q", got)
	}
	select {
	case err := <-errs:
		if funnel.Classify(err) != funnel.KindDenied || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("flow error %v (kind %v), want a denied certificate error", err, funnel.Classify(err))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the refused flow reported no error")
	}
}

func TestInboundSClientALPN(t *testing.T) {
	openssl := testutil.NeedTool(t, "openssl")
	p := newPKI(t)
	origin := httpOrigin(t)
	port, _ := inbound(t, testutil.Pipeline(t, fmt.Sprintf("tls cert=%s key=%s alpn=http/1.1", p.serverCert, p.serverKey)), origin)
	cmd := exec.Command(openssl, "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", port), "-CAfile", p.ca,
		"-verify_return_error", "-alpn", "h2,http/1.1", "-ign_eof")
	cmd.Stdin = strings.NewReader("GET /alpn HTTP/1.0\r\n\r\n")
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
	}()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("s_client: %v\n%s", err, out)
	}
	for _, want := range []string{"ALPN protocol: http/1.1", "Verify return code: 0 (ok)", "plain origin says hello to /alpn"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("s_client output lacks %q:\n%s", want, out)
		}
	}
}

func TestInboundWithoutCert(t *testing.T) {
	pl := testutil.Pipeline(t, "tls")
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_, err := pl.AcceptStream(context.Background(), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("127.0.0.1", 1)), a)
	if err == nil || !strings.Contains(err.Error(), "needs a server certificate: give cert=FILE key=FILE") {
		t.Fatalf("got %v, want an error asking for cert= and key=", err)
	}
	if funnel.Classify(err) != funnel.KindNotSupported {
		t.Fatalf("kind %v, want %v", funnel.Classify(err), funnel.KindNotSupported)
	}
}

// TestInboundHalfClose: a client that ends its side of an incoming TLS
// flow still gets the whole answer, and then the end of the stream.
func TestInboundHalfClose(t *testing.T) {
	p := newPKI(t)
	echo := testutil.EchoServer(t)
	port, _ := inbound(t, testutil.Pipeline(t, fmt.Sprintf("tls cert=%s key=%s", p.serverCert, p.serverKey)), echo)
	pem, _ := os.ReadFile(p.ca)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "one way, then the other")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "one way, then the other" {
		t.Fatalf("read %q, %v; want the echo and then the end of the stream", got, err)
	}
}

//go:build linux

package preload

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"

	_ "github.com/funtun/funtun/pieces/tls"
)

const pyServer = `
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(5)
print("listening", s.getsockname()[1], flush=True)
c, addr = s.accept()
print("accepted", "%s:%d" % addr, "%s:%d" % c.getpeername(), "%s:%d" % c.getsockname(), flush=True)
data = b""
while not data.endswith(b"\n"):
    chunk = c.recv(100)
    if not chunk:
        break
    data += chunk
print("got", data.decode().strip(), flush=True)
c.sendall(b"reply ping\n")
c.close()
`

// TestAcceptReportsClient: a server's accept() and getpeername() name the
// real client and getsockname() the public address, whether the funnel
// relays incoming connections through pieces or leaves listen() native.
func TestAcceptReportsClient(t *testing.T) {
	py := python(t)
	for _, tc := range []struct{ name, chain, got, reply string }{
		{"pieces", "rewrite from=ping to=pong", "pong", "reply pong"},
		{"native", "direct", "ping", "reply ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := startFunnel(t, tc.chain)
			cmd := ft.hooked(ctxFor(t, 30*time.Second), py, "-c", pyServer)
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			r := bufio.NewReader(stdout)
			line, _ := r.ReadString('\n')
			f := strings.Fields(line)
			if len(f) != 2 || f[0] != "listening" || f[1] == "0" {
				cmd.Process.Kill()
				t.Fatalf("server printed %q", line)
			}
			c, err := net.Dial("tcp", "127.0.0.1:"+f[1])
			if err != nil {
				cmd.Process.Kill()
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("ping\n"))
			line, _ = r.ReadString('\n')
			want := "accepted " + c.LocalAddr().String() + " " + c.LocalAddr().String() + " 127.0.0.1:" + f[1] + "\n"
			if line != want {
				t.Errorf("server: %q, want %q", line, want)
			}
			line, _ = r.ReadString('\n')
			if line != "got "+tc.got+"\n" {
				t.Errorf("server received %q, want %q", line, tc.got)
			}
			reply, _ := bufio.NewReader(c).ReadString('\n')
			if reply != tc.reply+"\n" {
				t.Errorf("client received %q, want %q", reply, tc.reply)
			}
		})
	}
}

// TestRogueHiddenPort: a connection to the hidden listener that did not
// come through the funnel is turned away; the next real one is accepted.
func TestRogueHiddenPort(t *testing.T) {
	py := python(t)
	ft := startFunnel(t, "rewrite from=ping to=pong")
	script := `
import socket, sys, os
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(5)
print("listening", s.getsockname()[1], flush=True)
print("ready", flush=True)
c, addr = s.accept()
print("accepted", "%s:%d" % addr, flush=True)
`
	cmd := ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	r := bufio.NewReader(stdout)
	line, _ := r.ReadString('\n')
	public := strings.Fields(line)[1]
	r.ReadString('\n')
	// A local process could find the hidden port (the kernel lists it).
	hidden := ""
	ft.srv.inbound.mu.Lock()
	for h := range ft.srv.inbound.listeners {
		hidden = h.String()
	}
	ft.srv.inbound.mu.Unlock()
	rogue, err := net.Dial("tcp", hidden)
	if err != nil {
		cmd.Process.Kill()
		t.Fatalf("dial hidden %s: %v", hidden, err)
	}
	defer rogue.Close()
	time.Sleep(100 * time.Millisecond)
	good, err := net.Dial("tcp", "127.0.0.1:"+public)
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	defer good.Close()
	line, _ = r.ReadString('\n')
	if line != "accepted "+good.LocalAddr().String()+"\n" {
		t.Fatalf("server: %q, want the funnel's client %s", line, good.LocalAddr())
	}
	rogue.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := rogue.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the rogue connection is still open (%d bytes)", n)
	}
}

func TestNcatListen(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	port := strconv.Itoa(testutil.FreePort(t))
	ft := startFunnel(t, "rewrite from=ping to=pong dir=down")
	cmd := ft.hooked(ctxFor(t, 30*time.Second), ncat, "-l", "-k", "127.0.0.1", port)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	testutil.WaitListen(t, "127.0.0.1:"+port)
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping from a client\n"))
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "pong from a client\n" {
		t.Fatalf("ncat -l printed %q", line)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and localhost and its key.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "funtun test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
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
	return certFile, keyFile
}

// TestHTTPServerGetsTLS: a plain `python3 -m http.server`, started under a
// profile whose incoming side terminates TLS, serves HTTPS — TLS added to
// a server that knows nothing of it.
func TestHTTPServerGetsTLS(t *testing.T) {
	py := python(t)
	curl := testutil.NeedTool(t, "curl")
	cert, key := selfSigned(t)
	docs := t.TempDir()
	os.WriteFile(filepath.Join(docs, "hello.txt"), []byte("served in plain HTTP, fetched over TLS\n"), 0o644)
	port := strconv.Itoa(testutil.FreePort(t))
	ft := startFunnel(t, "tls cert="+cert+" key="+key)
	srv := ft.hooked(ctxFor(t, 60*time.Second), py, "-m", "http.server", "--bind", "127.0.0.1", "--directory", docs, port)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	testutil.WaitListen(t, "127.0.0.1:"+port)
	out, stderr, err := run(t, exec2(t, curl, "-sS", "--noproxy", "*", "--cacert", cert, "https://127.0.0.1:"+port+"/hello.txt"), "")
	if err != nil || out != "served in plain HTTP, fetched over TLS\n" {
		t.Fatalf("curl https: %v %q %s", err, out, stderr)
	}
	// Plain HTTP no longer gets through: the profile says TLS.
	_, _, err = run(t, exec2(t, curl, "-sS", "--max-time", "5", "http://127.0.0.1:"+port+"/hello.txt"), "")
	if err == nil {
		t.Fatal("plain HTTP reached the server past the tls piece")
	}
}

// TestListenerClosed: when the program closes its listener the funnel lets
// go of the public port (the program can listen there again), but not
// while a forked child still listens on its copy.
func TestListenerClosed(t *testing.T) {
	py := python(t)
	ft := startFunnel(t, "rewrite from=ping to=pong")
	script := `
import socket, os, sys
def listener(port=0):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(5)
    return s
s = listener()
port = s.getsockname()[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(r, 1)      # hold the listener until the parent has closed its copy
    os._exit(0)
s.close()
try:
    listener(port)
    print("rebound while the child listens")
except OSError as e:
    print("in use while the child listens")
os.write(w, b"x")
os.waitpid(pid, 0)
# The child's copy went with it, without a close() we could see: the
# funnel notices when it next tries the hidden port; a fresh close() of
# ours tells it now.
try:
    s2 = listener(port)
    print("rebound")
except OSError as e:
    print("still in use", e)
`
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script), "")
	if err != nil {
		t.Fatalf("python: %v\n%s%s", err, out, stderr)
	}
	if out != "in use while the child listens\nrebound\n" {
		t.Fatalf("python printed %q", out)
	}
}

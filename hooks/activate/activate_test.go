//go:build linux

package activate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/testutil"

	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/proxyproto"
	_ "github.com/funtun/funtun/pieces/rewrite"
	_ "github.com/funtun/funtun/pieces/tls"
)

// seen is what testdata/sdserver.py answers: what the program saw.
type seen struct {
	PID   int      `json:"pid"`
	Name  string   `json:"name"`
	Names []string `json:"names"`
	FDs   int      `json:"fds"`
	Sock  string   `json:"sock"`
	Peer  string   `json:"peer"`
	Path  string   `json:"path"`
}

func sdserver(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("testdata/sdserver.py")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// python3 is the system's interpreter when there is one: a version
// manager's shim is a script that may not exec it in its own place.
func python(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return testutil.NeedTool(t, "python3")
}

// testEnv keeps the user's profiles and proxies out of the programs.
func testEnv(t *testing.T) []string {
	_, env := testutil.ProfileDir(t)
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "ld_preload", "funtun_socket", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
			"listen_pid", "listen_fds", "listen_fdnames":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// activated is systemd-socket-activate listening on the given addresses
// (with --fdname names, if any) and starting funtun with args. It
// execs funtun in its own place: its pid is funtun's.
type activated struct {
	cmd  *exec.Cmd
	out  *testutil.LogBuffer
	done chan struct{}
	err  error
}

func activate(t *testing.T, listens []string, names string, extra []string, args ...string) *activated {
	t.Helper()
	sa := testutil.NeedTool(t, "systemd-socket-activate")
	var argv []string
	for _, l := range listens {
		argv = append(argv, "-l", l)
	}
	if names != "" {
		argv = append(argv, "--fdname="+names)
	}
	argv = append(append(argv, extra...), testutil.Funtun(t))
	argv = append(argv, args...)
	a := &activated{cmd: exec.Command(sa, argv...), out: &testutil.LogBuffer{}, done: make(chan struct{})}
	a.cmd.Env = testEnv(t)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
		if t.Failed() {
			t.Logf("output of systemd-socket-activate and funtun:\n%s", a.out.String())
		}
	})
	for _, l := range listens {
		a.waitOutput(t, "Listening on "+l)
	}
	return a
}

func (a *activated) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(a.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output after 20s", want)
		}
		select {
		case <-a.done:
			if !strings.Contains(a.out.String(), want) {
				t.Fatalf("exited (%v) without %q", a.err, want)
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends sig to funtun and returns its exit status.
func (a *activated) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	a.cmd.Process.Signal(sig)
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("funtun did not exit within 20s of %v", sig)
	}
	var ee *exec.ExitError
	if errors.As(a.err, &ee) {
		return ee.ExitCode()
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	return 0
}

// gone: the process has been reaped (not even a zombie is left).
func gone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	bin := testutil.NeedTool(t, "curl")
	cmd := exec.Command(bin, append([]string{"-sS", "--max-time", "20", "--retry", "3", "--retry-connrefused"}, args...)...)
	cmd.Env = testEnv(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func decode(t *testing.T, body string) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("the server's answer %q: %v", body, err)
	}
	return s
}

// getFrom fetches url over a connection whose local address it returns,
// so that the test can tell the client's own address from the funnel's.
func getFrom(t *testing.T, url string, tlsConf *tls.Config) (seen, string) {
	t.Helper()
	var local string
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		},
		TLSClientConfig:   tlsConf,
		DisableKeepAlives: true,
	}
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return decode(t, string(body)), local
}

// selfSigned writes a certificate for 127.0.0.1 and localhost, and its key.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "funtun activate test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
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

// TestTLSTermination: systemd-socket-activate passes a socket to funtun
// activate, which terminates TLS on it and feeds a plain socket-activated
// Python server; curl and openssl s_client speak TLS to the real socket.
// SIGTERM reaches the server, funtun exits with its status, and no child
// is left.
func TestTLSTermination(t *testing.T) {
	py := python(t)
	openssl := testutil.NeedTool(t, "openssl")
	cert, key := selfSigned(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	a := activate(t, []string{addr}, "", nil, "activate", fmt.Sprintf("chain=tls cert=%s key=%s", cert, key), py, sdserver(t))

	got := decode(t, curl(t, "-k", "https://"+addr+"/curl"))
	if got.Path != "/curl" || got.FDs != 1 || len(got.Names) != 1 || got.Names[0] != "unknown" {
		t.Errorf("the server saw %+v; want path /curl, one socket named unknown (none was given)", got)
	}
	if got.Sock == addr {
		t.Errorf("the server got the real socket %s itself; with a tls piece it must get a socket of its own", got.Sock)
	}
	if !strings.HasPrefix(got.Sock, "127.0.0.1:") || !strings.HasPrefix(got.Peer, "127.0.0.1:") {
		t.Errorf("the program's side should be on loopback: sock %s, peer %s", got.Sock, got.Peer)
	}

	// openssl s_client: a handshake with the piece, then plain HTTP/1.0.
	cmd := exec.Command(openssl, "s_client", "-connect", addr, "-quiet", "-verify_quiet")
	cmd.Env = testEnv(t)
	cmd.Stdin = strings.NewReader("GET /openssl HTTP/1.0\r\nHost: x\r\n\r\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl s_client: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "HTTP/1.0 200") || !strings.Contains(string(out), `"path": "/openssl"`) {
		t.Fatalf("openssl s_client got:\n%s", out)
	}
	// Plain text on the TLS port is refused by the piece, not served.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /plain HTTP/1.0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	plain, _ := io.ReadAll(c)
	c.Close()
	if bytes.Contains(plain, []byte("/plain")) {
		t.Fatalf("plain HTTP reached the server past the tls piece: %q", plain)
	}

	if code := a.stop(t, syscall.SIGTERM); code != 128+int(syscall.SIGTERM) {
		t.Errorf("funtun exited %d; the server died of SIGTERM, so want %d", code, 128+int(syscall.SIGTERM))
	}
	if !gone(got.PID) {
		t.Errorf("the server (pid %d) is still there after funtun exited", got.PID)
	}
}

// TestPlainDirectHandsOver: with profile=direct the program gets the real
// socket, and sees the client's own address.
func TestPlainDirectHandsOver(t *testing.T) {
	py := python(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	a := activate(t, []string{addr}, "web", nil, "activate", "profile=direct", py, sdserver(t))
	curl(t, "http://"+addr+"/warm")
	got, local := getFrom(t, "http://"+addr+"/direct", nil)
	if got.Sock != addr || got.Peer != local || got.Names[0] != "web" {
		t.Fatalf("the server saw sock %s, peer %s, names %v; want the real socket %s, the client %s, name web", got.Sock, got.Peer, got.Names, addr, local)
	}
	if !strings.Contains(a.out.String(), "handing the socket to the program") {
		t.Errorf("no hand-over logged")
	}
	if code := a.stop(t, syscall.SIGTERM); code != 128+int(syscall.SIGTERM) {
		t.Errorf("funtun exited %d, want %d", code, 128+int(syscall.SIGTERM))
	}
}

// TestProxyProtocolHeader: --proxy-protocol 1 tells a relayed program its
// real clients, in the PROXY protocol's v1 line before each connection.
func TestProxyProtocolHeader(t *testing.T) {
	py := python(t)
	cert, key := selfSigned(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cmd := exec.Command(testutil.Funtun(t), "activate", "--listen", addr, "--proxy-protocol", "1",
		fmt.Sprintf("chain=tls cert=%s key=%s", cert, key), py, sdserver(t))
	cmd.Env = append(testEnv(t), "SDSERVER_PROXY=1")
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun:\n%s", out.String())
		}
	})
	testutil.WaitListen(t, addr)
	got, local := getFrom(t, "https://"+addr+"/pp", &tls.Config{InsecureSkipVerify: true})
	if got.Peer != local {
		t.Fatalf("the server saw the client as %s, want %s (from the PROXY header)", got.Peer, local)
	}
}

// TestProxyProtocolV2WithHAProxy: the program is HAProxy itself, on the
// socket in its LISTEN_FDS (bind fd@3) with accept-proxy: it reads the v2
// header and answers with the client and the real socket it names.
func TestProxyProtocolV2WithHAProxy(t *testing.T) {
	haproxy := testutil.NeedTool(t, "haproxy")
	cert, key := selfSigned(t)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, []byte(`defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind fd@3 accept-proxy
    http-request return status 200 content-type text/plain lf-string "client=%[src]:%[src_port] dst=%[dst]:%[dst_port]"
`), 0o644)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cmd := exec.Command(testutil.Funtun(t), "activate", "--listen", addr, "--proxy-protocol", "2",
		fmt.Sprintf("chain=tls cert=%s key=%s", cert, key), haproxy, "-db", "-f", cfg)
	cmd.Env = testEnv(t)
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun and haproxy:\n%s", out.String())
		}
	})
	testutil.WaitListen(t, addr)
	var local string
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, a)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		},
	}}
	resp, err := hc.Get("https://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "client=" + local + " dst=" + addr; strings.TrimSpace(string(body)) != want {
		t.Fatalf("haproxy answered %q, want %q", body, want)
	}
}

// TestProxyProtocolBehindBalancer: a load balancer in front of funtun
// sends its own PROXY header (read by the proxy-protocol piece, at the
// network end of the chain, before TLS); the program gets the balancer's
// client in funtun's header, not the balancer.
func TestProxyProtocolBehindBalancer(t *testing.T) {
	py := python(t)
	cert, key := selfSigned(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cmd := exec.Command(testutil.Funtun(t), "activate", "--listen", addr, "--proxy-protocol", "1",
		fmt.Sprintf("chain=tls cert=%s key=%s | proxy-protocol", cert, key), py, sdserver(t))
	cmd.Env = append(testEnv(t), "SDSERVER_PROXY=1")
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun:\n%s", out.String())
		}
	})
	testutil.WaitListen(t, addr)
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(raw, "PROXY TCP4 192.0.2.7 %s 4242 %d\r\n", "127.0.0.1", raw.RemoteAddr().(*net.TCPAddr).Port)
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	fmt.Fprintf(c, "GET /balanced HTTP/1.0\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if got := decode(t, string(body)); got.Peer != "192.0.2.7:4242" || got.Path != "/balanced" {
		t.Fatalf("the server saw %+v; want the balancer's client 192.0.2.7:4242", got)
	}
}

// TestTwoNamedSockets: two passed sockets keep their order and names, and
// each is fed to the program's socket of the same name.
func TestTwoNamedSockets(t *testing.T) {
	py := python(t)
	web := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	a := activate(t, []string{web, admin}, "web:admin", nil,
		"activate", "chain=rewrite from=admin to=ADMIN dir=up", py, sdserver(t))
	w := curl(t, "http://"+web+"/w")
	ad := curl(t, "http://"+admin+"/a")
	if !strings.Contains(w, `"name": "web", "names": ["web", "ADMIN"], "fds": 2`) {
		t.Errorf("on %s (web) the server answered %s", web, w)
	}
	if !strings.Contains(ad, `"name": "ADMIN"`) || !strings.Contains(ad, `"/a"`) {
		t.Errorf("on %s (admin) the server answered %s", admin, ad)
	}
	// SIGHUP reloads the profiles and reaches the server, which dies of
	// it (Python's default).
	if code := a.stop(t, syscall.SIGHUP); code != 128+int(syscall.SIGHUP) {
		t.Errorf("funtun exited %d after SIGHUP, want %d", code, 128+int(syscall.SIGHUP))
	}
	if !strings.Contains(a.out.String(), "profiles reloaded") {
		t.Errorf("SIGHUP did not reload the profiles")
	}
}

// TestUnixSocketRelayed: a Unix stream socket of funtun's own is fed to a
// Unix socket of the program's, through TLS; curl speaks TLS over the
// real one.
func TestUnixSocketRelayed(t *testing.T) {
	py := python(t)
	cert, key := selfSigned(t)
	path := filepath.Join(t.TempDir(), "web.sock")
	cmd := exec.Command(testutil.Funtun(t), "activate", "--listen", "unix:"+path, "--fdname", "web",
		fmt.Sprintf("chain=tls cert=%s key=%s", cert, key), py, sdserver(t))
	cmd.Env = testEnv(t)
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun:\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := decode(t, curl(t, "-k", "--unix-socket", path, "https://localhost/unix"))
	if got.Path != "/unix" || got.Names[0] != "web" || got.Sock == path || !strings.HasPrefix(got.Sock, "/") {
		t.Fatalf("the server saw %+v; want its own Unix socket named web", got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is left behind: %v", path, err)
	}
	if _, err := os.Stat(filepath.Dir(got.Sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the program's socket directory %s is left behind: %v", filepath.Dir(got.Sock), err)
	}
}

// TestDatagramHandedOver: a UDP socket of funtun's own, with a profile
// that leaves incoming flows alone, reaches the program unchanged.
func TestDatagramHandedOver(t *testing.T) {
	py := python(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp := pc.LocalAddr().String()
	pc.Close()
	cmd := exec.Command(testutil.Funtun(t), "activate", "--listen", "udp:"+udp, "--fdname", "dns", "profile=direct", py, sdserver(t))
	cmd.Env = testEnv(t)
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd.WaitDelay = 10 * time.Second
	t.Cleanup(func() {
		// Even SIGKILL, which funtun cannot pass on: the program must
		// not outlive it (its output pipe would keep Wait waiting).
		cmd.Process.Kill()
		if err := cmd.Wait(); errors.Is(err, exec.ErrWaitDelay) {
			t.Errorf("the program outlived funtun (killed) with its output open")
		}
		if t.Failed() {
			t.Logf("funtun:\n%s", out.String())
		}
	})
	c, err := net.Dial("udp", udp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 512)
	// Until funtun has bound the socket, datagrams are refused (ICMP).
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			if want := "dns " + c.LocalAddr().String() + " hello"; string(buf[:n]) != want {
				t.Fatalf("echo %q, want %q", buf[:n], want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no echo on %s: %v", udp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runInProcess runs `funtun activate args…` in this process, as the
// binary would, and returns its status and output.
func runInProcess(t *testing.T, args ...string) (int, string) {
	t.Helper()
	t.Setenv("FUNTUN_PROFILE_PATH", t.TempDir())
	var out bytes.Buffer
	var logs testutil.LogBuffer
	env := &cli.Env{Stdout: &out, Stderr: &logs, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	code := run(context.Background(), env, args)
	return code, out.String() + logs.String()
}

func openFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds = append(fds, e.Name()+" → "+target)
	}
	return fds
}

// TestBadStartsLeaveNothing: a program that is missing, a profile that is
// not there, a datagram socket with a tls profile, a program that exits at
// once or dies of a signal: each gives a clear message and status, and
// leaves no descriptor open and no child behind.
func TestBadStartsLeaveNothing(t *testing.T) {
	cert, key := selfSigned(t)
	tlsChain := fmt.Sprintf("chain=tls cert=%s key=%s", cert, key)
	// The runtime's poller opens its descriptors once, on first use.
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing program", []string{"--listen", "127.0.0.1:0", "profile=direct", "no-such-program-here"}, 127, "no-such-program-here: command not found"},
		{"wrong profile", []string{"--listen", "127.0.0.1:0", "profile=no-such-profile", "true"}, 1, `no profile named "no-such-profile"`},
		{"datagram with tls", []string{"--listen", "udp:127.0.0.1:0", tlsChain, "true"}, 1, "is a datagram socket, and profile chain acts on incoming streams (tls)"},
		{"no sockets", []string{tlsChain, "true"}, 1, "no sockets"},
		{"bad listen", []string{"--listen", "127.0.0.1:notaport", tlsChain, "true"}, 1, "--listen 127.0.0.1:notaport: cannot listen"},
		{"no program", []string{"--listen", "127.0.0.1:0", tlsChain}, 2, "name a program"},
		{"bad proxy version", []string{"--listen", "127.0.0.1:0", "--proxy-protocol", "3", tlsChain, "true"}, 2, `--proxy-protocol "3": want 1 (text) or 2 (binary)`},
		{"proxy header without relay", []string{"--listen", "127.0.0.1:0", "--proxy-protocol", "2", "profile=direct", "true"}, 1, "no header to send"},
		{"exits at once", []string{"--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", tlsChain, "sh", "-c", `[ "$LISTEN_PID" = $$ ] && [ "$LISTEN_FDS" = 2 ] && exit 7`}, 7, ""},
		{"exits at once, handed over", []string{"--listen", "127.0.0.1:0", "profile=direct", "sh", "-c", `[ "$LISTEN_PID" = $$ ] && exit 5`}, 5, ""},
		{"killed by a signal", []string{"--listen", "127.0.0.1:0", tlsChain, "sh", "-c", "kill -USR1 $$"}, 128 + int(syscall.SIGUSR1), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := openFDs(t)
			code, out := runInProcess(t, c.args...)
			if code != c.code || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want %d with %q; output:\n%s", code, c.code, c.want, out)
			}
			// Descriptors close as the command returns; the runtime's
			// own (netpoll) may stay, the same before and after.
			if after := openFDs(t); len(after) > len(before) {
				t.Fatalf("descriptors left open:\nbefore %v\nafter  %v", before, after)
			}
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); err != syscall.ECHILD {
				t.Fatalf("a child is left behind: wait4 = %d, %v", pid, err)
			}
		})
	}
}

// TestArgs: funtun's own words come first; everything from the program on
// is the program's, its options included.
func TestArgs(t *testing.T) {
	env := &cli.Env{Stdout: io.Discard, Stderr: io.Discard}
	aa, _, err := parse(env, []string{"--listen", "127.0.0.1:1", "--fdname=web", "--listen=fd:x", "profile=direct", "srv", "--listen", "-v", "profile=other"})
	if err != nil {
		t.Fatal(err)
	}
	if aa.program != "srv" || strings.Join(aa.args, " ") != "--listen -v profile=other" || aa.sel.Profile != "direct" ||
		len(aa.listens) != 2 || aa.listens[0] != (listenSpec{"127.0.0.1:1", "web"}) || aa.listens[1] != (listenSpec{"fd:x", ""}) {
		t.Fatalf("parsed %+v", aa)
	}
	aa, _, err = parse(env, []string{"chain=tls", "--", "--odd-name"})
	if err != nil || aa.program != "--odd-name" || aa.sel.Chain != "tls" {
		t.Fatalf("with --: %+v, %v", aa, err)
	}
	for _, bad := range [][]string{
		{"--fdname", "x", "--listen", "127.0.0.1:1", "p"},
		{"--listen", "127.0.0.1:1", "--fdname", "a:b", "p"},
		{"--listen", "127.0.0.1:1", "--fdname", "a", "--fdname", "b", "p"},
		{"--listen", "127.0.0.1:1"},
		{"--"},
	} {
		if _, _, err := parse(env, bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	var help bytes.Buffer
	if _, done, _ := parse(&cli.Env{Stdout: &help, Stderr: io.Discard}, []string{"--help"}); !done || !strings.Contains(help.String(), "LISTEN_PID") {
		t.Errorf("--help: done=%v\n%s", done, help.String())
	}
}

// The step itself: LISTEN_PID becomes the program's own pid, whatever
// the environment had, and the rest passes unchanged.
func TestStepSetsListenPID(t *testing.T) {
	exe, args := StepArgs("/bin/sh", []string{"sh", "-c", `echo "$LISTEN_PID $$ $LISTEN_FDS $0"`, "zero"})
	// args has its own argv[0]: not exec.Command, which adds one.
	cmd := &exec.Cmd{Path: exe, Args: args}
	cmd.Env = append(os.Environ(), "LISTEN_PID=1", "LISTEN_FDS=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 || f[0] != f[1] || f[0] == "1" || f[2] != "0" || f[3] != "zero" {
		t.Fatalf("the program saw %q: want LISTEN_PID equal to its own pid", out)
	}
	// A missing program is the step's error, with the shell's status.
	exe, args = StepArgs("/no/such/program", []string{"x"})
	cmd = &exec.Cmd{Path: exe, Args: args}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 127 || !strings.Contains(stderr.String(), "cannot start /no/such/program") {
		t.Fatalf("missing program: %v, %q", err, stderr.String())
	}
}

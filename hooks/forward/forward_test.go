package forward_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// startForward runs `funtun forward` and waits until it listens.
func startForward(t *testing.T, env []string, args ...string) (addr string, logs *testutil.LogBuffer, cmd *exec.Cmd) {
	t.Helper()
	port := testutil.FreePort(t)
	addr = "127.0.0.1:" + strconv.Itoa(port)
	cmd = exec.Command(testutil.Funtun(t), append([]string{"forward", "--listen", addr}, args...)...)
	cmd.Env = env
	logs = &testutil.LogBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun log:\n%s", logs.String())
		}
	})
	if !strings.Contains(strings.Join(args, " "), "--udp") {
		testutil.WaitListen(t, addr)
	} else {
		time.Sleep(300 * time.Millisecond)
	}
	return addr, logs, cmd
}

func TestForwardCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hello through funtun\n"), 0o644)
	srvPort := testutil.FreePort(t)
	testutil.StartDaemon(t, "python3", "-m", "http.server", strconv.Itoa(srvPort), "--bind", "127.0.0.1", "--directory", dir)
	testutil.WaitListen(t, "127.0.0.1:"+strconv.Itoa(srvPort))
	_, env := testutil.ProfileDir(t)
	addr, _, _ := startForward(t, env, "--to", "127.0.0.1:"+strconv.Itoa(srvPort))
	out, err := exec.Command(curl, "-sS", "--max-time", "10", "http://"+addr+"/index.html").CombinedOutput()
	if err != nil || string(out) != "hello through funtun\n" {
		t.Fatalf("curl: %v: %q", err, out)
	}
}

func TestForwardBulkSocat(t *testing.T) {
	socat := testutil.NeedTool(t, "socat")
	echo := testutil.EchoServer(t)
	_, env := testutil.ProfileDir(t)
	addr, logs, _ := startForward(t, env, "--to", echo.String())
	// socat as the real client: 4 MiB up and back through funtun.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 256<<10/16*16)
	cmd := exec.Command(socat, "-t", "5", "-T", "20", "-", "TCP:"+addr)
	cmd.Stdin = bytes.NewReader(payload)
	out, err := cmd.Output()
	if err != nil || !bytes.Equal(out, payload) {
		t.Fatalf("socat got %d bytes back (err %v), want %d", len(out), err, len(payload))
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "msg=flow ") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if want := "up=" + strconv.Itoa(len(payload)); !strings.Contains(logs.String(), want) {
		t.Errorf("flow log lacks %s:\n%s", want, logs.String())
	}
}

func TestForwardUDP(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	_, env := testutil.ProfileDir(t)
	port := testutil.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(testutil.Funtun(t), "forward", "--udp", "--listen", addr, "--to", echo.String())
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for i := 0; i < 50; i++ { // until the forwarder is up, bounded
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == "ping" {
			return
		}
		time.Sleep(100 * time.Millisecond) // not listening yet: the kernel refused at once
	}
	t.Fatal("no UDP echo through funtun forward --udp")
}

func runFuntun(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Funtun(t), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestForwardBadInput(t *testing.T) {
	dir, env := testutil.ProfileDir(t)
	os.WriteFile(filepath.Join(dir, "broken.profile"), []byte("# broken on purpose\ndirect nosuch=1\n"), 0o644)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"forward", "--to", "127.0.0.1:1"}, 2, "needs --listen ADDR and --to HOST:PORT"},
		{[]string{"forward", "--listen", "127.0.0.1:0", "--to", "nowhere"}, 2, "missing port"},
		{[]string{"forward", "--listen", busy.Addr().String(), "--to", "127.0.0.1:1"}, 1, "address already in use"},
		{[]string{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:1", "chain=direct bogus=1"}, 1, `chain:1:8: piece "direct" has no parameter "bogus"`},
		{[]string{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:1", "chain=nopiece"}, 1, `unknown piece "nopiece"`},
		{[]string{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:1", "profile=broken"}, 1, `broken.profile:2:8: piece "direct" has no parameter "nosuch"`},
		{[]string{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:1", "--udp", "chain=direct timeout=x"}, 1, `chain:1:16: piece "direct": timeout: "x" is not a duration`},
		{[]string{"forward", "--bogus"}, 2, "flag provided but not defined: -bogus"},
	}
	for _, c := range cases {
		out, code := runFuntun(t, env, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("funtun %s: exit %d, output:\n%s\nwant exit %d and %q", strings.Join(c.args, " "), code, out, c.code, c.want)
		}
	}
	os.Remove(filepath.Join(dir, "broken.profile"))
	out, code := runFuntun(t, env, "forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:1", "profile=missing")
	if code != 1 || !strings.Contains(out, `no profile named "missing"`) {
		t.Errorf("missing profile: exit %d: %s", code, out)
	}
}

// A refused upstream ends that flow with a logged reason; the forwarder keeps
// serving the next one.
func TestForwardDeadUpstreamKeepsServing(t *testing.T) {
	dead := testutil.FreePort(t)
	_, env := testutil.ProfileDir(t)
	addr, logs, _ := startForward(t, env, "--to", "127.0.0.1:"+strconv.Itoa(dead))
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d refused by the forwarder itself: %v", i, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("connection %d was not closed cleanly: %v", i, err)
		}
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(logs.String(), `kind="connection refused"`) < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// startForward's readiness probe is a refused flow too: at least 3.
	if n := strings.Count(logs.String(), `kind="connection refused"`); n < 3 {
		t.Errorf("%d refused flows logged, want 3 or more:\n%s", n, logs.String())
	}
}

// SIGHUP with a broken profile keeps the old one; a fixed one takes over.
func TestForwardReload(t *testing.T) {
	echo := testutil.EchoServer(t)
	dir, env := testutil.ProfileDir(t)
	prof := filepath.Join(dir, "p.profile")
	os.WriteFile(prof, []byte("direct timeout=5s\n"), 0o644)
	addr, logs, cmd := startForward(t, env, "--to", echo.String(), "profile=p")
	roundTrip := func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping\n"))
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(prof, []byte("direct timeout=never\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "reload failed") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "p.profile:1:16") {
		t.Fatalf("broken reload not reported with its position:\n%s", logs.String())
	}
	if err := roundTrip(); err != nil {
		t.Fatalf("after a failed reload the old profile should still serve: %v", err)
	}
	os.WriteFile(prof, []byte("direct timeout=2s\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "profiles reloaded") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "profiles reloaded") {
		t.Fatalf("good reload not logged:\n%s", logs.String())
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
}

// TLS terminated in front of a plain server: curl speaks HTTPS to funtun,
// the python server knows nothing of TLS.
func TestForwardInboundTLS(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	openssl := testutil.NeedTool(t, "openssl")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
		"-keyout", key, "-out", cert).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("plain server, TLS outside\n"), 0o644)
	srvPort := testutil.FreePort(t)
	testutil.StartDaemon(t, "python3", "-m", "http.server", strconv.Itoa(srvPort), "--bind", "127.0.0.1", "--directory", dir)
	testutil.WaitListen(t, "127.0.0.1:"+strconv.Itoa(srvPort))
	_, env := testutil.ProfileDir(t)
	addr, _, _ := startForward(t, env, "--inbound", "--to", "127.0.0.1:"+strconv.Itoa(srvPort), "chain=tls cert="+cert+" key="+key)
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	got, err := exec.Command(curl, "-sS", "--max-time", "10", "--cacert", cert,
		"--resolve", "localhost:"+port+":127.0.0.1", "https://localhost:"+port+"/index.html").CombinedOutput()
	if err != nil || string(got) != "plain server, TLS outside\n" {
		t.Fatalf("curl over TLS: %v: %q", err, got)
	}
	// Without the CA, curl must refuse: the TLS is real.
	if out, err := exec.Command(curl, "-sS", "--max-time", "10", "--resolve", "localhost:"+port+":127.0.0.1", "https://localhost:"+port+"/").CombinedOutput(); err == nil {
		t.Fatalf("curl trusted an unknown certificate: %s", out)
	}
}

// The outgoing direction: a plaintext client, TLS toward the server.
func TestForwardTLSClientToOpenSSL(t *testing.T) {
	openssl := testutil.NeedTool(t, "openssl")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if out, err := exec.Command(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
		"-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	srvPort := testutil.FreePort(t)
	testutil.StartDaemon(t, openssl, "s_server", "-accept", "127.0.0.1:"+strconv.Itoa(srvPort), "-cert", cert, "-key", key, "-rev", "-quiet")
	testutil.WaitListen(t, "127.0.0.1:"+strconv.Itoa(srvPort))
	_, env := testutil.ProfileDir(t)
	addr, _, _ := startForward(t, env, "--to", "127.0.0.1:"+strconv.Itoa(srvPort), "chain=tls sni=localhost ca="+cert)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("funnel\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "lennuf\n" {
		t.Fatalf("s_server -rev answered %q, %v", line, err)
	}
}

//go:build linux

package inetd

import (
	"bufio"
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
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The tests run the funtun binary: a separate process is what users run,
// and its descriptors, children and signals can be counted and sent.

// runAs is the user inetd lines name: nobody when the tests run as root
// (so the switch is exercised), else the user running them.
func runAs(t *testing.T) string {
	if os.Geteuid() == 0 {
		return "nobody"
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// sharedDir is a directory every user may read and search, for scripts
// that a child running as nobody executes (t.TempDir is 0700).
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "funtun-inetd-test")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
	return path
}

type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *testutil.LogBuffer
	conf string
}

// startInetd runs `funtun inetd --config CONF ARGS…` until the test ends
// and waits for each of the listen addresses in ready to be served.
func startInetd(t *testing.T, conf string, ready []string, args ...string) *daemon {
	t.Helper()
	bin := testutil.Funtun(t)
	_, env := testutil.ProfileDir(t)
	cmd := exec.Command(bin, append([]string{"inetd", "--config", conf}, args...)...)
	cmd.Env = env
	d := &daemon{t: t, cmd: cmd, log: &testutil.LogBuffer{}, conf: conf}
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("funtun inetd exited with status %d after SIGTERM", code)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("funtun inetd did not stop within 20s of SIGTERM")
		}
		if strings.Contains(d.log.String(), "DATA RACE") {
			t.Errorf("the race detector found a data race (FUNTUN_BIN built with -race)")
		}
		if t.Failed() {
			t.Logf("funtun inetd log:\n%s", d.log.String())
		}
	})
	for _, addr := range ready {
		d.waitLog("listen=" + addr)
	}
	return d
}

// waitLog waits until the log has a line containing each of frags.
func (d *daemon) waitLog(frags ...string) string {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(d.log.String(), "\n") {
			all := true
			for _, f := range frags {
				all = all && strings.Contains(line, f)
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no log line with %q after 30s; log:\n%s", frags, d.log.String())
		}
		if d.cmd.ProcessState != nil {
			d.t.Fatalf("funtun exited; log:\n%s", d.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// children lists the pids of the daemon's child processes (zombies too:
// a zombie is a child until reaped).
func (d *daemon) children() []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", d.cmd.Process.Pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(w)
			out = append(out, n)
		}
	}
	return out
}

func (d *daemon) waitChildren(n int) {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(d.children()) != n {
		if time.Now().After(deadline) {
			d.t.Fatalf("funtun has children %v, want %d of them", d.children(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) fds() int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		d.t.Fatal(err)
	}
	return len(ents)
}

func freePorts(t *testing.T, n int) []int {
	var out []int
	for len(out) < n {
		p := testutil.FreePort(t)
		dup := false
		for _, q := range out {
			dup = dup || q == p
		}
		if !dup {
			out = append(out, p)
		}
	}
	return out
}

// runTool runs a real client with stdin and a time limit, returning stdout.
func runTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Logf("%s %v: %v; stderr: %s", name, args, err, errb.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish in 30s; stdout so far: %q", name, args, out.String())
	}
	return out.String()
}

const ucspiScript = `#!/bin/sh
# An HTTP responder: reads the request head, answers with its UCSPI
# variables and who it runs as.
while read -r line; do
	[ "$line" = "$(printf '\r')" ] && break
	[ -z "$line" ] && break
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n'
echo "PROTO=$PROTO TCPLOCALIP=$TCPLOCALIP TCPLOCALPORT=$TCPLOCALPORT TCPREMOTEIP=$TCPREMOTEIP TCPREMOTEPORT=$TCPREMOTEPORT"
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "ucspi script says hello to the log" >&2
`

func TestServesCatDateAndUCSPIScript(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	curl := testutil.NeedTool(t, "curl")
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "ucspi.sh"), ucspiScript, 0o755)
	p := freePorts(t, 4)
	who := runAs(t)
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf(`# cat, date and a script
127.0.0.1:%d stream tcp nowait %s /bin/cat cat
127.0.0.1:%d stream tcp nowait %s.nogroup /bin/date date -u +%%Y-%%m-%%dT%%H:%%M
127.0.0.1:%d stream tcp nowait %s %s ucspi
[::1]:%d stream tcp6 nowait %s %s ucspi
`, p[0], who, p[1], who, p[2], who, script, p[3], who, script), 0o644)
	if os.Geteuid() != 0 {
		// Without root the group cannot be switched: drop the .nogroup.
		writeFile(t, conf, strings.Replace(mustRead(t, conf), who+".nogroup", who, 1), 0o644)
	}
	ipv6 := true
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		ipv6 = false
		writeFile(t, conf, strings.Join(strings.Split(mustRead(t, conf), "\n")[:4], "\n")+"\n", 0o644)
	} else {
		l.Close()
	}
	ready := []string{fmt.Sprintf("127.0.0.1:%d", p[0]), fmt.Sprintf("127.0.0.1:%d", p[1]), fmt.Sprintf("127.0.0.1:%d", p[2])}
	d := startInetd(t, conf, ready)

	if got := runTool(t, "hello through cat\n", ncat, "127.0.0.1", strconv.Itoa(p[0])); got != "hello through cat\n" {
		t.Errorf("cat via ncat: got %q", got)
	}
	date := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(p[1]))
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d\n$`).MatchString(date) {
		t.Errorf("date via ncat: got %q", date)
	}
	body := runTool(t, "", curl, "-sS", "--max-time", "20", "--local-port", "40000-40999", fmt.Sprintf("http://127.0.0.1:%d/", p[2]))
	m := regexp.MustCompile(`PROTO=TCP TCPLOCALIP=127\.0\.0\.1 TCPLOCALPORT=(\d+) TCPREMOTEIP=127\.0\.0\.1 TCPREMOTEPORT=(\d+)\n`).FindStringSubmatch(body)
	if m == nil || m[1] != strconv.Itoa(p[2]) {
		t.Fatalf("curl got %q", body)
	}
	if rp, _ := strconv.Atoi(m[2]); rp < 40000 || rp > 40999 {
		t.Errorf("TCPREMOTEPORT=%s is not curl's --local-port", m[2])
	}
	if os.Geteuid() == 0 {
		if !strings.Contains(body, "uid=65534 gid=65534 groups=65534\n") {
			t.Errorf("the script did not run as nobody with nogroup alone: %q", body)
		}
	}
	d.waitLog("program stderr", "ucspi script says hello to the log", "pid=", fmt.Sprintf("service=127.0.0.1:%d", p[2]))
	d.waitLog("flow handed off", "hook=inetd", fmt.Sprintf("dst=127.0.0.1:%d", p[0]))
	if ipv6 {
		d.waitLog(fmt.Sprintf("listen=[::1]:%d", p[3]))
		got := runTool(t, "GET / HTTP/1.0\r\n\r\n", ncat, "::1", strconv.Itoa(p[3]))
		if !strings.Contains(got, fmt.Sprintf("TCPLOCALIP=::1 TCPLOCALPORT=%d TCPREMOTEIP=::1 ", p[3])) {
			t.Errorf("IPv6 UCSPI variables: %q", got)
		}
	}
	d.waitChildren(0)
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// selfSigned writes a certificate for 127.0.0.1 and localhost and its key.
func selfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert = writeFile(t, filepath.Join(dir, "cert.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), 0o644)
	key = writeFile(t, filepath.Join(dir, "key.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})), 0o600)
	return cert, key
}

func TestTLSTerminatingLine(t *testing.T) {
	openssl := testutil.NeedTool(t, "openssl")
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "ucspi.sh"), ucspiScript, 0o755)
	cert, key := selfSigned(t, dir)
	p := freePorts(t, 3)
	who := runAs(t)
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf(`127.0.0.1:%d stream tcp nowait %s chain='tls cert=%s key=%s' %s ucspi
127.0.0.1:%d stream tcp nowait %s chain="tls cert=%s key=%s" /bin/cat cat
127.0.0.1:%d stream tcp nowait %s chain='rewrite from=hello to=HOWDY' /bin/cat cat
`, p[0], who, cert, key, script, p[1], who, cert, key, p[2], who), 0o644)
	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[0]), fmt.Sprintf("127.0.0.1:%d", p[1]), fmt.Sprintf("127.0.0.1:%d", p[2])})

	// openssl s_client: the script's answer arrives decrypted, and the
	// program saw the TCP client's addresses.
	out := runTool(t, "GET / HTTP/1.0\r\n\r\n", openssl, "s_client", "-quiet", "-CAfile", cert,
		"-verify_return_error", "-connect", fmt.Sprintf("127.0.0.1:%d", p[0]), "-servername", "localhost")
	if !strings.Contains(out, fmt.Sprintf("PROTO=TCP TCPLOCALIP=127.0.0.1 TCPLOCALPORT=%d TCPREMOTEIP=127.0.0.1 ", p[0])) || !strings.HasPrefix(out, "HTTP/1.0 200 OK") {
		t.Errorf("through TLS: %q", out)
	}
	d.waitLog("msg=flow", "hook=inetd", "inbound=true", fmt.Sprintf("dst=127.0.0.1:%d", p[0]))

	// cat behind TLS: the client's close_notify reaches cat as the end
	// of its input (the socketpair's half-close), and cat's exit ends
	// the TLS connection.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(mustRead(t, cert)))
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p[1]), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "echo over tls\n")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "echo over tls\n" {
		t.Errorf("cat over TLS: %q, %v", got, err)
	}

	// A piece that changes bytes on the way in: rewrite.
	rc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p[2]))
	if err != nil {
		t.Fatal(err)
	}
	rc.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(rc, "hello world\n")
	rc.(*net.TCPConn).CloseWrite()
	got, _ = io.ReadAll(rc)
	rc.Close()
	if string(got) != "HOWDY world\n" {
		t.Errorf("through rewrite: %q", got)
	}
	d.waitChildren(0)
}

const udpScript = `#!/usr/bin/env python3
# A datagram wait service: the bound socket is stdin; answer each datagram
# until none has come for 2 seconds.
import os, socket
s = socket.socket(fileno=0)
s.settimeout(2)
while True:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(b"pid %d got %s" % (os.getpid(), data), addr)
`

// udpAsk sends msg with `ncat -u` and returns the first line that comes back.
func udpAsk(t *testing.T, ncat string, port int, msg string) string {
	t.Helper()
	cmd := exec.Command(ncat, "-u", "127.0.0.1", strconv.Itoa(port))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	// ncat -u ends when its stdin does: keep it open until the answer.
	io.WriteString(stdin, msg+"\n")
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		return s
	case <-time.After(30 * time.Second):
		t.Fatalf("no answer to %q from the UDP wait service in 30s", msg)
	}
	return ""
}

func TestUDPWaitService(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	testutil.NeedTool(t, "python3")
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "udp.py"), udpScript, 0o755)
	l, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.LocalAddr().(*net.UDPAddr).Port
	l.Close()
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf("127.0.0.1:%d dgram udp wait %s %s udp\n", port, runAs(t), script), 0o644)
	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", port)})

	first := udpAsk(t, ncat, port, "ping")
	m := regexp.MustCompile(`^pid (\d+) got ping\n$`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("first answer %q", first)
	}
	// The same child reads the next datagram: funtun does not look at
	// the socket while it runs.
	if again := udpAsk(t, ncat, port, "pong"); again != "pid "+m[1]+" got pong\n" {
		t.Errorf("second answer %q, want it from pid %s", again, m[1])
	}
	// Once it has exited, funtun watches the socket again and starts a
	// new one for the next datagram.
	d.waitLog("flow handed off", "net=udp", "pid="+m[1])
	d.waitChildren(0)
	third := udpAsk(t, ncat, port, "again")
	if !strings.HasSuffix(third, " got again\n") || strings.HasPrefix(third, "pid "+m[1]+" ") {
		t.Errorf("after the first child exited: %q", third)
	}
}

// holdScript answers one line, then exits: a program that holds its
// connection until the client speaks.
const holdScript = `#!/bin/sh
read -r x
echo "got $x"
`

// expectRefused: funtun closes the connection at once without a byte.
func expectRefused(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 64)
	n, err := c.Read(b)
	c.Close()
	if n != 0 || err == nil {
		t.Fatalf("%s: got %q, %v; want the connection closed at once", what, b[:n], err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: the connection was neither served nor closed", what)
	}
}

func expectServed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "x\n")
	got, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if got != "got x\n" {
		t.Fatalf("%s: got %q, %v", what, got, err)
	}
}

func dialFrom(t *testing.T, src string, port int) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLimits(t *testing.T) {
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "hold.sh"), holdScript, 0o755)
	who := runAs(t)
	p := freePorts(t, 3)

	t.Run("max-children", func(t *testing.T) {
		conf := writeFile(t, filepath.Join(dir, "children.conf"), fmt.Sprintf("127.0.0.1:%d stream tcp nowait %s %s hold\n", p[0], who, script), 0o644)
		d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[0])}, "--max-children", "1")
		held := dialFrom(t, "127.0.0.1", p[0])
		d.waitChildren(1)
		expectRefused(t, dialFrom(t, "127.0.0.1", p[0]), "a second child")
		d.waitLog("refused by a limit", "limit=max-children", "max_children=1")
		expectServed(t, held, "the first connection")
		// Its flow's line is written once its slot is free again.
		d.waitLog("flow handed off", fmt.Sprintf("dst=127.0.0.1:%d", p[0]))
		expectServed(t, dialFrom(t, "127.0.0.1", p[0]), "once the first child exited")
	})

	t.Run("max-per-source", func(t *testing.T) {
		conf := writeFile(t, filepath.Join(dir, "source.conf"), fmt.Sprintf("127.0.0.1:%d stream tcp nowait %s %s hold\n", p[1], who, script), 0o644)
		d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[1])}, "--max-per-source", "1")
		held := dialFrom(t, "127.0.0.1", p[1])
		d.waitChildren(1)
		expectRefused(t, dialFrom(t, "127.0.0.1", p[1]), "a second child for 127.0.0.1")
		d.waitLog("refused by a limit", "limit=max-per-source", "src=127.0.0.1")
		expectServed(t, dialFrom(t, "127.0.0.2", p[1]), "another source, 127.0.0.2")
		expectServed(t, held, "the first connection")
	})

	t.Run("rate", func(t *testing.T) {
		conf := writeFile(t, filepath.Join(dir, "rate.conf"), fmt.Sprintf("127.0.0.1:%d stream tcp nowait.2 %s %s hold\n", p[2], who, script), 0o644)
		d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[2])})
		expectServed(t, dialFrom(t, "127.0.0.1", p[2]), "first of 2 a minute")
		expectServed(t, dialFrom(t, "127.0.0.1", p[2]), "second of 2 a minute")
		expectRefused(t, dialFrom(t, "127.0.0.1", p[2]), "a third within the minute")
		d.waitLog("refused by a limit", "limit=rate", "per_minute=2")
	})
}

func TestMalformedConfig(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	dir := sharedDir(t)
	p := freePorts(t, 2)
	who := runAs(t)
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf(`127.0.0.1:%d stream tcp nowait %s /bin/cat cat
127.0.0.1:%d stream tcp nowait no-such-user-here /bin/cat cat
127.0.0.1:%d stream tcp nowait %s /no/such/program prog
127.0.0.1:%d stream tcp nowait %s /bin/date date
this is garbage
no-such-service-here stream tcp nowait %s /bin/cat cat
127.0.0.1:%d stream tcp nowait %s internal
`, p[0], who, p[1], p[1], who, p[0], who, who, p[1], who), 0o644)
	wantErrs := []string{
		`inetd.conf:2: unknown user \"no-such-user-here\"`,
		"inetd.conf:3: server program /no/such/program does not exist",
		fmt.Sprintf("inetd.conf:4: tcp stream port %d is already served by line 1", p[0]),
		"inetd.conf:5: 3 fields, need at least 6",
		`inetd.conf:6: unknown service name \"no-such-service-here\"`,
		"inetd.conf:7: internal services are not supported",
	}

	// --check binds nothing: it passes while another socket holds the
	// good line's port, and reports every bad line on stderr.
	hold, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p[0]))
	if err != nil {
		t.Fatal(err)
	}
	_, env := testutil.ProfileDir(t)
	check := exec.Command(testutil.Funtun(t), "inetd", "--check", "--config", conf)
	check.Env = env
	var stdout, stderr strings.Builder
	check.Stdout, check.Stderr = &stdout, &stderr
	err = check.Run()
	hold.Close()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("--check of a file with bad lines: %v, want exit status 1", err)
	}
	if !strings.Contains(stdout.String(), "inetd.conf:1: ok:") {
		t.Errorf("--check stdout: %q", stdout.String())
	}
	for _, w := range wantErrs {
		if !strings.Contains(stderr.String(), strings.ReplaceAll(w, `\"`, `"`)) {
			t.Errorf("--check stderr lacks %q:\n%s", w, stderr.String())
		}
	}

	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[0])})
	for _, w := range wantErrs {
		d.waitLog("inetd line skipped", w)
	}
	if got := runTool(t, "the good line serves\n", ncat, "127.0.0.1", strconv.Itoa(p[0])); got != "the good line serves\n" {
		t.Errorf("good line: %q", got)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p[1])); err == nil {
		c.Close()
		t.Errorf("port %d of bad lines is listening", p[1])
	}
}

// listenInode is the inode of the listening TCP socket on 127.0.0.1:port,
// from /proc/net/tcp: the same inode means the same socket.
func listenInode(t *testing.T, port int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[3] == "0A" {
			return f[9]
		}
	}
	return ""
}

func TestReloadOnHUP(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "hold.sh"), holdScript, 0o755)
	p := freePorts(t, 3)
	who := runAs(t)
	conf := filepath.Join(dir, "inetd.conf")
	writeFile(t, conf, fmt.Sprintf("127.0.0.1:%d stream tcp nowait %s %s hold\n127.0.0.1:%d stream tcp nowait %s /bin/cat cat\n", p[0], who, script, p[1], who), 0o644)
	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", p[0]), fmt.Sprintf("127.0.0.1:%d", p[1])})
	inode := listenInode(t, p[0])
	if inode == "" {
		t.Fatalf("no listener on %d in /proc/net/tcp", p[0])
	}
	held := dialFrom(t, "127.0.0.1", p[0])
	d.waitChildren(1)

	// Line 1 stays (its program changes to cat), line 2 goes, a new line
	// comes.
	writeFile(t, conf, fmt.Sprintf("127.0.0.1:%d stream tcp nowait %s /bin/cat cat\n127.0.0.1:%d stream tcp nowait %s /bin/date date\n", p[0], who, p[2], who), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog("inetd config reloaded", "serving=2")
	d.waitLog("listen=127.0.0.1:" + strconv.Itoa(p[2]))
	if got := listenInode(t, p[0]); got != inode {
		t.Errorf("the kept line's listener changed (inode %s, was %s): it was closed and opened again", got, inode)
	}
	expectServed(t, held, "a connection from before the reload")
	if got := runTool(t, "now cat\n", ncat, "127.0.0.1", strconv.Itoa(p[0])); got != "now cat\n" {
		t.Errorf("the kept line after the reload: %q", got)
	}
	if got := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(p[2])); !strings.Contains(got, "20") {
		t.Errorf("the new line: %q", got)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p[1])); err == nil {
		c.Close()
		t.Errorf("the removed line still listens")
	}

	// A broken file keeps everything as it is and says where.
	writeFile(t, conf, fmt.Sprintf("127.0.0.1:%d stream tcp nowait %s /bin/cat cat\nbroken line here\n", p[0], who), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog("reload failed", "inetd.conf:2: 3 fields")
	if got := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(p[2])); !strings.Contains(got, "20") {
		t.Errorf("after a refused reload the line it would drop should still serve: %q", got)
	}
	d.waitChildren(0)
}

const neverReads = "#!/bin/sh\nsleep 1\n"

// TestChildrenEndCleanly: programs that never read, that exit at once and
// that flood their output, on the direct path (the socket itself) and
// through a piece (the socketpair relay): every connection ends, and
// funtun is left with the descriptors it had and no child, zombie or not.
func TestChildrenEndCleanly(t *testing.T) {
	yes := testutil.NeedTool(t, "yes")
	dir := sharedDir(t)
	sleeper := writeFile(t, filepath.Join(dir, "never-reads.sh"), neverReads, 0o755)
	who := runAs(t)
	p := freePorts(t, 6)
	piece := "chain='rewrite from=zzz to=yyy'"
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf(`127.0.0.1:%d stream tcp nowait %s %s never
127.0.0.1:%d stream tcp nowait %s /bin/true true
127.0.0.1:%d stream tcp nowait %s %s yes
127.0.0.1:%d stream tcp nowait %s %s %s never
127.0.0.1:%d stream tcp nowait %s %s /bin/true true
127.0.0.1:%d stream tcp nowait %s %s %s yes
`, p[0], who, sleeper, p[1], who, p[2], who, yes, p[3], who, piece, sleeper, p[4], who, piece, p[5], who, piece, yes), 0o644)
	var ready []string
	for _, port := range p {
		ready = append(ready, fmt.Sprintf("127.0.0.1:%d", port))
	}
	d := startInetd(t, conf, ready)
	fdsBefore := d.fds()

	const rounds = 5
	for r := 0; r < rounds; r++ {
		for i, port := range p {
			c := dialFrom(t, "127.0.0.1", port)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			switch i % 3 {
			case 0: // never reads: send more than buffers hold, then go
				c.(*net.TCPConn).SetWriteBuffer(4096)
				c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
				c.Write(make([]byte, 4<<20))
				c.Close()
			case 1: // exits at once: the client sees the end
				if _, err := io.ReadAll(c); err != nil {
					t.Errorf("port %d: %v", port, err)
				}
				c.Close()
			case 2: // floods: read a little and hang up
				if _, err := io.ReadFull(c, make([]byte, 256<<10)); err != nil {
					t.Errorf("port %d (yes): %v", port, err)
				}
				c.Close()
			}
		}
	}
	d.waitChildren(0)
	deadline := time.Now().Add(30 * time.Second)
	for d.fds() != fdsBefore && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := d.fds(); got != fdsBefore {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
		var links []string
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", d.cmd.Process.Pid, e.Name()))
			links = append(links, e.Name()+"->"+l)
		}
		t.Errorf("funtun has %d descriptors, had %d before: %v", got, fdsBefore, links)
	}
	// Every program's flow ended and was logged.
	for _, port := range p[3:] {
		d.waitLog("hook=inetd", fmt.Sprintf("dst=127.0.0.1:%d", port), "inbound=true")
	}
}

// TestSocketActivation: systemd-socket-activate passes a socket named as
// the line's service; funtun serves the line on it and binds nothing for
// it, while a line without a passed socket listens itself.
func TestSocketActivation(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	dir := sharedDir(t)
	p := freePorts(t, 2)
	who := runAs(t)
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf("echo stream tcp nowait %s /bin/cat cat\n127.0.0.1:%d stream tcp nowait %s /bin/date date\n", who, p[1], who), 0o644)
	_, env := testutil.ProfileDir(t)
	cmd := exec.Command(ssa, "-l", fmt.Sprintf("127.0.0.1:%d", p[0]), "--fdname=echo", testutil.Funtun(t), "inetd", "--config", conf)
	cmd.Env = env
	d := &daemon{t: t, cmd: cmd, log: &testutil.LogBuffer{}, conf: conf}
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("log:\n%s", d.log.String())
		}
	})
	d.waitLog("Listening on 127.0.0.1:" + strconv.Itoa(p[0]))
	// The first connection makes systemd-socket-activate exec funtun.
	if got := runTool(t, "through a passed socket\n", ncat, "127.0.0.1", strconv.Itoa(p[0])); got != "through a passed socket\n" {
		t.Errorf("echo line on the passed socket: %q", got)
	}
	d.waitLog("inetd serving", "line="+conf+":1", "socket=\"passed fd 3 (echo")
	d.waitLog("inetd serving", fmt.Sprintf("listen=127.0.0.1:%d", p[1]), "socket=bound")
	if c, err := net.Dial("tcp", "127.0.0.1:7"); err == nil {
		c.Close()
		t.Errorf("funtun bound port 7 for the echo line it had a passed socket for")
	}
}

const acceptScript = `#!/usr/bin/env python3
# A stream wait service: stdin is the listening socket; accept and answer
# until no client has come for 2 seconds.
import os, socket
s = socket.socket(fileno=0)
s.settimeout(2)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    c.sendall(b"accepted by %d\n" % os.getpid())
    c.close()
`

// TestStreamWaitService: a tcp wait line's program gets the listening
// socket and accepts the connections itself.
func TestStreamWaitService(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	testutil.NeedTool(t, "python3")
	dir := sharedDir(t)
	script := writeFile(t, filepath.Join(dir, "accept.py"), acceptScript, 0o755)
	port := freePorts(t, 1)[0]
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf("127.0.0.1:%d stream tcp wait %s %s accept\n", port, runAs(t), script), 0o644)
	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", port)})
	first := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(port))
	m := regexp.MustCompile(`^accepted by (\d+)\n$`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("first: %q", first)
	}
	if second := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(port)); second != first {
		t.Errorf("second connection: %q, want it accepted by the same program (%q)", second, first)
	}
	d.waitLog("flow handed off", "net=tcp", "pid="+m[1])
	d.waitChildren(0)
	if third := runTool(t, "", ncat, "127.0.0.1", strconv.Itoa(port)); !strings.HasPrefix(third, "accepted by ") || third == first {
		t.Errorf("after the program exited: %q", third)
	}
}

// TestWaitLineThatDoesNotRead: a wait program that exits without reading
// leaves the datagram in the socket; the line's rate stops funtun from
// starting it again and again, and the datagram is dropped.
func TestWaitLineThatDoesNotRead(t *testing.T) {
	dir := sharedDir(t)
	l, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.LocalAddr().(*net.UDPAddr).Port
	l.Close()
	conf := writeFile(t, filepath.Join(dir, "inetd.conf"), fmt.Sprintf("127.0.0.1:%d dgram udp wait.1 %s /bin/true true\n", port, runAs(t)), 0o644)
	d := startInetd(t, conf, []string{fmt.Sprintf("127.0.0.1:%d", port)})
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("nobody reads this"))
	d.waitLog("refused by a limit", "limit=rate", "per_minute=1")
	d.waitLog("flow handed off", "net=udp")
	d.waitChildren(0)
	if n := strings.Count(d.log.String(), "flow handed off"); n != 1 {
		t.Errorf("the program was started %d times, want once", n)
	}
}

package systemd

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The units' own commands, run the way their .socket units start them but
// by systemd-socket-activate (no systemd as PID 1 here): the socket's
// Listen address (moved to a free loopback port) and FileDescriptorName,
// the service's ExecStart with its $VARIABLES expanded as systemd does,
// and for Type=notify a NOTIFY_SOCKET that must see READY=1. Only the
// sandbox options are not applied; TestUnitsHardening looks at those.

// unitKeys reads a unit file's Key=Value lines (all values of each key).
func unitKeys(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		keys[k] = append(keys[k], v)
	}
	return keys
}

// execStart is the service's command line as systemd runs it: unquoted
// words, $NAME split into words, ${NAME} kept as one.
func execStart(t *testing.T, keys map[string][]string, bin string, vars map[string]string, replace map[string]string) []string {
	t.Helper()
	if len(keys["ExecStart"]) != 1 {
		t.Fatalf("ExecStart= %q: want one", keys["ExecStart"])
	}
	var argv []string
	for _, w := range strings.Fields(keys["ExecStart"][0]) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			argv = append(argv, vars[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			argv = append(argv, strings.Fields(vars[w[1:]])...)
		case w == installedPath:
			argv = append(argv, bin)
		case replace[w] != "":
			argv = append(argv, replace[w])
		default:
			argv = append(argv, w)
		}
	}
	return argv
}

type launched struct {
	cmd    *exec.Cmd
	logs   *testutil.LogBuffer
	notify chan string
}

// launch runs argv under systemd-socket-activate with the sockets.
func launch(t *testing.T, ssaArgs []string, env []string, argv []string) *launched {
	t.Helper()
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	l := &launched{logs: &testutil.LogBuffer{}, notify: make(chan string, 16)}
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				return
			}
			l.notify <- string(buf[:n])
		}
	}()
	args := append([]string(nil), ssaArgs...)
	for _, e := range append(env, "NOTIFY_SOCKET="+path) {
		args = append(args, "-E", e)
	}
	l.cmd = exec.Command(ssa, append(args, argv...)...)
	l.cmd.Stdout, l.cmd.Stderr = l.logs, l.logs
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { l.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		l.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			l.cmd.Process.Kill()
			<-exited
			t.Errorf("%s did not end within 10s of SIGTERM", argv[1])
		}
		if t.Failed() {
			t.Logf("output:\n%s", l.logs)
		}
	})
	return l
}

func (l *launched) expectReady(t *testing.T) {
	t.Helper()
	select {
	case m := <-l.notify:
		if m != "READY=1" {
			t.Errorf("first sd_notify message %q, want READY=1", m)
		}
	case <-time.After(20 * time.Second):
		t.Error("no READY=1 within 20s: a Type=notify unit would time out")
	}
}

// socketArgs turns a .socket unit into systemd-socket-activate options,
// each Listen address moved to a free loopback port.
func socketArgs(t *testing.T, keys map[string][]string) (args []string, addrs []string) {
	t.Helper()
	if len(keys["ListenStream"]) == 0 {
		t.Fatal("no ListenStream=")
	}
	for range keys["ListenStream"] {
		addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
		args = append(args, "-l", addr)
		addrs = append(addrs, addr)
	}
	if names := keys["FileDescriptorName"]; len(names) > 0 {
		all := make([]string, len(addrs))
		for i := range all {
			all[i] = names[0]
		}
		args = append(args, "--fdname="+strings.Join(all, ":"))
	}
	return args, addrs
}

func webServer(t *testing.T, body string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
		c.Close()
	})
	return l.Addr().String()
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	// The body alone: a connect refused before systemd-socket-activate
	// listens is retried, and curl's note of it goes to stderr.
	cmd := exec.Command(testutil.NeedTool(t, "curl"), append([]string{"-sS", "--max-time", "20", "--retry", "20", "--retry-connrefused", "--retry-delay", "1"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Errorf("curl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func TestSocks5dUnitServes(t *testing.T) {
	bin := testutil.Funtun(t)
	ssa, _ := socketArgs(t, unitKeys(t, "user/funtun-socks5d.socket"))
	argv := execStart(t, unitKeys(t, "user/funtun-socks5d.service"), bin, nil, nil)
	dir, _ := testutil.ProfileDir(t)
	l := launch(t, ssa, []string{"FUNTUN_PROFILE_PATH=" + dir}, argv)
	web := webServer(t, "through the unit\n")
	if got := curl(t, "--socks5", ssa[1], "http://"+web+"/"); got != "through the unit\n" {
		t.Errorf("curl through the socks5d unit: %q", got)
	}
	l.expectReady(t)
}

func TestInetdUnitServes(t *testing.T) {
	bin := testutil.Funtun(t)
	ssa, addrs := socketArgs(t, unitKeys(t, "system/funtun-inetd.socket"))
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "inetd.conf")
	var lines strings.Builder
	for _, a := range addrs {
		_, port, _ := net.SplitHostPort(a)
		lines.WriteString(port + " stream tcp nowait " + me.Username + " /bin/cat cat\n")
	}
	if err := os.WriteFile(conf, []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := execStart(t, unitKeys(t, "system/funtun-inetd.service"), bin, nil, map[string]string{"/etc/funtun/inetd.conf": conf})
	dir, _ := testutil.ProfileDir(t)
	l := launch(t, ssa, []string{"FUNTUN_PROFILE_PATH=" + dir}, argv)
	for _, a := range addrs {
		var c net.Conn
		for range 100 {
			if c, err = net.Dial("tcp", a); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("echo via " + a + "\n"))
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if got != "echo via "+a+"\n" {
			t.Errorf("%s (/bin/cat): %q, %v", a, got, err)
		}
	}
	l.expectReady(t)
}

// The template with the example's kind of configuration: TLS terminated
// by funtun in front of a Python server that takes its socket from
// LISTEN_FDS and has never heard of TLS.
func TestActivateTemplateServes(t *testing.T) {
	bin := testutil.Funtun(t)
	openssl := testutil.NeedTool(t, "openssl")
	python := testutil.NeedTool(t, "python3")
	dir, _ := testutil.ProfileDir(t)
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if out, err := exec.Command(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
		"-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "site-tls.profile"), []byte("tls cert="+cert+" key="+key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	server := filepath.Join(dir, "server.py")
	os.WriteFile(server, []byte(`import socket, os
assert os.environ["LISTEN_PID"] == str(os.getpid()) and os.environ["LISTEN_FDS"] == "1"
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 24\r\n\r\nplain python, TLS by fd\n")
    c.close()
`), 0o644)
	keys := unitKeys(t, "system/funtun-activate@.socket")
	if keys["ListenStream"][0] != "%I" {
		t.Fatalf("ListenStream=%s: the test expects the instance", keys["ListenStream"][0])
	}
	ssa, addrs := socketArgs(t, keys)
	vars := map[string]string{"FUNTUN_PROFILE": "profile=site-tls", "PROGRAM": python + " " + server}
	argv := execStart(t, unitKeys(t, "system/funtun-activate@.service"), bin, vars, nil)
	launch(t, ssa, []string{"FUNTUN_PROFILE_PATH=" + dir}, argv)
	_, port, _ := net.SplitHostPort(addrs[0])
	got := curl(t, "--cacert", cert, "--resolve", "localhost:"+port+":127.0.0.1", "https://localhost:"+port+"/")
	if got != "plain python, TLS by fd\n" {
		t.Errorf("curl over TLS to the template's service: %q", got)
	}
}

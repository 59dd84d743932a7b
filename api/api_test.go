package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// newFunnel is a Funnel reading profiles from a directory of the test's,
// logging flows into the returned buffer.
func newFunnel(t *testing.T, profiles map[string]string) (*Funnel, string, *testutil.LogBuffer) {
	t.Helper()
	dir := t.TempDir()
	for name, text := range profiles {
		writeFile(t, filepath.Join(dir, name+".profile"), text)
	}
	logs := &testutil.LogBuffer{}
	fn, err := New(Options{Dirs: []string{dir}, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return fn, dir, logs
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// lineServer answers each line it reads with "got: LINE".
func lineServer(t *testing.T) net.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "got: %s\n", sc.Text())
		}
	})
	return l.Addr()
}

func ask(t *testing.T, c net.Conn, line string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", line, err)
	}
	return strings.TrimSuffix(got, "\n")
}

// A template's pieces act on a Dial'ed connection, a name is resolved in
// the funnel, and the flow is logged once with its byte counts.
func TestDialThroughTemplate(t *testing.T) {
	srv := lineServer(t)
	port := srv.(*net.TCPAddr).Port
	fn, _, logs := newFunnel(t, map[string]string{
		"shout": "rewrite dir=up from=hello to=HELLO | hosts demo.test=127.0.0.1\n",
	})
	c, err := fn.Dial(ctx5(t), "shout", "tcp", fmt.Sprintf("demo.test:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	if got := ask(t, c, "hello world"); got != "got: HELLO world" {
		t.Fatalf("server answered %q; the rewrite did not act", got)
	}
	if c.RemoteAddr().String() != fmt.Sprintf("demo.test:%d", port) {
		t.Errorf("RemoteAddr %v, want the name asked for", c.RemoteAddr())
	}
	c.Close()
	waitLog(t, logs, "hook=api", "profile=shout", "up=12", "down=17")
}

func waitLog(t *testing.T, logs *testutil.LogBuffer, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := logs.String()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A SOCKS5 chain to a real microsocks: the server sees the CONNECT.
func TestDialThroughSocks5(t *testing.T) {
	socks := testutil.StartMicrosocks(t)
	srv := lineServer(t)
	fn, _, _ := newFunnel(t, nil)
	c, err := fn.Dial(ctx5(t), "chain=socks5 server="+socks, "tcp4", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := ask(t, c, "through socks"); got != "got: through socks" {
		t.Fatalf("got %q", got)
	}
	// The server saw the connection come from microsocks, not from us:
	// both are on loopback, so check instead that microsocks is in the way
	// by stopping it being reachable for a second Dial.
	if _, err := fn.Dial(ctx5(t), "chain=socks5 server=127.0.0.1:1", "tcp", srv.String()); err == nil {
		t.Fatal("a dial through a dead SOCKS5 server succeeded: the chain is not used")
	} else if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("the error does not name the dead server: %v", err)
	}
}

// Listen terminates TLS with the template's tls piece; curl is the client.
func TestListenTerminatesTLS(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	openssl := testutil.NeedTool(t, "openssl")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	out, err := exec.Command(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
		"-addext", "subjectAltName=IP:127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	fn, _, logs := newFunnel(t, map[string]string{"https": fmt.Sprintf("tls cert=%s key=%s\n", cert, key)})
	l, err := fn.Listen(ctx5(t), "https", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\nplain behind tls\n")
			}()
		}
	}()
	got, err := exec.Command(curl, "-sS", "--cacert", cert, fmt.Sprintf("https://%s/", l.Addr())).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, got)
	}
	if string(got) != "plain behind tls\n" {
		t.Fatalf("curl got %q", got)
	}
	// A client that does not speak TLS never reaches Accept, and the
	// listener goes on.
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(raw, "GET / HTTP/1.0\r\n\r\n")
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(raw)
	raw.Close()
	waitLog(t, logs, "flow failed", "hook=api")
	if got, err := exec.Command(curl, "-sS", "--cacert", cert, fmt.Sprintf("https://%s/", l.Addr())).CombinedOutput(); err != nil || string(got) != "plain behind tls\n" {
		t.Fatalf("after a bad client, curl: %v %q", err, got)
	}
}

// Close makes Accept return net.ErrClosed, and a pending Accept wakes.
func TestListenerClose(t *testing.T) {
	fn, _, _ := newFunnel(t, nil)
	l, err := fn.Listen(ctx5(t), "", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("the port still accepts after Close")
	}
}

// Datagrams through pieces: a hosts name, one flow per destination, the
// answers read back with the name they were sent to.
func TestListenPacketThroughPieces(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	fn, _, logs := newFunnel(t, map[string]string{"names": "hosts echo.test=127.0.0.1\n"})
	pc, err := fn.ListenPacket(ctx5(t), "names", "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	to := NameAddr("udp", fmt.Sprintf("echo.test:%d", echo.Port))
	buf := make([]byte, 100)
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("datagram %d", i)
		if _, err := pc.WriteTo([]byte(msg), to); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != msg || from.String() != to.String() {
			t.Fatalf("read %q from %v, want %q from %v", buf[:n], from, msg, to)
		}
	}
	// An expired deadline ends a read with a timeout.
	pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := pc.ReadFrom(buf); !isTimeout(err) {
		t.Fatalf("read past the deadline: %v", err)
	}
	pc.Close()
	waitLog(t, logs, "net=udp", "profile=names", "up=30", "down=30")
	if _, err := pc.WriteTo([]byte("x"), to); err == nil {
		t.Fatal("WriteTo after Close succeeded")
	}
}

// A plain-direct template gives the kernel's own socket, on a fixed port;
// pieces in the way refuse one.
func TestListenPacketPlainDirect(t *testing.T) {
	fn, _, _ := newFunnel(t, map[string]string{"names": "hosts echo.test=127.0.0.1\n"})
	pc, err := fn.ListenPacket(ctx5(t), "", "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, ok := pc.(*net.UDPConn); !ok {
		t.Fatalf("plain direct gave %T, want the kernel's *net.UDPConn", pc)
	}
	_, err = fn.ListenPacket(ctx5(t), "names", "udp", "127.0.0.1:5353")
	if err == nil || !strings.Contains(err.Error(), "leave the port to the funnel") {
		t.Fatalf("a fixed port through pieces: %v", err)
	}
}

// A connected datagram conn from Dial.
func TestDialUDP(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	fn, _, _ := newFunnel(t, map[string]string{"names": "hosts echo.test=127.0.0.1\n"})
	c, err := fn.Dial(ctx5(t), "names", "udp", fmt.Sprintf("echo.test:%d", echo.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testutil.EchoOnce(t, c, "one datagram")
}

// Bad input: each error names its cause, and the Funnel goes on.
func TestErrors(t *testing.T) {
	fn, dir, _ := newFunnel(t, map[string]string{
		"closed": "deny to=127.0.0.0/8\n",
		"broken": "tls certt=x\n",
	})
	srv := lineServer(t)
	ctx := ctx5(t)
	cases := []struct {
		template, network, address, want string
	}{
		{"nosuch", "tcp", srv.String(), `no profile named "nosuch"`},
		{"closed", "tcp", srv.String(), "deny"},
		{"broken", "tcp", srv.String(), filepath.Join(dir, "broken.profile") + ":1"},
		{"", "sctp", srv.String(), `network "sctp"`},
		{"", "tcp", "no-port", "no-port"},
		{"", "tcp6", srv.String(), "not an IPv6 address"},
		{"chain=nosuchpiece", "tcp", srv.String(), "nosuchpiece"},
		{"two words", "tcp", srv.String(), "not a profile name"},
	}
	for _, c := range cases {
		_, err := fn.Dial(ctx, c.template, c.network, c.address)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Dial(%q, %q, %q): %v, want an error with %q", c.template, c.network, c.address, err, c.want)
		}
	}
	if _, err := fn.Listen(ctx, "nosuch", "tcp", "127.0.0.1:0"); err == nil {
		t.Error("Listen with an unknown template succeeded")
	}
	// And the Funnel still works.
	c, err := fn.Dial(ctx, "", "tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := ask(t, c, "still"); got != "got: still" {
		t.Fatalf("got %q", got)
	}
}

// Reload applies to new connections; one open before it keeps its pieces;
// a broken file keeps the old profile and names file and line.
func TestReload(t *testing.T) {
	srv := lineServer(t)
	fn, dir, _ := newFunnel(t, map[string]string{"r": "rewrite dir=up from=a to=1\n"})
	ctx := ctx5(t)
	before, err := fn.Dial(ctx, "r", "tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	writeFile(t, filepath.Join(dir, "r.profile"), "rewrite dir=up from=a to=2\n")
	if err := fn.Reload(); err != nil {
		t.Fatal(err)
	}
	after, err := fn.Dial(ctx, "r", "tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if got := ask(t, before, "a"); got != "got: 1" {
		t.Errorf("the connection from before the reload: %q", got)
	}
	if got := ask(t, after, "a"); got != "got: 2" {
		t.Errorf("the connection from after the reload: %q", got)
	}
	writeFile(t, filepath.Join(dir, "r.profile"), "rewrite dir=up from=a to=3\n|||\n")
	err = fn.Reload()
	if err == nil || !strings.Contains(err.Error(), "r.profile:2") {
		t.Fatalf("reloading a broken file: %v, want r.profile:2", err)
	}
	third, err := fn.Dial(ctx, "r", "tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if got := ask(t, third, "a"); got != "got: 2" {
		t.Errorf("after a failed reload: %q, want the old profile's answer", got)
	}
}

// Many connections at once through one Listener and Dial: no mix-ups.
func TestConcurrent(t *testing.T) {
	fn, _, _ := newFunnel(t, map[string]string{"up": "rewrite dir=up from=x to=y\n"})
	l, err := fn.Listen(ctx5(t), "", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := fn.Dial(ctx5(t), "up", "tcp", l.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("x%03d", i)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte(msg))
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if want := fmt.Sprintf("y%03d", i); !bytes.Equal(got, []byte(want)) {
				errs <- fmt.Errorf("got %q, want %q", got, want)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The runnable example under examples/ fetches a page through a template.
func TestExampleProgram(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	www := t.TempDir()
	writeFile(t, filepath.Join(www, "index.html"), "hello from the origin\n")
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := hl.Addr().(*net.TCPAddr).Port
	hl.Close()
	py := testutil.NeedTool(t, "python3")
	testutil.StartDaemon(t, py, "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1", "--directory", www)
	testutil.WaitListen(t, fmt.Sprintf("127.0.0.1:%d", port))
	cmd := exec.Command(goBin, "run", "../examples/go/fetch",
		"-template", "chain=rewrite dir=down from=origin to=ORIGIN | hosts demo.test=127.0.0.1",
		fmt.Sprintf("http://demo.test:%d/", port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run examples/go/fetch: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "hello from the ORIGIN") {
		t.Fatalf("the example printed %q", out)
	}
}

// A destination's datagram flow ends, with its line, once idle.
func TestListenPacketIdleEnds(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	logs := &testutil.LogBuffer{}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "names.profile"), "hosts echo.test=127.0.0.1\n")
	fn, err := New(Options{Dirs: []string{dir}, DatagramIdle: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := fn.ListenPacket(ctx5(t), "names", "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := NameAddr("udp", fmt.Sprintf("echo.test:%d", echo.Port))
	if _, err := pc.WriteTo([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	// Still open: the flow line comes from the idle end, not from Close.
	waitLog(t, logs, "msg=flow", "net=udp", "up=4", "down=4")
}

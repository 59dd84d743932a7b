package proxyproto_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
)

// The real peer is HAProxy (Debian's haproxy): `accept-proxy` on a bind
// reads the header this piece sends, and `send-proxy` / `send-proxy-v2` on
// a server line sends the header this piece reads.

// run starts a program with its output collected, in its own process
// group, until the test ends.
func run(t *testing.T, env []string, name string, args ...string) *testutil.LogBuffer {
	t.Helper()
	out := &testutil.LogBuffer{}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("output of %s:\n%s", filepath.Base(name), out.String())
		}
	})
	return out
}

// haproxy runs HAProxy in the foreground with cfg (global and defaults
// are added: logs go to its stdout), and waits for each of ports.
func haproxy(t *testing.T, cfg string, ports ...int) *testutil.LogBuffer {
	t.Helper()
	bin := testutil.NeedTool(t, "haproxy")
	file := filepath.Join(t.TempDir(), "haproxy.cfg")
	full := `global
    log stdout format raw local0 info
defaults
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
` + cfg
	if err := os.WriteFile(file, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, full)
	}
	logs := run(t, nil, bin, "-db", "-f", file)
	for _, p := range ports {
		testutil.WaitListen(t, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return logs
}

// waitFor waits until the output holds a match of re and returns it.
func waitFor(t *testing.T, out *testutil.LogBuffer, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(out.String()); m != nil {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q in the output after 10s:\n%s", re, out.String())
	return nil
}

// acceptProxyFrontend is an HTTP frontend that takes the PROXY header
// (accept-proxy), logs the client it names and answers with it.
func acceptProxyFrontend(port int) string {
	return fmt.Sprintf(`frontend fe
    mode http
    bind 127.0.0.1:%d accept-proxy
    log-format "funtun-test client=%%ci:%%cp"
    http-request return status 200 content-type text/plain lf-string "client=%%[src]:%%[src_port]\n"
`, port)
}

// get sends an HTTP request on c and returns the answer's body line.
func get(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	resp := string(b)
	if !strings.HasPrefix(resp, "HTTP/1.0 200") && !strings.HasPrefix(resp, "HTTP/1.1 200") {
		t.Fatalf("answer:\n%s", resp)
	}
	return strings.TrimSpace(resp[strings.Index(resp, "\r\n\r\n")+4:])
}

// Outgoing, through the engine: each client connection becomes a flow
// whose source is the client, dialed through the chain and relayed, as
// `funtun forward` does. HAProxy's log and answer show the client's own
// address and port, not the ones funtun dialed from.
func TestHAProxyAcceptsOurHeader(t *testing.T) {
	port := testutil.FreePort(t)
	logs := haproxy(t, acceptProxyFrontend(port), port)
	dest, _ := funnel.ParseAddr(fmt.Sprintf("127.0.0.1:%d", port))
	for _, chain := range []string{"proxy-protocol version=1", "proxy-protocol version=2"} {
		t.Run(chain, func(t *testing.T) {
			pl := testutil.Pipeline(t, chain)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			testutil.Serve(t, l, func(c net.Conn) {
				f := funnel.NewFlow("forward", funnel.TCP, dest)
				f.Source = c.RemoteAddr()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				up, err := pl.DialStream(ctx, f)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				funnel.Relay(c, up, f.Up, f.Down)
			})
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			client := c.LocalAddr().String()
			if body := get(t, c); body != "client="+client {
				t.Errorf("HAProxy answered %q, want client=%s", body, client)
			}
			m := waitFor(t, logs, `funtun-test client=`+regexp.QuoteMeta(client)+`\b`)
			t.Logf("HAProxy's log: %s", m[0])
		})
	}
}

// Incoming, through the engine: HAProxy sends the header (send-proxy for
// v1, send-proxy-v2) ahead of its client's bytes; the piece strips it, so
// the echo server behind gets the bytes alone, and the flow's source is
// HAProxy's client.
func TestHAProxySendsUsAHeader(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, "proxy-protocol")
	sources := make(chan string, 16)
	testutil.Serve(t, l, func(c net.Conn) {
		f := funnel.NewFlow("forward", funnel.TCP, funnel.Addr{})
		f.Source = c.RemoteAddr()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		app, err := pl.AcceptStream(ctx, f, c)
		if err != nil {
			// Not HAProxy's (its connections all carry a header): most likely another
			// test package probing a port number the kernel gave us too.
			// A header the piece failed to read shows below, as the
			// client's source never arriving.
			t.Logf("accept: %v", err)
			return
		}
		sources <- f.Source.String()
		e, err := net.Dial("tcp", echo.String())
		if err != nil {
			t.Errorf("dial echo: %v", err)
			return
		}
		funnel.Relay(e, app, f.Up, f.Down)
	})
	backend := l.Addr().(*net.TCPAddr).Port
	v1, v2 := testutil.FreePort(t), testutil.FreePort(t)
	haproxy(t, fmt.Sprintf(`frontend v1
    mode tcp
    bind 127.0.0.1:%d
    default_backend v1
frontend v2
    mode tcp
    bind 127.0.0.1:%d
    default_backend v2
backend v1
    mode tcp
    server funtun 127.0.0.1:%d send-proxy
backend v2
    mode tcp
    server funtun 127.0.0.1:%d send-proxy-v2
`, v1, v2, backend, backend), v1, v2)
	for _, port := range []int{v1, v2} {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		testutil.EchoOnce(t, c, "hello, with the header stripped")
		c.Close()
		// WaitListen's own connections came through HAProxy too: look
		// for this client's flow among them.
		want := c.LocalAddr().String()
		var seen []string
	wait:
		for {
			select {
			case src := <-sources:
				if src == want {
					break wait
				}
				seen = append(seen, src)
			case <-time.After(5 * time.Second):
				t.Fatalf("through HAProxy port %d no flow has the client's address %s as its source (sources: %v)", port, want, seen)
			}
		}
	}
}

// The examples of docs/pieces/proxy-protocol.md, with the funtun binary:
// `funtun forward … chain='proxy-protocol'` in front of HAProxy's
// accept-proxy, and `funtun forward --inbound … chain='proxy-protocol'`
// behind HAProxy's send-proxy-v2, whose flow log line names the client.
func TestFuntunForwardWithHAProxy(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	bin := testutil.Funtun(t)

	hp := testutil.FreePort(t)
	haproxy(t, acceptProxyFrontend(hp), hp)
	fw := testutil.FreePort(t)
	run(t, env, bin, "forward", "--listen", fmt.Sprintf("127.0.0.1:%d", fw), "--to", fmt.Sprintf("127.0.0.1:%d", hp), "chain=proxy-protocol")
	testutil.WaitListen(t, fmt.Sprintf("127.0.0.1:%d", fw))
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", fw))
	if err != nil {
		t.Fatal(err)
	}
	client := c.LocalAddr().String()
	if body := get(t, c); body != "client="+client {
		t.Errorf("HAProxy behind funtun forward answered %q, want client=%s", body, client)
	}
	c.Close()
	// The body is HAProxy's own word for the client address it took from
	// the header. Its log line says the same but is not waited for:
	// HAProxy writes "log stdout" without blocking and drops a line the
	// pipe cannot take at once, which made this test fail under load.

	echo := testutil.EchoServer(t)
	in := testutil.FreePort(t)
	fwLog := run(t, env, bin, "forward", "--inbound", "--listen", fmt.Sprintf("127.0.0.1:%d", in), "--to", echo.String(), "chain=proxy-protocol")
	testutil.WaitListen(t, fmt.Sprintf("127.0.0.1:%d", in))
	front := testutil.FreePort(t)
	haproxy(t, fmt.Sprintf(`frontend fe
    mode tcp
    bind 127.0.0.1:%d
    default_backend funtun
backend funtun
    mode tcp
    server funtun 127.0.0.1:%d send-proxy-v2
`, front, in), front)
	c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", front))
	if err != nil {
		t.Fatal(err)
	}
	client = c.LocalAddr().String()
	testutil.EchoOnce(t, c, "through HAProxy and funtun")
	c.Close()
	m := waitFor(t, fwLog, `msg=flow .*src=`+regexp.QuoteMeta(client)+`\b.*`)
	t.Logf("funtun's flow line: %s", m[0])
}

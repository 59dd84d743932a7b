//go:build linux

package preload

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// helloServer answers every request with "hello X from HOST", HOST being
// the Host header the client sent.
func helloServer(t *testing.T) (port string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello X from %s\n", r.Host)
	}))
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// demo.test exists only in the profile; rewrite visibly acts on the way
// back, so the bytes went through the pieces (a relay, not a handoff).
const demoChain = "hosts demo.test=127.0.0.1 | rewrite from=X to=Y dir=down"

func TestCurlNameOnlyInFunnel(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	ft := startFunnel(t, demoChain)
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), curl, "-sS", "--noproxy", "*", "http://demo.test:"+port+"/"), "")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, stderr)
	}
	if want := "hello Y from demo.test:" + port + "\n"; out != want {
		t.Fatalf("curl printed %q, want %q", out, want)
	}
}

func TestCurlHandoffDirect(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), curl, "-sS", "-w", "%{remote_ip}", "http://demo.test:"+port+"/"), "")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, stderr)
	}
	body, ip, _ := strings.Cut(out, "\n")
	if body != "hello X from demo.test:"+port {
		t.Fatalf("curl printed %q", out)
	}
	// curl reads getpeername: it must see the synthetic address it asked for.
	if a, err := netip.ParseAddr(ip); err != nil || !isSynthetic(a) {
		t.Fatalf("curl's remote_ip is %q, want a synthetic address", ip)
	}
}

func TestWget(t *testing.T) {
	wget := testutil.NeedTool(t, "wget")
	port := helloServer(t)
	ft := startFunnel(t, demoChain)
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), wget, "-q", "-O", "-", "--no-proxy", "http://demo.test:"+port+"/"), "")
	if err != nil {
		t.Fatalf("wget: %v\n%s", err, stderr)
	}
	if want := "hello Y from demo.test:" + port + "\n"; out != want {
		t.Fatalf("wget printed %q, want %q", out, want)
	}
}

const pyBlocking = `
import socket, sys
port = int(sys.argv[1])
infos = socket.getaddrinfo("demo.test", port, type=socket.SOCK_STREAM)
print("addr", infos[0][4][0])
s = socket.create_connection(("demo.test", port))
print("peer", s.getpeername()[0], s.getpeername()[1])
print("local", "%s:%d" % s.getsockname()[:2])
s.sendall(b"through the funnel\n")
buf = b""
while not buf.endswith(b"\n"):
    buf += s.recv(100)
print("echo", buf.decode().strip())
`

func TestPythonBlocking(t *testing.T) {
	py := python(t)
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", pyBlocking, strconv.Itoa(echo.port())), "")
	if err != nil {
		t.Fatalf("python: %v\n%s%s", err, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("python printed %q", out)
	}
	addr := strings.TrimPrefix(lines[0], "addr ")
	if a, err := netip.ParseAddr(addr); err != nil || !isSynthetic(a) {
		t.Errorf("getaddrinfo gave %q, want a synthetic address", addr)
	}
	if want := fmt.Sprintf("peer %s %d", addr, echo.port()); lines[1] != want {
		t.Errorf("getpeername: %q, want %q", lines[1], want)
	}
	if lines[3] != "echo through the funnel" {
		t.Errorf("echo: %q", lines[3])
	}
	// A handoff: the server saw the program's own socket, no relay.
	local := strings.TrimPrefix(lines[2], "local ")
	if seen := echo.seen(); len(seen) != 1 || seen[0] != local {
		t.Errorf("server saw %v, the program's socket is %s: the flow was relayed, not handed off", seen, local)
	}
}

const pyAsyncio = `
import asyncio, sys
async def main(port):
    async def one(i):
        r, w = await asyncio.open_connection("demo.test", port)
        w.write(b"hello %d\n" % i)
        await w.drain()
        line = await r.readline()
        peer = w.get_extra_info("peername")
        w.close()
        await w.wait_closed()
        return line.decode().strip(), peer[0]
    res = await asyncio.gather(*(one(i) for i in range(8)))
    for line, peer in res:
        print(line, peer)
asyncio.run(main(int(sys.argv[1])))
`

func TestPythonAsyncio(t *testing.T) {
	py := python(t)
	for _, tc := range []struct{ name, chain string }{
		{"handoff", "hosts demo.test=127.0.0.1"},
		{"relay", "hosts demo.test=127.0.0.1 | rewrite from=hello to=HELLO dir=down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := echoWithLog(t)
			ft := startFunnel(t, tc.chain)
			out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", pyAsyncio, strconv.Itoa(echo.port())), "")
			if err != nil {
				t.Fatalf("python: %v\n%s%s", err, out, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 8 {
				t.Fatalf("python printed %q", out)
			}
			word := "hello"
			if tc.name == "relay" {
				word = "HELLO"
			}
			for i, l := range lines {
				f := strings.Fields(l)
				if len(f) != 3 || f[0] != word || f[1] != strconv.Itoa(i) {
					t.Fatalf("line %d: %q", i, l)
				}
				if a, err := netip.ParseAddr(f[2]); err != nil || !isSynthetic(a) {
					t.Fatalf("peername %q is not the synthetic address", f[2])
				}
			}
		})
	}
}

const nodeGet = `
const http = require('http');
const port = process.argv[1];
let done = 0;
const n = 6;
for (let i = 0; i < n; i++) {
  http.get({host: 'demo.test', port: port, path: '/' + i, agent: false}, (res) => {
    let body = '';
    res.on('data', (d) => body += d);
    res.on('end', () => {
      console.log(body.trim() + ' ' + res.socket.remoteAddress);
      if (++done === n) process.exit(0);
    });
  }).on('error', (e) => { console.log('error ' + e.code); process.exit(1); });
}
setTimeout(() => { console.log('timeout'); process.exit(2); }, 20000);
`

func TestNode(t *testing.T) {
	node := testutil.NeedTool(t, "node")
	port := helloServer(t)
	ft := startFunnel(t, demoChain)
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), node, "-e", nodeGet, port), "")
	if err != nil {
		t.Fatalf("node: %v\n%s%s", err, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("node printed %q", out)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "hello Y from demo.test:"+port+" 198.1") {
			t.Fatalf("node printed %q", l)
		}
	}
}

func TestNcatClient(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1 | rewrite from=ping to=pong dir=down")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), ncat, "demo.test", strconv.Itoa(echo.port())), "ping through ncat\n")
	if err != nil {
		t.Fatalf("ncat: %v\n%s", err, stderr)
	}
	if out != "pong through ncat\n" {
		t.Fatalf("ncat printed %q", out)
	}
}

// TestConnectForms drives the C client through blocking and non-blocking
// connects, on the handoff path and the relay path.
func TestConnectForms(t *testing.T) {
	for _, path := range []struct{ name, chain string }{
		{"handoff", "hosts demo.test=127.0.0.1"},
		{"relay", "hosts demo.test=127.0.0.1 | rewrite from=a to=b"},
	} {
		chain := path.chain
		for _, mode := range []string{"connect", "nonblock"} {
			t.Run(mode+"/"+path.name, func(t *testing.T) {
				echo := echoWithLog(t)
				ft := startFunnel(t, chain)
				out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, mode, "demo.test", strconv.Itoa(echo.port())), "")
				if err != nil {
					t.Fatalf("ftclient: %v\n%s%s", err, out, stderr)
				}
				f := strings.Fields(out)
				if len(f) != 2 || f[0] != "connected" {
					t.Fatalf("ftclient printed %q", out)
				}
				ap, err := netip.ParseAddrPort(f[1])
				if err != nil || !isSynthetic(ap.Addr()) || int(ap.Port()) != echo.port() {
					t.Fatalf("peer %q: want the synthetic address and port %d", f[1], echo.port())
				}
			})
		}
	}
}

func TestThreads(t *testing.T) {
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 60*time.Second), built.client, "threads", "demo.test", strconv.Itoa(echo.port()), "16"), "")
	if err != nil || strings.TrimSpace(out) != "threads ok 16 of 16" {
		t.Fatalf("ftclient threads: %v %q %s", err, out, stderr)
	}
	if n := len(echo.seen()); n != 16*20 {
		t.Fatalf("server saw %d connections, want %d", n, 16*20)
	}
}

func TestDescriptorBookkeeping(t *testing.T) {
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1 | rewrite from=a to=b")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, "fds", "demo.test", strconv.Itoa(echo.port())), "")
	if err != nil {
		t.Fatalf("ftclient fds: %v\n%s%s", err, out, stderr)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		if strings.HasPrefix(l, "after close") || strings.HasPrefix(l, "child resolve") {
			k, v = l[:strings.LastIndexByte(l, ' ')], l[strings.LastIndexByte(l, ' ')+1:]
		}
		got[k] = v
	}
	peer := got["fd"]
	ap, err := netip.ParseAddrPort(peer)
	if err != nil || !isSynthetic(ap.Addr()) {
		t.Fatalf("getpeername on the connected socket: %q\n%s", peer, out)
	}
	for _, k := range []string{"dup", "dup2", "dup3", "fcntl", "after close", "child"} {
		if got[k] != peer {
			t.Errorf("%s: peer %q, want %q", k, got[k], peer)
		}
	}
	if got["reused"] != "error ENOTCONN" {
		t.Errorf("a reused descriptor number kept the old peer: %q", got["reused"])
	}
	if got["child resolve"] != "ok" {
		t.Errorf("the forked child could not resolve: %q", got["child resolve"])
	}
}

// TestErrnos: each way a connect can fail reaches the program as the errno
// a native connect would give for it.
func TestErrnos(t *testing.T) {
	py := python(t)
	closed := testutil.FreePort(t)
	script := `
import socket, sys, errno
fam = socket.AF_INET
host, port, nb = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "nb"
try:
    infos = socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM)
except socket.gaierror as e:
    print("gai", {socket.EAI_AGAIN: "EAI_AGAIN", socket.EAI_FAIL: "EAI_FAIL", socket.EAI_NONAME: "EAI_NONAME"}.get(e.errno, e.errno))
    sys.exit(0)
s = socket.socket(fam, socket.SOCK_STREAM)
if nb:
    s.setblocking(False)
    e = s.connect_ex(infos[0][4])
    if e == errno.EINPROGRESS:
        import select
        select.select([], [s], [], 10)
        e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
else:
    e = s.connect_ex(infos[0][4])
print(errno.errorcode.get(e, e) if e else "connected")
`
	cases := []struct {
		name, chain, host string
		port              int
		gone              bool
		want              string
	}{
		{"refused", "direct", "127.0.0.1", closed, false, "ECONNREFUSED"},
		{"refused-name", "hosts demo.test=127.0.0.1", "demo.test", closed, false, "ECONNREFUSED"},
		{"denied", "deny to=127.0.0.0/8 | direct", "127.0.0.1", closed, false, "EACCES"},
		{"unknown-name", "hosts strict=true other.test=127.0.0.1", "demo.test", closed, false, "EHOSTUNREACH"},
		{"funnel-gone", "direct", "127.0.0.1", closed, true, "ECONNREFUSED"},
		{"funnel-gone-lookup", "direct", "demo.test", closed, true, "gai EAI_AGAIN"},
	}
	for _, tc := range cases {
		for _, nb := range []string{"block", "nb"} {
			t.Run(tc.name+"/"+nb, func(t *testing.T) {
				ft := startFunnel(t, tc.chain)
				if tc.gone {
					ft.sock = ft.sock + ".gone"
				}
				out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script, tc.host, strconv.Itoa(tc.port), nb), "")
				if err != nil {
					t.Fatalf("python: %v\n%s%s", err, out, stderr)
				}
				if got := strings.TrimSpace(out); got != tc.want {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	}
}

// TestFunnelGoneMidway: a program that outlives its funnel keeps failing
// closed on the connection it already had open to the control socket —
// also on the plain-direct fast path, which the second connect, well
// within a second of the first, would take if the funnel were still there.
func TestFunnelGoneMidway(t *testing.T) {
	echo := echoWithLog(t)
	ft := startFunnel(t, "direct")
	py := python(t)
	script := `
import socket, sys, os, time, errno
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port)); s.close()
print("first ok", flush=True)
sys.stdin.readline()
s = socket.socket()
print(errno.errorcode.get(s.connect_ex(("127.0.0.1", port)), "connected"), flush=True)
`
	cmd := ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script, strconv.Itoa(echo.port()))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	if line, _ := r.ReadString('\n'); line != "first ok\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("python printed %q", line)
	}
	// The funnel goes: its listener and every control connection.
	ft.stop()
	os.Remove(ft.sock)
	stdin.Write([]byte("\n"))
	line, _ := r.ReadString('\n')
	cmd.Wait()
	if got := strings.TrimSpace(line); got != "ECONNREFUSED" {
		t.Fatalf("connect after the funnel went: %q, want ECONNREFUSED", got)
	}
}

// TestErrnoNetUnreachable: on the handoff path the kernel's own answer
// reaches the program. In a network namespace with no routes at all, a
// connect to a documentation address is "network unreachable"; no packet
// leaves the namespace.
func TestErrnoNetUnreachable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a network namespace of our own needs root")
	}
	unshare := testutil.NeedTool(t, "unshare")
	py := python(t)
	ft := startFunnel(t, "direct")
	script := `
import socket, errno
s = socket.socket()
print(errno.errorcode.get(s.connect_ex(("192.0.2.1", 80)), "connected"))
`
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), unshare, "-n", py, "-c", script), "")
	if err != nil {
		t.Fatalf("unshare python: %v\n%s%s", err, out, stderr)
	}
	if got := strings.TrimSpace(out); got != "ENETUNREACH" {
		t.Fatalf("got %q, want ENETUNREACH", got)
	}
}

func TestHostent(t *testing.T) {
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, "hostent", "demo.test"), "")
	if err != nil {
		t.Fatalf("ftclient hostent: %v\n%s%s", err, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("ftclient printed %q", out)
	}
	fields := func(i int) []string { return strings.Fields(lines[i]) }
	v4 := fields(0)
	if len(v4) != 3 || v4[0] != "gethostbyname" || v4[1] != "demo.test" {
		t.Fatalf("gethostbyname: %q", lines[0])
	}
	a4, err := netip.ParseAddr(v4[2])
	if err != nil || !a4.Is4() || !isSynthetic(a4) {
		t.Fatalf("gethostbyname gave %q", v4[2])
	}
	v6 := fields(1)
	if a6, err := netip.ParseAddr(v6[2]); len(v6) != 3 || err != nil || !a6.Is6() || !isSynthetic(a6) {
		t.Fatalf("gethostbyname2: %q", lines[1])
	}
	if lines[2] != "gethostbyname_r demo.test "+v4[2] {
		t.Fatalf("gethostbyname_r: %q, want the same address as gethostbyname", lines[2])
	}
	if lines[3] != "getnameinfo demo.test 80" {
		t.Fatalf("getnameinfo of the synthetic address: %q", lines[3])
	}

	// Numeric names and localhost are answered without the funnel.
	ft.stop()
	out, _, _ = run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, "hostent", "127.0.0.1"), "")
	if !strings.HasPrefix(out, "gethostbyname 127.0.0.1 127.0.0.1\n") {
		t.Fatalf("numeric name without a funnel: %q", out)
	}
	out, _, _ = run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, "resolve", "localhost"), "")
	if out != "addr 127.0.0.1:80\naddr [::1]:80\n" {
		t.Fatalf("localhost without a funnel: %q", out)
	}
	// Fail closed: a name is not looked up anywhere else.
	out, _, _ = run(t, ft.hooked(ctxFor(t, 30*time.Second), built.client, "hostent", "demo.test"), "")
	if !strings.HasPrefix(out, "gethostbyname error 2\n") { // TRY_AGAIN
		t.Fatalf("a name without a funnel: %q", out)
	}
}

// TestReverseNumeric: getnameinfo and gethostbyaddr of a real address
// give no name (a PTR query would leave the program); of a synthetic
// address they give the name back.
func TestReverseNumeric(t *testing.T) {
	py := python(t)
	ft := startFunnel(t, "direct")
	script := `
import socket
print(socket.getnameinfo(("192.0.2.7", 80), 0)[0])
try:
    socket.getnameinfo(("192.0.2.7", 80), socket.NI_NAMEREQD)
    print("named")
except socket.gaierror as e:
    print("gaierror", e.errno == socket.EAI_NONAME)
try:
    socket.gethostbyaddr("192.0.2.7")
    print("named")
except socket.herror:
    print("herror")
synthetic = socket.gethostbyname("demo.test")
print(socket.gethostbyaddr(synthetic)[0])
`
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script), "")
	if err != nil || out != "192.0.2.7\ngaierror True\nherror\ndemo.test\n" {
		t.Fatalf("python: %v %q %s", err, out, stderr)
	}
}

// TestExecChildStaysHooked: a program started by a hooked program (here a
// shell running curl) is hooked too: demo.test exists only in the funnel.
func TestExecChildStaysHooked(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	ft := startFunnel(t, demoChain)
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), "sh", "-c", `"$0" -sS "$1" && "$0" -sS "$1"`, curl, "http://demo.test:"+port+"/"), "")
	if err != nil {
		t.Fatalf("sh -c curl: %v\n%s", err, stderr)
	}
	if want := strings.Repeat("hello Y from demo.test:"+port+"\n", 2); out != want {
		t.Fatalf("printed %q, want %q", out, want)
	}
}

// TestIPv6Sockets: a program that asks for IPv6 gets the IPv6 synthetic
// address and an IPv6 socket; the funnel reaches an IPv4 destination from
// it (v4-mapped on a handoff, through [::1] on a relay).
func TestIPv6Sockets(t *testing.T) {
	py := python(t)
	script := `
import socket, sys
port = int(sys.argv[1])
info = socket.getaddrinfo("demo.test", port, socket.AF_INET6, socket.SOCK_STREAM)[0]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.connect(info[4])
s.sendall(b"six\n")
print(s.recv(100).decode().strip(), s.getpeername()[0])
`
	for _, tc := range []struct{ name, chain, want string }{
		{"handoff", "hosts demo.test=127.0.0.1", "six"},
		{"relay", "hosts demo.test=127.0.0.1 | rewrite from=six to=seven dir=down", "seven"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := echoWithLog(t)
			ft := startFunnel(t, tc.chain)
			out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script, strconv.Itoa(echo.port())), "")
			if err != nil {
				t.Fatalf("python: %v\n%s%s", err, out, stderr)
			}
			f := strings.Fields(out)
			if len(f) != 2 || f[0] != tc.want {
				t.Fatalf("python printed %q", out)
			}
			if a, err := netip.ParseAddr(f[1]); err != nil || !a.Is6() || a.Is4In6() || !isSynthetic(a) {
				t.Fatalf("peer %q is not the IPv6 synthetic address", f[1])
			}
		})
	}
}

// TestPlainDirectFastPath: under plain `direct` the library connects
// literal addresses itself once the funnel has said so, so most of many
// connections make no round trip; a profile with any parameter or piece
// keeps every connect in the funnel. A refused fast-path connect is still
// reported and logged as a failed flow.
func TestPlainDirectFastPath(t *testing.T) {
	echo := echoWithLog(t)
	const conns = 200
	for _, tc := range []struct {
		chain string
		fast  bool
	}{
		{"direct", true},
		{"direct timeout=5s", false},
		{"hosts demo.test=127.0.0.1", false},
	} {
		t.Run(tc.chain, func(t *testing.T) {
			ft := startFunnel(t, tc.chain)
			out, stderr, err := run(t, ft.hooked(ctxFor(t, 60*time.Second), built.client, "echo", "127.0.0.1", strconv.Itoa(echo.port()), strconv.Itoa(conns)), "")
			if err != nil || !strings.HasPrefix(out, "ok "+strconv.Itoa(conns)+" ") {
				t.Fatalf("ftclient: %v\n%s%s", err, out, stderr)
			}
			n := ft.srv.connectRequests.Load()
			if tc.fast && (n < 1 || n >= conns) {
				// Every round trip renews the memory for a second: all
				// 200 would need a second each to ask every time.
				t.Fatalf("%d CONNECT requests for %d connections: the fast path was not taken", n, conns)
			}
			if !tc.fast && n != conns {
				t.Fatalf("%d CONNECT requests for %d connections, want one each", n, conns)
			}
		})
	}

	t.Run("refused-is-logged", func(t *testing.T) {
		py := python(t)
		closed := testutil.FreePort(t)
		ft := startFunnel(t, "direct")
		script := `
import socket, sys, errno
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.close()
s = socket.socket()
print(errno.errorcode.get(s.connect_ex(("127.0.0.1", int(sys.argv[2]))), "connected"))
`
		out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script, strconv.Itoa(echo.port()), strconv.Itoa(closed)), "")
		if err != nil || strings.TrimSpace(out) != "ECONNREFUSED" {
			t.Fatalf("python: %v\n%s%s", err, out, stderr)
		}
		if n := ft.srv.connectRequests.Load(); n != 1 {
			t.Fatalf("%d CONNECT requests, want 1 (the second connect on the fast path)", n)
		}
		// The report is one-way: wait for the funnel to have read it.
		want := "127.0.0.1:" + strconv.Itoa(closed)
		deadline := time.Now().Add(10 * time.Second)
		for {
			logs := ft.log.String()
			if strings.Contains(logs, "failed fast-path connect") && strings.Contains(logs, "flow failed") && strings.Contains(logs, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no failed flow to %s logged:\n%s", want, logs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

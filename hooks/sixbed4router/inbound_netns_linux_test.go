//go:build linux

package sixbed4router

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

// echoPy is an IPv4-only server, as a program that knows nothing of IPv6
// is written: it listens on 0.0.0.0:argv[1], and answers each line with
// the line and the client address accept() reported.
const echoPy = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("echo listening", flush=True)
while True:
    c, peer = s.accept()
    line = c.makefile("rb").readline().decode().strip()
    c.sendall(("echo %s from %s\n" % (line, peer[0])).encode())
    c.close()
`

const (
	aTunnel  = 5555 // A's tunnel port, fixed so that its 6bed4 address is known
	echoPort = 9000
)

// A hooked server on B that never connects anywhere listens on all
// addresses; under profile=6bed4 it is reachable on B's 6bed4 address on
// the same port. A's curl (and ncat) under profile=6bed4 reach it through
// the tunnel; each connection is an inbound flow of B's funnel, and the
// server's accept() names A's 6bed4 address as the client.
func TestNetnsHookedServerAcceptsThroughTunnel(t *testing.T) {
	needNetns(t, "ncat")
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)
	l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String())

	bAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostBV4, bTunnel)), 1)
	aAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostAV4, aTunnel)), 1)

	bWeb := t.TempDir()
	os.WriteFile(filepath.Join(bWeb, "small"), []byte("hello from B\n"), 0o644)
	bEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostBV4, bTunnel))
	// No accept=: the servers' own listen() makes them reachable.
	bOut, _ := l.b.start(t, bEnv, "Serving HTTP", funtun, "--debug", "profile=6bed4", "sh", "-c",
		fmt.Sprintf("python3 -u -c '%s' %d & cd %s && exec python3 -u -m http.server %d --bind ::", echoPy, echoPort, bWeb, bPort))
	for _, port := range []int{bPort, echoPort} {
		// The log line of netstack's listener, once the tunnel is up.
		waitFor(t, bOut, fmt.Sprintf(`addr=[%s]:%d`, bAddr, port), nil)
	}

	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostAV4, aTunnel))
	script := fmt.Sprintf(`curl -sS http://[%s]:%d/small
echo ping | ncat %s %d`, bAddr, bPort, bAddr, echoPort)
	out := l.a.must(t, aEnv, funtun, "profile=6bed4", "sh", "-c", script)
	for _, want := range []string{"hello from B", "echo ping from 0.0.0.0"} {
		if !strings.Contains(out, want) {
			t.Fatalf("A's output lacks %q:\n%s\nB's output:\n%s", want, out, bOut.String())
		}
	}

	// The server's access log names the real client: A's 6bed4 address,
	// which the IPv6 socket can say. The IPv4-only echo server was told
	// 0.0.0.0 (above), never a loopback address.
	waitFor(t, bOut, fmt.Sprintf(`%s - - `, aAddr), nil)

	// Each connection was a flow of B's funnel, both ways counted.
	for _, port := range []int{bPort, echoPort} {
		line := flowLine(t, bOut, fmt.Sprintf("dst=[%s]:%d", bAddr, port))
		t.Logf("B's funnel: %s", line)
		for _, want := range []string{"hook=preload", "profile=6bed4", "inbound=true", fmt.Sprintf("src=[%s]:", aAddr)} {
			if !strings.Contains(line, want) {
				t.Errorf("B's flow line to port %d lacks %q: %s", port, want, line)
			}
		}
		for _, dir := range []string{"up", "down"} {
			m := regexp.MustCompile(` ` + dir + `=(\d+) `).FindStringSubmatch(line)
			if m == nil || m[1] == "0" {
				t.Errorf("B's flow line to port %d counts no bytes %s: %s", port, dir, line)
			}
		}
	}

	// The program's socket itself still takes connections over IPv4,
	// from a program that is not hooked.
	if got := l.a.must(t, nil, "curl", "-sS", fmt.Sprintf("http://%s:%d/small", hostBV4, bPort)); !strings.Contains(got, "hello from B") {
		t.Errorf("curl over IPv4 to B's server got %q", got)
	}
}

// flowLine waits for the end-of-flow line that contains want: the flow
// ends in the funnel a moment after the client is done.
func flowLine(t *testing.T, out *testutil.LogBuffer, want string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.Contains(line, "msg=flow ") && strings.Contains(line, want) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flow line with %q in:\n%s", want, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A real resolver (dnsmasq) in the router's namespace answers for the
// hosts: v6only.test has only an IPv6 address (the service behind the
// router), v4name.test only an IPv4 one. curl under profile=6bed4 reaches
// both by name: the first through the tunnel, the second directly. Each
// name is resolved once per connection (the funnel's own query; the
// program's getaddrinfo is answered inside the funnel).
func TestNetnsIPv6OnlyNameGoesThroughTunnel(t *testing.T) {
	needNetns(t, "dnsmasq")
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)

	web := t.TempDir()
	os.WriteFile(filepath.Join(web, "hi.txt"), []byte("hello from IPv6 only\n"), 0o644)
	os.WriteFile(filepath.Join(web, "v4.txt"), []byte("hello over IPv4\n"), 0o644)
	l.router.start(t, nil, "Serving HTTP", "python3", "-u", "-m", "http.server", strconv.Itoa(webPort), "--bind", "::1", "--directory", web)
	l.router.start(t, nil, "Serving HTTP", "python3", "-u", "-m", "http.server", "8001", "--bind", routerV4, "--directory", web)
	l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String(), "--expose", fmt.Sprintf("[%s]:80=[::1]:%d", service, webPort))
	dns, _ := l.router.start(t, nil, "started, version", "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--log-queries",
		"--no-resolv", "--no-hosts", "--local=/test/", "--bind-interfaces", "--listen-address="+routerV4, "--user=root",
		"--pid-file="+filepath.Join(t.TempDir(), "dnsmasq.pid"),
		"--host-record=v6only.test,"+service, "--host-record=v4name.test,"+routerV4)
	l.a.resolvConf(t, "nameserver "+routerV4+"\n")

	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790", routerV4))
	out := l.a.must(t, aEnv, funtun, "--debug", "profile=6bed4", "sh", "-c", "curl -sS http://v6only.test/hi.txt && curl -sS http://v4name.test:8001/v4.txt")
	for _, want := range []string{"hello from IPv6 only", "hello over IPv4"} {
		if !strings.Contains(out, want) {
			t.Fatalf("A's output lacks %q:\n%s\ndnsmasq:\n%s", want, out, dns.String())
		}
	}
	// The IPv6-only name went into the tunnel; the other did not.
	if !strings.Contains(out, "6bed4: tunnel up") {
		t.Errorf("the tunnel never came up for v6only.test:\n%s", out)
	}
	for name, want := range map[string]int{"v6only.test": 1, "v4name.test": 1} {
		for _, qtype := range []string{"A", "AAAA"} {
			if n := strings.Count(dns.String(), fmt.Sprintf("query[%s] %s from %s", qtype, name, hostAV4)); n != want {
				t.Errorf("dnsmasq was asked for the %s record of %s %d times, want %d:\n%s", qtype, name, n, want, dns.String())
			}
		}
	}
}

// resolvConf gives the namespace its own /etc/resolv.conf, which `ip
// netns exec` mounts over the host's for what runs in it.
func (n *netns) resolvConf(t *testing.T, text string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The same server run under mode=seccomp (no library: as a static or Go
// server would be) is reachable through the tunnel too: the supervisor
// stops its listen() because the profile listens for it (netstack), not
// only when a piece acts on incoming streams.
func TestNetnsSupervisedServerAcceptsThroughTunnel(t *testing.T) {
	needNetns(t, "curl")
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)
	l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String())
	bAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostBV4, bTunnel)), 1)

	bWeb := t.TempDir()
	os.WriteFile(filepath.Join(bWeb, "small"), []byte("hello from supervised B\n"), 0o644)
	bEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostBV4, bTunnel))
	bOut, _ := l.b.start(t, bEnv, "Serving HTTP", funtun, "--debug", "mode=seccomp", "profile=6bed4",
		"python3", "-u", "-m", "http.server", strconv.Itoa(bPort), "--bind", "::", "--directory", bWeb)
	waitFor(t, bOut, fmt.Sprintf(`addr=[%s]:%d`, bAddr, bPort), nil)

	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostAV4, aTunnel))
	out := l.a.must(t, aEnv, funtun, "profile=6bed4", "curl", "-sS", fmt.Sprintf("http://[%s]:%d/small", bAddr, bPort))
	if !strings.Contains(out, "hello from supervised B") {
		t.Fatalf("A's curl through the tunnel got %q\nB's output:\n%s", out, bOut.String())
	}
	line := flowLine(t, bOut, fmt.Sprintf("dst=[%s]:%d", bAddr, bPort))
	if !strings.Contains(line, "inbound=true") {
		t.Errorf("B's flow line is not an inbound flow: %s", line)
	}
}

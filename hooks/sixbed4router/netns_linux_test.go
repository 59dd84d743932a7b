//go:build linux

package sixbed4router

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

// The test builds a small IPv4-only network of namespaces joined by a
// bridge in a switch namespace: a router (funtun 6bed4router, with an
// IPv6-only python3 web server behind it) and two hosts A and B whose
// only addresses are IPv4. Programs on A and B run under the launcher
// with profile=6bed4. Nothing leaves the namespaces the test makes.

var nsSeq atomic.Int32

func needNetns(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"ip", "python3", "curl", "tshark", "cc"}, tools...) {
		testutil.NeedTool(t, tool)
	}
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("network namespaces need root")
	}
}

type netns struct{ name string }

func newNetns(t *testing.T, role string) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("s6b%d%s%d", os.Getpid(), role, nsSeq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "pids", n.name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, _ := strconv.Atoi(f); pid > 0 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		exec.Command("ip", "netns", "del", n.name).Run()
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

func (n *netns) run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *netns) must(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := n.run(t, env, args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", n.name, strings.Join(args, " "), err, out)
	}
	return out
}

// start runs a daemon in the namespace until the test ends and waits for
// ready in its output; stop (SIGINT) ends it earlier and waits for it.
func (n *netns) start(t *testing.T, env []string, ready string, args ...string) (out *testutil.LogBuffer, stop func()) {
	t.Helper()
	out = &testutil.LogBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", args[0], err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("output of %s in %s:\n%s", strings.Join(args, " "), n.name, out.String())
		}
	})
	waitFor(t, out, ready, exited)
	return out, stop
}

func waitFor(t *testing.T, out *testutil.LogBuffer, want string, exited <-chan struct{}) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(out.String(), want) {
		select {
		case <-exited:
			t.Fatalf("ended before %q:\n%s", want, out.String())
		case <-deadline:
			t.Fatalf("no %q after 30s:\n%s", want, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// launcherDir holds funtun and libfuntun.so side by side, as the launcher
// needs them: $FUNTUN_BIN when it has both, else built for this test.
func launcherDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("FUNTUN_BIN"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "libfuntun.so")); err == nil {
			return dir
		}
	}
	dir := t.TempDir()
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	sources, _ := filepath.Glob(filepath.Join(root, "preload", "*.c"))
	for _, step := range [][]string{
		{"go", "build", "-o", filepath.Join(dir, "funtun"), "./cmd/funtun"},
		append(append([]string{"cc", "-shared", "-fPIC", "-O2", "-o", filepath.Join(dir, "libfuntun.so")}, sources...), "-ldl", "-lpthread"),
	} {
		cmd := exec.Command(step[0], step[1:]...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(step, " "), err, out)
		}
	}
	return dir
}

const (
	routerV4 = "10.66.0.1"
	hostAV4  = "10.66.0.2"
	hostBV4  = "10.66.0.3"
	bTunnel  = 4444 // B's tunnel port, fixed so that its 6bed4 address is known
	webPort  = 8000 // the IPv6-only server behind the router, on [::1]
	bPort    = 8080 // B's own server, on 127.0.0.1
)

var (
	netPrefix = netip.MustParsePrefix("2001:db8:6bed:4::/64")
	service   = "2001:db8:80::1"
)

type lab struct {
	sw, router, a, b *netns
	routerIf         string
}

// newLab wires the router, A and B to a bridge. A and B have IPv6 turned
// off on their interfaces: no link-local address, no IPv6 route.
func newLab(t *testing.T) *lab {
	l := &lab{sw: newNetns(t, "w"), router: newNetns(t, "r"), a: newNetns(t, "a"), b: newNetns(t, "b")}
	l.sw.ip(t, "link", "add", "br0", "type", "bridge")
	l.sw.ip(t, "link", "set", "br0", "up")
	for i, host := range []*netns{l.router, l.a, l.b} {
		inner, outer := fmt.Sprintf("e6b%d", i), fmt.Sprintf("p6b%d", i)
		host.ip(t, "link", "add", inner, "type", "veth", "peer", "name", outer, "netns", l.sw.name)
		l.sw.ip(t, "link", "set", outer, "master", "br0", "up")
		host.must(t, nil, "sysctl", "-qw", "net.ipv6.conf."+inner+".disable_ipv6=1")
		host.ip(t, "addr", "add", fmt.Sprintf("10.66.0.%d/24", i+1), "dev", inner)
		host.ip(t, "link", "set", inner, "up")
		if host == l.router {
			l.routerIf = inner
		}
	}
	return l
}

func profileDir(t *testing.T, tunnel string) []string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "6bed4-tunnel.profile"), []byte(tunnel+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "FUNTUN_PROFILE_PATH="+dir)
}

func TestNetnsPeersReachServiceAndEachOtherDirectly(t *testing.T) {
	needNetns(t)
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)

	web := t.TempDir()
	os.WriteFile(filepath.Join(web, "hi.txt"), []byte("hello from IPv6 only\n"), 0o644)
	l.router.start(t, nil, "Serving HTTP", "python3", "-u", "-m", "http.server", strconv.Itoa(webPort), "--bind", "::1", "--directory", web)
	routerOut, stopRouter := l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String(), "--expose", fmt.Sprintf("[%s]:80=[::1]:%d", service, webPort))

	// The capture on the router's interface sees everything that passes
	// the router, and nothing that goes between A and B directly.
	pcap := filepath.Join(t.TempDir(), "router.pcap")
	_, stopCapture := l.router.start(t, nil, "Capturing on", "tshark", "-i", l.routerIf, "-w", pcap, "-f", "udp")

	bTunnelAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostBV4, bTunnel)), 1)
	bURL := fmt.Sprintf("http://[%s]:%d", bTunnelAddr, bPort)
	serviceURL := fmt.Sprintf("http://[%s]/hi.txt", service)

	// B: a python3 web server on 127.0.0.1, which netstack's accept=
	// makes reachable on B's tunnel address; B's first flow (curl to the
	// service) brings the tunnel up.
	bWeb := t.TempDir()
	os.WriteFile(filepath.Join(bWeb, "small"), []byte("hello from B\n"), 0o644)
	os.WriteFile(filepath.Join(bWeb, "blob"), []byte(strings.Repeat("6bed4 direct ", 200_000)), 0o644)
	bEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct accept=%d | 6bed4 router=%s:25790 listen=%s:%d", bPort, routerV4, hostBV4, bTunnel))
	bOut, _ := l.b.start(t, bEnv, "Serving HTTP", funtun, "--debug", "profile=6bed4", "sh", "-c",
		fmt.Sprintf("curl -sS %s && cd %s && exec python3 -u -m http.server %d --bind 127.0.0.1", serviceURL, bWeb, bPort))
	if !strings.Contains(bOut.String(), "hello from IPv6 only") {
		t.Fatalf("B did not reach the IPv6-only service behind the router:\n%s", bOut.String())
	}

	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790", routerV4))
	// One launcher for the whole script, so one tunnel and one neighbor
	// cache: the first request to B finds B, the second goes directly.
	script := fmt.Sprintf(`curl -sS %s
curl -sS %s/small
sleep 1
date +MARK%%s.%%N
curl -sS -o /dev/null -w 'blob %%{http_code} %%{size_download}\n' %s/blob
date +MARK%%s.%%N`, serviceURL, bURL, bURL)
	out := l.a.must(t, aEnv, funtun, "profile=6bed4", "sh", "-c", script)
	for _, want := range []string{"hello from IPv6 only", "hello from B", fmt.Sprintf("blob 200 %d", 200_000*len("6bed4 direct "))} {
		if !strings.Contains(out, want) {
			t.Fatalf("A's output lacks %q:\n%s", want, out)
		}
	}
	var marks []float64
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(line, "MARK"); ok {
			f, _ := strconv.ParseFloat(s, 64)
			marks = append(marks, f)
		}
	}
	if len(marks) != 2 {
		t.Fatalf("no two marks in A's output:\n%s", out)
	}
	stopCapture()
	stopRouter()

	// Every datagram with a payload between A or B and the router, by
	// time: the blob must have gone by none of them.
	fields := l.router.must(t, nil, "tshark", "-r", pcap, "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "udp.length")
	var before, during, all int
	for _, line := range strings.Split(strings.TrimSpace(fields), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		at, _ := strconv.ParseFloat(f[0], 64)
		size, _ := strconv.Atoi(f[3])
		peers := (f[1] == hostAV4 || f[1] == hostBV4) || (f[2] == hostAV4 || f[2] == hostBV4)
		if !peers || size <= 8 { // 8: a keepalive, an empty datagram
			continue
		}
		all++
		switch {
		case at < marks[0]:
			before++
		case at <= marks[1]:
			during++
		}
	}
	t.Logf("datagrams through the router: %d before the blob, %d during it, %d in all", before, during, all)
	if before == 0 {
		t.Fatalf("the capture shows nothing through the router before the blob: is it capturing?\n%s", fields)
	}
	if during != 0 {
		t.Errorf("%d datagrams passed the router while A fetched the blob from B; after the Neighbor Solicitation they should go directly", during)
	}
	if !strings.Contains(bOut.String(), "peer reachable directly") {
		t.Errorf("B never saw A reachable directly:\n%s", bOut.String())
	}
	if strings.Contains(routerOut.String(), "level=ERROR") {
		t.Errorf("the router logged errors:\n%s", routerOut.String())
	}
}

// spoofPy sends one IPv6 packet (UDP, 5 bytes) in a UDP datagram from
// this host's port 5555 to the tunnel endpoint argv[1]:argv[2], with the
// IPv6 source argv[3] and destination argv[4], and prints what comes back
// within a second ("nothing", or the ICMPv6 type of an IPv6 reply).
const spoofPy = `
import socket, struct, sys
host, port, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
payload = b"spoof"
udp = struct.pack("!HHHH", 1234, 80, 8 + len(payload), 0) + payload
ip6 = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5555))
s.settimeout(1.0)
s.sendto(ip6 + udp, (host, port))
try:
    data, _ = s.recvfrom(2048)
    if len(data) >= 48 and data[6] == 58:
        print("icmpv6 type", data[40], "prefix", socket.inet_ntop(socket.AF_INET6, data[40+16+16:40+16+32]))
    else:
        print("reply of", len(data), "bytes")
except socket.timeout:
    print("nothing")
`

func TestNetnsSpoofedSourcesAreDropped(t *testing.T) {
	needNetns(t)
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)
	web := t.TempDir()
	os.WriteFile(filepath.Join(web, "hi.txt"), []byte("hello from IPv6 only\n"), 0o644)
	l.router.start(t, nil, "Serving HTTP", "python3", "-u", "-m", "http.server", strconv.Itoa(webPort), "--bind", "::1", "--directory", web)
	routerOut, _ := l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String(), "--expose", fmt.Sprintf("[%s]:80=[::1]:%d", service, webPort))
	bEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostBV4, bTunnel))
	bOut, _ := l.b.start(t, bEnv, "hello from IPv6 only", funtun, "--debug", "profile=6bed4", "sh", "-c",
		fmt.Sprintf("curl -sS http://[%s]/hi.txt && sleep 120", service))
	bAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostBV4, bTunnel)), 1)
	aAddr := wire.Address(netPrefix, netip.MustParseAddrPort(hostAV4+":5555"), 1)
	spoof := func(host string, port int, src, dst string) string {
		return strings.TrimSpace(l.a.must(t, nil, "python3", "-c", spoofPy, host, strconv.Itoa(port), src, dst))
	}

	// From outside the router's prefix: not a peer at all.
	if got := spoof(routerV4, 25790, "2001:db8:1::66", bAddr.String()); got != "nothing" {
		t.Errorf("a packet with a foreign source to the router got %q back", got)
	}
	waitFor(t, routerOut, `why="spoofed source"`, nil)

	// B's address sent from A's IPv4 address and port: the router takes
	// it for a changed NAT mapping, drops the packet and tells A its own
	// prefix (the corrective Router Advertisement).
	got := spoof(routerV4, 25790, bAddr.String(), service)
	if want := fmt.Sprintf("icmpv6 type 134 prefix %s", wire.WithLANIP(aAddr, 0)); got != want {
		t.Errorf("a packet claiming B's address from A got %q back, want %q", got, want)
	}
	waitFor(t, routerOut, "advertised its new prefix", nil)

	// Straight to B, claiming to be the service behind the router: B
	// accepts only peers whose address names where they send from.
	if got := spoof(hostBV4, bTunnel, service, bAddr.String()); got != "nothing" {
		t.Errorf("B answered a spoofed packet: %q", got)
	}
	waitFor(t, bOut, `why="spoofed source"`, nil)
	// And claiming to be another peer under the prefix (A's address with
	// a port it does not send from).
	other := wire.Address(netPrefix, netip.MustParseAddrPort(hostAV4+":6666"), 1)
	spoof(hostBV4, bTunnel, other.String(), bAddr.String())
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(bOut.String(), `why="spoofed source"`) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(bOut.String(), `why="spoofed source"`); n != 2 {
		t.Errorf("B logged %d spoofed drops, want 2:\n%s", n, bOut.String())
	}
}

// With --tun the router hands what is not for a peer to a TUN device, and
// the kernel routes the answers back into it: here to a python3 server on
// an IPv6 address of the router's namespace.
func TestNetnsRouterOnTUN(t *testing.T) {
	needNetns(t)
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)
	l.router.ip(t, "tuntap", "add", "dev", "t6b", "mode", "tun")
	l.router.ip(t, "link", "set", "t6b", "up", "mtu", "1280")
	l.router.ip(t, "addr", "add", service+"/128", "dev", "t6b", "nodad")
	l.router.ip(t, "-6", "route", "add", netPrefix.String(), "dev", "t6b")
	web := t.TempDir()
	os.WriteFile(filepath.Join(web, "hi.txt"), []byte("hello from the kernel's IPv6\n"), 0o644)
	l.router.start(t, nil, "Serving HTTP", "python3", "-u", "-m", "http.server", strconv.Itoa(webPort), "--bind", service, "--directory", web)
	l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String(), "--tun", "t6b")
	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790", routerV4))
	out := l.a.must(t, aEnv, funtun, "profile=6bed4", "curl", "-sS", fmt.Sprintf("http://[%s]:%d/hi.txt", service, webPort))
	if !strings.Contains(out, "hello from the kernel's IPv6") {
		t.Fatalf("A did not reach the server behind the TUN device:\n%s", out)
	}
}

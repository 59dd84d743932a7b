//go:build linux

package redirect

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The tests build small networks of namespaces joined by veth pairs, write
// the firewall rules with the real nft, run the real funtun binary inside
// a namespace, and drive it with ncat, dig and python3 peers. Nothing
// leaves the namespaces the test makes.

var nsSeq atomic.Int32

// needNetns checks for root and the tools, and that this kernel lets us
// make a namespace; under CI=true anything missing fails the test.
func needNetns(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"ip", "nft", "python3"}, tools...) {
		testutil.NeedTool(t, tool)
	}
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("network namespaces and firewall rules need root")
		return
	}
	name := fmt.Sprintf("frprobe%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fail("ip netns add: %v: %s", err, out)
		return
	}
	exec.Command("ip", "netns", "del", name).Run()
}

type netns struct{ name string }

// newNetns makes a namespace that goes away with the test, and every
// process the test left in it.
func newNetns(t *testing.T, role string) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("fr%d%s%d", os.Getpid(), role, nsSeq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "pids", n.name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				var pid int
				fmt.Sscan(f, &pid)
				if pid > 0 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		exec.Command("ip", "netns", "del", n.name).Run()
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n NS ARGS…`.
func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

// exec runs a command inside the namespace and returns its output.
func (n *netns) exec(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *netns) must(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := n.exec(stdin, args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", n.name, strings.Join(args, " "), err, out)
	}
	return out
}

// nft loads a ruleset into the namespace.
func (n *netns) nft(t *testing.T, rules string) {
	t.Helper()
	n.must(t, rules, "nft", "-f", "-")
}

// start runs a daemon in the namespace until the test ends, and waits
// until its output says ready.
func (n *netns) start(t *testing.T, ready string, args ...string) *testutil.LogBuffer {
	t.Helper()
	out := &testutil.LogBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", args[0], err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("output of %s in %s:\n%s", strings.Join(args, " "), n.name, out.String())
		}
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(out.String(), ready) {
		select {
		case <-exited:
			t.Fatalf("%s ended before it was ready:\n%s", strings.Join(args, " "), out.String())
		case <-deadline:
			t.Fatalf("%s not ready after 20s:\n%s", strings.Join(args, " "), out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return out
}

// waitFor waits until a daemon's output contains want.
func waitFor(t *testing.T, out *testutil.LogBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(out.String(), want) {
			return
		}
	}
	t.Fatalf("no %q in the output:\n%s", want, out.String())
}

// veth joins a and b: aIf in a with aAddrs, bIf in b with bAddrs.
func veth(t *testing.T, a *netns, aIf string, aAddrs []string, b *netns, bIf string, bAddrs []string) {
	t.Helper()
	a.ip(t, "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.name)
	for _, ad := range aAddrs {
		a.ip(t, addrArgs(aIf, ad)...)
	}
	for _, ad := range bAddrs {
		b.ip(t, addrArgs(bIf, ad)...)
	}
	a.ip(t, "link", "set", aIf, "up")
	b.ip(t, "link", "set", bIf, "up")
}

func addrArgs(dev, addr string) []string {
	args := []string{"addr", "add", addr, "dev", dev}
	if strings.Contains(addr, ":") {
		// No duplicate address detection: the address works at once.
		args = append(args, "nodad")
	}
	return args
}

// gateway is client ─ gw ─ server: the client reaches the server's
// networks only through the gateway, which forwards.
type gateway struct{ client, gw, server *netns }

const (
	clientV4, gwInV4, gwOutV4, serverV4 = "10.200.1.2", "10.200.1.1", "10.200.2.1", "10.200.2.2"
	clientV6, gwInV6, gwOutV6, serverV6 = "fd00:200:1::2", "fd00:200:1::1", "fd00:200:2::1", "fd00:200:2::2"
)

func newGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{client: newNetns(t, "c"), gw: newNetns(t, "g"), server: newNetns(t, "s")}
	veth(t, g.client, "eth0", []string{clientV4 + "/24", clientV6 + "/64"}, g.gw, "lan0", []string{gwInV4 + "/24", gwInV6 + "/64"})
	veth(t, g.gw, "wan0", []string{gwOutV4 + "/24", gwOutV6 + "/64"}, g.server, "eth0", []string{serverV4 + "/24", serverV6 + "/64"})
	g.client.ip(t, "route", "add", "default", "via", gwInV4)
	g.client.ip(t, "-6", "route", "add", "default", "via", gwInV6)
	g.server.ip(t, "route", "add", "default", "via", gwOutV4)
	g.server.ip(t, "-6", "route", "add", "default", "via", gwOutV6)
	g.gw.must(t, "", "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return g
}

// tproxyRouting is what TPROXY needs besides the rule: packets marked 1
// are delivered locally whatever their destination.
func tproxyRouting(t *testing.T, n *netns) {
	t.Helper()
	n.ip(t, "rule", "add", "fwmark", "1", "lookup", "100")
	n.ip(t, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	n.ip(t, "-6", "rule", "add", "fwmark", "1", "lookup", "100")
	n.ip(t, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
}

func peerScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "peer.py"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tcpServer runs the line server on [::]:port (both families).
func tcpServer(t *testing.T, n *netns, port int) *testutil.LogBuffer {
	t.Helper()
	return n.start(t, "listening", "python3", peerScript(t), "tcp-server", "::", fmt.Sprint(port))
}

// funtunRedirect runs `funtun redirect ARGS…` in n until it serves.
func funtunRedirect(t *testing.T, n *netns, args ...string) *testutil.LogBuffer {
	t.Helper()
	_, env := testutil.ProfileDir(t)
	out, _ := runFuntun(t, n, env, nil, args...)
	return out
}

// runFuntun runs `PREFIX… funtun redirect ARGS…` in n with env until it
// serves.
func runFuntun(t *testing.T, n *netns, env, prefix []string, args ...string) (*testutil.LogBuffer, *exec.Cmd) {
	t.Helper()
	bin := testutil.Funtun(t)
	out := &testutil.LogBuffer{}
	argv := append([]string{"netns", "exec", n.name}, prefix...)
	cmd := exec.Command("ip", append(append(argv, bin, "redirect"), args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("funtun redirect %s:\n%s", strings.Join(args, " "), out.String())
		}
	})
	if prefix != nil {
		// A socket activator starts funtun at the first connection.
		return out, cmd
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "redirect serving"); time.Sleep(10 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatalf("funtun redirect ended:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("funtun redirect not serving after 20s:\n%s", out.String())
		}
	}
	return out, cmd
}

// ncat sends line to addr:port from n and returns what came back (and
// ncat's complaint, if any).
func ncat(n *netns, line, addr string, port int, prefix ...string) (string, error) {
	args := append(prefix, "ncat", addr, fmt.Sprint(port))
	return n.exec(line+"\n", args...)
}

const rewriteChain = "chain=rewrite from=hello to=HOWDY"

// A gateway redirects another host's connection (prerouting, IPv4): the
// server sees the rewritten line, the client the server's answer.
func TestRedirectGatewayIPv4Rewrite(t *testing.T) {
	needNetns(t, "ncat")
	g := newGateway(t)
	srv := tcpServer(t, g.server, 8080)
	g.gw.nft(t, `table ip rdtest {
	chain pre { type nat hook prerouting priority dstnat; ip daddr `+serverV4+` tcp dport 8080 redirect to :7474; }
}`)
	log := funtunRedirect(t, g.gw, "--listen", gwInV4+":7474", rewriteChain)
	out, err := ncat(g.client, "hello world", serverV4, 8080)
	if err != nil || !strings.Contains(out, "reply:HOWDY world") {
		t.Fatalf("client got %q (%v), want the server's answer to the rewritten line", out, err)
	}
	waitFor(t, srv, "got HOWDY world from "+gwOutV4)
	waitFor(t, log, "dst="+serverV4+":8080")
}

// IPv6, and both families on one dual-stack listener (":7474"), where an
// IPv4 client's connection arrives as an IPv4-mapped address.
func TestRedirectGatewayIPv6DualStack(t *testing.T) {
	needNetns(t, "ncat")
	g := newGateway(t)
	srv := tcpServer(t, g.server, 8080)
	g.gw.nft(t, `table inet rdtest {
	chain pre { type nat hook prerouting priority dstnat;
		ip6 daddr `+serverV6+` tcp dport 8080 redirect to :7474
		ip daddr `+serverV4+` tcp dport 8080 redirect to :7474
	}
}`)
	log := funtunRedirect(t, g.gw, "--listen", ":7474", rewriteChain)
	out, err := ncat(g.client, "hello six", serverV6, 8080)
	if err != nil || !strings.Contains(out, "reply:HOWDY six") {
		t.Fatalf("IPv6: client got %q (%v)", out, err)
	}
	waitFor(t, srv, "got HOWDY six from "+gwOutV6)
	waitFor(t, log, "dst=["+serverV6+"]:8080")
	out, err = ncat(g.client, "hello four", serverV4, 8080)
	if err != nil || !strings.Contains(out, "reply:HOWDY four") {
		t.Fatalf("IPv4 on the dual-stack listener: client got %q (%v)", out, err)
	}
	waitFor(t, srv, "got HOWDY four from "+gwOutV4)
	waitFor(t, log, "dst="+serverV4+":8080")
}

// A deny profile: the client sees its connection reset, the server sees
// nothing, and the log says why.
func TestRedirectDeny(t *testing.T) {
	needNetns(t, "ncat")
	g := newGateway(t)
	srv := tcpServer(t, g.server, 8080)
	g.gw.nft(t, `table ip rdtest {
	chain pre { type nat hook prerouting priority dstnat; ip daddr `+serverV4+` tcp dport 8080 redirect to :7474; }
}`)
	log := funtunRedirect(t, g.gw, "--listen", "0.0.0.0:7474", "chain=deny to=port:8080 reason=no-web")
	out, err := ncat(g.client, "hello world", serverV4, 8080)
	if err == nil || strings.Contains(out, "reply:") {
		t.Fatalf("denied connection: client got %q (%v), want a refusal", out, err)
	}
	if !strings.Contains(out, "reset") {
		t.Errorf("client saw %q; a reset was expected", out)
	}
	waitFor(t, log, "kind=denied")
	if strings.Contains(srv.String(), "got") {
		t.Errorf("the server was reached:\n%s", srv.String())
	}
}

// TPROXY'd TCP, both families, through the rewrite profile (TCP only:
// --udp=false, since rewrite carries streams).
func TestTProxyTCP(t *testing.T) {
	needNetns(t, "ncat")
	g := newGateway(t)
	srv := tcpServer(t, g.server, 8080)
	tproxyRouting(t, g.gw)
	g.gw.nft(t, `table inet rdtest {
	chain pre { type filter hook prerouting priority mangle;
		ip daddr `+serverV4+` tcp dport 8080 tproxy ip to :7474 meta mark set 1 accept
		ip6 daddr `+serverV6+` tcp dport 8080 tproxy ip6 to :7474 meta mark set 1 accept
	}
}`)
	log := funtunRedirect(t, g.gw, "--tproxy", "--udp=false", "--listen", "0.0.0.0:7474", "--listen", "[::]:7474", rewriteChain)
	for _, dst := range []string{serverV4, serverV6} {
		out, err := ncat(g.client, "hello tproxy", dst, 8080)
		if err != nil || !strings.Contains(out, "reply:HOWDY tproxy") {
			t.Fatalf("to %s: client got %q (%v)", dst, out, err)
		}
	}
	waitFor(t, srv, "got HOWDY tproxy from "+gwOutV4)
	waitFor(t, srv, "got HOWDY tproxy from "+gwOutV6)
	waitFor(t, log, "dst=["+serverV6+"]:8080")
}

// TPROXY'd UDP and TCP through a plain-direct profile: dig asks a DNS
// server behind the gateway, both families; dig takes the answer only
// from the address it asked, so its answer shows that replies leave from
// the original destination. A TCP connection alongside takes the event
// loops with the TPROXY'd socket's own address as its destination.
func TestTProxyDirectUDPAndTCP(t *testing.T) {
	needNetns(t, "dig", "ncat")
	g := newGateway(t)
	dns := g.server.start(t, "listening", "python3", peerScript(t), "dns-server", "::", "53")
	srv := tcpServer(t, g.server, 8080)
	tproxyRouting(t, g.gw)
	g.gw.nft(t, `table inet rdtest {
	chain pre { type filter hook prerouting priority mangle;
		ip daddr `+serverV4+` meta l4proto { tcp, udp } th dport { 53, 8080 } tproxy ip to :7474 meta mark set 1 accept
		ip6 daddr `+serverV6+` meta l4proto { tcp, udp } th dport { 53, 8080 } tproxy ip6 to :7474 meta mark set 1 accept
	}
}`)
	log := funtunRedirect(t, g.gw, "--tproxy", "--listen", "0.0.0.0:7474", "--listen", "[::]:7474", "chain=direct")
	for _, q := range []struct{ server, name, from string }{
		{serverV4, "four.example", gwOutV4},
		{serverV6, "six.example", gwOutV6},
	} {
		out, err := g.client.exec("", "dig", "@"+q.server, q.name, "+short", "+tries=1", "+time=5")
		if err != nil || strings.TrimSpace(out) != "192.0.2.7" {
			t.Fatalf("dig @%s %s: %q (%v)", q.server, q.name, out, err)
		}
		// The server was asked by the gateway, not by the client: the
		// query went through funtun.
		waitFor(t, dns, "query "+q.name+" from "+q.from)
	}
	for _, dst := range []string{serverV4, serverV6} {
		out, err := ncat(g.client, "hello direct", dst, 8080)
		if err != nil || !strings.Contains(out, "reply:hello direct") {
			t.Fatalf("TCP to %s: client got %q (%v)", dst, out, err)
		}
	}
	waitFor(t, srv, "got hello direct from "+gwOutV4)
	waitFor(t, srv, "got hello direct from "+gwOutV6)
	waitFor(t, log, "dst=["+serverV6+"]:8080")
}

// hostPair is a host whose own programs are redirected, and a server.
type hostPair struct{ host, server *netns }

func newHostPair(t *testing.T) *hostPair {
	t.Helper()
	p := &hostPair{host: newNetns(t, "h"), server: newNetns(t, "s")}
	veth(t, p.host, "eth0", []string{"10.200.1.1/24"}, p.server, "eth0", []string{"10.200.1.2/24"})
	return p
}

// A host redirects its own programs: those of user nobody (output chain,
// meta skuid), while root's go straight. A connection made directly to
// the listener is refused with a log line.
func TestRedirectOwnHostByUser(t *testing.T) {
	needNetns(t, "ncat", "setpriv")
	p := newHostPair(t)
	srv := tcpServer(t, p.server, 8080)
	p.host.nft(t, `table ip rdtest {
	chain out { type nat hook output priority -100;
		meta mark 0x66756e return
		meta skuid nobody tcp dport 8080 redirect to :7474
	}
}`)
	log := funtunRedirect(t, p.host, rewriteChain) // the default listeners
	asNobody := []string{"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"}
	out, err := ncat(p.host, "hello from nobody", "10.200.1.2", 8080, asNobody...)
	if err != nil || !strings.Contains(out, "reply:HOWDY from nobody") {
		t.Fatalf("nobody's connection: %q (%v), want it rewritten", out, err)
	}
	out, err = ncat(p.host, "hello from root", "10.200.1.2", 8080)
	if err != nil || !strings.Contains(out, "reply:hello from root") {
		t.Fatalf("root's connection: %q (%v), want it untouched (no rule for root)", out, err)
	}
	waitFor(t, srv, "got HOWDY from nobody")
	waitFor(t, srv, "got hello from root")

	out, err = ncat(p.host, "hello listener", "127.0.0.1", 7474)
	if err == nil && strings.Contains(out, "reply:") {
		t.Fatalf("a direct connection to the listener was served: %q", out)
	}
	waitFor(t, log, "not redirected")
}

// Every program of the host is redirected, funtun's own connection
// included but for its mark: the rule that skips the mark counts the
// packets of funtun's connection, and the server gets exactly one.
func TestRedirectMarkSkipsOwnConnections(t *testing.T) {
	needNetns(t, "ncat")
	p := newHostPair(t)
	srv := tcpServer(t, p.server, 8080)
	p.host.nft(t, `table ip rdtest {
	chain out { type nat hook output priority -100;
		meta mark 0x66756e counter return
		tcp dport 8080 redirect to :7474
	}
}`)
	funtunRedirect(t, p.host, "--listen", "127.0.0.1:7474", rewriteChain)
	out, err := ncat(p.host, "hello mark", "10.200.1.2", 8080)
	if err != nil || !strings.Contains(out, "reply:HOWDY mark") {
		t.Fatalf("client got %q (%v)", out, err)
	}
	waitFor(t, srv, "got HOWDY mark")
	rules := p.host.must(t, "", "nft", "list", "chain", "ip", "rdtest", "out")
	if strings.Contains(rules, "counter packets 0 ") || !strings.Contains(rules, "counter packets") {
		t.Errorf("funtun's own connection did not pass the mark rule:\n%s", rules)
	}
	if n := strings.Count(srv.String(), "got "); n != 1 {
		t.Errorf("the server got %d connections, want 1:\n%s", n, srv.String())
	}
}

// Socket activation, readiness and reload: systemd-socket-activate passes
// the listener (--listen fd:NAME), funtun says READY=1 on NOTIFY_SOCKET,
// and SIGHUP brings a changed profile into force for new flows.
func TestRedirectSocketActivationAndReload(t *testing.T) {
	needNetns(t, "ncat", "systemd-socket-activate")
	p := newHostPair(t)
	srv := tcpServer(t, p.server, 8080)
	p.host.nft(t, `table ip rdtest {
	chain out { type nat hook output priority -100;
		meta mark 0x66756e return
		tcp dport 8080 redirect to :7474
	}
}`)
	dir, env := testutil.ProfileDir(t)
	profile := filepath.Join(dir, "web.profile")
	if err := os.WriteFile(profile, []byte("rewrite from=hello to=HOWDY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	env = append(env, "NOTIFY_SOCKET="+notify.LocalAddr().String())
	log, cmd := runFuntun(t, p.host, env,
		[]string{"systemd-socket-activate", "-l", "127.0.0.1:7474", "--fdname=redirect", "-E", "FUNTUN_PROFILE_PATH", "-E", "NOTIFY_SOCKET"},
		"--listen", "fd:redirect", "profile=web")
	// The activator starts funtun when this first connection arrives.
	out, err := ncat(p.host, "hello before", "10.200.1.2", 8080)
	if err != nil || !strings.Contains(out, "reply:HOWDY before") {
		t.Fatalf("before the reload: %q (%v)", out, err)
	}
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, err := notify.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("sd_notify: %q %v, want READY=1", buf[:n], err)
	}
	waitFor(t, log, "redirect serving")
	if err := os.WriteFile(profile, []byte("rewrite from=hello to=HIYA!\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// systemd-socket-activate runs funtun as its own process (exec).
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, log, "profiles reloaded")
	out, err = ncat(p.host, "hello after", "10.200.1.2", 8080)
	if err != nil || !strings.Contains(out, "reply:HIYA! after") {
		t.Fatalf("after the reload: %q (%v)", out, err)
	}
	waitFor(t, srv, "got HIYA! after")
}

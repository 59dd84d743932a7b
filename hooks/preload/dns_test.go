//go:build linux

package preload

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/net/dns/dnsmessage"
)

func dnsQuery(t testing.TB, id uint16, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func parseAnswer(t *testing.T, msg []byte) dnsmessage.Message {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return m
}

func TestAnswerDNS(t *testing.T) {
	names := newSynthTable()
	m := parseAnswer(t, answerDNS(dnsQuery(t, 7, "Demo.Test.", dnsmessage.TypeA), names))
	if m.ID != 7 || !m.Response || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("A answer: %+v", m)
	}
	a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A)
	if got, ok := names.name(a); !ok || got != "demo.test" || !isSynthetic(a) {
		t.Fatalf("A answer %s maps to %q, %v", a, got, ok)
	}

	m = parseAnswer(t, answerDNS(dnsQuery(t, 8, "demo.test.", dnsmessage.TypeAAAA), names))
	a6 := netip.AddrFrom16(m.Answers[0].Body.(*dnsmessage.AAAAResource).AAAA)
	if got, ok := names.name(a6); !ok || got != "demo.test" {
		t.Fatalf("AAAA answer %s maps to %q, %v", a6, got, ok)
	}

	m = parseAnswer(t, answerDNS(dnsQuery(t, 9, "demo.test.", dnsmessage.TypeMX), names))
	if m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 || len(m.Questions) != 1 {
		t.Fatalf("MX: %+v", m)
	}
	chaos := dnsQuery(t, 10, "version.bind.", dnsmessage.TypeTXT)
	chaos[len(chaos)-1] = byte(dnsmessage.ClassCHAOS)
	if m = parseAnswer(t, answerDNS(chaos, names)); m.RCode != dnsmessage.RCodeRefused {
		t.Fatalf("CHAOS: %+v", m)
	}

	// A header that says one question, and no question after it.
	bad := []byte{0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff}
	m = parseAnswer(t, answerDNS(bad, names))
	if m.ID != 0xabcd || m.RCode != dnsmessage.RCodeFormatError {
		t.Fatalf("malformed: %+v", m)
	}
	if ans := answerDNS([]byte{1, 2, 3}, names); ans != nil {
		t.Fatalf("a 3-byte query got an answer: %x", ans)
	}
}

func TestParseNameservers(t *testing.T) {
	got := parseNameservers(strings.NewReader("# x\nsearch a.b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:1\n"))
	want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fe80::1")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func FuzzAnswerDNS(f *testing.F) {
	f.Add(dnsQuery(f, 1, "demo.test.", dnsmessage.TypeA))
	f.Add(dnsQuery(f, 2, "x.", dnsmessage.TypeHTTPS))
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0xc0, 12})
	f.Fuzz(func(t *testing.T, q []byte) {
		ans := answerDNS(q, newSynthTable())
		if ans == nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(ans); err != nil {
			t.Fatalf("answer to %x does not parse: %v", q, err)
		}
		if !m.Response || m.ID != uint16(q[0])<<8|uint16(q[1]) {
			t.Fatalf("answer to %x: %+v", q, m.Header)
		}
	})
}

// dnsNetns is a network namespace with only loopback, whose resolv.conf
// (mounted by `ip netns exec`) names a trap on 127.0.0.1:53 that records
// every datagram and connection it gets and answers none.
type dnsNetns struct {
	name, trapLog string
}

const dnsTrapPy = `
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 53))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 53)); s.listen(8)
def tcp():
    while True:
        c, a = s.accept(); log.write("tcp %s\n" % (a,)); c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    d, a = u.recvfrom(65536); log.write("udp %s %d\n" % (a, len(d)))
`

var dnsNsSeq atomic.Int32

func newDNSNetns(t *testing.T) *dnsNetns {
	t.Helper()
	ip := testutil.NeedTool(t, "ip")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("network namespaces need root")
		}
		t.Skip("network namespaces need root")
	}
	n := &dnsNetns{name: fmt.Sprintf("ftdns%d_%d", os.Getpid(), dnsNsSeq.Add(1)), trapLog: filepath.Join(t.TempDir(), "trap.log")}
	etc := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ip, "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", n.name).Run() })
	if out, err := exec.Command(ip, "netns", "exec", n.name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	trap := exec.Command(ip, "netns", "exec", n.name, python(t), "-c", dnsTrapPy, n.trapLog)
	stdout, err := trap.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	trap.Stderr = &stderr
	if err := trap.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { trap.Process.Kill(); trap.Wait() })
	line := make([]byte, 6)
	if _, err := stdout.Read(line); err != nil || !strings.HasPrefix(string(line), "ready") {
		t.Fatalf("the trap did not start: %v %q", err, stderr.String())
	}
	return n
}

func (n *dnsNetns) caught(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(n.trapLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// underLauncher runs funtun PROGRAM inside the namespace: the funnel reads
// the namespace's resolv.conf, as it would a machine's.
func (n *dnsNetns) underLauncher(t *testing.T, args ...string) *exec.Cmd {
	needBuild(t)
	cmd := exec.CommandContext(ctxFor(t, 60*time.Second), "ip", append([]string{"netns", "exec", n.name, built.funtun}, args...)...)
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir())
	return cmd
}

const dnsPythonQuery = `
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(q, (sys.argv[2], 53))
r, src = s.recvfrom(512)
ident, flags, qd, an = struct.unpack(">HHHH", r[:8])
assert ident == 0x1234 and flags & 0x8000 and an == 1, (r, src)
print(src[0], socket.inet_ntoa(r[-4:]))
`

// dnsConnectedQuery first earns the library's plain-direct permission (a
// connect the funnel answers under profile=direct), then asks over a
// connected UDP socket at once, in the same process.
const dnsConnectedQuery = `
import socket, struct, sys
c = socket.socket()
try:
    c.connect(("127.0.0.1", 1))
except OSError:
    pass
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect((sys.argv[2], 53))
s.send(q)
r = s.recv(512)
print(socket.inet_ntoa(r[-4:]))
`

func TestDNSAnsweredInsideTheFunnel(t *testing.T) {
	dig := testutil.NeedTool(t, "dig")
	nslookup := testutil.NeedTool(t, "nslookup")
	n := newDNSNetns(t)
	chain := "chain=hosts demo.test=127.0.0.1"
	synthetic := func(what, out string) {
		t.Helper()
		for _, f := range strings.Fields(out) {
			if a, err := netip.ParseAddr(f); err == nil && synth4.Contains(a) {
				return
			}
		}
		t.Errorf("%s: no synthetic address in the answer:\n%s", what, out)
	}
	for _, args := range [][]string{
		{dig, "+short", "+tries=1", "+time=5", "demo.test"},
		{dig, "+short", "+tcp", "+tries=1", "+time=5", "demo.test"},
		// +keepopen: several queries on one connection.
		{dig, "+short", "+tcp", "+keepopen", "+tries=1", "+time=5", "demo.test", "a.demo.test", "b.demo.test"},
	} {
		out, stderr, err := run(t, n.underLauncher(t, append([]string{chain}, args...)...), "")
		if err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, out, stderr)
		}
		synthetic(strings.Join(args, " "), out)
		if args[len(args)-1] == "b.demo.test" && len(strings.Fields(out)) != 3 {
			t.Errorf("three questions over TCP, answers:\n%s", out)
		}
	}
	_, stderr, err := run(t, n.underLauncher(t, "--debug", chain, dig, "+short", "+tcp", "+keepopen", "+tries=1", "+time=5", "a.demo.test", "b.demo.test"), "")
	if c := strings.Count(stderr, "answering DNS over TCP inside the funnel"); err != nil || c != 1 {
		t.Errorf("dig +keepopen: %v, %d connections answered, want 1:\n%s", err, c, stderr)
	}
	out, stderr, err := run(t, n.underLauncher(t, chain, dig, "+tries=1", "+time=5", "MX", "demo.test"), "")
	if err != nil || !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0") {
		t.Errorf("dig MX: %v\n%s%s", err, out, stderr)
	}
	out, stderr, err = run(t, n.underLauncher(t, chain, nslookup, "-timeout=5", "-retry=1", "demo.test"), "")
	if err != nil {
		t.Errorf("nslookup: %v\n%s%s", err, out, stderr)
	}
	synthetic("nslookup", out)
	out, stderr, err = run(t, n.underLauncher(t, chain, python(t), "-c", dnsPythonQuery, "demo.test", "127.0.0.1"), "")
	if err != nil {
		t.Errorf("python: %v\n%s%s", err, out, stderr)
	}
	if f := strings.Fields(out); len(f) != 2 || f[0] != "127.0.0.1" {
		t.Errorf("python: the answer's source is not the resolver it asked: %q", out)
	}
	synthetic("python", out)
	// The funnel answers for the stub too, though nothing listens there.
	out, stderr, err = run(t, n.underLauncher(t, chain, python(t), "-c", dnsPythonQuery, "demo.test", "127.0.0.53"), "")
	if err != nil {
		t.Errorf("python to 127.0.0.53: %v\n%s%s", err, out, stderr)
	}
	synthetic("python to 127.0.0.53", out)
	// Under plain direct the library connects literal addresses itself,
	// without asking, for a second after the funnel said so (here, a
	// refused connect to 127.0.0.1:1); a resolver's port 53 is never one
	// of them, or a connected UDP socket's query would leak.
	out, stderr, err = run(t, n.underLauncher(t, "profile=direct", python(t), "-c", dnsConnectedQuery, "demo.test", "127.0.0.1"), "")
	if err != nil {
		t.Errorf("python, connected UDP under profile=direct: %v\n%s%s", err, out, stderr)
	}
	synthetic("python, connected UDP under profile=direct right after a plain-direct answer", out)
	if got := n.caught(t); got != "" {
		t.Fatalf("the namespace's resolver got queries from hooked programs:\n%s", got)
	}

	// Control: unhooked, the same dig reaches the trap, so an empty trap
	// above means something.
	run(t, exec.CommandContext(ctxFor(t, 30*time.Second), "ip", "netns", "exec", n.name, dig, "+tries=1", "+time=1", "demo.test"), "")
	run(t, exec.CommandContext(ctxFor(t, 30*time.Second), "ip", "netns", "exec", n.name, dig, "+tcp", "+tries=1", "+time=1", "demo.test"), "")
	waitFor(t, func() bool {
		got := n.caught(t)
		return strings.Contains(got, "udp") && strings.Contains(got, "tcp")
	}, "the trap to record the unhooked dig's queries (UDP and TCP)", n.caught)
}

// The answer leads somewhere: a connect to it is a flow to the name, through
// the profile (rewrite acts on the reply).
func TestDNSAnswerThenConnect(t *testing.T) {
	port := helloServer(t)
	ft := startFunnel(t, demoChain)
	script := dnsPythonQuery + `
c = socket.create_connection((socket.inet_ntoa(r[-4:]), int(sys.argv[3])), timeout=10)
c.sendall(b"GET / HTTP/1.0\r\nHost: demo.test\r\n\r\n")
print(c.makefile("rb").read().decode())
`
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), python(t), "-c", script, "demo.test", "127.0.0.53", port), "")
	if err != nil {
		t.Fatalf("python: %v\n%s%s", err, out, stderr)
	}
	if !strings.Contains(out, "hello Y from demo.test") {
		t.Fatalf("the reply did not pass the profile:\n%s", out)
	}
}

func waitFor(t *testing.T, cond func() bool, what string, state func(*testing.T) string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s; got %q", what, state(t))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

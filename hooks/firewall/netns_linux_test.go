//go:build linux

package firewall

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/sys/unix"
)

// Every test here makes its own network namespace, runs the real funtun
// binary in it (`ip netns exec`), and checks the result with the real nft
// and ip; nothing touches the host's own ruleset.

type netns struct {
	t    *testing.T
	name string
	ip   string // path of ip(8)
	nft  string
	bin  string // funtun
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test creates network namespaces and needs root")
	}
	t.Skip("this test creates network namespaces and needs root")
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	needRoot(t)
	ns := &netns{
		t:    t,
		name: fmt.Sprintf("ftfw-%d-%d", os.Getpid(), rand.IntN(1<<30)),
		ip:   testutil.NeedTool(t, "ip"),
		nft:  testutil.NeedTool(t, "nft"),
		bin:  testutil.Funtun(t),
	}
	if out, err := exec.Command(ns.ip, "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ns.ip, "netns", "del", ns.name).Run() })
	return ns
}

// run runs a command inside the namespace and returns its stdout; stderr
// goes to the failure message.
func (ns *netns) try(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(ns.ip, append([]string{"netns", "exec", ns.name}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (ns *netns) run(args ...string) string {
	ns.t.Helper()
	out, errOut, err := ns.try(args...)
	if err != nil {
		ns.t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (ns *netns) funtun(args ...string) string {
	ns.t.Helper()
	return ns.run(append([]string{ns.bin, "firewall"}, args...)...)
}

// state is everything apply may change: the ruleset, the policy rules
// and every routing table, both families.
func (ns *netns) state() string {
	ns.t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{ns.nft, "list", "ruleset"},
		{ns.ip, "-4", "rule"},
		{ns.ip, "-6", "rule"},
		{ns.ip, "-4", "route", "show", "table", "all"},
		{ns.ip, "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(cmd, " "), ns.run(cmd...))
	}
	return b.String()
}

func (ns *netns) setup(cmds ...string) {
	ns.t.Helper()
	for _, c := range cmds {
		ns.run(strings.Fields(c)...)
	}
}

// adminTable is someone else's table that must survive everything.
func (ns *netns) adminTable() {
	ns.t.Helper()
	ns.nftScript("table inet admin {\n chain input {\n  type filter hook input priority 0; policy accept;\n  tcp dport 22 accept\n }\n}\n")
}

func (ns *netns) nftScript(script string) {
	ns.t.Helper()
	f := filepath.Join(ns.t.TempDir(), "rules.nft")
	if err := os.WriteFile(f, []byte(script), 0o600); err != nil {
		ns.t.Fatal(err)
	}
	ns.run(ns.nft, "-f", f)
}

// ruleset is `nft -j list table inet funtun`, reduced to what the tests
// look at: each chain's hook and its rules' expressions as JSON text.
type chainJSON struct {
	hook, typ string
	rules     []string
}

func (ns *netns) funtunTable() map[string]*chainJSON {
	ns.t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(ns.run(ns.nft, "-j", "list", "table", "inet", "funtun")), &doc); err != nil {
		ns.t.Fatal(err)
	}
	chains := map[string]*chainJSON{}
	for _, item := range doc.Nftables {
		if raw, ok := item["chain"]; ok {
			var c struct{ Name, Hook, Type string }
			json.Unmarshal(raw, &c)
			chains[c.Name] = &chainJSON{hook: c.Hook, typ: c.Type}
		}
		if raw, ok := item["rule"]; ok {
			var r struct {
				Chain string
				Expr  json.RawMessage
			}
			json.Unmarshal(raw, &r)
			if c := chains[r.Chain]; c != nil {
				c.rules = append(c.rules, string(r.Expr))
			}
		}
	}
	return chains
}

func wantChain(t *testing.T, chains map[string]*chainJSON, name, typ, hook string) *chainJSON {
	t.Helper()
	c := chains[name]
	if c == nil {
		t.Fatalf("no chain %s in table inet funtun", name)
	}
	if c.typ != typ || c.hook != hook {
		t.Fatalf("chain %s is type %s hook %s, want %s %s", name, c.typ, c.hook, typ, hook)
	}
	return c
}

// wantRule fails unless some rule of the chain holds every fragment of
// its JSON expression list.
func wantRule(t *testing.T, c *chainJSON, fragments ...string) {
	t.Helper()
	for _, r := range c.rules {
		all := true
		for _, f := range fragments {
			if !strings.Contains(r, f) {
				all = false
				break
			}
		}
		if all {
			return
		}
	}
	t.Fatalf("no rule holds %q; rules:\n%s", fragments, strings.Join(c.rules, "\n"))
}

func TestRedirectRulesApplyTwiceAndRemove(t *testing.T) {
	ns := newNetns(t)
	ns.adminTable()
	before := ns.state()

	args := []string{"apply", "--port", "12345", "--user", "nobody", "--exempt-user", "root",
		"--dst", "10.0.0.0/8,2001:db8::/32", "--dport", "80,8000-8100"}
	out := ns.funtun(args...)
	if !strings.Contains(out, "installed table inet funtun") {
		t.Fatalf("apply said %q", out)
	}
	chains := ns.funtunTable()
	c := wantChain(t, chains, "output_redirect", "nat", "output")
	if len(chains) != 1 {
		t.Fatalf("redirect needs one chain, got %d", len(chains))
	}
	// The loop guards come first, in that order.
	if !strings.Contains(c.rules[0], `"mark"`) || !strings.Contains(c.rules[0], fmt.Sprint(DefaultSkipMark)) || !strings.Contains(c.rules[0], `"return"`) {
		t.Fatalf("first rule is not the skip-mark return: %s", c.rules[0])
	}
	if !strings.Contains(c.rules[1], `"skuid"`) || !strings.Contains(c.rules[1], `"right": 0`) || !strings.Contains(c.rules[1], `"return"`) {
		t.Fatalf("second rule is not the exempt user's return: %s", c.rules[1])
	}
	nobody := `"right": 65534`
	wantRule(t, c, `"skuid"`, nobody, `"protocol": "ip"`, `"addr": "10.0.0.0"`, `"len": 8`, `"right": 80`, `"redirect": {"port": 12345}`)
	wantRule(t, c, `"skuid"`, nobody, `"protocol": "ip6"`, `"addr": "2001:db8::"`, `"len": 32`, `"range": [8000, 8100]`, `"redirect": {"port": 12345}`)
	if n := len(c.rules); n != 2+4 {
		t.Fatalf("%d rules, want 2 guards + 2 networks × 2 port specs", n)
	}
	// No tproxy: no routing.
	if s := ns.run(ns.ip, "-4", "rule"); strings.Contains(s, "fwmark") {
		t.Fatalf("redirect added an ip rule:\n%s", s)
	}

	first := ns.run(ns.nft, "list", "ruleset")
	ns.funtun(args...)
	if again := ns.run(ns.nft, "list", "ruleset"); again != first {
		t.Fatalf("applying twice changed the ruleset:\n%s\nthen\n%s", first, again)
	}
	show := ns.funtun("show")
	if !strings.Contains(show, "chain output_redirect (nat hook output priority -100)") || !strings.Contains(show, "tcp user nobody to 10.0.0.0/8 port 80 -> redirect :12345") {
		t.Fatalf("show says:\n%s", show)
	}

	ns.funtun("remove")
	if after := ns.state(); after != before {
		t.Fatalf("remove did not restore the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out := ns.funtun("remove"); !strings.Contains(out, "not installed") {
		t.Fatalf("second remove said %q", out)
	}
	if out := ns.funtun("show"); !strings.Contains(out, "not installed") {
		t.Fatalf("show after remove said %q", out)
	}
}

func TestTProxyRulesAndRoutingApplyAndRemove(t *testing.T) {
	ns := newNetns(t)
	ns.setup("ip link set lo up")
	ns.adminTable()
	// The administrator's own rule for the same fwmark, IPv6 only: apply
	// must use it and remove must leave it.
	ns.setup("ip -6 rule add fwmark 0x6675 lookup 26228 pref 1000")
	before := ns.state()

	ns.funtun("apply", "--port", "7777", "--tproxy", "--proto", "tcp,udp", "--local", "--in", "veth*", "--dport", "53")
	chains := ns.funtunTable()
	pre := wantChain(t, chains, "prerouting_tproxy", "filter", "prerouting")
	out := wantChain(t, chains, "output_tproxy", "route", "output")
	for _, proto := range []string{"tcp", "udp"} {
		// Gateway: packets from veth* to port 53 go to the tproxy port, marked.
		wantRule(t, pre, `"iifname"`, `"veth*"`, `"protocol": "`+proto+`"`, `"right": 53`, `"tproxy": {"port": 7777}`, `"mangle"`, `"value": 26229`, `"accept"`)
		// Own host: marked in output, rerouted through lo, tproxied there.
		wantRule(t, out, `"protocol": "`+proto+`", "field": "dport"`, `"right": 53`, `"mangle"`, `"value": 26229`)
		wantRule(t, pre, `"iifname"`, `"right": "lo"`, `"right": 26229`, `"tproxy": {"port": 7777}`)
	}
	wantRule(t, pre, `"right": "veth*"`, `"drop"`)
	if !strings.Contains(out.rules[0], fmt.Sprint(DefaultSkipMark)) || !strings.Contains(out.rules[0], `"return"`) {
		t.Fatalf("output_tproxy does not start with the skip-mark return: %s", out.rules[0])
	}

	for _, fam := range []string{"-4", "-6"} {
		rules := ns.run(ns.ip, fam, "rule")
		if !strings.Contains(rules, "fwmark 0x6675 lookup 26228") {
			t.Fatalf("ip %s rule lacks the fwmark rule:\n%s", fam, rules)
		}
		if n := strings.Count(rules, "fwmark 0x6675"); n != 1 {
			t.Fatalf("ip %s rule has the fwmark rule %d times:\n%s", fam, n, rules)
		}
		routes := ns.run(ns.ip, fam, "route", "show", "table", "26228")
		if !strings.Contains(routes, "local default dev lo") {
			t.Fatalf("ip %s route show table 26228 lacks the local route:\n%s", fam, routes)
		}
	}
	show := ns.funtun("show")
	for _, want := range []string{
		"added by funtun: ip -4 rule fwmark 0x6675 lookup 26228",
		"added by funtun: ip -6 route local ::/0 dev lo table 26228 (present)",
		"present before funtun, not removed by it: ip -6 rule fwmark 0x6675 lookup 26228 pref 1000",
	} {
		if !strings.Contains(show, want) {
			t.Fatalf("show lacks %q:\n%s", want, show)
		}
	}

	// Applying again with another mark replaces the table and moves the
	// routing: the old rule goes, the routes (same table) stay.
	ns.funtun("apply", "--port", "7777", "--proto", "udp", "--local", "--mark", "0x99")
	rules := ns.run(ns.ip, "-4", "rule")
	if strings.Contains(rules, "0x6675") || !strings.Contains(rules, "fwmark 0x99 lookup 26228") {
		t.Fatalf("after re-apply with --mark 0x99, ip -4 rule:\n%s", rules)
	}
	if routes := ns.run(ns.ip, "-4", "route", "show", "table", "26228"); !strings.Contains(routes, "local default dev lo") {
		t.Fatalf("re-apply lost the local route:\n%s", routes)
	}

	ns.funtun("remove")
	if after := ns.state(); after != before {
		t.Fatalf("remove did not restore the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestDryRunIsValidNftAndChangesNothing(t *testing.T) {
	ns := newNetns(t)
	ns.adminTable()
	before := ns.state()
	for _, args := range [][]string{
		{"--user", "nobody", "--dst", "10.0.0.0/8,2001:db8::/32", "--dport", "80,443,8000-8100", "--exempt-user", "root"},
		{"--tproxy", "--proto", "tcp,udp", "--in", "eth0", "--in", "veth*", "--local", "--dst", "192.0.2.0/24"},
		{"--proto", "udp", "--local", "--skip-mark", "0x10", "--mark", "0x20", "--route-table", "300"},
	} {
		// No privilege needed: nobody can print the script.
		script, errOut, err := ns.try(append([]string{"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", ns.bin, "firewall", "apply", "--port", "9", "--dry-run"}, args...)...)
		if err != nil {
			t.Fatalf("dry run %v: %v: %s", args, err, errOut)
		}
		f := filepath.Join(t.TempDir(), "dry.nft")
		os.WriteFile(f, []byte(script), 0o600)
		if out, errOut, err := ns.try(ns.nft, "-c", "-f", f); err != nil {
			t.Fatalf("nft -c rejects the dry run of %v: %v\n%s%s\nscript:\n%s", args, err, out, errOut, script)
		}
		if strings.Contains(strings.Join(args, " "), "udp") && !strings.Contains(script, "#   ip -4 route add local 0.0.0.0/0 dev lo table") {
			t.Fatalf("dry run of %v lacks the routing commands:\n%s", args, script)
		}
	}
	if after := ns.state(); after != before {
		t.Fatalf("--dry-run changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Loading the script is the same ruleset as applying.
	script := ns.funtun("apply", "--port", "9", "--user", "nobody", "--dport", "80", "--dry-run")
	f := filepath.Join(t.TempDir(), "dry.nft")
	os.WriteFile(f, []byte(script), 0o600)
	ns.run(ns.nft, "-f", f)
	byScript := ns.run(ns.nft, "list", "table", "inet", "funtun")
	ns.funtun("apply", "--port", "9", "--user", "nobody", "--dport", "80")
	if byFuntun := ns.run(ns.nft, "list", "table", "inet", "funtun"); byFuntun != byScript {
		t.Fatalf("the dry-run script and apply differ:\n%s\nvs\n%s", byScript, byFuntun)
	}
}

func TestWithoutPrivilegeSaysSoAndChangesNothing(t *testing.T) {
	ns := newNetns(t)
	ns.setup("ip link set lo up")
	ns.funtun("apply", "--port", "9", "--local", "--dport", "80")
	before := ns.state()
	for _, verb := range [][]string{
		{"apply", "--port", "9", "--local", "--proto", "udp"},
		{"show"},
		{"remove"},
	} {
		out, errOut, err := ns.try(append([]string{"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", ns.bin, "firewall"}, verb...)...)
		if err == nil {
			t.Fatalf("%v as nobody succeeded: %s", verb, out)
		}
		want := fmt.Sprintf("funtun firewall %s: needs root or CAP_NET_ADMIN (operation not permitted)\n", verb[0])
		if errOut != want {
			t.Fatalf("%v as nobody said %q, want %q", verb, errOut, want)
		}
	}
	if after := ns.state(); after != before {
		t.Fatalf("unprivileged runs changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// A table another program owns (nft's "flags owner") makes the ruleset
// fail to load after the routing was added: apply must take that routing
// back and say why.
func TestFailedApplyRollsBackRouting(t *testing.T) {
	ns := newNetns(t)
	ns.setup("ip link set lo up")
	cmd := exec.Command(ns.ip, "netns", "exec", ns.name, ns.nft, "-i")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	io.WriteString(stdin, "add table inet funtun { flags owner; }\n")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(ns.run(ns.nft, "list", "tables"), "inet funtun") {
		if time.Now().After(deadline) {
			t.Fatal("nft -i did not make its table")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := ns.state()
	_, errOut, err := ns.try(ns.bin, "firewall", "apply", "--port", "9", "--local", "--proto", "udp")
	if err == nil {
		t.Fatal("apply over an owned table succeeded")
	}
	if !strings.Contains(errOut, "belongs to another program") {
		t.Fatalf("apply said %q", errOut)
	}
	if after := ns.state(); after != before {
		t.Fatalf("the failed apply left routing behind:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// inNetns runs f on a thread that has entered the namespace; sockets f
// makes stay there. The thread is not given back to the scheduler.
func inNetns(t *testing.T, ns *netns, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		done <- f()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// originalDst is what funtun redirect reads: the destination before the
// nat redirect rewrote it.
func originalDst(c *net.TCPConn) (dst string, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	ctlErr := raw.Control(func(fd uintptr) {
		if c.LocalAddr().(*net.TCPAddr).IP.To4() != nil {
			var m *unix.IPv6Mreq // 20 bytes: room for a sockaddr_in
			if m, err = unix.GetsockoptIPv6Mreq(int(fd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST); err == nil {
				b := m.Multiaddr[:]
				dst = fmt.Sprintf("%d.%d.%d.%d:%d", b[4], b[5], b[6], b[7], int(b[2])<<8|int(b[3]))
			}
			return
		}
		var mi *unix.IPv6MTUInfo // a sockaddr_in6 and then some
		const ip6tSoOriginalDst = 80
		if mi, err = unix.GetsockoptIPv6MTUInfo(int(fd), unix.IPPROTO_IPV6, ip6tSoOriginalDst); err == nil {
			port := mi.Addr.Port>>8 | mi.Addr.Port<<8
			dst = net.JoinHostPort(net.IP(mi.Addr.Addr[:]).String(), fmt.Sprint(port))
		}
	})
	if ctlErr != nil {
		return "", ctlErr
	}
	return dst, err
}

// The whole path for own-host redirect: a client in the namespace connects
// to a real server's address; the rules send it to a listener standing in
// for funtun redirect, which recovers the original destination. A socket
// with the skip mark reaches the real server.
func TestRedirectEndToEnd(t *testing.T) {
	ns := newNetns(t)
	ns.setup(
		"ip link set lo up",
		// A veth pair inside the namespace (no dummy module needed).
		"ip link add fw0 type veth peer name fw1",
		"ip link set fw0 up",
		"ip link set fw1 up",
		"ip addr add 10.77.0.1/24 dev fw0",
		"ip addr add 2001:db8:77::1/64 dev fw0 nodad",
	)
	port := 12000 + rand.IntN(1000)
	ns.funtun("apply", "--port", fmt.Sprint(port), "--local", "--dst", "10.77.0.0/24,2001:db8:77::/64", "--dport", "80")

	var proxies, real []net.Listener
	inNetns(t, ns, func() error {
		for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			proxies = append(proxies, l)
		}
		for _, addr := range []string{"10.77.0.1:80", "[2001:db8:77::1]:80"} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			real = append(real, l)
		}
		return nil
	})
	for _, l := range proxies {
		testutil.Serve(t, l, func(c net.Conn) {
			dst, err := originalDst(c.(*net.TCPConn))
			if err != nil {
				dst = "error " + err.Error()
			}
			fmt.Fprintf(c, "funnel saw %s\n", dst)
		})
	}
	for _, l := range real {
		testutil.Serve(t, l, func(c net.Conn) { io.WriteString(c, "real server\n") })
	}

	dial := func(addr string, mark int) string {
		t.Helper()
		var line string
		inNetns(t, ns, func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			if mark != 0 {
				d.Control = func(_, _ string, rc syscall.RawConn) error {
					var serr error
					rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
					return serr
				}
			}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			line = strings.TrimSpace(string(b))
			return err
		})
		return line
	}
	for _, tc := range []struct{ addr, want string }{
		{"10.77.0.1:80", "funnel saw 10.77.0.1:80"},
		{"[2001:db8:77::1]:80", "funnel saw [2001:db8:77::1]:80"},
	} {
		if got := dial(tc.addr, 0); got != tc.want {
			t.Errorf("connecting to %s: got %q, want %q", tc.addr, got, tc.want)
		}
		if got := dial(tc.addr, DefaultSkipMark); got != "real server" {
			t.Errorf("connecting to %s with the skip mark: got %q, want the real server", tc.addr, got)
		}
	}
}

// link joins two namespaces with a veth pair and gives each end its
// addresses.
func link(t *testing.T, a, b *netns, aAddrs, bAddrs []string) (aIf, bIf string) {
	t.Helper()
	n := rand.IntN(1 << 20)
	aIf, bIf = fmt.Sprintf("fwa%d", n), fmt.Sprintf("fwb%d", n)
	for _, args := range [][]string{
		{"link", "add", aIf, "netns", a.name, "type", "veth", "peer", "name", bIf, "netns", b.name},
	} {
		if out, err := exec.Command(a.ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	a.setup("ip link set lo up", "ip link set "+aIf+" up")
	b.setup("ip link set lo up", "ip link set "+bIf+" up")
	for _, addr := range aAddrs {
		a.run(append([]string{a.ip, "addr", "add", addr, "dev", aIf}, nodad(addr)...)...)
	}
	for _, addr := range bAddrs {
		b.run(append([]string{b.ip, "addr", "add", addr, "dev", bIf}, nodad(addr)...)...)
	}
	return aIf, bIf
}

// nodad makes an IPv6 address usable at once: the test must not wait for
// duplicate address detection.
func nodad(addr string) []string {
	if strings.Contains(addr, ":") {
		return []string{"nodad"}
	}
	return nil
}

// listen opens listeners inside the namespace, transparent ones for
// tproxy.
func listenIn(t *testing.T, ns *netns, network, addr string, transparent bool) net.Listener {
	t.Helper()
	var l net.Listener
	inNetns(t, ns, func() error {
		var err error
		l, err = transparentConfig(transparent).Listen(t.Context(), network, addr)
		return err
	})
	t.Cleanup(func() { l.Close() })
	return l
}

func transparentConfig(on bool) *net.ListenConfig {
	lc := &net.ListenConfig{}
	if on {
		lc.Control = func(network, _ string, rc syscall.RawConn) error {
			var err error
			rc.Control(func(fd uintptr) {
				if strings.HasSuffix(network, "6") {
					err = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
					if err == nil {
						err = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
					}
				} else {
					err = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
					if err == nil {
						err = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
					}
				}
			})
			return err
		}
	}
	return lc
}

// dialIn connects from inside the namespace (with SO_MARK mark unless 0)
// and returns everything the server says.
func dialIn(t *testing.T, ns *netns, addr string, mark int) (string, error) {
	t.Helper()
	var line string
	var dialErr error
	inNetns(t, ns, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		if mark != 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
				return serr
			}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			dialErr = err
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		line = strings.TrimSpace(string(b))
		dialErr = err
		return nil
	})
	return line, dialErr
}

// serveTransparent stands in for `funtun redirect --tproxy`: a tproxied
// connection's original destination is the accepted socket's own address.
func serveTransparent(t *testing.T, l net.Listener) {
	testutil.Serve(t, l, func(c net.Conn) { fmt.Fprintf(c, "funnel saw %s\n", c.LocalAddr()) })
}

func serveRedirected(t *testing.T, l net.Listener) {
	testutil.Serve(t, l, func(c net.Conn) {
		dst, err := originalDst(c.(*net.TCPConn))
		if err != nil {
			dst = "error " + err.Error()
		}
		fmt.Fprintf(c, "funnel saw %s\n", dst)
	})
}

// udpTransparent answers each tproxied datagram from its original
// destination, as funtun redirect does, with what it saw.
func udpTransparent(t *testing.T, ns *netns, network, addr string) {
	t.Helper()
	var pc *net.UDPConn
	inNetns(t, ns, func() error {
		c, err := transparentConfig(true).ListenPacket(t.Context(), network, addr)
		if err != nil {
			return err
		}
		pc = c.(*net.UDPConn)
		return nil
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf, oob := make([]byte, 2048), make([]byte, 512)
		for {
			n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(buf, oob)
			if err != nil {
				return
			}
			dst, ok := origDstFromCmsg(oob[:oobn])
			if !ok {
				continue
			}
			reply := fmt.Sprintf("funnel saw %s: %s", dst, buf[:n])
			// The reply leaves from the original destination: a
			// transparent socket may bind an address that is not ours.
			inNetns(t, ns, func() error {
				c, err := transparentConfig(true).ListenPacket(t.Context(), network, dst)
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.WriteTo([]byte(reply), net.UDPAddrFromAddrPort(from))
				return err
			})
		}
	}()
}

func origDstFromCmsg(oob []byte) (string, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return "", false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8:
			return fmt.Sprintf("%d.%d.%d.%d:%d", m.Data[4], m.Data[5], m.Data[6], m.Data[7], int(m.Data[2])<<8|int(m.Data[3])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= 24:
			return net.JoinHostPort(net.IP(m.Data[8:24]).String(), fmt.Sprint(int(m.Data[2])<<8|int(m.Data[3]))), true
		}
	}
	return "", false
}

func udpAsk(t *testing.T, ns *netns, addr, msg string) string {
	t.Helper()
	var got string
	inNetns(t, ns, func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		got = string(buf[:n])
		return err
	})
	return got
}

// Own host by tproxy: marked in output, rerouted through lo, taken by a
// transparent listener; TCP and UDP, IPv4 and IPv6. The server is real,
// in a second namespace, and funtun's marked socket reaches it.
func TestTProxyEndToEnd(t *testing.T) {
	host, server := newNetns(t), newNetns(t)
	link(t, host, server, []string{"10.78.0.1/24", "2001:db8:78::1/64"}, []string{"10.78.0.9/24", "2001:db8:78::9/64"})
	for _, addr := range []string{"10.78.0.9:80", "[2001:db8:78::9]:80"} {
		testutil.Serve(t, listenIn(t, server, "tcp", addr, false), func(c net.Conn) { io.WriteString(c, "real server\n") })
	}
	port := 13000 + rand.IntN(1000)
	host.funtun("apply", "--port", fmt.Sprint(port), "--tproxy", "--proto", "tcp,udp", "--local", "--dst", "10.78.0.0/24,2001:db8:78::/64")
	serveTransparent(t, listenIn(t, host, "tcp4", fmt.Sprintf("0.0.0.0:%d", port), true))
	serveTransparent(t, listenIn(t, host, "tcp6", fmt.Sprintf("[::]:%d", port), true))
	udpTransparent(t, host, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	udpTransparent(t, host, "udp6", fmt.Sprintf("[::]:%d", port))

	for _, dst := range []string{"10.78.0.9:80", "[2001:db8:78::9]:80"} {
		got, err := dialIn(t, host, dst, 0)
		if want := "funnel saw " + dst; err != nil || got != want {
			t.Errorf("tcp to %s: got %q (%v), want %q", dst, got, err, want)
		}
		got, err = dialIn(t, host, dst, DefaultSkipMark)
		if err != nil || got != "real server" {
			t.Errorf("tcp to %s with the skip mark: got %q (%v), want the real server", dst, got, err)
		}
	}
	for _, dst := range []string{"10.78.0.9:53", "[2001:db8:78::9]:53"} {
		if got, want := udpAsk(t, host, dst, "query"), "funnel saw "+dst+": query"; got != want {
			t.Errorf("udp to %s: got %q, want %q", dst, got, want)
		}
	}
	// Nothing listens: the flow must not leak to the real server.
	host.funtun("apply", "--port", fmt.Sprint(port+1), "--tproxy", "--local", "--dst", "10.78.0.0/24")
	if got, err := dialIn(t, host, "10.78.0.9:80", 0); err == nil {
		t.Errorf("with nothing on the tproxy port the connection went through: %q", got)
	}
}

// A gateway: a client in its own namespace routes through the gateway
// namespace, whose rules (--in its client-side interface) send the
// client's connections to the stand-in for funtun redirect, by redirect
// and by tproxy.
func TestGatewayEndToEnd(t *testing.T) {
	client, gw := newNetns(t), newNetns(t)
	_, gwIf := link(t, client, gw, []string{"10.79.0.2/24", "2001:db8:79::2/64"}, []string{"10.79.0.1/24", "2001:db8:79::1/64"})
	client.setup("ip route add default via 10.79.0.1", "ip -6 route add default via 2001:db8:79::1")
	gw.setup("sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1")
	port := 14000 + rand.IntN(1000)

	// redirect: to the address of the interface the packet came in on.
	gw.funtun("apply", "--port", fmt.Sprint(port), "--in", gwIf, "--dport", "80")
	serveRedirected(t, listenIn(t, gw, "tcp4", fmt.Sprintf("10.79.0.1:%d", port), false))
	serveRedirected(t, listenIn(t, gw, "tcp6", fmt.Sprintf("[2001:db8:79::1]:%d", port), false))
	for _, dst := range []string{"192.0.2.80:80", "[2001:db8:99::80]:80"} {
		got, err := dialIn(t, client, dst, 0)
		if want := "funnel saw " + dst; err != nil || got != want {
			t.Errorf("redirect: tcp to %s through the gateway: got %q (%v), want %q", dst, got, err, want)
		}
	}

	// tproxy: the same flows, now taken by transparent listeners.
	gw.funtun("apply", "--port", fmt.Sprint(port+1), "--tproxy", "--proto", "tcp,udp", "--in", "fwb*", "--dport", "80,53")
	serveTransparent(t, listenIn(t, gw, "tcp4", fmt.Sprintf("0.0.0.0:%d", port+1), true))
	serveTransparent(t, listenIn(t, gw, "tcp6", fmt.Sprintf("[::]:%d", port+1), true))
	udpTransparent(t, gw, "udp4", fmt.Sprintf("0.0.0.0:%d", port+1))
	for _, dst := range []string{"192.0.2.80:80", "[2001:db8:99::80]:80"} {
		got, err := dialIn(t, client, dst, 0)
		if want := "funnel saw " + dst; err != nil || got != want {
			t.Errorf("tproxy: tcp to %s through the gateway: got %q (%v), want %q", dst, got, err, want)
		}
	}
	if got, want := udpAsk(t, client, "192.0.2.53:53", "query"), "funnel saw 192.0.2.53:53: query"; got != want {
		t.Errorf("tproxy: udp through the gateway: got %q, want %q", got, want)
	}
	before := gw.run(gw.nft, "list", "ruleset")
	gw.funtun("remove")
	if after := gw.run(gw.nft, "list", "ruleset"); after != "" {
		t.Errorf("remove left a ruleset (before: %s):\n%s", before, after)
	}
}

// httpSays serves one-line HTTP answers, so curl can be the client.
func httpSays(t *testing.T, l net.Listener, body func(net.Conn) string) {
	testutil.Serve(t, l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req := make([]byte, 0, 1024)
		buf := make([]byte, 1024)
		for !bytes.Contains(req, []byte("\r\n\r\n")) {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			req = append(req, buf[:n]...)
		}
		b := body(c)
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
}

// redirectNetns has a real server on 10.77.0.1:80 and a stand-in for
// funtun redirect on 127.0.0.1:port.
func redirectNetns(t *testing.T, port int) *netns {
	ns := newNetns(t)
	ns.setup(
		"ip link set lo up",
		"ip link add fw0 type veth peer name fw1",
		"ip link set fw0 up",
		"ip link set fw1 up",
		"ip addr add 10.77.0.1/24 dev fw0",
	)
	httpSays(t, listenIn(t, ns, "tcp", "10.77.0.1:80", false), func(net.Conn) string { return "real server" })
	httpSays(t, listenIn(t, ns, "tcp", fmt.Sprintf("127.0.0.1:%d", port), false), func(c net.Conn) string {
		dst, err := originalDst(c.(*net.TCPConn))
		if err != nil {
			return "error " + err.Error()
		}
		return "funnel saw " + dst
	})
	return ns
}

func selectorNetns(t *testing.T) (*netns, int) {
	port := 15000 + rand.IntN(1000)
	return redirectNetns(t, port), port
}

// curlAs fetches http://HOST/ inside the namespace as a user (by
// setpriv), or as root.
func curlAs(t *testing.T, ns *netns, user, host string) string {
	t.Helper()
	curl := testutil.NeedTool(t, "curl")
	args := []string{curl, "-sS", "--max-time", "10", "http://" + host + "/"}
	if user != "root" {
		args = append([]string{"setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups"}, args...)
	}
	out, errOut, err := ns.try(args...)
	if err != nil {
		return fmt.Sprintf("curl failed: %v: %s", err, errOut)
	}
	return out
}

func TestUserSelectorsEndToEnd(t *testing.T) {
	ns, port := selectorNetns(t)
	testutil.NeedTool(t, "setpriv")
	ns.funtun("apply", "--port", fmt.Sprint(port), "--user", "nobody", "--dst", "10.77.0.1", "--dport", "80")
	if got := curlAs(t, ns, "nobody", "10.77.0.1"); got != "funnel saw 10.77.0.1:80" {
		t.Errorf("--user nobody: nobody's curl got %q", got)
	}
	if got := curlAs(t, ns, "root", "10.77.0.1"); got != "real server" {
		t.Errorf("--user nobody: root's curl got %q", got)
	}
	ns.funtun("apply", "--port", fmt.Sprint(port), "--local", "--exempt-user", "nobody", "--dst", "10.77.0.1", "--dport", "80")
	if got := curlAs(t, ns, "root", "10.77.0.1"); got != "funnel saw 10.77.0.1:80" {
		t.Errorf("--local --exempt-user nobody: root's curl got %q", got)
	}
	if got := curlAs(t, ns, "nobody", "10.77.0.1"); got != "real server" {
		t.Errorf("--local --exempt-user nobody: nobody's curl got %q", got)
	}
}

// Cgroups live in the mount namespace, which `ip netns exec` replaces
// (it remounts /sys): these runs enter only the network namespace.
func TestCgroupSelectorEndToEnd(t *testing.T) {
	ns, port := selectorNetns(t)
	nsenter := testutil.NeedTool(t, "nsenter")
	curl := testutil.NeedTool(t, "curl")
	mount, rootDepth, err := cgroup2Mount()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	name := fmt.Sprintf("ftfw-%d-%d", os.Getpid(), rand.IntN(1<<20))
	dir := filepath.Join(mount, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("making a cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	enter := func(args ...string) (string, string, error) {
		cmd := exec.Command(nsenter, append([]string{"--net=/run/netns/" + ns.name}, args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, errOut, err := enter(args...)
		if err != nil {
			t.Fatalf("%s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	// Under ip netns exec the cgroup tree is gone, and funtun says what to do.
	if _, errOut, err := ns.try(ns.bin, "firewall", "apply", "--port", "9", "--cgroup", name); err == nil || !strings.Contains(errOut, "nsenter --net=") {
		t.Fatalf("--cgroup under ip netns exec: %v, %q", err, errOut)
	}

	apply := []string{ns.bin, "firewall", "apply", "--port", fmt.Sprint(port), "--cgroup", name, "--dst", "10.77.0.1", "--dport", "80"}
	script := must(append(apply, "--dry-run")...)
	f := filepath.Join(t.TempDir(), "cg.nft")
	os.WriteFile(f, []byte(script), 0o600)
	must(ns.nft, "-c", "-f", f)

	must(apply...)
	chains := ns.funtunTable()
	c := wantChain(t, chains, "output_redirect", "nat", "output")
	// The kernel compares the cgroup's id, its directory's inode number
	// (nft shows the number where it cannot see the cgroup tree)…
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	wantRule(t, c, `"socket": {"key": "cgroupv2"}`, fmt.Sprintf(`"right": "%d"`, st.Ino), `"redirect": {"port": `+fmt.Sprint(port)+`}`)
	// …at the cgroup's depth, which only nft's text form shows.
	if text := must(ns.nft, "list", "chain", "inet", "funtun", "output_redirect"); !strings.Contains(text, fmt.Sprintf("socket cgroupv2 level %d ", rootDepth+1)) {
		t.Fatalf("no rule at cgroup level %d:\n%s", rootDepth+1, text)
	}

	inCgroup := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec %s -sS --max-time 10 http://10.77.0.1/", dir, curl)
	if got := must("sh", "-c", inCgroup); got != "funnel saw 10.77.0.1:80" {
		t.Errorf("curl in the cgroup got %q", got)
	}
	if got := must(curl, "-sS", "--max-time", "10", "http://10.77.0.1/"); got != "real server" {
		t.Errorf("curl outside the cgroup got %q", got)
	}
	must(ns.bin, "firewall", "remove")
}

// docBlock is the shell block that follows `<!-- test: NAME -->` in the
// docs page, with its user and interface swapped for the test's.
func docBlock(t *testing.T, name string, swap ...string) string {
	t.Helper()
	page, err := os.ReadFile("../../docs/hooks/firewall.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(page), "<!-- test: "+name+" -->\n```sh\n")
	if !ok {
		t.Fatalf("docs/hooks/firewall.md has no block %q", name)
	}
	block, _, _ := strings.Cut(rest, "```\n")
	return strings.NewReplacer(swap...).Replace(block)
}

// The hand-written rules of the docs, run as they are, send the same
// traffic to the same kind of listener as funtun firewall's.
func TestHandWrittenRulesFromTheDocs(t *testing.T) {
	testutil.NeedTool(t, "setpriv")
	const port = DefaultPort // the docs' blocks use funtun redirect's default
	for _, tool := range []string{"nft-redirect", "iptables-redirect"} {
		t.Run(tool, func(t *testing.T) {
			if strings.HasPrefix(tool, "iptables") {
				testutil.NeedTool(t, "iptables-nft")
				testutil.NeedTool(t, "ip6tables-nft")
			}
			ns := redirectNetns(t, port)
			ns.run("sh", "-e", "-c", docBlock(t, tool, "alice", "nobody"))
			if got := curlAs(t, ns, "nobody", "10.77.0.1"); got != "funnel saw 10.77.0.1:80" {
				t.Errorf("nobody's curl got %q", got)
			}
			if got := curlAs(t, ns, "root", "10.77.0.1"); got != "real server" {
				t.Errorf("root's curl got %q", got)
			}
		})
	}
	for _, tool := range []string{"nft-tproxy", "iptables-tproxy"} {
		t.Run(tool, func(t *testing.T) {
			if strings.HasPrefix(tool, "iptables") {
				testutil.NeedTool(t, "iptables-nft")
			}
			host, server := newNetns(t), newNetns(t)
			link(t, host, server, []string{"10.78.0.1/24"}, []string{"10.78.0.9/24"})
			httpSays(t, listenIn(t, server, "tcp", "10.78.0.9:80", false), func(net.Conn) string { return "real server" })
			httpSays(t, listenIn(t, host, "tcp4", fmt.Sprintf("0.0.0.0:%d", port), true), func(c net.Conn) string { return "funnel saw " + c.LocalAddr().String() })
			host.run("sh", "-e", "-c", docBlock(t, tool, "alice", "nobody"))
			if got := curlAs(t, host, "nobody", "10.78.0.9"); got != "funnel saw 10.78.0.9:80" {
				t.Errorf("nobody's curl got %q", got)
			}
			if got := curlAs(t, host, "root", "10.78.0.9"); got != "real server" {
				t.Errorf("root's curl got %q", got)
			}
		})
	}
	for _, tool := range []string{"nft-gateway", "iptables-gateway"} {
		t.Run(tool, func(t *testing.T) {
			if strings.HasPrefix(tool, "iptables") {
				testutil.NeedTool(t, "iptables-nft")
			}
			client, gw := newNetns(t), newNetns(t)
			_, gwIf := link(t, client, gw, []string{"10.79.0.2/24"}, []string{"10.79.0.1/24"})
			client.setup("ip route add default via 10.79.0.1")
			httpSays(t, listenIn(t, gw, "tcp4", fmt.Sprintf("0.0.0.0:%d", port), true), func(c net.Conn) string { return "funnel saw " + c.LocalAddr().String() })
			gw.run("sh", "-e", "-c", docBlock(t, tool, "eth1", gwIf))
			if got := curlAs(t, client, "root", "192.0.2.80"); got != "funnel saw 192.0.2.80:80" {
				t.Errorf("the client's curl through the gateway got %q", got)
			}
		})
	}
}

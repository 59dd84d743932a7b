//go:build linux

package preload

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The leak tests run real programs under the launcher in a network
// namespace whose only resolver is a dnsmasq that logs every query it
// gets. A name that exists only in the profile (demo.test) must never
// reach it: every program resolves it inside the funnel, whichever way it
// asks (getaddrinfo, getaddrinfo_a, its own DNS client over UDP or TCP).

// leakNet is the namespace: loopback up, the resolver on an address of
// its own (not 127.0.0.1, so that nothing depends on loopback being
// special), /etc/netns/NAME/resolv.conf naming it (ip netns exec mounts
// that over /etc/resolv.conf), and a web server on 127.0.0.1:8000 whose
// page says "hello X".
type leakNet struct {
	name     string
	resolver string
	ip       string

	mu      sync.Mutex
	queries []string // "A demo.test", in the order dnsmasq logged them
	logged  *sync.Cond
}

var dnsmasqQuery = regexp.MustCompile(`query\[(\w+)\] (\S+) from`)

func newLeakNet(t *testing.T) *leakNet {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("making network namespaces needs root")
		}
		t.Skip("making network namespaces needs root")
	}
	needBuild(t)
	ip := testutil.NeedTool(t, "ip")
	dnsmasq := testutil.NeedTool(t, "dnsmasq")
	py := python(t)
	n := &leakNet{name: fmt.Sprintf("ftleak%d", os.Getpid()), ip: ip}
	n.logged = sync.NewCond(&n.mu)
	n.resolver = fmt.Sprintf("10.196.%d.53", os.Getpid()%250)
	must := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	etc := filepath.Join("/etc/netns", n.name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+n.resolver+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	must("netns", "add", n.name)
	t.Cleanup(func() { exec.Command(ip, "netns", "del", n.name).Run() })
	must("-n", n.name, "link", "set", "lo", "up")
	must("-n", n.name, "addr", "add", n.resolver+"/32", "dev", "lo")

	dns := exec.Command(ip, "netns", "exec", n.name, dnsmasq, "--no-daemon", "--log-queries", "--log-facility=-",
		"--no-resolv", "--no-hosts", "-p", "53", "--listen-address="+n.resolver, "--bind-interfaces")
	pipe, err := dns.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	dns.Stderr = dns.Stdout
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	go n.readLog(pipe)

	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte("<html><body><p>hello X</p></body></html>\n"), 0o644)
	web := exec.Command(ip, "netns", "exec", n.name, py, "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", www)
	if err := web.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Process.Kill(); web.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for exec.Command(ip, "netns", "exec", n.name, py, "-c",
		"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=2)").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the web server in the namespace does not answer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n
}

func (n *leakNet) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if m := dnsmasqQuery.FindStringSubmatch(sc.Text()); m != nil {
			n.mu.Lock()
			n.queries = append(n.queries, m[1]+" "+m[2])
			n.logged.Broadcast()
			n.mu.Unlock()
		}
	}
	n.mu.Lock()
	n.queries = append(n.queries, "(dnsmasq exited)")
	n.logged.Broadcast()
	n.mu.Unlock()
}

// flush asks the resolver for a marker name, unhooked, and waits until
// dnsmasq has logged it: every query sent before it has been logged too
// (one process reading one socket), so what the log holds then is all
// the program sent. It returns the queries logged since mark.
func (n *leakNet) flush(t *testing.T, mark int, marker string) []string {
	t.Helper()
	dig := testutil.NeedTool(t, "dig")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			exec.Command(n.ip, "netns", "exec", n.name, dig, "+tries=1", "+time=1", marker).Run()
			if n.seen(marker) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var got []string
	found := false
	for _, q := range n.queries[mark:] {
		if strings.HasSuffix(q, " "+marker) {
			found = true
			continue
		}
		got = append(got, q)
	}
	if !found {
		t.Fatalf("dnsmasq never logged the marker query %s: the observation does not work (log: %q)", marker, n.queries)
	}
	return got
}

func (n *leakNet) seen(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, q := range n.queries {
		if strings.HasSuffix(q, " "+name) {
			return true
		}
	}
	return false
}

func (n *leakNet) mark() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queries)
}

// launch runs the launcher in the namespace with --debug, so that the
// funnel's log says when it answered DNS packets itself.
func (n *leakNet) launch(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctxFor(t, 120*time.Second), n.ip, append([]string{"netns", "exec", n.name, built.funtun, "--debug"}, args...)...)
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir(), "HOME="+t.TempDir())
	return run(t, cmd, "")
}

// uringFetch resolves its host with getaddrinfo, connects with liburing's
// io_uring_prep_connect (falling back to connect(2) where io_uring_setup
// says ENOSYS, as liburing users do), sends an HTTP request and prints
// how it connected and the reply.
const uringFetch = `#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <liburing.h>

int main(int argc, char **argv) {
	if (argc != 3) return 2;
	struct addrinfo hints = {0}, *ai;
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(argv[1], argv[2], &hints, &ai);
	if (r) { printf("getaddrinfo: %s\n", gai_strerror(r)); return 1; }
	int s = socket(ai->ai_family, SOCK_STREAM, 0);
	struct io_uring ring;
	r = io_uring_queue_init(4, &ring, 0);
	if (r == -ENOSYS) {
		if (connect(s, ai->ai_addr, ai->ai_addrlen) < 0) { perror("connect"); return 1; }
		printf("via connect(2)\n");
	} else if (r < 0) {
		printf("io_uring_queue_init: %s\n", strerror(-r));
		return 1;
	} else {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		io_uring_prep_connect(sqe, s, ai->ai_addr, ai->ai_addrlen);
		io_uring_submit(&ring);
		struct io_uring_cqe *cqe;
		if ((r = io_uring_wait_cqe(&ring, &cqe)) < 0 || cqe->res < 0) { printf("io_uring connect failed\n"); return 1; }
		io_uring_cqe_seen(&ring, cqe);
		printf("via io_uring\n");
	}
	char req[256];
	int n = snprintf(req, sizeof req, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", argv[1]);
	if (write(s, req, n) != n) { perror("write"); return 1; }
	char buf[4096];
	ssize_t got;
	while ((got = read(s, buf, sizeof buf)) > 0)
		fwrite(buf, 1, got, stdout);
	return 0;
}
`

// TestNoNameLeaks: each program reaches the page through the profile (the
// rewrite of X to Y shows it) or gets the funnel's synthetic address,
// and the resolver logs no query for demo.test, with and without the
// guard. Programs with a DNS client of their own (c-ares in aria2c,
// Chromium's, dig, nslookup, host) are answered by the funnel's DNS
// responder, which the funnel's log shows.
func TestNoNameLeaks(t *testing.T) {
	n := newLeakNet(t)
	dig := testutil.NeedTool(t, "dig")

	// The observation works: the same name asked unhooked is logged.
	exec.Command(n.ip, "netns", "exec", n.name, dig, "+tries=1", "+time=1", "demo.test").Run()
	if q := n.flush(t, 0, "baseline.marker.test"); !contains(q, "A demo.test") {
		t.Fatalf("an unhooked dig demo.test was not logged by dnsmasq: %q", q)
	}

	needLiburing(t)
	uring := compileC(t, "uringfetch", uringFetch, "-luring")
	const chain = "chain=hosts demo.test=127.0.0.1 | rewrite from=X to=Y dir=down"
	type tc struct {
		name    string
		tool    string
		args    []string
		want    *regexp.Regexp
		ownDNS  bool   // sends DNS packets itself
		outFile string // where the tool writes the page, when not to stdout
	}
	download := t.TempDir()
	cases := []tc{
		{name: "wget2", tool: "wget2", args: []string{"-q", "-O", "-", "--no-hsts", "http://demo.test:8000/"}, want: regexp.MustCompile(`hello Y`)},
		{name: "aria2c", tool: "aria2c", args: []string{"-q", "--async-dns=true", "--allow-overwrite=true", "-d", download, "-o", "page.html", "http://demo.test:8000/"},
			ownDNS: true, outFile: filepath.Join(download, "page.html"), want: regexp.MustCompile(`hello Y`)},
		{name: "dig", tool: "dig", args: []string{"+short", "+tries=1", "+time=5", "demo.test"}, ownDNS: true, want: regexp.MustCompile(`(?m)^198\.1[89]\.\d+\.\d+$`)},
		{name: "dig+tcp", tool: "dig", args: []string{"+tcp", "+short", "+tries=1", "+time=5", "demo.test"}, ownDNS: true, want: regexp.MustCompile(`(?m)^198\.1[89]\.\d+\.\d+$`)},
		{name: "nslookup", tool: "nslookup", args: []string{"demo.test"}, ownDNS: true, want: regexp.MustCompile(`Address: 198\.1[89]\.`)},
		{name: "host", tool: "host", args: []string{"demo.test"}, ownDNS: true, want: regexp.MustCompile(`demo\.test has address 198\.1[89]\.`)},
		{name: "chromium", tool: "chromium", args: []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
			"--user-data-dir=" + t.TempDir(), "--dump-dom", "http://demo.test:8000/"}, ownDNS: true, want: regexp.MustCompile(`<p>hello Y</p>`)},
		{name: "liburing", tool: uring, args: []string{"demo.test", "8000"}, want: regexp.MustCompile(`(?s)via connect\(2\).*hello Y`)},
	}
	for _, guard := range []string{"", "guard=netns"} {
		for i, c := range cases {
			name := c.name
			if guard != "" {
				name += "/guarded"
			}
			t.Run(name, func(t *testing.T) {
				tool := c.tool
				if !filepath.IsAbs(tool) {
					tool = testutil.NeedTool(t, tool)
				}
				if c.outFile != "" {
					os.Remove(c.outFile)
				}
				mark := n.mark()
				args := []string{chain}
				if guard != "" {
					args = append(args, guard)
				}
				out, errOut, err := n.launch(t, append(append(args, tool), c.args...)...)
				if c.outFile != "" {
					data, _ := os.ReadFile(c.outFile)
					out = string(data)
				}
				if err != nil || !c.want.MatchString(out) {
					t.Errorf("%s: %v; want output matching %s, got:\n%s\nstderr:\n%s", c.name, err, c.want, out, tail(errOut, 3000))
				}
				if c.ownDNS && !strings.Contains(errOut, "answering DNS") {
					t.Errorf("%s: the funnel's DNS responder never answered it (its own DNS client should have been caught):\n%s", c.name, tail(errOut, 3000))
				}
				queries := n.flush(t, mark, fmt.Sprintf("m%d%s.marker.test", i, strings.TrimPrefix(guard, "guard=")))
				var leaked, other []string
				for _, q := range queries {
					if strings.HasSuffix(q, "demo.test") {
						leaked = append(leaked, q)
					} else {
						other = append(other, q)
					}
				}
				if len(leaked) > 0 {
					t.Errorf("%s: the resolver was asked %q", c.name, leaked)
				}
				if len(other) > 0 {
					// The funnel's own lookups for flows the profile sends
					// direct (Chromium's update checks, say): not the
					// program's, and expected.
					t.Logf("%s: the resolver also logged (the funnel resolving direct flows): %q", c.name, other)
				}
			})
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

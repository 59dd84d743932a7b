//go:build linux

package preload

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// resolverProbeC exercises glibc's resolver entry points other than
// getaddrinfo. Each answer is used: the program connects to the address it
// got and checks the echo server answers through the funnel. For the res_*
// calls the resolver state points at DNSPORT on loopback, where the test
// listens for any query that leaks.
const resolverProbeC = `
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *port;

static void die(const char *what) { fprintf(stderr, "%s\n", what); exit(1); }

/* echo connects to sa and checks one round trip through the echo server. */
static void echo(const struct sockaddr *sa, socklen_t len, const char *label)
{
	int fd = socket(sa->sa_family, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, sa, len) != 0) { perror(label); exit(1); }
	char buf[16];
	if (write(fd, "ping", 4) != 4 || read(fd, buf, sizeof buf) != 4 || memcmp(buf, "ping", 4) != 0)
		die(label);
	close(fd);
	printf("echo-%s ok\n", label);
}

static void print_ai(const char *label, const struct addrinfo *ai)
{
	char text[INET6_ADDRSTRLEN];
	const void *a = ai->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
						 : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
	printf("%s %s\n", label, inet_ntop(ai->ai_family, a, text, sizeof text));
}

static struct addrinfo hints4 = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
static struct addrinfo hints6 = { .ai_family = AF_INET6, .ai_socktype = SOCK_STREAM };

static void gai_wait(const char *name)
{
	struct gaicb a = { .ar_name = name, .ar_service = port, .ar_request = &hints4 };
	struct gaicb b = { .ar_name = name, .ar_service = port, .ar_request = &hints6 };
	struct gaicb *list[] = { &a, NULL, &b };
	int r = getaddrinfo_a(GAI_WAIT, list, 3, NULL);
	if (r != 0) { fprintf(stderr, "getaddrinfo_a: %s\n", gai_strerror(r)); exit(1); }
	if (gai_error(&a) != 0 || gai_error(&b) != 0) { fprintf(stderr, "gai_error: %s / %s\n", gai_strerror(gai_error(&a)), gai_strerror(gai_error(&b))); exit(1); }
	print_ai("wait4", a.ar_result);
	print_ai("wait6", b.ar_result);
	echo(a.ar_result->ai_addr, a.ar_result->ai_addrlen, "wait4");
	freeaddrinfo(a.ar_result);
	freeaddrinfo(b.ar_result);
}

static sem_t notified;
static volatile sig_atomic_t signal_value;
static void on_thread(union sigval v) { if (v.sival_int == 7) sem_post(&notified); }
static void on_signal(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; signal_value = si->si_value.sival_int; }

static void gai_nowait(const char *name)
{
	sem_init(&notified, 0, 0);
	struct gaicb a = { .ar_name = name, .ar_service = port, .ar_request = &hints4 };
	struct gaicb *list[] = { &a };
	struct sigevent sev = { .sigev_notify = SIGEV_THREAD, .sigev_notify_function = on_thread };
	sev.sigev_value.sival_int = 7;
	int r = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev);
	if (r != 0) { fprintf(stderr, "getaddrinfo_a nowait: %s\n", gai_strerror(r)); exit(1); }
	while ((r = gai_error(&a)) == EAI_INPROGRESS) {
		const struct gaicb *wait[] = { &a };
		int s = gai_suspend(wait, 1, NULL);
		if (s != 0 && s != EAI_ALLDONE && s != EAI_INTR) { fprintf(stderr, "gai_suspend: %s\n", gai_strerror(s)); exit(1); }
	}
	if (r != 0) { fprintf(stderr, "gai_error nowait: %s\n", gai_strerror(r)); exit(1); }
	while (sem_wait(&notified) != 0 && errno == EINTR) {}
	printf("thread notified\n");
	print_ai("nowait4", a.ar_result);
	echo(a.ar_result->ai_addr, a.ar_result->ai_addrlen, "nowait4");
	if (gai_cancel(&a) != EAI_ALLDONE) die("gai_cancel of a finished request");
	freeaddrinfo(a.ar_result);

	/* SIGEV_SIGNAL: the value arrives with the signal. */
	struct sigaction sa = { .sa_sigaction = on_signal, .sa_flags = SA_SIGINFO };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGRTMIN, &sa, NULL);
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGRTMIN);
	sigprocmask(SIG_BLOCK, &block, &old);
	struct gaicb c = { .ar_name = name, .ar_service = port, .ar_request = &hints4 };
	struct gaicb *list2[] = { &c };
	struct sigevent sig = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN };
	sig.sigev_value.sival_int = 42;
	if (getaddrinfo_a(GAI_NOWAIT, list2, 1, &sig) != 0) die("getaddrinfo_a signal");
	while (signal_value != 42)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (gai_error(&c) != 0) die("gai_error signal");
	printf("signal notified\n");
	print_ai("signal4", c.ar_result);
	freeaddrinfo(c.ar_result);
}

/* res_answer checks the message's header and question and returns the
 * address of its first answer record, printed as "label address". */
static void res_answer(const char *label, const unsigned char *msg, int len, int type, const char *qname)
{
	ns_msg m;
	ns_rr rr;
	if (ns_initparse(msg, len, &m) != 0) die("ns_initparse");
	if (!ns_msg_getflag(m, ns_f_qr) || !ns_msg_getflag(m, ns_f_rd) || !ns_msg_getflag(m, ns_f_ra) ||
	    ns_msg_getflag(m, ns_f_rcode) != ns_r_noerror || ns_msg_count(m, ns_s_qd) != 1 || ns_msg_count(m, ns_s_an) < 1)
		die("header");
	if (ns_parserr(&m, ns_s_qd, 0, &rr) != 0 || strcasecmp(ns_rr_name(rr), qname) != 0 || (int)ns_rr_type(rr) != type || ns_rr_class(rr) != ns_c_in)
		die("question not echoed");
	if (ns_parserr(&m, ns_s_an, 0, &rr) != 0 || (int)ns_rr_type(rr) != type || strcasecmp(ns_rr_name(rr), qname) != 0)
		die("answer record");
	char text[INET6_ADDRSTRLEN];
	inet_ntop(type == ns_t_a ? AF_INET : AF_INET6, ns_rr_rdata(rr), text, sizeof text);
	printf("%s %s\n", label, text);
}

static void res_calls(const char *name, int dnsport)
{
	res_init();
	/* Any query that leaves goes to the test's trap, and fails fast. */
	_res.nscount = 1;
	_res.nsaddr_list[0].sin_family = AF_INET;
	_res.nsaddr_list[0].sin_port = htons(dnsport);
	_res.nsaddr_list[0].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	_res.retrans = 1;
	_res.retry = 1;

	unsigned char buf[NS_PACKETSZ];
	int n = res_query(name, ns_c_in, ns_t_a, buf, sizeof buf);
	if (n < 0) { fprintf(stderr, "res_query: h_errno %d\n", h_errno); exit(1); }
	res_answer("res_query", buf, n, ns_t_a, name);
	ns_msg m;
	ns_rr rr;
	ns_initparse(buf, n, &m);
	ns_parserr(&m, ns_s_an, 0, &rr);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };
	memcpy(&sin.sin_addr, ns_rr_rdata(rr), 4);
	echo((struct sockaddr *)&sin, sizeof sin, "res_query");

	n = res_search(name, ns_c_in, ns_t_aaaa, buf, sizeof buf);
	if (n < 0) { fprintf(stderr, "res_search: h_errno %d\n", h_errno); exit(1); }
	res_answer("res_search", buf, n, ns_t_aaaa, name);

	char label[256];
	snprintf(label, sizeof label, "%s", name);
	char *dot = strchr(label, '.');
	if (!dot) die("name without a domain");
	*dot = '\0';
	n = res_querydomain(label, dot + 1, ns_c_in, ns_t_a, buf, sizeof buf);
	if (n < 0) { fprintf(stderr, "res_querydomain: h_errno %d\n", h_errno); exit(1); }
	res_answer("res_querydomain", buf, n, ns_t_a, name);

	struct __res_state st;
	memset(&st, 0, sizeof st);
	if (res_ninit(&st) != 0) die("res_ninit");
	st.nscount = 1;
	st.nsaddr_list[0] = _res.nsaddr_list[0];
	st.retrans = 1;
	st.retry = 1;
	n = res_nquery(&st, name, ns_c_in, ns_t_a, buf, sizeof buf);
	if (n < 0) { fprintf(stderr, "res_nquery: h_errno %d\n", h_errno); exit(1); }
	res_answer("res_nquery", buf, n, ns_t_a, name);

	/* Types the funnel has no records for: NODATA, not a query sent. */
	n = res_query(name, ns_c_in, ns_t_mx, buf, sizeof buf);
	printf("mx %d %s\n", n, h_errno == NO_DATA ? "NO_DATA" : h_errno == HOST_NOT_FOUND ? "HOST_NOT_FOUND" : "other");

	struct addrinfo *ai;
	if (getaddrinfo(name, port, &hints4, &ai) != 0) die("getaddrinfo");
	print_ai("getaddrinfo", ai);
	freeaddrinfo(ai);
}

int main(int argc, char **argv)
{
	if (argc != 5) die("usage: probe wait|nowait|res NAME PORT DNSPORT");
	port = argv[3];
	if (strcmp(argv[1], "wait") == 0) gai_wait(argv[2]);
	else if (strcmp(argv[1], "nowait") == 0) gai_nowait(argv[2]);
	else if (strcmp(argv[1], "res") == 0) res_calls(argv[2], atoi(argv[4]));
	else die("unknown mode");
	return 0;
}
`

var resolverProbe struct {
	once     sync.Once
	bin, err string
}

func buildResolverProbe(t *testing.T) string {
	t.Helper()
	needBuild(t)
	resolverProbe.once.Do(func() {
		src := filepath.Join(built.dir, "resolver_probe.c")
		resolverProbe.bin = filepath.Join(built.dir, "resolver_probe")
		if err := os.WriteFile(src, []byte(resolverProbeC), 0o644); err != nil {
			resolverProbe.err = err.Error()
			return
		}
		// -lresolv: ns_initparse, and res_* before glibc 2.34.
		out, err := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", resolverProbe.bin, src, "-lresolv", "-lanl", "-lpthread").CombinedOutput()
		if err != nil {
			resolverProbe.err = fmt.Sprintf("%v\n%s", err, out)
		}
	})
	if resolverProbe.err != "" {
		t.Fatalf("building the resolver probe: %s", resolverProbe.err)
	}
	return resolverProbe.bin
}

// dnsTrap listens on one loopback port, UDP and TCP, and counts what
// arrives there: a resolver pointed at it shows any query that leaked.
type dnsTrap struct {
	port int
	mu   sync.Mutex
	got  []string
}

func newDNSTrap(t *testing.T) *dnsTrap {
	t.Helper()
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			pc.Close()
			continue
		}
		trap := &dnsTrap{port: port}
		t.Cleanup(func() { pc.Close(); l.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				trap.record(fmt.Sprintf("udp %d bytes from %s", n, from))
			}
		}()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				trap.record("tcp from " + c.RemoteAddr().String())
				c.Close()
			}
		}()
		return trap
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil
}

func (d *dnsTrap) record(s string) {
	d.mu.Lock()
	d.got = append(d.got, s)
	d.mu.Unlock()
}

func (d *dnsTrap) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.got...)
}

// fields maps each output line's first word to the rest.
func fields(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, " ")
		m[k] = v
	}
	return m
}

// TestResolverGetaddrinfoA: getaddrinfo_a answers a funnel-only name in
// GAI_WAIT and GAI_NOWAIT modes (gai_error, gai_suspend, gai_cancel, the
// SIGEV_THREAD and SIGEV_SIGNAL notifications), and the addresses it
// gives reach the destination the profile names. demo.test exists only in
// the profile: glibc's own asynchronous lookup could not find it.
func TestResolverGetaddrinfoA(t *testing.T) {
	probe := buildResolverProbe(t)
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	port := strconv.Itoa(echo.port())
	for _, mode := range []string{"wait", "nowait"} {
		out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), probe, mode, "demo.test", port, "0"), "")
		if err != nil {
			t.Fatalf("%s: %v\n%s%s", mode, err, out, stderr)
		}
		f := fields(out)
		switch mode {
		case "wait":
			if f["wait4"] == "" || f["wait6"] == "" || f["wait4"] == "127.0.0.1" || !strings.Contains(f["wait6"], ":") {
				t.Errorf("GAI_WAIT addresses: %q", out)
			}
			if f["echo-wait4"] != "ok" {
				t.Errorf("GAI_WAIT answer did not reach the echo server: %q", out)
			}
		case "nowait":
			for _, want := range []string{"thread notified", "echo-nowait4 ok", "signal notified"} {
				if !strings.Contains(out, want) {
					t.Errorf("GAI_NOWAIT: no %q in %q", want, out)
				}
			}
			if f["nowait4"] == "" || f["signal4"] != f["nowait4"] {
				t.Errorf("GAI_NOWAIT: the same name gave %q then %q", f["nowait4"], f["signal4"])
			}
		}
	}
}

// TestResolverResQuery: res_query, res_search, res_querydomain and
// res_nquery answer from the funnel with a well-formed message (header
// flags, question echoed, one record with the address getaddrinfo gives),
// other types get NO_DATA, and nothing reaches the resolver the program
// was pointed at. The same probe without the library does reach it: the
// trap is shown to catch a query that leaks.
func TestResolverResQuery(t *testing.T) {
	probe := buildResolverProbe(t)
	echo := echoWithLog(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	port := strconv.Itoa(echo.port())
	trap := newDNSTrap(t)
	dnsport := strconv.Itoa(trap.port)

	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), probe, "res", "demo.test", port, dnsport), "")
	if err != nil {
		t.Fatalf("hooked: %v\n%s%s", err, out, stderr)
	}
	f := fields(out)
	if f["res_query"] == "" || f["res_query"] != f["getaddrinfo"] || f["res_query"] != f["res_querydomain"] || f["res_query"] != f["res_nquery"] {
		t.Errorf("res_* and getaddrinfo disagree: %q", out)
	}
	if !strings.Contains(f["res_search"], ":") {
		t.Errorf("res_search AAAA: %q", f["res_search"])
	}
	if !(f["echo-res_query"] == "ok") {
		t.Errorf("the res_query address did not reach the echo server: %q", out)
	}
	if f["mx"] != "-1 NO_DATA" {
		t.Errorf("MX: got %q, want -1 NO_DATA", f["mx"])
	}
	if got := trap.seen(); len(got) != 0 {
		t.Errorf("queries leaked to the resolver: %v", got)
	}

	// The control: unhooked, res_query asks the trap (and fails).
	_, _, err = run(t, exec2(t, probe, "res", "demo.test", port, dnsport), "")
	if err == nil {
		t.Error("unhooked, the probe resolved demo.test: the name is not funnel-only")
	}
	if len(trap.seen()) == 0 {
		t.Error("unhooked, no query reached the trap: it would not see a leak")
	}
}

// TestResolverResQueryPython: a Python program calling res_query through
// ctypes (as from the global symbol scope) gets the funnel's answer.
func TestResolverResQueryPython(t *testing.T) {
	py := python(t)
	needBuild(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1")
	script := `
import ctypes, socket
libc = ctypes.CDLL(None)
buf = ctypes.create_string_buffer(512)
n = libc.res_query(b"demo.test", 1, 1, buf, 512)
if n < 0:
    raise SystemExit("res_query failed")
msg = buf.raw[:n]
print(socket.inet_ntoa(msg[n-4:n]), socket.gethostbyname("demo.test"))
`
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", script), "")
	if err != nil {
		t.Fatalf("python: %v\n%s%s", err, out, stderr)
	}
	got := strings.Fields(out)
	if len(got) != 2 || got[0] != got[1] || got[0] == "127.0.0.1" {
		t.Errorf("res_query and gethostbyname: %q", out)
	}
}

// TestResolverWget2: wget2 resolves with getaddrinfo_a when given a DNS
// timeout; under the launcher it fetches a page by a name only the profile
// knows.
func TestResolverWget2(t *testing.T) {
	wget2 := testutil.NeedTool(t, "wget2")
	py := python(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("through the funnel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.CommandContext(ctxFor(t, 60*time.Second), py, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir)
	srv.Env = cleanEnv()
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("http.server: %v", err)
	}
	var port int
	if _, err := fmt.Sscanf(line, "Serving HTTP on 127.0.0.1 port %d", &port); err != nil {
		t.Fatalf("http.server said %q: %v", line, err)
	}
	url := fmt.Sprintf("http://demo.test:%d/index.html", port)
	out, stderr, err := run(t, launcher(t, "chain=hosts demo.test=127.0.0.1", wget2, "--no-config", "--dns-timeout=10", "--tries=1", "-q", "-O", "-", url), "")
	if err != nil || out != "through the funnel\n" {
		t.Fatalf("funtun wget2 %s: %v, out %q\n%s", url, err, out, stderr)
	}
}

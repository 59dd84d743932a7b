package socks5d

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/net/proxy"
)

// These tests use real SOCKS5 clients. Each reaches a local server through
// actingChain, so the answer shows the profile at work ("hello" arrives as
// "HOWDY"), and names like demo.test exist only inside the funnel.

// authServer is a socks5d that requires a login: alice (password secret)
// takes the command's chain, work (password office) the profile "work".
func authServer(t *testing.T) string {
	t.Helper()
	eng := testEngine(t, map[string]string{"work": "rewrite from=hello to=WORK! | hosts demo.test=127.0.0.1 strict=true"})
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: actingChain}}
	s.SetUsers(mustLoadUsers(t, writeUsers(t, "alice:secret", "work:office:work")))
	return startServer(t, s, "tcp")
}

func TestCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	port := strconv.Itoa(web.Port)
	open := simpleServer(t)
	auth := authServer(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"socks5 (local resolution)", []string{"--socks5", open, "http://127.0.0.1:" + port + "/"}, clientSees},
		{"socks5-hostname (name to the proxy)", []string{"--socks5-hostname", open, "http://demo.test:" + port + "/"}, clientSees},
		{"socks5 with user", []string{"-x", "socks5://alice:secret@" + auth, "http://127.0.0.1:" + port + "/"}, clientSees},
		{"socks5h with user", []string{"-x", "socks5h://alice:secret@" + auth, "http://demo.test:" + port + "/"}, clientSees},
		{"user selects profile", []string{"-x", "socks5h://work:office@" + auth, "http://demo.test:" + port + "/"}, "WORK! from the test server\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, nil, curl, append([]string{"-sS", "--max-time", "20"}, c.args...)...)
			if code != 0 || out != c.want {
				t.Fatalf("curl exit %d, output %q (stderr %q); want exit 0 and %q", code, out, errOut, c.want)
			}
		})
	}
}

// TestCurlFailures checks that each failure reaches curl as its reply
// code: curl exits 97 and names the code in parentheses.
func TestCurlFailures(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	port := strconv.Itoa(web.Port)
	eng := testEngine(t, nil)
	denying := startServer(t, &Server{Engine: eng, Selector: funnel.Selector{Chain: "deny to=port:" + port + " | " + actingChain}}, "tcp")
	open := simpleServer(t)
	auth := authServer(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"refused", []string{"--socks5", open, "http://127.0.0.1:" + strconv.Itoa(closedPort(t)) + "/"}, "Can't complete SOCKS5 connection to 127.0.0.1. (5)"},
		{"denied by the deny piece", []string{"--socks5", denying, "http://127.0.0.1:" + port + "/"}, "Can't complete SOCKS5 connection to 127.0.0.1. (2)"},
		{"unknown name", []string{"--socks5-hostname", open, "http://nosuch.test:" + port + "/"}, "Can't complete SOCKS5 connection to nosuch.test. (4)"},
		{"wrong password", []string{"-x", "socks5h://alice:guess@" + auth, "http://demo.test:" + port + "/"}, "User was rejected by the SOCKS5 server (1 1)."},
		{"no password", []string{"--socks5-hostname", auth, "http://demo.test:" + port + "/"}, "No authentication method was acceptable."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, nil, curl, append([]string{"-sS", "--max-time", "20"}, c.args...)...)
			if code != 97 || !strings.Contains(errOut, c.want) {
				t.Fatalf("curl exit %d, stderr %q, output %q; want exit 97 and %q", code, errOut, out, c.want)
			}
		})
	}
}

func TestProxychains(t *testing.T) {
	pc := testutil.NeedTool(t, "proxychains4")
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	port := strconv.Itoa(web.Port)
	conf := func(t *testing.T, proxyLine string) string {
		path := filepath.Join(t.TempDir(), "proxychains.conf")
		text := "strict_chain\nproxy_dns\nremote_dns_subnet 224\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\n" + proxyLine + "\n"
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	hostPort := func(addr string) string {
		h, p, _ := net.SplitHostPort(addr)
		return h + " " + p
	}
	open := simpleServer(t)
	auth := authServer(t)
	cases := []struct {
		name, proxy, url, want string
	}{
		{"address", "socks5 " + hostPort(open), "http://127.0.0.1:" + port + "/", clientSees},
		// proxy_dns hands curl a placeholder address and sends the proxy
		// the name, which only the profile knows.
		{"name", "socks5 " + hostPort(open), "http://demo.test:" + port + "/", clientSees},
		{"user", "socks5 " + hostPort(auth) + " alice secret", "http://demo.test:" + port + "/", clientSees},
		{"user selects profile", "socks5 " + hostPort(auth) + " work office", "http://demo.test:" + port + "/", "WORK! from the test server\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, nil, pc, "-q", "-f", conf(t, c.proxy), curl, "-sS", "--max-time", "20", c.url)
			if code != 0 || out != c.want {
				t.Fatalf("proxychains4 curl: exit %d, output %q, stderr %q; want %q", code, out, errOut, c.want)
			}
		})
	}
}

func TestNcat(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	open := simpleServer(t)
	auth := authServer(t)
	cases := []struct {
		name string
		args []string
	}{
		{"address", []string{"--proxy", open, "--proxy-type", "socks5", "127.0.0.1", strconv.Itoa(echo.Port)}},
		{"name resolved by the proxy", []string{"--proxy", open, "--proxy-type", "socks5", "--proxy-dns", "remote", "demo.test", strconv.Itoa(echo.Port)}},
		{"user", []string{"--proxy", auth, "--proxy-type", "socks5", "--proxy-auth", "alice:secret", "127.0.0.1", strconv.Itoa(echo.Port)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runToolInput(t, nil, "hello, ncat\n", ncat, append([]string{"--wait", "10"}, c.args...)...)
			if code != 0 || out != "HOWDY, ncat\n" {
				t.Fatalf("ncat exit %d, printed %q (stderr %q), want %q", code, out, errOut, "HOWDY, ncat\n")
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		out, errOut, code := runTool(t, nil, ncat, "--wait", "10", "--proxy", open, "--proxy-type", "socks5", "127.0.0.1", strconv.Itoa(closedPort(t)))
		if code == 0 || !strings.Contains(strings.ToLower(errOut), "connection refused") {
			t.Fatalf("ncat exit %d, stderr %q, output %q; want a failure saying connection refused", code, errOut, out)
		}
	})
}

const pysocksTCP = `
import socks, sys
host, port, target, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
user = sys.argv[5] if len(sys.argv) > 5 else None
password = sys.argv[6] if len(sys.argv) > 6 else None
s = socks.socksocket()
s.set_proxy(socks.SOCKS5, host, port, rdns=True, username=user, password=password)
s.settimeout(20)
try:
    s.connect((target, tport))
except socks.ProxyError as e:
    print("ERROR", e.msg)
    sys.exit(0)
s.sendall(b"hello, python\n")
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(100)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
`

func TestPySocks(t *testing.T) {
	py := needPySocks(t)
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	eport := strconv.Itoa(echo.Port)
	open := simpleServer(t)
	auth := authServer(t)
	eng := testEngine(t, nil)
	denying := startServer(t, &Server{Engine: eng, Selector: funnel.Selector{Chain: "deny to=port:" + eport + " | " + actingChain}}, "tcp")
	split := func(a string) []string { h, p, _ := net.SplitHostPort(a); return []string{h, p} }
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"address", append(split(open), "127.0.0.1", eport), "HOWDY, python\n"},
		{"name", append(split(open), "demo.test", eport), "HOWDY, python\n"},
		{"user", append(split(auth), "demo.test", eport, "alice", "secret"), "HOWDY, python\n"},
		{"refused", append(split(open), "127.0.0.1", strconv.Itoa(closedPort(t))), "ERROR Socket error: 0x05: Connection refused\n"},
		{"denied", append(split(denying), "127.0.0.1", eport), "ERROR Socket error: 0x02: Connection not allowed by ruleset\n"},
		{"unknown name", append(split(open), "nosuch.test", eport), "ERROR Socket error: 0x04: Host unreachable\n"},
		{"wrong password", append(split(auth), "demo.test", eport, "alice", "guess"), "ERROR Socket error: SOCKS5 authentication failed\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, nil, py, append([]string{"-c", pysocksTCP}, c.args...)...)
			if code != 0 || out != c.want {
				t.Fatalf("python3 exit %d, output %q, stderr %q; want %q", code, out, errOut, c.want)
			}
		})
	}
}

func TestGoProxyPackage(t *testing.T) {
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	open := simpleServer(t)
	auth := authServer(t)
	cases := []struct {
		name    string
		addr    string
		auth    *proxy.Auth
		target  string
		want    string
		wantErr string
	}{
		{"name", open, nil, fmt.Sprintf("demo.test:%d", echo.Port), "HOWDY, go\n", ""},
		{"IPv4", open, nil, echo.String(), "HOWDY, go\n", ""},
		{"user", auth, &proxy.Auth{User: "alice", Password: "secret"}, fmt.Sprintf("demo.test:%d", echo.Port), "HOWDY, go\n", ""},
		{"user selects profile", auth, &proxy.Auth{User: "work", Password: "office"}, fmt.Sprintf("demo.test:%d", echo.Port), "WORK!, go\n", ""},
		{"unknown name", open, nil, fmt.Sprintf("nosuch.test:%d", echo.Port), "", "host unreachable"},
		{"refused", open, nil, fmt.Sprintf("127.0.0.1:%d", closedPort(t)), "", "connection refused"},
		{"wrong password", auth, &proxy.Auth{User: "alice", Password: "guess"}, echo.String(), "", "username/password authentication failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := proxy.SOCKS5("tcp", c.addr, c.auth, &net.Dialer{Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			conn, err := d.Dial("tcp", c.target)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Dial: %v, want an error saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(15 * time.Second))
			io.WriteString(conn, "hello, go\n")
			got := make([]byte, len(c.want))
			if _, err := io.ReadFull(conn, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Fatalf("read %q, want %q", got, c.want)
			}
		})
	}
}

// needPySocks finds a python3 that has PySocks: Debian's python3-socks is
// installed for /usr/bin/python3, which another python3 earlier in PATH
// (pyenv, a virtualenv) does not see.
func needPySocks(t *testing.T) string {
	t.Helper()
	first := testutil.NeedTool(t, "python3")
	for _, py := range []string{first, "/usr/bin/python3"} {
		if _, err := os.Stat(py); err != nil {
			continue
		}
		if _, _, code := runTool(t, nil, py, "-c", "import socks"); code == 0 {
			return py
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("python3-socks (PySocks) is not installed")
	}
	t.Skip("python3-socks (PySocks) is not installed")
	return ""
}

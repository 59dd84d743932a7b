//go:build linux

package socks5d

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/sys/unix"
)

// socksify and tsocks send loopback and local-interface destinations
// direct, so their tests reach a server inside a network namespace the
// test creates: a veth pair joins it to this namespace with addresses
// (10.200.N.1/30 here, 10.200.N.2/30 there) that exist only on that pair.
// The server listens on 10.201.N.1, an address on the namespace's
// loopback that we reach by a route through the pair: socksify adds a
// direct route for every network an interface of ours is on, so the
// pair's own /30 would not go through the proxy. socks5d itself stays on
// loopback.

type netnsPair struct {
	name   string
	hostIP string // our side of the veth pair
	peerIP string // the namespace's side
	nsIP   string // the server's address, routed through the pair
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test creates a network namespace and needs root")
	}
	t.Skip("this test creates a network namespace and needs root")
}

func newNetns(t *testing.T) *netnsPair {
	t.Helper()
	needRoot(t)
	ipTool := testutil.NeedTool(t, "ip")
	run := func(args ...string) error {
		out, err := exec.Command(ipTool, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// A subnet no interface has yet (other tests may run beside us).
	var n int
	for tries := 0; ; tries++ {
		n = 1 + rand.IntN(254)
		out, _ := exec.Command(ipTool, "-4", "addr").Output()
		if !strings.Contains(string(out), fmt.Sprintf("10.200.%d.", n)) && !strings.Contains(string(out), fmt.Sprintf("10.201.%d.", n)) {
			break
		}
		if tries > 50 {
			t.Fatal("no free 10.200.N.0/30 subnet")
		}
	}
	p := &netnsPair{
		name:   fmt.Sprintf("fts5d-%d-%d", os.Getpid(), n),
		hostIP: fmt.Sprintf("10.200.%d.1", n),
		peerIP: fmt.Sprintf("10.200.%d.2", n),
		nsIP:   fmt.Sprintf("10.201.%d.1", n),
	}
	hostIf, nsIf := fmt.Sprintf("fts5h%d", n), fmt.Sprintf("fts5n%d", n)
	if err := run("netns", "add", p.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		run("netns", "del", p.name)
		// Deleting the namespace deletes the pair; this is for a setup
		// that failed halfway.
		exec.Command(ipTool, "link", "del", hostIf).Run()
	})
	for _, args := range [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf},
		{"link", "set", nsIf, "netns", p.name},
		{"addr", "add", p.hostIP + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", p.name, "addr", "add", p.peerIP + "/30", "dev", nsIf},
		{"-n", p.name, "link", "set", nsIf, "up"},
		{"-n", p.name, "addr", "add", p.nsIP + "/32", "dev", "lo"},
		{"-n", p.name, "link", "set", "lo", "up"},
		{"route", "add", p.nsIP + "/32", "via", p.peerIP, "dev", hostIf},
	} {
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// listen opens a TCP listener inside the namespace. The socket keeps the
// namespace it was made in, so only the thread that makes it enters the
// namespace, and that thread is thrown away afterwards.
func (p *netnsPair) listen(t *testing.T) net.Listener {
	t.Helper()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in the other namespace now, and
		// the runtime ends it when this goroutine returns.
		fd, err := unix.Open(filepath.Join("/run/netns", p.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		l, err := net.Listen("tcp", net.JoinHostPort(p.nsIP, "0"))
		ch <- result{l, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.l.Close() })
	return r.l
}

// helloServerIn serves serverSays over HTTP inside the namespace.
func (p *netnsPair) helloServer(t *testing.T) string {
	l := p.listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, serverSays)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// nsServers are the socks5d servers of these tests, on loopback: one
// without authentication, one where alice logs in with password secret.
func nsServers(t *testing.T) (open, auth string) {
	open = simpleServer(t)
	auth = authServer(t)
	return
}

func TestSocksify(t *testing.T) {
	socksify := testutil.NeedTool(t, "socksify")
	curl := testutil.NeedTool(t, "curl")
	ns := newNetns(t)
	web := ns.helloServer(t)
	open, auth := nsServers(t)
	conf := func(server string, method string) string {
		h, p, _ := net.SplitHostPort(server)
		path := filepath.Join(t.TempDir(), "dante.conf")
		text := fmt.Sprintf(`route {
	from: 0.0.0.0/0 to: %s/32 via: %s port = %s
	protocol: tcp
	proxyprotocol: socks_v5
	method: %s
}
`, ns.nsIP, h, p, method)
		os.WriteFile(path, []byte(text), 0o644)
		return path
	}
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"no auth", []string{"SOCKS_CONF=" + conf(open, "none")}},
		{"username", []string{"SOCKS_CONF=" + conf(auth, "username"), "SOCKS_USERNAME=alice", "SOCKS_PASSWORD=secret"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, c.env, socksify, curl, "-sS", "--max-time", "20", "http://"+web+"/")
			if code != 0 || out != clientSees {
				t.Fatalf("socksify curl: exit %d, output %q, stderr %q; want %q", code, out, errOut, clientSees)
			}
		})
	}
}

func TestTsocks(t *testing.T) {
	tsocks := testutil.NeedTool(t, "tsocks")
	curl := testutil.NeedTool(t, "curl")
	ns := newNetns(t)
	web := ns.helloServer(t)
	open, auth := nsServers(t)
	conf := func(server, user, pass string) string {
		h, p, _ := net.SplitHostPort(server)
		path := filepath.Join(t.TempDir(), "tsocks.conf")
		text := "local = 127.0.0.0/255.0.0.0\nserver = " + h + "\nserver_port = " + p + "\nserver_type = 5\n"
		if user != "" {
			text += "default_user = " + user + "\ndefault_pass = " + pass + "\n"
		}
		os.WriteFile(path, []byte(text), 0o644)
		return path
	}
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"no auth", []string{"TSOCKS_CONF_FILE=" + conf(open, "", "")}},
		{"username", []string{"TSOCKS_CONF_FILE=" + conf(auth, "alice", "secret")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runTool(t, c.env, tsocks, curl, "-sS", "--max-time", "20", "http://"+web+"/")
			if code != 0 || out != clientSees {
				t.Fatalf("tsocks curl: exit %d, output %q, stderr %q; want %q", code, out, errOut, clientSees)
			}
		})
	}
}

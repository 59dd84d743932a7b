package forward_test

import (
	"bufio"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// Socket activation with systemd's own launcher: systemd-socket-activate
// opens the sockets, starts funtun at the first client, and funtun serves
// the sockets --listen fd:NAME names.

// activated is funtun under systemd-socket-activate (which execs into it).
type activated struct {
	cmd    *exec.Cmd
	logs   *testutil.LogBuffer
	notify *notifications
	exited chan struct{} // closed once it has ended; then err is set
	err    error
}

// startActivated runs `systemd-socket-activate SSAARGS funtun forward ARGS`
// with NOTIFY_SOCKET set to a socket the test reads.
func startActivated(t *testing.T, ssaArgs []string, args ...string) *activated {
	t.Helper()
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	dir, _ := testutil.ProfileDir(t)
	a := &activated{notify: listenNotify(t), logs: &testutil.LogBuffer{}, exited: make(chan struct{})}
	all := append(ssaArgs, "-E", "FUNTUN_PROFILE_PATH="+dir, "-E", "NOTIFY_SOCKET="+a.notify.path, testutil.Funtun(t), "forward")
	a.cmd = exec.Command(ssa, append(all, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
			t.Errorf("funtun did not end within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("output:\n%s", a.logs)
		}
	})
	return a
}

// wait returns how funtun ended, or fails when it still runs after 20s.
func (a *activated) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-a.exited:
		return a.err
	case <-time.After(20 * time.Second):
		t.Fatal("funtun still runs after 20s")
		return nil
	}
}

// notifications is a NOTIFY_SOCKET as systemd keeps it: a datagram
// socket each sd_notify message arrives on.
type notifications struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifications {
	t.Helper()
	n := &notifications{path: filepath.Join(t.TempDir(), "notify"), msgs: make(chan string, 16)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		defer close(n.msgs)
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// expect waits for the next message and checks its first line.
func (n *notifications) expect(t *testing.T, first string) string {
	t.Helper()
	select {
	case m := <-n.msgs:
		if strings.Split(m, "\n")[0] != first {
			t.Fatalf("sd_notify message %q, want %s first", m, first)
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s from funtun within 20s", first)
		return ""
	}
}

// bannerServer greets each client with its banner, then echoes.
func bannerServer(t *testing.T, banner string) string {
	port, _ := testutil.DualStackEcho(t, banner)
	return "127.0.0.1:" + strconv.Itoa(int(port))
}

// talk dials addr (waiting for the launcher to listen), reads the banner
// line, and checks an echoed line.
func talk(t *testing.T, addr string) string {
	t.Helper()
	var c net.Conn
	var err error
	for range 100 {
		if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: no banner: %v", addr, err)
	}
	c.Write([]byte("ping\n"))
	if echo, err := r.ReadString('\n'); echo != "ping\n" {
		t.Fatalf("%s: echo %q, %v", addr, echo, err)
	}
	return strings.TrimSpace(banner)
}

// Two sockets, two names: the name given to --listen decides which one
// forwards (to which server), and the other is reported as unserved.
func TestActivatedNamesChooseTheSocket(t *testing.T) {
	alpha, bravo := bannerServer(t, "alpha\n"), bannerServer(t, "bravo\n")
	for _, c := range []struct{ name, to, want string }{{"a", alpha, "alpha"}, {"b", bravo, "bravo"}} {
		t.Run(c.name, func(t *testing.T) {
			addrA := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
			addrB := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
			a := startActivated(t, []string{"-l", addrA, "-l", addrB, "--fdname=a:b"}, "--listen", "fd:"+c.name, "--to", c.to)
			logs, n := a.logs, a.notify
			addr := map[string]string{"a": addrA, "b": addrB}[c.name]
			if got := talk(t, addr); got != c.want {
				t.Fatalf("fd:%s reached %q, want %q", c.name, got, c.want)
			}
			n.expect(t, "READY=1")
			other := map[string]string{"a": "b", "b": "a"}[c.name]
			if !strings.Contains(logs.String(), "not served") || !strings.Contains(logs.String(), "("+other+", tcp "+map[string]string{"a": addrA, "b": addrB}[other]+")") {
				t.Errorf("no warning about the unserved socket %s:\n%s", other, logs)
			}
		})
	}
}

// A datagram socket (ListenDatagram=) serves forward --udp.
func TestActivatedUDP(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	addr := "127.0.0.1:" + strconv.Itoa(freeUDPPort(t))
	n := startActivated(t, []string{"--datagram", "-l", addr, "--fdname=dns"}, "--udp", "--listen", "fd:dns", "--to", echo.String()).notify
	to, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	got := ""
	// The first datagram starts funtun; it waits in the socket for it.
	for i := 0; i < 30 && got == ""; i++ {
		c.WriteTo([]byte("over udp"), to)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if k, _, err := c.ReadFrom(buf); err == nil {
			got = string(buf[:k])
		}
	}
	if got != "over udp" {
		t.Fatalf("echo through the activated datagram socket: %q", got)
	}
	n.expect(t, "READY=1")
}

// READY=1 once serving, RELOADING=1 and READY=1 around a SIGHUP reload,
// STOPPING=1 at SIGTERM: what a Type=notify unit waits for.
func TestActivatedNotify(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	a := startActivated(t, []string{"-l", addr, "--fdname=web"}, "--listen", "fd:web", "--to", bannerServer(t, "hi\n"))
	cmd, n := a.cmd, a.notify
	talk(t, addr)
	n.expect(t, "READY=1")
	cmd.Process.Signal(syscall.SIGHUP)
	if m := n.expect(t, "RELOADING=1"); !strings.Contains(m, "MONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC (Type=notify-reload needs it): %q", m)
	}
	n.expect(t, "READY=1")
	if got := talk(t, addr); got != "hi" {
		t.Errorf("after the reload: %q", got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	n.expect(t, "STOPPING=1")
	if err := a.wait(t); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// Names that match nothing and sockets of the wrong kind end funtun with
// an error saying so, before it serves anything.
func TestActivatedBadListen(t *testing.T) {
	for _, c := range []struct {
		name string
		ssa  []string
		args []string
		want []string
	}{
		{"unknown name", []string{"-l", "A", "-l", "B", "--fdname=web:admin"}, []string{"--listen", "fd:socks"},
			[]string{"--listen fd:socks: no passed socket has that name or descriptor; passed: web (fd 3), admin (fd 4)"}},
		{"stream to --udp", []string{"-l", "A", "--fdname=web"}, []string{"--udp", "--listen", "fd:web"},
			[]string{"--udp --listen fd:web: passed fd 3 (web, tcp ", "is a stream socket", "ListenDatagram="}},
		{"datagram without --udp", []string{"--datagram", "-l", "U", "--fdname=dns"}, []string{"--listen", "fd:dns"},
			[]string{"--listen fd:dns: passed fd 3 (dns, udp ", "is a datagram socket; use --udp"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tcp := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
			udp := "127.0.0.1:" + strconv.Itoa(freeUDPPort(t))
			ssa := append([]string(nil), c.ssa...)
			for i, a := range ssa {
				ssa[i] = map[string]string{"A": tcp, "B": "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)), "U": udp}[a]
				if ssa[i] == "" {
					ssa[i] = a
				}
			}
			a := startActivated(t, ssa, append(c.args, "--to", "127.0.0.1:9")...)
			logs, n := a.logs, a.notify
			// The first client starts funtun; a datagram sent before
			// systemd-socket-activate listens is lost, so send until it ends.
			if ssa[0] == "--datagram" {
				go func() {
					conn, err := net.Dial("udp", udp)
					if err != nil {
						return
					}
					defer conn.Close()
					for {
						conn.Write([]byte("start"))
						select {
						case <-a.exited:
							return
						case <-time.After(100 * time.Millisecond):
						}
					}
				}()
			} else {
				testutil.WaitListen(t, tcp)
			}
			if ee, ok := a.wait(t).(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit %v, want status 1", a.err)
			}
			for _, w := range c.want {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, logs)
				}
			}
			select {
			case m := <-n.msgs:
				t.Errorf("funtun notified %q though it never served", m)
			default:
			}
		})
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

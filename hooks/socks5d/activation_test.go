package socks5d

import (
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

// socks5d under systemd-socket-activate, the launcher systemd ships: the
// sockets come from it, --listen fd:NAME picks among them, and sd_notify
// messages reach a NOTIFY_SOCKET the test owns.

type activated struct {
	cmd    *exec.Cmd
	logs   *testutil.LogBuffer
	notify chan string
	exited chan struct{} // closed once it has ended; then err is set
	err    error
}

func startActivated(t *testing.T, ssaArgs []string, args ...string) *activated {
	t.Helper()
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	bin := funtunBin(t)
	a := &activated{logs: &testutil.LogBuffer{}, notify: make(chan string, 16), exited: make(chan struct{})}
	notifyPath := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				return
			}
			a.notify <- string(buf[:n])
		}
	}()
	all := append(ssaArgs, "-E", "FUNTUN_PROFILE_PATH="+profileDir(t, nil), "-E", "NOTIFY_SOCKET="+notifyPath, bin, "socks5d")
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
			t.Errorf("socks5d did not end within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("output:\n%s", a.logs)
		}
	})
	return a
}

// expect waits for the next sd_notify message and checks its first line.
func (a *activated) expect(t *testing.T, first string) string {
	t.Helper()
	select {
	case m := <-a.notify:
		if strings.Split(m, "\n")[0] != first {
			t.Fatalf("sd_notify message %q, want %s first", m, first)
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s from socks5d within 20s", first)
		return ""
	}
}

func (a *activated) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-a.exited:
		return a.err
	case <-time.After(20 * time.Second):
		t.Fatal("socks5d still runs after 20s")
		return nil
	}
}

// --listen fd:socks serves the socket named socks and leaves the other
// (named admin) alone, saying so; curl goes through it before and after a
// SIGHUP reload, and the notify messages are those of a Type=notify unit.
func TestActivationNamesAndNotify(t *testing.T) {
	bin := funtunBin(t)
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	chain, _, sees := binaryChain(t, bin)
	socks := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	admin := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	a := startActivated(t, []string{"-l", admin, "-l", socks, "--fdname=admin:socks"}, "--listen", "fd:socks", "chain="+chain)
	fetch := func() {
		t.Helper()
		got, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "--retry", "20", "--retry-connrefused", "--retry-delay", "1",
			"--socks5-hostname", socks, "http://demo.test:"+strconv.Itoa(web.Port)+"/")
		if code != 0 || got != sees {
			t.Fatalf("curl: exit %d, output %q, stderr %q; want %q", code, got, errOut, sees)
		}
	}
	fetch()
	a.expect(t, "READY=1")
	log := a.logs.String()
	if !strings.Contains(log, "listen="+socks+" ") {
		t.Errorf("socks5d does not say it serves only %s:\n%s", socks, log)
	}
	if !strings.Contains(log, "not served") || !strings.Contains(log, "fd 3 (admin, tcp "+admin+")") {
		t.Errorf("no warning about the unserved socket admin:\n%s", log)
	}

	a.cmd.Process.Signal(syscall.SIGHUP)
	a.expect(t, "RELOADING=1")
	if m := a.expect(t, "READY=1"); m != "READY=1\nSTATUS=" {
		t.Errorf("after a good reload: %q", m)
	}
	fetch()

	a.cmd.Process.Signal(syscall.SIGTERM)
	a.expect(t, "STOPPING=1")
	if err := a.wait(t); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// A name nobody passed, and a datagram socket, are errors that say what
// was passed and what to change; socks5d then never reports ready.
func TestActivationBadSockets(t *testing.T) {
	for _, c := range []struct {
		name     string
		datagram bool
		args     []string
		want     []string
	}{
		{"unknown name", false, []string{"--listen", "fd:sock"},
			[]string{"funtun socks5d: --listen fd:sock: no passed socket has that name or descriptor; passed: socks (fd 3)"}},
		{"datagram", true, nil,
			[]string{"funtun socks5d: passed fd 3 (socks, udp ", "is a datagram socket; socks5d serves SOCKS5 over streams (ListenStream= in the .socket unit)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ssa := []string{"--fdname=socks"}
			var addr string
			if c.datagram {
				p, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = p.LocalAddr().String()
				p.Close()
				ssa = append(ssa, "--datagram", "-l", addr)
			} else {
				addr = "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
				ssa = append(ssa, "-l", addr)
			}
			a := startActivated(t, ssa, c.args...)
			// The first client starts socks5d.
			if c.datagram {
				go func() {
					conn, err := net.Dial("udp", addr)
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
				testutil.WaitListen(t, addr)
			}
			if ee, ok := a.wait(t).(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit %v, want status 1", a.err)
			}
			for _, w := range c.want {
				if !strings.Contains(a.logs.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, a.logs)
				}
			}
			select {
			case m := <-a.notify:
				t.Errorf("socks5d notified %q though it never served", m)
			default:
			}
		})
	}
}

// Without --listen fd:, every passed socket serves, named or not.
func TestActivationServesEveryPassedSocket(t *testing.T) {
	bin := funtunBin(t)
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	chain, _, sees := binaryChain(t, bin)
	a := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	b := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	act := startActivated(t, []string{"-l", a, "-l", b}, "chain="+chain)
	for _, addr := range []string{a, b} {
		got, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "--retry", "20", "--retry-connrefused", "--retry-delay", "1",
			"--socks5-hostname", addr, "http://demo.test:"+strconv.Itoa(web.Port)+"/")
		if code != 0 || got != sees {
			t.Errorf("curl via %s: exit %d, output %q, stderr %q; want %q", addr, code, got, errOut, sees)
		}
	}
	act.expect(t, "READY=1")
	if log := act.logs.String(); !strings.Contains(log, "listen="+a+","+b+" ") || strings.Contains(log, "not served") {
		t.Errorf("socks5d should serve both passed sockets and nothing else:\n%s", log)
	}
}

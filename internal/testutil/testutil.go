// Package testutil has the helpers the tests share: finding real tools (a
// missing tool fails the test under CI=true instead of skipping it), echo
// servers on loopback, and free ports.
package testutil

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NeedTool returns the path of a program the test needs. Outside CI a
// missing tool skips the test; under CI=true it fails it, because the test
// command installs every tool and a skip there would hide a broken setup.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if _, err := os.Stat(dir + "/" + name); err == nil {
			return dir + "/" + name
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; the test command (make test) installs it", name)
	}
	t.Skipf("%s is not installed (run `make test` to install the test tools)", name)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Serve accepts on l until the test ends (and closes l then), running
// handle for each connection on a goroutine of its own and closing the
// connection when handle returns.
func Serve(t testing.TB, l net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// EchoServer accepts TCP connections on loopback and echoes every byte.
func EchoServer(t testing.TB) net.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, l, func(c net.Conn) { io.Copy(c, c) })
	return l.Addr()
}

// DualStackEcho listens on 127.0.0.1 and, where it can, on ::1 with the
// same port, so that "localhost" works whichever address a proxy resolves
// it to. Each client gets banner first (if any), then its bytes echoed;
// peers reports the address each connection came from (so a test can tell
// which proxy made the last hop).
func DualStackEcho(t testing.TB, banner string) (port uint16, peers chan netip.Addr) {
	t.Helper()
	peers = make(chan netip.Addr, 16)
	l4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l4.Close() })
	port = uint16(l4.Addr().(*net.TCPAddr).Port)
	listeners := []net.Listener{l4}
	if l6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", port)); err == nil {
		t.Cleanup(func() { l6.Close() })
		listeners = append(listeners, l6)
	}
	for _, l := range listeners {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				select {
				case peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap():
				default:
				}
				go func() {
					defer c.Close()
					io.WriteString(c, banner)
					io.Copy(c, c)
				}()
			}
		}()
	}
	return port, peers
}

// UDPEchoServer echoes every datagram back to its sender.
func UDPEchoServer(t testing.TB) *net.UDPAddr {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, a, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], a)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr)
}

// WaitListen waits until something accepts TCP connections on addr.
func WaitListen(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after 10s", addr)
}

// StartDaemon runs a program until the test ends; its output goes to the
// test log if the test fails.
func StartDaemon(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that daemons that fork workers (danted)
	// are stopped whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, out.String())
		}
	})
	return cmd
}

// LogBuffer collects a process's output while the test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

//go:build linux

package preload

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/sys/unix"
)

var eintrProbe struct {
	once sync.Once
	bin  string
	err  error
}

// buildEintr compiles preload/test/eintr.c, the signal probe.
func buildEintr(t *testing.T) string {
	t.Helper()
	needBuild(t)
	eintrProbe.once.Do(func() {
		eintrProbe.bin = filepath.Join(built.dir, "eintr")
		out, err := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", eintrProbe.bin,
			filepath.Join(moduleRoot(), "preload", "test", "eintr.c"), "-lpthread").CombinedOutput()
		if err != nil {
			eintrProbe.err = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if eintrProbe.err != nil {
		t.Fatalf("building preload/test/eintr.c: %v", eintrProbe.err)
	}
	return eintrProbe.bin
}

// eintrResult reads the probe's "eintr E/N ok K/N signals S" line.
func eintrResult(t *testing.T, out string) (eintr, ok, signals int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	var n1, n2 int
	if _, err := fmt.Sscanf(last, "eintr %d/%d ok %d/%d signals %d", &eintr, &n1, &ok, &n2, &signals); err != nil {
		t.Fatalf("probe printed %q", out)
	}
	return
}

// TestConnectAcrossSignals is issue 9's probe: a SIGCHLD handler without
// SA_RESTART while children exit all the time, and 200 non-blocking
// connects, each echoing a byte. The kernel never gives EINTR for a
// non-blocking connect, so the library must not either while it waits for
// the funnel — through a socks5 chain (a long wait: the handshake comes
// first), plain direct (the fast path) and a name only the funnel knows.
// Blocking connects may give EINTR, as the kernel's do, but every one must
// still complete.
func TestConnectAcrossSignals(t *testing.T) {
	probe := buildEintr(t)
	echo := echoWithLog(t)
	port := strconv.Itoa(echo.port())
	micro := testutil.StartMicrosocks(t)
	const n = 200
	for _, tc := range []struct {
		name     string
		selector string
		host     string
		blocking bool
	}{
		{"unhooked", "", "127.0.0.1", false},
		{"socks5", "chain=socks5 server=" + micro, "127.0.0.1", false},
		{"direct", "profile=direct", "127.0.0.1", false},
		{"funnel-name", "chain=hosts eintr.test=127.0.0.1", "eintr.test", false},
		{"socks5-blocking", "chain=socks5 server=" + micro, "127.0.0.1", true},
		{"handoff-blocking", "chain=direct timeout=20s", "127.0.0.1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{tc.host, port, strconv.Itoa(n)}
			if tc.blocking {
				args = append([]string{"-b"}, args...)
			}
			var cmd *exec.Cmd
			if tc.selector == "" {
				cmd = exec2(t, probe, args...)
			} else {
				cmd = launcher(t, append([]string{tc.selector, probe}, args...)...)
			}
			out, stderr, err := run(t, cmd, "")
			if err != nil {
				t.Fatalf("probe: %v\n%s%s", err, out, stderr)
			}
			eintr, ok, signals := eintrResult(t, out)
			t.Logf("%s: EINTR %d/%d, echoed %d/%d, %d signals", tc.name, eintr, n, ok, n, signals)
			if ok != n {
				t.Errorf("%d of %d connections echoed\n%s%s", ok, n, out, stderr)
			}
			if !tc.blocking && eintr != 0 {
				t.Errorf("%d of %d non-blocking connects failed with EINTR", eintr, n)
			}
		})
	}
}

// fullListener is a loopback listener whose accept queue is full: the
// kernel drops further SYNs, so a connect to it stays in SYN_SENT until
// drain() makes room (the client's SYN is sent again after a second).
func fullListener(t *testing.T) (port int, drain func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port = sa.(*unix.SockaddrInet4).Port
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var fill []net.Conn
	t.Cleanup(func() {
		for _, c := range fill {
			c.Close()
		}
	})
	for i := 0; i < 8; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		fill = append(fill, c)
	}
	unix.SetNonblock(fd, true)
	drain = func() {
		for {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				return
			}
			unix.Close(nfd)
		}
	}
	return port, drain
}

// interruptedConnect: a blocking connect that a SIGALRM interrupts after
// 0.3 s (Python raises from its handler once the call returns), then a
// wait for the connection with select and SO_ERROR. Prints "interrupted"
// (the socket was still connecting when the handler ran) or "connected",
// then "open" and "completed" when the connection is made. Without
// SA_RESTART the kernel ends the connect with EINTR; with it
// (argv[2] == "restart") the connect goes on until it is done.
const interruptedConnect = `
import select, signal, socket, sys
class Alarm(Exception): pass
def on_alarm(sig, frame): raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
if sys.argv[2] == "restart":
    signal.siginterrupt(signal.SIGALRM, False)
s = socket.socket()
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except Alarm:
    try:
        s.getpeername()
        print("connected")
    except OSError:
        print("interrupted")
print("open" if select.select([], [s], [], 8)[1] else "timeout")
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print("completed" if err == 0 else "error %d" % err)
`

// TestBlockingConnectInterrupted: a blocking connect that a signal
// interrupts gives EINTR under the hook where the kernel gives it — the
// destination is slow to answer, and the socket is connecting — and the
// connection then completes in the background, as the kernel's does.
// With SA_RESTART the connect goes on to the end, as the kernel's does.
func TestBlockingConnectInterrupted(t *testing.T) {
	py := python(t)
	for _, mode := range []string{"interrupt", "restart"} {
		want := map[string]string{"interrupt": "interrupted open completed", "restart": "connected open completed"}[mode]
		for _, sel := range []string{"", "chain=direct timeout=20s"} {
			name := mode + "/" + map[bool]string{true: "unhooked", false: "handoff"}[sel == ""]
			t.Run(name, func(t *testing.T) {
				needBuild(t)
				port, drain := fullListener(t)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() {
					// Room for the connection once the alarm has rung:
					// the SYN sent again at 1 s gets in.
					select {
					case <-time.After(600 * time.Millisecond):
						drain()
					case <-ctx.Done():
					}
				}()
				args := []string{"-c", interruptedConnect, strconv.Itoa(port), mode}
				var cmd *exec.Cmd
				if sel == "" {
					cmd = exec2(t, py, args...)
				} else {
					cmd = launcher(t, append([]string{sel, py}, args...)...)
				}
				out, stderr, err := run(t, cmd, "")
				if got := strings.Join(strings.Fields(out), " "); err != nil || got != want {
					t.Fatalf("got %q, want %q (%v)\n%s", got, want, err, stderr)
				}
			})
		}
	}
}

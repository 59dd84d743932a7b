//go:build linux

package preload

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"

	_ "github.com/funtun/funtun/pieces/socks5"
)

// keepalivePy is a long-lived UDP client: one unconnected socket (sendto),
// one connected socket and one that asks the system's resolver (which the
// funnel answers) each send a datagram and print the answer,
// wait for a line on stdin (the test lets their flows go idle meanwhile),
// send again, then close both sockets and wait for another line.
const keepalivePy = `
import socket, struct, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(20)
c.connect(("demo.test", port))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.settimeout(20)
for round in (1, 2):
    s.sendto(b"sendto-%d" % round, ("demo.test", port))
    print(s.recvfrom(100)[0].decode(), flush=True)
    c.send(b"connected-%d" % round)
    print(c.recv(100).decode(), flush=True)
    q = struct.pack(">HHHHHH", round, 0x0100, 1, 0, 0, 0) + b"\x04demo\x04test\x00" + struct.pack(">HH", 1, 1)
    d.sendto(q, ("127.0.0.53", 53))
    r = d.recvfrom(512)[0]
    ident, flags, qd, an = struct.unpack(">HHHH", r[:8])
    print("dns-%d %d" % (ident, an), flush=True)
    print("waiting", flush=True)
    sys.stdin.readline()
s.close()
c.close()
d.close()
print("closed", flush=True)
sys.stdin.readline()
`

// A hooked program's UDP sockets keep working after their flows went
// idle: the relay its sockets point at (the library's remembered address
// for sendto, the peer of the connected one) stays, and the next datagram
// starts a new flow — through dante's SOCKS5 server, with a new UDP
// ASSOCIATE — that is answered; the funnel's DNS responder answers the
// same socket again too. Once the program closes its sockets, the funnel
// closes their relays.
func TestUDPRelayOutlivesIdleFlow(t *testing.T) {
	py := python(t)
	danted := testutil.StartDanted(t, "127.0.0.1/32", "lo")
	echo := testutil.UDPEchoServer(t)
	ft := startFunnel(t, "hosts demo.test=127.0.0.1 | socks5 server="+danted)
	ft.srv.udp.idle.Store(int64(300 * time.Millisecond))

	cmd := ft.hooked(ctxFor(t, 90*time.Second), py, "-u", "-c", keepalivePy, strconv.Itoa(echo.Port))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("the program ended before %q: %s", want, stderr.String())
		}
		if got := lines.Text(); got != want {
			t.Fatalf("the program printed %q, want %q; stderr: %s", got, want, stderr.String())
		}
	}
	dst := fmt.Sprintf("dst=demo.test:%d", echo.Port)
	for round := 1; round <= 2; round++ {
		expect(fmt.Sprintf("sendto-%d", round))
		expect(fmt.Sprintf("connected-%d", round))
		expect(fmt.Sprintf("dns-%d 1", round))
		expect("waiting")
		// Both sockets' flows of this round end, idle, each with its
		// own line; the relays stay.
		waitFlows(t, ft, dst, 2*round)
		if n := ft.srv.UDPRelays(); n != 3 {
			t.Fatalf("after the flows ended the funnel has %d relays, want the three sockets' 3", n)
		}
		fmt.Fprintln(stdin)
	}
	expect("closed")
	// The program lives on without its sockets: their relays go.
	deadline := time.Now().Add(4 * goneCheck)
	for ft.srv.UDPRelays() != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := ft.srv.UDPRelays(); n != 0 {
		t.Fatalf("%d relays still open after the program closed its sockets", n)
	}
	fmt.Fprintln(stdin)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	t.Logf("the funnel's flows:\n%s", strings.Join(flowLines(ft, dst), "\n"))
}

// flowLines are the funnel's logged flow ends toward dst.
func flowLines(ft *testFunnel, dst string) []string {
	var out []string
	for _, line := range strings.Split(ft.log.String(), "\n") {
		if strings.Contains(line, "msg=flow ") && strings.Contains(line, dst) && strings.Contains(line, "net=udp") {
			out = append(out, line)
		}
	}
	return out
}

// waitFlows waits until n flows toward dst have ended, each having moved
// its datagram both ways.
func waitFlows(t *testing.T, ft *testFunnel, dst string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(flowLines(ft, dst)) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	got := flowLines(ft, dst)
	if len(got) != n {
		t.Fatalf("%d flow lines toward %s, want %d:\n%s", len(got), dst, n, strings.Join(got, "\n"))
	}
	for _, line := range got {
		if strings.Contains(line, "up=0 ") || strings.Contains(line, "down=0") {
			t.Fatalf("a flow carried nothing: %s", line)
		}
	}
}

// relayPair is a "program" socket of the test's and a relay parked for
// it, as udpAssoc makes one, toward echo through the server's profile.
func relayPair(t *testing.T, s *Server, echo *net.UDPAddr, idle time.Duration) (*dgramRelay, *net.UDPConn) {
	t.Helper()
	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	appAddr := app.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := connectConn(rc, appAddr); err != nil {
		t.Fatal(err)
	}
	raw, err := app.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	raw.Control(func(fd uintptr) { ino, err = socketInode(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	dest := funnel.Addr{IP: echo.AddrPort().Addr(), Port: echo.AddrPort().Port()}
	ctx := ctxFor(t, time.Minute)
	relay, err := s.udp.park.newRelay(ctx, relaySpec{
		rc: rc, app: appAddr, idle: idle, ino: ino, procNet: "/proc/self/net",
		open: s.redial(ctx, &peer{pid: os.Getpid()}, dest, net.UDPAddrFromAddrPort(appAddr)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return relay, app
}

// ping sends through the relay and waits for the echo.
func ping(t *testing.T, relay *dgramRelay, app *net.UDPConn) {
	t.Helper()
	app.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := app.WriteToUDPAddrPort([]byte("ping"), relay.addr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := app.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "ping" || from != relay.addr {
		t.Fatalf("the echo through the relay: %q from %s, %v", buf[:n], from, err)
	}
}

// Idle relays wait in the server's epoll set: a thousand of them add no
// goroutine per relay, a datagram wakes the one it was sent to, and each
// closes once its program's socket is gone (one read of the socket
// tables for all of them).
func TestIdleRelaysHoldNoGoroutine(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	ft := startFunnel(t, "direct")
	const n = 1000
	before := runtime.NumGoroutine()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	relays := make([]*dgramRelay, n)
	apps := make([]*net.UDPConn, n)
	for i := range relays {
		relays[i], apps[i] = relayPair(t, ft.srv, echo, time.Minute)
	}
	if extra := runtime.NumGoroutine() - before; extra > 10 {
		t.Fatalf("%d idle relays hold %d goroutines", n, extra)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	t.Logf("%d idle relays (and the test's %d sockets): %d goroutines more, about %d bytes of Go heap each",
		n, n, runtime.NumGoroutine()-before, (int64(m1.HeapInuse)-int64(m0.HeapInuse))/n)
	ping(t, relays[n/2], apps[n/2])
	ping(t, relays[n/2], apps[n/2]) // the same flow: the reader runs now
	start := time.Now()
	alive, ok := udpInodes("/proc/self/net")
	t.Logf("one read of the socket tables with %d sockets: %v", len(alive), time.Since(start))
	if !ok || len(alive) < 2*n {
		t.Fatalf("the socket tables list %d sockets (readable %v), want at least %d", len(alive), ok, 2*n)
	}
	if got := ft.srv.UDPRelays(); got != n {
		t.Fatalf("%d relays open, want %d", got, n)
	}
	for _, app := range apps {
		app.Close()
	}
	deadline := time.Now().Add(4 * goneCheck)
	for ft.srv.UDPRelays() != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := ft.srv.UDPRelays(); got != 0 {
		t.Fatalf("%d relays open after their sockets closed", got)
	}
}

// At the server's limit the relay whose flow ended longest ago gives
// way, and when every relay has a flow running a new one is refused.
func TestRelayLimit(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	ft := startFunnel(t, "direct")
	park := &ft.srv.udp.park
	park.mu.Lock()
	park.limit = 3
	park.mu.Unlock()
	r1, _ := relayPair(t, ft.srv, echo, time.Minute)
	r2, a2 := relayPair(t, ft.srv, echo, time.Minute)
	r3, a3 := relayPair(t, ft.srv, echo, time.Minute)
	ping(t, r2, a2)
	ping(t, r3, a3)
	r4, a4 := relayPair(t, ft.srv, echo, time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for !r1.closedNow() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !r1.closedNow() || r2.closedNow() || r3.closedNow() {
		t.Fatalf("at the limit: closed %v %v %v, want the idle first relay only", r1.closedNow(), r2.closedNow(), r3.closedNow())
	}
	if got := ft.srv.UDPRelays(); got != 3 {
		t.Fatalf("%d relays open at a limit of 3", got)
	}
	ping(t, r4, a4)
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = park.newRelay(ctxFor(t, time.Minute), relaySpec{rc: rc, idle: time.Minute})
	if !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("a fourth relay while three carry flows: %v, want ENOBUFS", err)
	}
}

// One socket that sends to more destinations than maxSocketRelays keeps
// that many relays: its relay idle longest gives way to the next.
func TestSocketRelayLimit(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	ft := startFunnel(t, "direct")
	relays := make([]*dgramRelay, maxSocketRelays+1)
	for i := range relays {
		relays[i], _ = relayPair(t, ft.srv, echo, time.Minute)
	}
	relays[0].lastUsed.Store(0) // the oldest, whatever the clock's grain
	const ino = 1
	for i, r := range relays {
		if kept := ft.srv.udp.keep(udpKey{ino: ino, dest: strconv.Itoa(i)}, r); kept != r {
			t.Fatalf("relay %d: another was kept", i)
		}
	}
	if !relays[0].closedNow() || ft.srv.udp.lookup(udpKey{ino: ino, dest: "0"}) != nil {
		t.Fatal("the socket's relay idle longest is still there past its limit")
	}
	for i, r := range relays[1:] {
		if r.closedNow() || ft.srv.udp.lookup(udpKey{ino: ino, dest: strconv.Itoa(i + 1)}) != r {
			t.Fatalf("relay %d is gone", i+1)
		}
	}
}

//go:build linux

package preload

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

// udpListenPiece receives for a program's bound UDP socket on a kernel
// socket of its own on [::1] — an address the program's socket is not
// reached at, as a tunnel address is not — split by peer, and sends a
// flow from the program's bound port from there too.
type udpListenPiece struct {
	mu     sync.Mutex
	byPort map[uint16]*testConvs
	bound  chan netip.AddrPort // the network address of each listener
}

var udpListenTest = &udpListenPiece{byPort: map[uint16]*testConvs{}, bound: make(chan netip.AddrPort, 4)}

func init() {
	funnel.Register(funnel.PieceInfo{Name: "t-udplisten", New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) {
		return udpListenTest, nil
	}})
}

func (p *udpListenPiece) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Dgram, Net: funnel.Kernel}}
}

func (p *udpListenPiece) DialDgram(_ context.Context, f *funnel.Flow, _ funnel.Next) (funnel.DgramConn, error) {
	p.mu.Lock()
	l := p.byPort[netx.AddrPortOf(f.Source).Port()]
	p.mu.Unlock()
	if l == nil {
		return nil, funnel.Errorf(funnel.KindRefused, "t-udplisten sends only from a port it listens for")
	}
	ip := f.Dest.IP
	if f.Dest.IsName() {
		ip, _ = netip.ParseAddr(f.Dest.Name)
	}
	return l.open(netip.AddrPortFrom(ip, f.Dest.Port)), nil
}

func (p *udpListenPiece) ListenDgram(_ context.Context, f *funnel.Flow, _ funnel.Next) (funnel.Conversations, error) {
	if f.Dest.IsName() || !f.Dest.IP.IsUnspecified() {
		return nil, funnel.ErrNoListener
	}
	pc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		return nil, err
	}
	l := &testConvs{pc: pc, accepts: make(chan *testConv, 8), convs: map[netip.AddrPort]*testConv{}, done: make(chan struct{})}
	go l.receive()
	p.mu.Lock()
	p.byPort[f.Dest.Port] = l
	p.mu.Unlock()
	p.bound <- pc.LocalAddr().(*net.UDPAddr).AddrPort()
	return l, nil
}

type testConvs struct {
	pc      *net.UDPConn
	accepts chan *testConv
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	convs   map[netip.AddrPort]*testConv
}

func (l *testConvs) receive() {
	for {
		buf := make([]byte, 2048)
		n, from, err := l.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		l.mu.Lock()
		c := l.convs[from]
		fresh := c == nil
		if fresh {
			c = l.newConv(from)
		}
		l.mu.Unlock()
		c.queue <- buf[:n]
		if fresh {
			l.accepts <- c
		}
	}
}

func (l *testConvs) newConv(peer netip.AddrPort) *testConv {
	c := &testConv{l: l, peer: peer, queue: make(chan []byte, 16), closed: make(chan struct{})}
	l.convs[peer] = c
	return c
}

func (l *testConvs) open(peer netip.AddrPort) *testConv {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.newConv(peer)
}

func (l *testConvs) Accept() (funnel.Conversation, error) {
	select {
	case c := <-l.accepts:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *testConvs) Addr() net.Addr { return l.pc.LocalAddr() }

func (l *testConvs) Close() error {
	l.once.Do(func() { close(l.done); l.pc.Close() })
	return nil
}

type testConv struct {
	l      *testConvs
	peer   netip.AddrPort
	queue  chan []byte
	closed chan struct{}
	once   sync.Once
}

func (c *testConv) ReadFrame() (*funnel.Frame, error) {
	select {
	case b := <-c.queue:
		fr := funnel.NewFrame()
		fr.SetLen(copy(fr.Room(), b))
		fr.Src = c.peer
		return fr, nil
	case <-c.closed:
		return nil, net.ErrClosed
	}
}

func (c *testConv) WriteFrame(fr *funnel.Frame) error {
	_, err := c.l.pc.WriteToUDPAddrPort(fr.Bytes(), c.peer)
	fr.Release()
	return err
}

func (c *testConv) SetReadDeadline(time.Time) error { return nil }
func (c *testConv) LocalAddr() net.Addr             { return c.l.pc.LocalAddr() }
func (c *testConv) RemoteAddr() net.Addr            { return net.UDPAddrFromAddrPort(c.peer) }

func (c *testConv) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.l.mu.Lock()
		if c.l.convs[c.peer] == c {
			delete(c.l.convs, c.peer)
		}
		c.l.mu.Unlock()
	})
	return nil
}

// phonePy binds an IPv4-only UDP socket to 0.0.0.0:argv[1], answers the
// first datagram to whoever recvfrom names, then, on a line on stdin,
// sends "again" to that same address, and prints the next datagram.
const phonePy = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("bound", flush=True)
data, peer = s.recvfrom(2048)
print("got %s from %s:%d" % (data.decode(), peer[0], peer[1]), flush=True)
s.sendto(b"echo " + data, peer)
sys.stdin.readline()
s.sendto(b"again", peer)
data, peer2 = s.recvfrom(2048)
print("then %s from %s:%d" % (data.decode(), peer2[0], peer2[1]), flush=True)
`

// A hooked program's UDP socket bound to all addresses receives through
// the profile's listener: recvfrom names the peer — an IPv6 peer, to an
// IPv4-only socket, by a synthetic address — and the answer sent there
// reaches the peer from the listener's address. After the conversation
// went idle and its flow ended, the program's datagram to the same
// address still reaches the peer (its relay lives with the socket), as a
// new flow from the program's port, and the peer's answer comes back
// named as before.
func TestUDPBoundSocketReceivesThroughProfile(t *testing.T) {
	py := python(t)
	ft := startFunnel(t, "t-udplisten")
	ft.srv.udp.idle.Store(int64(200 * time.Millisecond))

	free, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	port := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()
	ctx := ctxFor(t, 60*time.Second)
	cmd := ft.hooked(ctx, py, "-u", "-c", phonePy, fmt.Sprint(port))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("the program ended early: %s", stderr.String())
		}
		return lines.Text()
	}
	if l := next(); l != "bound" {
		t.Fatalf("the program said %q", l)
	}
	var netAddr netip.AddrPort
	select {
	case netAddr = <-udpListenTest.bound:
	case <-ctx.Done():
		t.Fatal("the profile never listened for the program's socket")
	}

	peer, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	expect := func(want string) {
		t.Helper()
		buf := make([]byte, 2048)
		n, from, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != want || from != netAddr {
			t.Fatalf("the peer got %q from %s (%v), want %q from %s", buf[:n], from, err, want, netAddr)
		}
	}
	peer.WriteToUDPAddrPort([]byte("hello"), netAddr)
	got := next()
	m := regexp.MustCompile(`^got hello from (198\.1[89]\.\d+\.\d+):(\d+)$`).FindStringSubmatch(got)
	if m == nil || m[2] != fmt.Sprint(peer.LocalAddr().(*net.UDPAddr).Port) {
		t.Fatalf("the program's recvfrom: %q, want the peer's port at a synthetic address", got)
	}
	expect("echo hello")

	// The conversation goes idle: its flow ends, inbound, counted.
	first := waitLine(t, ft, `msg=flow `, "inbound=true")
	for _, want := range []string{"net=udp", "src=[::1]:", fmt.Sprintf("dst=%s", netAddr), "up=10 down=5"} {
		if !strings.Contains(first, want) {
			t.Errorf("the inbound flow's line lacks %q: %s", want, first)
		}
	}
	fmt.Fprintln(stdin)
	expect("again")
	peer.WriteToUDPAddrPort([]byte("bye"), netAddr)
	if l := next(); l != "then bye from "+m[1]+":"+m[2] {
		t.Errorf("after the idle flow the program got %q, want bye from %s:%s", l, m[1], m[2])
	}
	// The second conversation was the program's: a flow from its port.
	second := waitLine(t, ft, `msg=flow `, fmt.Sprintf("src=[::]:%d", port), fmt.Sprintf("src=0.0.0.0:%d", port))
	t.Logf("the funnel's flows:\n%s\n%s", first, second)
	if strings.Contains(second, "inbound=true") || !strings.Contains(second, "dst=[::1]:") {
		t.Errorf("the program's flow to the peer: %s", second)
	}
}

// waitLine waits for a line of the funnel's log that has want and one of
// also.
func waitLine(t *testing.T, ft *testFunnel, want string, also ...string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(ft.log.String(), "\n") {
			if !strings.Contains(line, want) {
				continue
			}
			for _, a := range also {
				if strings.Contains(line, a) {
					return line
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no line with %q and one of %q in the funnel's log", want, also)
	return ""
}

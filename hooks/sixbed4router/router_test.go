package sixbed4router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	"github.com/funtun/funtun/pieces/netstack/ipstack"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
	"github.com/funtun/funtun/profiles"

	_ "github.com/funtun/funtun/pieces/all"
)

var testPrefix = netip.MustParsePrefix("2001:db8:6bed:4::/64")

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startRouter runs a router on loopback whose own stack exposes each of
// ex (forwarded through the built-in direct profile).
func startRouter(t *testing.T, ex ...Expose) (*Router, netip.AddrPort) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &Router{Prefix: testPrefix, Conn: conn, Log: testLog(t)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		conn.Close()
		wg.Wait()
	})
	if len(ex) > 0 {
		eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{t.TempDir()}, Builtins: profiles.Builtin}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		st, err := ipstack.New(wire.MTU)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		if err := r.AttachStack(ctx, &wg, st, eng, funnel.Selector{Profile: "direct"}, ex); err != nil {
			t.Fatal(err)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.Serve()
	}()
	return r, conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// ipv6HTTPServer runs python3's http.server on [::1] only, serving a file
// of size bytes as /blob, and returns its port.
func ipv6HTTPServer(t *testing.T, size int) int {
	t.Helper()
	py := testutil.NeedTool(t, "python3")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "blob"), []byte(strings.Repeat("6bed4 ", size/6+1)[:size]), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	testutil.StartDaemon(t, py, "-m", "http.server", strconv.Itoa(port), "--bind", "::1", "--directory", dir)
	testutil.WaitListen(t, fmt.Sprintf("[::1]:%d", port))
	return port
}

func httpGet(t *testing.T, c net.Conn, path string) (status string, body int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path)
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the status line: %v", err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	n, err := io.Copy(io.Discard, br)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return strings.TrimSpace(status), int(n)
}

func TestPeerReachesIPv6ServerBehindRouter(t *testing.T) {
	port := ipv6HTTPServer(t, 300_000)
	service := netip.MustParseAddrPort("[2001:db8:80::1]:80")
	r, routerAddr := startRouter(t, Expose{Addr: service, To: funnel.MakeAddr("::1", uint16(port))})

	pl := testutil.Pipeline(t, "netstack | 6bed4 router="+routerAddr.String()+" timeout=3s")
	closePieces(t, pl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(service.Addr().String(), service.Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	status, n := httpGet(t, c, "/blob")
	if !strings.Contains(status, "200") || n != 300_000 {
		t.Fatalf("GET /blob through 6bed4: %q with %d bytes, want 200 with 300000", status, n)
	}
	// The peer's address embeds the IPv4 address and port the router saw.
	local := netip.MustParseAddrPort(c.LocalAddr().String()).Addr()
	if !testPrefix.Contains(local) || wire.Endpoint(local).Addr() != netip.MustParseAddr("127.0.0.1") || wire.LANIP(local) != 1 {
		t.Errorf("the peer's address %s does not embed 127.0.0.1, its port and lanip 1", local)
	}
	cs := r.Counters()
	if cs["advertisement"] < 1 || cs["to-stack"] < 10 || cs["to-peer"] < 10 {
		t.Errorf("router counters %v: want an advertisement and packets both ways", cs)
	}
}

func TestSilentRouterFailsTheFlowUnreachable(t *testing.T) {
	// A UDP socket that never answers stands for a router that is down.
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	pl := testutil.Pipeline(t, "netstack | 6bed4 router="+silent.LocalAddr().String()+" timeout=1500ms")
	closePieces(t, pl)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("2001:db8:80::1", 80)))
	testutil.WantKind(t, err, funnel.KindNetUnreachable, "did not answer")
	if ctx.Err() != nil {
		t.Fatal("the flow hung until the test's own deadline")
	}
	buf := make([]byte, 2048)
	silent.SetReadDeadline(time.Now().Add(time.Second))
	n, _, err := silent.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no Router Solicitation reached the router: %v", err)
	}
	p, err := wire.Parse(buf[:n])
	if err != nil || p.Dst != wire.AllRouters || !p.IsND() {
		t.Fatalf("the first datagram to the router is not a Router Solicitation: %v %+v", err, p)
	}
}

func closePieces(t *testing.T, pl *funnel.Pipeline) {
	t.Cleanup(func() {
		for _, p := range pl.Pieces() {
			if c, ok := p.(funnel.Closer); ok {
				c.Close()
			}
		}
	})
}

func TestPeersTalkDirectlyAfterNeighborDiscovery(t *testing.T) {
	port := ipv6HTTPServer(t, 1000)
	service := netip.MustParseAddrPort("[2001:db8:80::1]:80")
	r, routerAddr := startRouter(t, Expose{Addr: service, To: funnel.MakeAddr("::1", uint16(port))})

	// B accepts on its tunnel address what a local server serves; its
	// tunnel socket is fixed, so its 6bed4 address is known beforehand.
	echo := testutil.EchoServer(t)
	echoPort := echo.(*net.TCPAddr).Port
	bUDP := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(testutil.FreePort(t)))
	b := testutil.Pipeline(t, fmt.Sprintf("netstack accept=%d | 6bed4 router=%s listen=%s", echoPort, routerAddr, bUDP))
	closePieces(t, b)
	a := testutil.Pipeline(t, "netstack | 6bed4 router="+routerAddr.String())
	closePieces(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(pl *funnel.Pipeline, to netip.AddrPort) net.Conn {
		t.Helper()
		c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(to.Addr().String(), to.Port())))
		if err != nil {
			t.Fatalf("%v (router counters %v)", err, r.Counters())
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// B's first flow brings its tunnel up.
	if status, _ := httpGet(t, dial(b, service), "/blob"); !strings.Contains(status, "200") {
		t.Fatalf("B could not reach the service: %q", status)
	}
	bAddr := wire.Address(testPrefix, bUDP, 1)
	to := netip.AddrPortFrom(bAddr, uint16(echoPort))
	testutil.EchoOnce(t, dial(a, to), "first, while A and B find each other\n")
	bPiece := a.Pieces()[1].(interface{ NeighborState(netip.Addr) string })
	deadline := time.Now().Add(10 * time.Second)
	for bPiece.NeighborState(bAddr) != "reachable" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := bPiece.NeighborState(bAddr); s != "reachable" {
		t.Fatalf("A sees B as %q after the Neighbor Solicitation, want reachable", s)
	}
	before := r.Counters()["relayed"]
	c := dial(a, to)
	for i := range 50 {
		testutil.EchoOnce(t, c, fmt.Sprintf("direct %d\n", i))
	}
	if after := r.Counters()["relayed"]; after != before {
		t.Errorf("the router relayed %d packets between A and B after they found each other, want 0", after-before)
	}
	if before == 0 {
		t.Errorf("the router relayed nothing before A and B found each other (the first packets should go through it)")
	}
}

// FuzzRouterInput: whatever a peer sends, the router neither panics nor
// lets it pass uncounted.
func FuzzRouterInput(f *testing.F) {
	peer := netip.MustParseAddrPort("127.0.0.1:40000")
	src := wire.Address(testPrefix, peer, 1)
	f.Add(wire.RouterSolicitation())
	f.Add(wire.NeighborSolicitation(src, wire.RouterLinkLocal))
	f.Add(wire.NeighborSolicitation(wire.Address(testPrefix, netip.MustParseAddrPort("127.0.0.1:1"), 1), wire.RouterLinkLocal))
	f.Add(wire.RouterAdvertisement(wire.AllNodes, src))
	f.Add([]byte{0x60, 0, 0, 0})
	f.Add([]byte{})
	// Nothing is sent: a fuzzed destination may name any IPv4 address.
	r := &Router{Prefix: testPrefix, Log: slog.New(slog.DiscardHandler), sendTo: func([]byte, netip.AddrPort) {}}
	f.Fuzz(func(t *testing.T, b []byte) {
		sum := func() (n int64) {
			for _, v := range r.Counters() {
				n += v
			}
			return n
		}
		before := sum()
		r.FromTunnel(b, peer)
		r.FromLocal(b)
		if sum() < before+2 {
			t.Fatalf("a datagram of %d bytes passed uncounted: %v", len(b), r.Counters())
		}
	})
}

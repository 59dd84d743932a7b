package socks5d

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
	"github.com/funtun/funtun/internal/testutil"
)

// The datagram chain: demo.test exists only inside the funnel, and one
// port is denied, so what the client sees shows the profile at work.
func udpChain(deniedPort int) string {
	return "deny to=port:" + strconv.Itoa(deniedPort) + " | hosts demo.test=127.0.0.1 strict=true"
}

const pysocksUDP = `
import socks, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, host, port, rdns=True)
s.settimeout(2)
for target in sys.argv[3:]:
    name, tport = target.rsplit(":", 1)
    s.sendto(("hello " + name).encode(), (name, int(tport)))
    try:
        data, addr = s.recvfrom(2000)
        # PySocks gives a name from the reply's header as bytes.
        src = addr[0].decode() if isinstance(addr[0], bytes) else addr[0]
        print(data.decode(), "from", src, addr[1])
    except socket.timeout:
        print("no answer from", name)
`

func TestPySocksUDP(t *testing.T) {
	py := needPySocks(t)
	echo := testutil.UDPEchoServer(t)
	denied := testutil.UDPEchoServer(t)
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, Selector: funnel.Selector{Chain: udpChain(denied.Port)}}, "tcp")
	h, p, _ := net.SplitHostPort(addr)
	e := strconv.Itoa(echo.Port)
	out, errOut, code := runTool(t, nil, py, "-c", pysocksUDP, h, p,
		"demo.test:"+e, "127.0.0.1:"+e, "127.0.0.1:"+strconv.Itoa(denied.Port), "demo.test:"+e)
	want := "hello demo.test from demo.test " + e + "\n" +
		"hello 127.0.0.1 from 127.0.0.1 " + e + "\n" +
		"no answer from 127.0.0.1\n" +
		"hello demo.test from demo.test " + e + "\n"
	if code != 0 || out != want {
		t.Fatalf("python3 exit %d, stderr %q, printed:\n%s\nwant:\n%s", code, errOut, out, want)
	}
}

// udpAssociate opens an association by hand and returns the control
// connection and the relay's address.
func udpAssociate(t *testing.T, addr string, clientPort uint16) (*rawClient, netip.AddrPort) {
	t.Helper()
	r := dialRaw(t, addr)
	r.noAuth()
	r.send(5, 3, 0, 1, 0, 0, 0, 0, byte(clientPort>>8), byte(clientPort))
	code, relay := r.readReply()
	if code != 0 {
		t.Fatalf("UDP ASSOCIATE reply %d, want 0", code)
	}
	return r, relay
}

func udpDatagram(dest netip.AddrPort, payload string) []byte {
	b := socks5wire.AppendAddrPort([]byte{0, 0, 0}, dest)
	return append(b, payload...)
}

// Only the client that asked may use the relay, and the association ends
// with its TCP connection.
func TestUDPRelayServesOnlyItsClient(t *testing.T) {
	echo := testutil.UDPEchoServer(t).AddrPort()
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng}, "tcp")

	mine, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctl, relay := udpAssociate(t, addr, uint16(mine.LocalAddr().(*net.UDPAddr).Port))

	// A stranger's datagram is dropped: nothing comes back to it.
	other.WriteToUDPAddrPort(udpDatagram(echo, "stranger"), relay)
	other.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, _, err := other.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
		t.Fatalf("a datagram from another port got an answer (%d bytes)", n)
	}

	mine.WriteToUDPAddrPort(udpDatagram(echo, "mine"), relay)
	buf := make([]byte, 100)
	mine.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := mine.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer through the relay: %v", err)
	}
	if from != relay {
		t.Errorf("answer came from %s, want the relay %s", from, relay)
	}
	if want := string(udpDatagram(echo, "mine")); string(buf[:n]) != want {
		t.Fatalf("got % x, want % x", buf[:n], want)
	}

	// Closing the TCP connection ends the association: the relay port
	// closes, which a connected UDP socket learns as ECONNREFUSED.
	ctl.c.Close()
	probe, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		probe.Write(udpDatagram(echo, "late"))
		probe.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := probe.Read(buf)
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay %s still open 10s after its TCP connection closed (last read: %v)", relay, err)
		}
	}
}

// quietUDPEcho echoes datagrams without allocating, so that an allocation
// count sees only the relay's.
func quietUDPEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Steady-state datagram relaying allocates nothing per datagram (the
// engine's real-time rule): header pulled and pushed in place, frames
// pooled, destination found without building a key.
func TestUDPRelayDoesNotAllocatePerDatagram(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop frames; run without -race")
	}
	echo := quietUDPEcho(t)
	eng := testEngine(t, nil)
	addr := startServer(t, &Server{Engine: eng, Log: quietLog}, "tcp")
	mine, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	_, relay := udpAssociate(t, addr, uint16(mine.LocalAddr().(*net.UDPAddr).Port))
	msg := udpDatagram(echo, "0123456789abcdef")
	buf := make([]byte, 2048)
	var failed error
	roundTrip := func() {
		mine.WriteToUDPAddrPort(msg, relay)
		mine.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := mine.ReadFromUDPAddrPort(buf); err != nil && failed == nil {
			failed = err
		}
	}
	for i := 0; i < 50; i++ { // open the destination's flow, fill the pools
		roundTrip()
	}
	allocs := testing.AllocsPerRun(500, roundTrip)
	if failed != nil {
		t.Fatal(failed)
	}
	// Well under one: an allocation per datagram would make it at least 1.
	if allocs >= 0.5 {
		t.Fatalf("%.2f allocations per datagram round trip, want none", allocs)
	}
}

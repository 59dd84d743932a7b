//go:build linux

package preload

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"

	_ "github.com/funtun/funtun/pieces/pcap"
)

// dnsResponder answers every A query with 192.0.2.99 — a nameserver of
// the test's own on loopback.
func dnsResponder(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			q := buf[:n]
			if len(q) < 12 {
				continue
			}
			// The question: labels up to the root, then type and class.
			i := 12
			for i < len(q) && q[i] != 0 {
				i += int(q[i]) + 1
			}
			end := i + 5
			if end > len(q) {
				continue
			}
			r := make([]byte, 0, end+16)
			r = append(r, q[0], q[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0)
			r = append(r, q[12:end]...)
			r = append(r, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99)
			c.WriteToUDPAddrPort(r, from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestDig: a DNS query to a nameserver goes through the funnel: the pcap
// piece sees it (so the relay carried it), a deny piece stops it, and the
// answer comes back to dig either way it is allowed.
func TestDig(t *testing.T) {
	dig := testutil.NeedTool(t, "dig")
	port := strconv.Itoa(dnsResponder(t))
	capture := filepath.Join(t.TempDir(), "dns.pcap")
	for _, tc := range []struct{ name, chain string }{
		{"handoff", "direct"},
		{"pieces", "pcap file=" + capture},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := startFunnel(t, tc.chain)
			out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), dig, "@127.0.0.1", "-p", port, "+short", "+tries=1", "+time=5", "funnel-demo.example", "A"), "")
			if err != nil || out != "192.0.2.99\n" {
				t.Fatalf("dig: %v %q %s", err, out, stderr)
			}
			if !strings.Contains(ft.log.String(), "net=udp") && !strings.Contains(ft.log.String(), "relaying datagrams") {
				t.Fatalf("the funnel logged no UDP flow:\n%s", ft.log.String())
			}
		})
	}
	// The capture is flushed a moment after the packets.
	var data []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		data, _ = os.ReadFile(capture)
		if bytes.Contains(data, []byte("\x0bfunnel-demo\x07example")) {
			break
		}
	}
	if !bytes.Contains(data, []byte("\x0bfunnel-demo\x07example")) {
		t.Fatalf("the capture (%d bytes) does not hold the query", len(data))
	}
	ft := startFunnel(t, "deny to=port:"+port+" | direct")
	out, _, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), dig, "@127.0.0.1", "-p", port, "+short", "+tries=1", "+time=2", "funnel-demo.example", "A"), "")
	if err == nil || strings.Contains(out, "192.0.2.99") {
		t.Fatalf("dig got through a deny piece: %q", out)
	}
}

const pyUDP = `
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"one", ("demo.test", port))
data, addr = s.recvfrom(100)
print(data.decode(), addr[0], addr[1])
s.sendmsg([b"two"], [], 0, ("demo.test", port))
data, anc, flags, addr = s.recvmsg(100)
print(data.decode(), addr[0], addr[1])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.connect(("demo.test", port))
c.send(b"three")
data, addr = c.recvfrom(100)
print(data.decode(), addr[0], addr[1], c.getpeername()[0])
`

// TestUDP: unconnected sendto/sendmsg and a connected socket, with the
// replies reported as coming from the address the program used.
func TestUDP(t *testing.T) {
	py := python(t)
	echo := testutil.UDPEchoServer(t)
	for _, tc := range []struct{ name, chain string }{
		{"handoff", "hosts demo.test=127.0.0.1"},
		{"pieces", "hosts demo.test=127.0.0.1 | pcap file=" + filepath.Join(t.TempDir(), "udp.pcap")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := startFunnel(t, tc.chain)
			out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), py, "-c", pyUDP, strconv.Itoa(echo.Port)), "")
			if err != nil {
				t.Fatalf("python: %v\n%s%s", err, out, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 {
				t.Fatalf("python printed %q", out)
			}
			for i, word := range []string{"one", "two", "three"} {
				f := strings.Fields(lines[i])
				if len(f) < 3 || f[0] != word || f[2] != strconv.Itoa(echo.Port) {
					t.Fatalf("line %d: %q", i, lines[i])
				}
				if a, err := netip.ParseAddr(f[1]); err != nil || !isSynthetic(a) {
					t.Fatalf("line %d: the reply's source %q is not the synthetic address", i, f[1])
				}
			}
		})
	}
}

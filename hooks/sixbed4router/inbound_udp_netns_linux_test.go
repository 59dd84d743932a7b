//go:build linux

package sixbed4router

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"github.com/funtun/funtun/pieces/sixbed4/wire"
)

// sipPy plays a SIP phone's socket: bound to all addresses on argv[2] in
// family argv[1] ("6" or "4"), it first sends REGISTER to the registrar
// argv[3]:argv[4] (when given) and prints the answer and where recvfrom
// says it came from; then it answers each datagram with what it got and
// the sender recvfrom named, to that sender, argv[5] times, and exits.
const sipPy = `
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[2])))
if sys.argv[3] != "-":
    s.sendto(b"REGISTER", (sys.argv[3], int(sys.argv[4])))
    data, peer = s.recvfrom(2048)
    print("registrar said %s from %s port %d" % (data.decode(), peer[0], peer[1]), flush=True)
print("phone listening", flush=True)
for _ in range(int(sys.argv[5])):
    data, peer = s.recvfrom(2048)
    print("got %s from %s" % (data.decode(), peer[0]), flush=True)
    s.sendto(b"echo %s from %s" % (data, peer[0].encode()), peer)
s.close()
`

// peerPy sends argv[3] to [argv[1]]:argv[2] from an IPv6 socket (bound to
// argv[4] when given) and prints the answer and the sender's port as the
// kernel (or, hooked, the library) reports them.
const peerPy = `
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind((sys.argv[4], 0))
s.settimeout(20)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(2048)
print("%s | from [%s]:%d" % (data.decode(), peer[0], peer[1]), flush=True)
`

// registrarPy answers one datagram on [argv[1]]:argv[2] with "200 OK",
// printing where it came from (the wire's truth: it is not hooked).
const registrarPy = `
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("registrar ready", flush=True)
data, peer = s.recvfrom(2048)
print("registrar got %s from [%s]:%d" % (data.decode(), peer[0], peer[1]), flush=True)
s.sendto(b"200 OK", peer)
`

const (
	phonePort  = 5060 // B's IPv6 phone socket, on [::]
	phone4Port = 5061 // B's IPv4-only one, on 0.0.0.0
	regPort    = 5070 // the registrar behind the router
)

// The SIP phone case: a hooked program on B binds UDP on all addresses
// and, under profile=6bed4, receives datagrams sent to its 6bed4 address
// on that port — from a hooked peer on A through the tunnel, and from a
// host behind the router that has IPv6 natively — and its answers leave
// from that same port, as does its REGISTER to the IPv6 registrar. The
// program's recvfrom names each peer by its IPv6 address; an IPv4-only
// socket is told a synthetic IPv4 address, and its answer sent there
// still reaches the peer. Each peer's conversation is an inbound flow of
// B's funnel, counted both ways.
func TestNetnsHookedUDPSocketReceivesThroughTunnel(t *testing.T) {
	needNetns(t, "ncat")
	bin := launcherDir(t)
	funtun := filepath.Join(bin, "funtun")
	l := newLab(t)
	// The router hands IPv6 that is not for a peer to a TUN device: the
	// registrar and the "native" peer are on its IPv6 address.
	l.router.ip(t, "tuntap", "add", "dev", "t6b", "mode", "tun")
	l.router.ip(t, "link", "set", "t6b", "up", "mtu", "1280")
	l.router.ip(t, "addr", "add", service+"/128", "dev", "t6b", "nodad")
	l.router.ip(t, "-6", "route", "add", netPrefix.String(), "dev", "t6b")
	l.router.start(t, nil, "6bed4router: routing", funtun, "--debug", "6bed4router",
		"--listen", routerV4+":25790", "--prefix", netPrefix.String(), "--tun", "t6b")
	regOut, _ := l.router.start(t, nil, "registrar ready", "python3", "-u", "-c", registrarPy, service, fmt.Sprint(regPort))

	bAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostBV4, bTunnel)), 1)
	aAddr := wire.Address(netPrefix, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", hostAV4, aTunnel)), 1)

	// B: the IPv6 phone registers first (its REGISTER brings the tunnel
	// up), then takes three datagrams; the IPv4-only one takes one.
	bEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostBV4, bTunnel))
	bOut, _ := l.b.start(t, bEnv, "phone listening", funtun, "--debug", "profile=6bed4", "sh", "-c",
		fmt.Sprintf("python3 -u -c '%s' 4 %d - 0 1 & python3 -u -c '%s' 6 %d %s %d 3; wait; sleep 60",
			sipPy, phone4Port, sipPy, phonePort, service, regPort))
	for _, port := range []int{phonePort, phone4Port} {
		waitFor(t, bOut, fmt.Sprintf(`net=udp addr=[%s]:%d`, bAddr, port), nil)
	}

	// The REGISTER left B's stack from the phone's own port, and the
	// answer reached the phone as from the registrar.
	waitFor(t, regOut, fmt.Sprintf("registrar got REGISTER from [%s]:%d", bAddr, phonePort), nil)
	waitFor(t, bOut, fmt.Sprintf("registrar said 200 OK from %s port %d", service, regPort), nil)

	// A hooked python3 peer and a hooked ncat on A, through the tunnel.
	aEnv := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s:25790 listen=%s:%d", routerV4, hostAV4, aTunnel))
	script := fmt.Sprintf(`python3 -u -c '%s' %s %d from-python
(echo from-ncat; sleep 3) | ncat -u %s %d; true`, peerPy, bAddr, phonePort, bAddr, phonePort)
	aOut := l.a.must(t, aEnv, funtun, "profile=6bed4", "sh", "-c", script)
	for _, want := range []string{
		fmt.Sprintf("echo from-python from %s | from [%s]:%d", aAddr, bAddr, phonePort),
		fmt.Sprintf("echo from-ncat\n from %s", aAddr),
	} {
		if !strings.Contains(aOut, want) {
			t.Errorf("A's output lacks %q:\n%s", want, aOut)
		}
	}

	// A's datagram flows end cleanly when its stack stops with the
	// launcher.
	if strings.Contains(aOut, "flow failed") {
		t.Errorf("A's funnel logged a failed flow:\n%s", aOut)
	}

	// A host with IPv6 of its own behind the router, not hooked: what
	// its kernel reports is the wire's truth — the answer came from port
	// 5060 (5061) of B's 6bed4 address. The IPv4-only phone named the
	// peer by a synthetic IPv4 address and answered it there.
	native := l.router.must(t, nil, "python3", "-u", "-c", peerPy, bAddr.String(), fmt.Sprint(phonePort), "from-native", service)
	if want := fmt.Sprintf("echo from-native from %s | from [%s]:%d", service, bAddr, phonePort); !strings.Contains(native, want) {
		t.Errorf("the native IPv6 peer got %q, want %q", native, want)
	}
	native4 := l.router.must(t, nil, "python3", "-u", "-c", peerPy, bAddr.String(), fmt.Sprint(phone4Port), "to-v4-phone", service)
	if m := regexp.MustCompile(`^echo to-v4-phone from 198\.1[89]\.\d+\.\d+ \| from \[` + regexp.QuoteMeta(bAddr.String()) + fmt.Sprintf(`\]:%d`, phone4Port)).FindString(native4); m == "" {
		t.Errorf("the IPv4-only phone's answer: %q, want one naming a synthetic 198.18.0.0/15 address, from [%s]:%d", native4, bAddr, phone4Port)
	}

	// Each peer's conversation was a flow of B's funnel: the inbound
	// ones from A and from the native host, the REGISTER an outgoing one
	// from the phone's port. They end once the phones close their
	// sockets.
	for _, c := range []struct{ want, src string }{
		{fmt.Sprintf("dst=[%s]:%d", bAddr, phonePort), fmt.Sprintf("src=[%s]:", aAddr)},
		{fmt.Sprintf("dst=[%s]:%d", bAddr, phonePort), fmt.Sprintf("src=[%s]:", service)},
		{fmt.Sprintf("dst=[%s]:%d", bAddr, phone4Port), fmt.Sprintf("src=[%s]:", service)},
	} {
		line := flowLineWith(t, bOut, c.want, c.src)
		t.Logf("B's funnel: %s", line)
		for _, want := range []string{"hook=preload", "profile=6bed4", "net=udp", "inbound=true"} {
			if !strings.Contains(line, want) {
				t.Errorf("B's flow line lacks %q: %s", want, line)
			}
		}
		for _, dir := range []string{"up", "down"} {
			if m := regexp.MustCompile(` ` + dir + `=(\d+) `).FindStringSubmatch(line); m == nil || m[1] == "0" {
				t.Errorf("B's flow line counts no bytes %s: %s", dir, line)
			}
		}
	}
	reg := flowLineWith(t, bOut, fmt.Sprintf("dst=[%s]:%d", service, regPort), fmt.Sprintf("src=[::]:%d", phonePort))
	if strings.Contains(reg, "inbound=true") {
		t.Errorf("the REGISTER's flow is logged as inbound: %s", reg)
	}
}

// flowLineWith is flowLine for a line that has both want and also.
func flowLineWith(t *testing.T, out *testutil.LogBuffer, want, also string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.Contains(line, "msg=flow ") && strings.Contains(line, want) && strings.Contains(line, also) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flow line with %q and %q in:\n%s", want, also, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

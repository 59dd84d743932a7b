//go:build linux

package preload

import (
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/sys/unix"
)

// needRoot: raw and packet sockets need CAP_NET_RAW. The test suite runs
// as root in CI, where a test that cannot run fails rather than skips.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("raw sockets need root (CAP_NET_RAW); the test suite runs as root")
	}
	t.Skip("raw sockets need root (CAP_NET_RAW)")
}

// rawProbe sends one UDP datagram to 127.0.0.1:PORT each way a program
// can past the funnel when raw sockets are let through, and prints, per
// way, "NAME sent" or "NAME ERRNO". Ways: raw (SOCK_RAW, IPPROTO_UDP),
// packet (AF_PACKET on lo), icmp (an ICMP echo socket; nothing sent),
// and on descriptors 3 (raw) and 4 (packet) made before the program ran:
// sendto on each, connect on the raw one, bind on the packet one.
const rawProbe = `
import errno, os, socket, struct, sys
port, tag, ways = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3:]

def udp(payload):
    return struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload

def ip(payload):
    u = udp(payload)
    lo = bytes([127, 0, 0, 1])
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0, 64, 17, 0, lo, lo)
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return h[:10] + struct.pack("!H", ~s & 0xffff) + h[12:] + u

LO = ("lo", 0x0800, 0, 0, bytes(6))

def raw():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    s.sendto(udp(tag + b"-raw"), ("127.0.0.1", 0))

def packet():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.sendto(ip(tag + b"-packet"), LO)

def icmp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)

# The inherited sockets, each time a copy: a socket object closes its
# descriptor when it goes.
def inherited_raw():
    socket.socket(fileno=os.dup(3)).sendto(udp(tag + b"-inherited_raw"), ("127.0.0.1", 0))

def inherited_connect():
    s = socket.socket(fileno=os.dup(3))
    s.connect(("127.0.0.1", 0))
    s.send(udp(tag + b"-inherited_connect"))

def inherited_packet():
    socket.socket(fileno=os.dup(4)).sendto(ip(tag + b"-inherited_packet"), LO)

def inherited_bind():
    socket.socket(fileno=os.dup(4)).bind(LO[:2])

for way in ways:
    try:
        globals()[way]()
        print(way, "sent")
    except OSError as e:
        print(way, errno.errorcode.get(e.errno, str(e.errno)))
`

// catcher sees what leaves a probe: a loopback UDP listener for the
// datagrams a raw socket sends, and a packet socket on lo for the frames a
// packet socket sends (those come in with no route to 127.0.0.1 behind
// them, and the kernel drops them as martians before any listener: they
// left the program all the same). It keeps the probe's words it saw,
// "TAG-WAY".
type catcher struct {
	conn *net.UDPConn
	tag  string
	mu   sync.Mutex
	seen map[string]bool
}

func catch(t *testing.T, tag string) *catcher {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u := &catcher{conn: c, tag: tag, seen: map[string]bool{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			u.note(buf[:n])
		}
	}()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: lo.Index}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		<-stopped
		unix.Close(fd)
	})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err == nil {
				u.note(buf[:n])
			}
		}
	}()
	return u
}

// note keeps every TAG-WAY word in b.
func (u *catcher) note(b []byte) {
	s := string(b)
	for {
		i := strings.Index(s, u.tag+"-")
		if i < 0 {
			return
		}
		s = s[i:]
		j := len(u.tag) + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z') {
			j++
		}
		u.mu.Lock()
		u.seen[s[:j]] = true
		u.mu.Unlock()
		s = s[j:]
	}
}

func (u *catcher) port() string { return strconv.Itoa(u.conn.LocalAddr().(*net.UDPAddr).Port) }

// received waits for want words (or a moment, when none are wanted), then
// says which came.
func (u *catcher) received(want int) []string {
	deadline := time.Now().Add(2 * time.Second)
	if want == 0 {
		deadline = time.Now().Add(300 * time.Millisecond)
	}
	for {
		u.mu.Lock()
		n := len(u.seen)
		u.mu.Unlock()
		if want > 0 && n >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for w := range u.seen {
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

func probeLines(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			m[k] = v
		}
	}
	return m
}

// TestRawSocketsRefused: under a profile that denies everything, a hooked
// program can neither make a raw, packet or ICMP echo socket nor send on
// one (EACCES), and nothing reaches the listener; the funnel logs each
// refusal. --allow-raw lets them through (and the listener proves that
// the probe would have leaked).
func TestRawSocketsRefused(t *testing.T) {
	needRoot(t)
	py := python(t)
	ways := []string{"raw", "packet", "icmp"}
	t.Run("deny", func(t *testing.T) {
		u := catch(t, "deny")
		out, stderr, err := run(t, launcher(t, "chain=deny to=0.0.0.0/0,::/0", py, "-c", rawProbe, u.port(), "deny", "raw", "packet", "icmp"), "")
		if err != nil {
			t.Fatalf("probe: %v\n%s%s", err, out, stderr)
		}
		got := probeLines(out)
		for _, w := range ways {
			if got[w] != "EACCES" {
				t.Errorf("%s: %q, want EACCES\n%s", w, got[w], out)
			}
		}
		if r := u.received(0); len(r) > 0 {
			t.Errorf("seen on loopback: %q", r)
		}
		for _, kind := range []string{"socket=inet/raw/udp", "socket=packet/dgram/0x800", "socket=inet/dgram/icmp"} {
			if !strings.Contains(stderr, "refused a socket that would bypass the funnel") || !strings.Contains(stderr, kind) {
				t.Errorf("no refusal of %s logged:\n%s", kind, stderr)
			}
		}
	})
	t.Run("allow-raw", func(t *testing.T) {
		u := catch(t, "allowed")
		out, stderr, err := run(t, launcher(t, "chain=deny to=0.0.0.0/0,::/0", "--allow-raw", py, "-c", rawProbe, u.port(), "allowed", "raw", "packet"), "")
		if err != nil {
			t.Fatalf("probe: %v\n%s%s", err, out, stderr)
		}
		got := probeLines(out)
		for _, w := range []string{"raw", "packet"} {
			if got[w] != "sent" {
				t.Errorf("%s: %q, want sent\n%s%s", w, got[w], out, stderr)
			}
		}
		if r := strings.Join(u.received(2), " "); r != "allowed-packet allowed-raw" {
			t.Errorf("seen on loopback: %q, want both", r)
		}
	})
	// FUNTUN_ALLOW_RAW in the launcher's own environment allows nothing.
	t.Run("environment", func(t *testing.T) {
		u := catch(t, "env")
		cmd := launcher(t, "chain=deny to=0.0.0.0/0,::/0", py, "-c", rawProbe, u.port(), "env", "raw")
		cmd.Env = append(cmd.Env, "FUNTUN_ALLOW_RAW=1")
		out, stderr, err := run(t, cmd, "")
		if err != nil || probeLines(out)["raw"] != "EACCES" {
			t.Fatalf("probe: %v\n%s%s", err, out, stderr)
		}
		if r := u.received(0); len(r) > 0 {
			t.Errorf("seen on loopback: %q", r)
		}
	})
}

// TestRawSocketsThatSlippedThrough: raw and packet sockets the program did
// not make through socket() (here: inherited, made before it started) are
// refused at sendto, connect and bind.
func TestRawSocketsThatSlippedThrough(t *testing.T) {
	needRoot(t)
	py := python(t)
	ways := []string{"inherited_raw", "inherited_connect", "inherited_packet", "inherited_bind"}
	files := func(t *testing.T) []*os.File {
		rawFD, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			t.Fatal(err)
		}
		pktFD, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
		if err != nil {
			t.Fatal(err)
		}
		fs := []*os.File{os.NewFile(uintptr(rawFD), "raw"), os.NewFile(uintptr(pktFD), "packet")}
		t.Cleanup(func() {
			for _, f := range fs {
				f.Close()
			}
		})
		return fs
	}
	for _, allow := range []bool{false, true} {
		name := map[bool]string{false: "refused", true: "allow-raw"}[allow]
		t.Run(name, func(t *testing.T) {
			ft := startFunnel(t, "deny to=0.0.0.0/0,::/0")
			u := catch(t, name)
			cmd := ft.hooked(ctxFor(t, 30*time.Second), py, append([]string{"-c", rawProbe, u.port(), name}, ways...)...)
			cmd.ExtraFiles = files(t)
			if allow {
				cmd.Env = append(cmd.Env, "FUNTUN_ALLOW_RAW=1")
			}
			out, stderr, err := run(t, cmd, "")
			if err != nil {
				t.Fatalf("probe: %v\n%s%s", err, out, stderr)
			}
			got := probeLines(out)
			want := map[bool]string{false: "EACCES", true: "sent"}[allow]
			for _, w := range ways {
				if got[w] != want {
					t.Errorf("%s: %q, want %s\n%s", w, got[w], want, out)
				}
			}
			if !allow {
				if r := u.received(0); len(r) > 0 {
					t.Errorf("seen on loopback: %q", r)
				}
				return
			}
			want3 := name + "-inherited_connect " + name + "-inherited_packet " + name + "-inherited_raw"
			if r := strings.Join(u.received(3), " "); r != want3 {
				t.Errorf("seen on loopback: %q, want %q", r, want3)
			}
		})
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestPingRefused: iputils ping (a raw ICMP socket as root; an ICMP echo
// socket where ping_group_range allows it) is refused under any profile,
// and works with --allow-raw.
func TestPingRefused(t *testing.T) {
	needRoot(t)
	ping := testutil.NeedTool(t, "ping")
	out, stderr, err := run(t, launcher(t, "profile=direct", ping, "-c1", "-W2", "127.0.0.1"), "")
	if err == nil || !strings.Contains(stderr, "Permission denied") || !strings.Contains(stderr, "refused a socket that would bypass the funnel") {
		t.Fatalf("ping without --allow-raw: %v\n%s%s", err, out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "profile=direct", "--allow-raw", ping, "-c1", "-W2", "127.0.0.1"), "")
	if err != nil || !strings.Contains(out, "1 received") {
		t.Fatalf("ping --allow-raw: %v\n%s%s", err, out, stderr)
	}
}

func TestParseLaunchAllowRaw(t *testing.T) {
	la, _, err := parseLaunch([]string{"profile=p", "--allow-raw", "ping", "--allow-raw"})
	if err != nil || !la.allowRaw || la.program != "ping" || strings.Join(la.args, " ") != "--allow-raw" {
		t.Fatalf("%+v %v", la, err)
	}
	if la, _, _ := parseLaunch([]string{"ping"}); la.allowRaw {
		t.Fatal("raw allowed without --allow-raw")
	}
	env := childEnv([]string{"FUNTUN_ALLOW_RAW=1", "A=1"}, "/lib/libfuntun.so", "/tmp/s")
	for _, kv := range env {
		if strings.HasPrefix(kv, "FUNTUN_ALLOW_RAW=") {
			t.Fatalf("childEnv kept %s", kv)
		}
	}
}

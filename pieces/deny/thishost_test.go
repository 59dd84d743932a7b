package deny_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
	"github.com/funtun/funtun/internal/testutil"
)

// guard is the profile of the issue: keep clients off this host.
const guard = "deny to=127.0.0.0/8,::1/128,localhost | direct"

// thisHost lists destinations that reach this host's loopback, as
// addresses and as names a SOCKS client may send.
func thisHost(port uint16) []funnel.Addr {
	var list []funnel.Addr
	for _, ip := range []string{"0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0", "127.0.0.1", "::1"} {
		list = append(list, funnel.Addr{IP: netip.MustParseAddr(ip), Port: port})
	}
	for _, name := range []string{"0", "127.1", "0x7f.1", "2130706433", "017700000001", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost", "x.localhost"} {
		list = append(list, funnel.Addr{Name: name, Port: port})
	}
	// A name the system resolves to loopback (the host's own name in
	// /etc/hosts, on most machines): deny looks it up.
	if h, err := os.Hostname(); err == nil && resolvesToLoopback(h) {
		list = append(list, funnel.Addr{Name: h, Port: port})
	}
	return list
}

func resolvesToLoopback(name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", name)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return false
		}
	}
	return true
}

func describe(a funnel.Addr) string {
	if a.IsName() {
		return "name " + strconv.Quote(a.Name)
	}
	return "address " + a.IP.String()
}

// TestUnspecifiedReachesThisHost: connecting to 0.0.0.0 or :: reaches a
// local server (the control, through plain direct), and the guard refuses
// every spelling of it, for TCP and UDP, before any connection is made.
func TestUnspecifiedReachesThisHost(t *testing.T) {
	port, peers := testutil.DualStackEcho(t, "")
	direct, err := chain(t, "direct")
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"0.0.0.0", "::"} {
		c, err := dial(t, direct, ip, int(port))
		if err != nil {
			if ip == "::" {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Fatal(err)
		}
		testutil.EchoOnce(t, c, "this host\n")
		c.Close()
		t.Logf("plain direct to %s reached the server from %v", ip, <-peers)
	}

	pl, err := chain(t, guard)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range thisHost(port) {
		_, err := pl.DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, a))
		if funnel.Classify(err) != funnel.KindDenied {
			t.Errorf("tcp to %s: %v, want it denied", describe(a), err)
		}
	}
	select {
	case p := <-peers:
		t.Fatalf("a refused flow reached the server (from %v)", p)
	case <-time.After(100 * time.Millisecond):
	}

	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	uport := uint16(u.LocalAddr().(*net.UDPAddr).Port)
	dc, err := direct.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("0.0.0.0", uport)))
	if err != nil {
		t.Fatal(err)
	}
	sendFrame(t, dc, "control")
	dc.Close()
	if got := recvUDP(u, time.Second); got != "control" {
		t.Fatalf("plain direct to udp 0.0.0.0:%d: the listener on 127.0.0.1 got %q, want %q", uport, got, "control")
	}
	for _, a := range thisHost(uport) {
		_, err := pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, a))
		if funnel.Classify(err) != funnel.KindDenied {
			t.Errorf("udp to %s: %v, want it denied", describe(a), err)
		}
	}
}

func sendFrame(t *testing.T, dc funnel.DgramConn, msg string) {
	t.Helper()
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), msg))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
}

// recvUDP is the next datagram on u within wait, or "" when none comes.
func recvUDP(u *net.UDPConn, wait time.Duration) string {
	u.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, _, err := u.ReadFromUDP(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// TestSocks5dRefusesThisHost runs the binary: socks5d with the guard
// profile refuses curl (--socks5 and --socks5-hostname) and raw SOCKS5
// requests (names as ATYP 3) to every spelling of this host, and its UDP
// relay drops datagrams to them; a second socks5d with profile direct is
// the control that shows each path would reach the server.
func TestSocks5dRefusesThisHost(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	python := testutil.NeedTool(t, "python3")
	bin := testutil.Funtun(t)

	webPort, webLog := startWeb(t, python)

	dir, env := testutil.ProfileDir(t)
	os.WriteFile(filepath.Join(dir, "guard.profile"), []byte("# keep clients off this host\n"+guard+"\n"), 0o644)
	guarded := startSocks5d(t, bin, env, "profile=guard")
	control := startSocks5d(t, bin, env, "profile=direct")

	hosts := []string{"0.0.0.0", "[::]", "0", "127.1", "0x7f.1", "2130706433", "[::ffff:127.0.0.1]", "[::ffff:0.0.0.0]", "127.0.0.1", "[::1]", "localhost"}
	for _, host := range hosts {
		for _, mode := range []string{"--socks5", "--socks5-hostname"} {
			url := "http://" + host + ":" + strconv.Itoa(webPort) + "/"
			out, err := exec.Command(curl, "-sS", "-g", "--max-time", "10", mode, guarded, url).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 97 {
				t.Errorf("curl %s %s: %v, %q; want exit code 97 (the proxy refused)", mode, url, err, out)
			}
		}
	}

	// Names exactly as a client may send them (curl normalises some).
	for _, a := range thisHost(uint16(webPort)) {
		if code := socksConnect(t, guarded, a); code != socks5wire.ReplyNotAllowed {
			t.Errorf("CONNECT %s: reply %d (%s), want 2 (not allowed)", describe(a), code, socks5wire.ReplyText(code))
		}
	}
	time.Sleep(200 * time.Millisecond)
	if l := webLog.String(); strings.Contains(l, "GET") {
		t.Fatalf("a refused flow reached the web server:\n%s", l)
	}

	// The control: the same spellings through plain direct do reach it.
	for _, host := range []string{"0.0.0.0", "[::]"} {
		url := "http://" + host + ":" + strconv.Itoa(webPort) + "/"
		out, err := exec.Command(curl, "-sS", "-g", "--max-time", "10", "--socks5-hostname", control, url).CombinedOutput()
		if err != nil || string(out) != "reached\n" {
			t.Errorf("control: curl %s through profile direct: %v, %q", url, err, out)
		}
	}
	if n := strings.Count(webLog.String(), "GET"); n != 2 {
		t.Errorf("the web server logged %d requests, want the control's 2:\n%s", n, webLog.String())
	}

	// UDP ASSOCIATE: a datagram to this host must not arrive.
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	uport := uint16(u.LocalAddr().(*net.UDPAddr).Port)
	assoc := newUDPAssoc(t, guarded)
	for _, a := range thisHost(uport) {
		assoc.send(t, a, "leaked via "+describe(a))
	}
	if got := recvUDP(u, time.Second); got != "" {
		t.Fatalf("a datagram through the guard reached 127.0.0.1:%d: %q", uport, got)
	}
	open := newUDPAssoc(t, control)
	open.send(t, funnel.MakeAddr("0.0.0.0", uport), "control")
	if got := recvUDP(u, 5*time.Second); got != "control" {
		t.Fatalf("control: a datagram to 0.0.0.0:%d through profile direct gave %q at 127.0.0.1", uport, got)
	}
}

// startWeb runs a web server that listens on every address of both
// families (python's --bind :: is dual-stack), so that any spelling of
// this host reaches it unless the guard stops it. Its request log (on
// stderr) has a GET line per request; WaitListen's probes are not
// requests.
func startWeb(t *testing.T, python string) (int, *testutil.LogBuffer) {
	t.Helper()
	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte("reached\n"), 0o644)
	port := testutil.FreePort(t)
	web := testutil.StartDaemon(t, python, "-u", "-m", "http.server", strconv.Itoa(port), "--bind", "::", "--directory", www)
	testutil.WaitListen(t, "127.0.0.1:"+strconv.Itoa(port))
	return port, web.Stdout.(*testutil.LogBuffer)
}

// TestLauncherRefusesThisHost: a program started by the launcher
// (LD_PRELOAD) with the guard chain cannot connect to this host by any
// spelling; with chain=direct it can (the control).
func TestLauncherRefusesThisHost(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	python := testutil.NeedTool(t, "python3")
	bin := testutil.Funtun(t)
	lib := os.Getenv("FUNTUN_PRELOAD")
	if lib == "" {
		lib, _ = filepath.Abs("../../bin/libfuntun.so")
	}
	if st, err := os.Stat(lib); err != nil || st.Size() == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no preload library at %s (make build makes it)", lib)
		}
		t.Skipf("no preload library at %s: run make build", lib)
	}
	webPort, webLog := startWeb(t, python)
	_, env := testutil.ProfileDir(t)
	env = append(env, "FUNTUN_PRELOAD="+lib)
	run := func(chain, url string) (string, int) {
		cmd := exec.Command(bin, "chain="+chain, curl, "-sS", "-g", "--max-time", "10", url)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		return string(out), 0
	}
	for _, host := range []string{"0.0.0.0", "[::]", "0", "127.1", "0x7f.1", "[::ffff:127.0.0.1]", "[::ffff:0.0.0.0]", "localhost"} {
		url := "http://" + host + ":" + strconv.Itoa(webPort) + "/"
		// curl's "Couldn't connect" (7): connect() failed with EACCES.
		if out, code := run(guard, url); code != 7 {
			t.Errorf("launcher, guard chain, curl %s: exit %d, %q; want 7", url, code, out)
		}
	}
	if l := webLog.String(); strings.Contains(l, "GET") {
		t.Fatalf("a refused flow reached the web server:\n%s", l)
	}
	for _, host := range []string{"0.0.0.0", "[::]"} {
		url := "http://" + host + ":" + strconv.Itoa(webPort) + "/"
		if out, code := run("direct", url); code != 0 || out != "reached\n" {
			t.Errorf("control: launcher, chain=direct, curl %s: exit %d, %q", url, code, out)
		}
	}
}

// startSocks5d runs the binary's SOCKS5 daemon on a free port until the
// test ends and returns its address.
func startSocks5d(t *testing.T, bin string, env []string, profile string) string {
	t.Helper()
	listen := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	cmd := exec.Command(bin, "socks5d", "--listen", listen, profile)
	cmd.Env = env
	logs := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("socks5d %s log:\n%s", profile, logs.String())
		}
	})
	testutil.WaitListen(t, listen)
	return listen
}

// socksHello connects to a SOCKS5 server and settles on no login.
func socksHello(t *testing.T, proxy string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{socks5wire.Version, 1, socks5wire.MethodNone}); err != nil {
		t.Fatal(err)
	}
	var choice [2]byte
	if _, err := io.ReadFull(c, choice[:]); err != nil || choice[1] != socks5wire.MethodNone {
		t.Fatalf("greeting: %v %v", choice, err)
	}
	return c
}

// socksRequest sends a request and returns the reply code and bound address.
func socksRequest(t *testing.T, c net.Conn, cmd byte, a funnel.Addr) (byte, funnel.Addr) {
	t.Helper()
	req, err := socks5wire.AppendAddr([]byte{socks5wire.Version, cmd, 0}, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var head [3]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		t.Fatalf("reply to %s: %v", describe(a), err)
	}
	var first [2]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		t.Fatal(err)
	}
	n, ok := socks5wire.AddrLen(first[0], first[1])
	if !ok {
		t.Fatalf("reply with address type %d", first[0])
	}
	rest := make([]byte, n)
	copy(rest, first[:])
	if _, err := io.ReadFull(c, rest[2:]); err != nil {
		t.Fatal(err)
	}
	bound, _, err := socks5wire.ParseAddr(rest)
	if err != nil {
		t.Fatal(err)
	}
	return head[1], bound
}

// socksConnect asks for a CONNECT and returns the reply code.
func socksConnect(t *testing.T, proxy string, a funnel.Addr) byte {
	t.Helper()
	c := socksHello(t, proxy)
	defer c.Close()
	code, _ := socksRequest(t, c, socks5wire.CmdConnect, a)
	return code
}

type udpAssoc struct {
	ctrl  net.Conn
	u     *net.UDPConn
	relay *net.UDPAddr
}

// newUDPAssoc opens a UDP association from a socket whose address it
// declares in the request.
func newUDPAssoc(t *testing.T, proxy string) *udpAssoc {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	c := socksHello(t, proxy)
	t.Cleanup(func() { c.Close() })
	code, bound := socksRequest(t, c, socks5wire.CmdUDPAssociate, funnel.AddrFromNet(u.LocalAddr()))
	if code != socks5wire.ReplySucceeded {
		t.Fatalf("UDP ASSOCIATE: reply %d", code)
	}
	c.SetDeadline(time.Time{})
	relay := &net.UDPAddr{IP: bound.IP.AsSlice(), Port: int(bound.Port)}
	if bound.IP.IsUnspecified() {
		relay.IP = net.IPv4(127, 0, 0, 1)
	}
	return &udpAssoc{ctrl: c, u: u, relay: relay}
}

func (a *udpAssoc) send(t *testing.T, to funnel.Addr, msg string) {
	t.Helper()
	dgram, err := socks5wire.AppendAddr([]byte{0, 0, 0}, to)
	if err != nil {
		t.Fatal(err)
	}
	dgram = append(dgram, msg...)
	if _, err := a.u.WriteToUDP(dgram, a.relay); err != nil {
		t.Fatal(err)
	}
	// The relay answers nothing for a refused destination; give it a
	// moment so that the datagrams are judged one by one.
	a.u.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, _, err := a.u.ReadFromUDP(buf); err == nil && bytes.Contains(buf[:n], []byte(msg)) {
		t.Errorf("the relay answered a datagram to %s: %q", describe(to), buf[:n])
	}
}

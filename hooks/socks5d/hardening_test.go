//go:build linux

package socks5d

// Regression tests for what a hostile probe found (issue 9): reloads that
// were not atomic, UDP to broadcast and multicast destinations, UDP
// associations claimed by a stranger, and descriptor exhaustion by BINDs.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/socks5wire"
	"github.com/funtun/funtun/internal/testutil"
)

// login runs the greeting with RFC 1929 username/password.
func (r *rawClient) login(user, pass string) {
	r.t.Helper()
	r.send(5, 1, 2)
	r.expect(5, 2)
	b := []byte{1, byte(len(user))}
	b = append(append(b, user...), byte(len(pass)))
	r.send(append(b, pass...)...)
	r.expect(1, 0)
}

// connectEcho runs a CONNECT to an echo server and one exchange on it.
func connectEcho(t *testing.T, r *rawClient, echo netip.AddrPort, want string) {
	t.Helper()
	r.send(connectReq(echo)...)
	if code, _ := r.readReply(); code != socks5wire.ReplySucceeded {
		t.Fatalf("CONNECT reply %d (%s), want success", code, socks5wire.ReplyText(code))
	}
	r.send([]byte("hello\n")...)
	r.expect([]byte(want)...)
}

func udpSocket(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpPort(c *net.UDPConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) }

// roundTrip sends one datagram through the relay and says whether its
// echo came back.
func roundTrip(c *net.UDPConn, relay, dest netip.AddrPort, payload string, wait time.Duration) bool {
	c.WriteToUDPAddrPort(udpDatagram(dest, payload), relay)
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		if bytes.HasSuffix(buf[:n], []byte(payload)) {
			return true
		}
	}
}

// --- item 7: BIND listeners and UDP associations have their own bound ---

// Past --max-binds, a BIND or UDP ASSOCIATE gets general failure at once,
// an ordinary CONNECT is still served, and a slot given back is taken
// again.
func TestMaxBindsRefusesTheExcessNotTheNextClient(t *testing.T) {
	echo := echoAddr(t)
	env := newLoopEnv(t, nil)
	s := &Server{MaxBinds: 3, GeneralOnly: true}
	addr := env.serve(t, s, "tcp")
	var binds []*rawClient
	for i := 0; i < 3; i++ {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(bindReq(netip.AddrPort{})...)
		if code, _ := r.readReply(); code != socks5wire.ReplySucceeded {
			t.Fatalf("BIND %d: reply %d, want success", i, code)
		}
		binds = append(binds, r)
	}
	for i := 0; i < 5; i++ {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(bindReq(netip.AddrPort{})...)
		if code, _ := r.readReply(); code != socks5wire.ReplyGeneral {
			t.Fatalf("BIND past --max-binds: reply %d, want 1 (general failure)", code)
		}
		r.expectClosed()
	}
	u := dialRaw(t, addr)
	u.noAuth()
	u.send(5, 3, 0, 1, 0, 0, 0, 0, 0, 0)
	if code, _ := u.readReply(); code != socks5wire.ReplyGeneral {
		t.Fatalf("UDP ASSOCIATE past --max-binds: reply %d, want 1", code)
	}
	if n := s.BindsRefused(); n != 6 {
		t.Errorf("BindsRefused() = %d, want 6", n)
	}
	env.rec.wait(t, "the --max-binds warning", func(r logRec) bool {
		return strings.Contains(r.msg, "raise --max-binds?") && r.attrs["max_binds"] == "3"
	})

	c := dialRaw(t, addr)
	c.noAuth()
	connectEcho(t, c, echo, "hello\n")

	// A BIND whose client goes gives its slot back.
	binds[0].c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(bindReq(netip.AddrPort{})...)
		code, _ := r.readReply()
		if code == socks5wire.ReplySucceeded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a BIND slot given back is not taken again: reply %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The binary under a 128-file limit: 60 BINDs, of which --max-binds=20
// are served and the rest refused with a reply, while an ordinary CONNECT
// is still served; the low limit is logged.
func TestBindsUnderLowFileLimit(t *testing.T) {
	prlimit := testutil.NeedTool(t, "prlimit")
	bin := testutil.Funtun(t)
	echo := echoAddr(t)
	port := testutil.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	_, out := startFuntun(t, []string{"FUNTUN_PROFILE_PATH=" + profileDir(t, map[string]string{"p": "hosts demo.test=127.0.0.1"})},
		prlimit, "--nofile=128:128", bin, "socks5d", "--listen", addr, "--max-binds", "20", "profile=p")
	waitLog(t, out, "socks5d serving")
	if !strings.Contains(out.String(), "open file limit is low") || !strings.Contains(out.String(), "limit=128") {
		t.Errorf("the low file limit is not logged:\n%s", out)
	}
	var served, refused int
	for i := 0; i < 60; i++ {
		r := dialRaw(t, addr)
		r.noAuth()
		r.send(bindReq(netip.AddrPort{})...)
		switch code, _ := r.readReply(); code {
		case socks5wire.ReplySucceeded:
			served++
		case socks5wire.ReplyGeneral:
			refused++
			r.c.Close()
		default:
			t.Fatalf("BIND %d: reply %d", i, code)
		}
	}
	if served != 20 || refused != 40 {
		t.Fatalf("%d BINDs served, %d refused; want 20 and 40", served, refused)
	}
	for i := 0; i < 3; i++ {
		c := dialRaw(t, addr)
		c.noAuth()
		connectEcho(t, c, echo, "hello\n")
		c.c.Close()
	}
}

func waitLog(t *testing.T, out *testutil.LogBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output within 15s:\n%s", want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLogCount waits for the n-th occurrence of want.
func waitLogCount(t *testing.T, out *testutil.LogBuffer, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(out.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%q appears %d times within 15s, want %d:\n%s", want, strings.Count(out.String(), want), n, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// --- item 5: who may claim a UDP association ---

// A request with port 0 is claimed by the first datagram from the
// client's address, and then only that port is served.
func TestUDPPortZeroClaimedByFirstDatagram(t *testing.T) {
	echo := testutil.UDPEchoServer(t).AddrPort()
	addr := startServer(t, &Server{Engine: testEngine(t, nil)}, "tcp")
	mine, other := udpSocket(t), udpSocket(t)
	_, relay := udpAssociate(t, addr, 0)
	if !roundTrip(mine, relay, echo, "first", 5*time.Second) {
		t.Fatal("the first datagram from the client's address got no answer")
	}
	if roundTrip(other, relay, echo, "second", 300*time.Millisecond) {
		t.Fatal("another port at the same address was served after the claim")
	}
	if !roundTrip(mine, relay, echo, "again", 5*time.Second) {
		t.Fatal("the claiming port is no longer served")
	}
}

// After the claim window, an unclaimed association takes no port: a late
// first datagram is dropped, and that is logged once.
func TestUDPPortZeroClaimWindow(t *testing.T) {
	echo := testutil.UDPEchoServer(t).AddrPort()
	env := newLoopEnv(t, nil)
	s := &Server{claimWindow: 200 * time.Millisecond}
	addr := env.serve(t, s, "tcp")
	mine := udpSocket(t)
	_, relay := udpAssociate(t, addr, 0)
	time.Sleep(400 * time.Millisecond)
	if roundTrip(mine, relay, echo, "late", 300*time.Millisecond) {
		t.Fatal("a first datagram after the claim window was served")
	}
	env.rec.wait(t, "the late claim", func(r logRec) bool { return strings.Contains(r.msg, "claim window") })
	// Within the window it works (the control).
	_, relay2 := udpAssociate(t, addr, 0)
	if !roundTrip(mine, relay2, echo, "early", 5*time.Second) {
		t.Fatal("a first datagram within the claim window got no answer")
	}
}

// On a --users server, a client that names its port has that port alone:
// an unauthenticated socket at the same address that sends first does not
// take the association.
func TestUDPDeclaredPortOnUsersServer(t *testing.T) {
	echo := testutil.UDPEchoServer(t).AddrPort()
	s := &Server{Engine: testEngine(t, nil)}
	s.SetUsers(mustLoadUsers(t, writeUsers(t, "alice:secret")))
	addr := startServer(t, s, "tcp")
	mine, stranger := udpSocket(t), udpSocket(t)
	r := dialRaw(t, addr)
	r.login("alice", "secret")
	p := udpPort(mine)
	r.send(5, 3, 0, 1, 0, 0, 0, 0, byte(p>>8), byte(p))
	code, relay := r.readReply()
	if code != 0 {
		t.Fatalf("UDP ASSOCIATE reply %d", code)
	}
	if roundTrip(stranger, relay, echo, "stranger", 300*time.Millisecond) {
		t.Fatal("a stranger at the client's address used the association")
	}
	if !roundTrip(mine, relay, echo, "mine", 5*time.Second) {
		t.Fatal("the declared port is not served")
	}
}

// --- item 4: no broadcast or multicast through the UDP relay ---

// Broadcast and multicast destinations given as addresses are refused
// before any flow begins: dropped, counted, logged once per association.
// The profile denies them too, so that this test cannot send one even if
// socks5d's own check were gone; the count tells the check worked.
func TestUDPBroadcastAndMulticastRefused(t *testing.T) {
	echo := testutil.UDPEchoServer(t).AddrPort()
	env := newLoopEnv(t, map[string]string{"guard": "deny to=224.0.0.0/3,ff00::/8 | direct"})
	s := &Server{Selector: funnel.Selector{Profile: "guard"}}
	addr := env.serve(t, s, "tcp")
	mine := udpSocket(t)
	_, relay := udpAssociate(t, addr, udpPort(mine))
	dests := []netip.AddrPort{
		netip.MustParseAddrPort("255.255.255.255:9"),
		netip.MustParseAddrPort("224.0.0.1:9"),
		netip.MustParseAddrPort("239.255.255.250:1900"),
		netip.MustParseAddrPort("[ff02::1]:9"),
		netip.MustParseAddrPort("[::ffff:224.0.0.1]:9"),
		netip.MustParseAddrPort("[::ffff:255.255.255.255]:9"),
	}
	for _, d := range dests {
		for i := 0; i < 2; i++ {
			mine.WriteToUDPAddrPort(udpDatagram(d, "x"), relay)
		}
	}
	// An ordinary destination still works, and, coming after them on the
	// same socket, says they have all been read.
	if !roundTrip(mine, relay, echo, "ordinary", 5*time.Second) {
		t.Fatal("an ordinary destination got no answer")
	}
	if n, want := s.UDPRefused(), int64(2*len(dests)); n != want {
		t.Fatalf("UDPRefused() = %d, want %d", n, want)
	}
	var warns int
	for _, r := range env.rec.all() {
		if isFlowRec(r) && r.attrs["dst"] != echo.String() {
			t.Errorf("a flow began for a refused destination: %v", r)
		}
		if strings.Contains(r.msg, "broadcast or multicast destination refused") {
			warns++
		}
	}
	if warns != 1 {
		t.Errorf("%d warnings for the association, want 1", warns)
	}
}

func TestBroadcastKind(t *testing.T) {
	s := &Server{}
	s.broadcasts.Store(&bcastSet{at: time.Now(), addrs: map[netip.Addr]struct{}{netip.MustParseAddr("192.0.2.255"): {}}})
	for ip, want := range map[string]bool{
		"255.255.255.255": true, "224.0.0.1": true, "239.1.2.3": true, "ff02::1": true, "ff05::2": true,
		"::ffff:224.0.0.251": true, "192.0.2.255": true, "::ffff:192.0.2.255": true,
		"192.0.2.254": false, "127.0.0.1": false, "10.0.0.255": false, "2001:db8::ff": false, "::1": false,
	} {
		if got := s.broadcastKind(netip.MustParseAddr(ip)) != ""; got != want {
			t.Errorf("%s: refused %v, want %v", ip, got, want)
		}
	}
	if s.broadcastKind(netip.Addr{}) != "" {
		t.Error("the zero address (no remote address known) refused")
	}
}

const netnsChildEnv = "FUNTUN_SOCKS5D_NETNS_CHILD"

// In a network namespace of its own (the test runs itself again under
// unshare --net), with an interface at 10.9.8.1/24, socks5d refuses the
// limited broadcast, the subnet's broadcast, a multicast group and a name
// that a hosts piece maps to a broadcast address; a listener on the port
// sees none of them. With UDPBroadcast they all arrive, which shows that
// the listener would have seen them.
func TestUDPBroadcastRefusedInNetns(t *testing.T) {
	if os.Getenv(netnsChildEnv) != "1" {
		needRoot(t)
		unshare := testutil.NeedTool(t, "unshare")
		testutil.NeedTool(t, "ip")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, unshare, "--net", "--", os.Args[0], "-test.run=^TestUDPBroadcastRefusedInNetns$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestUDPBroadcastRefusedInNetns") {
			t.Fatalf("the test in its namespace: %v\n%s", err, out)
		}
		return
	}
	// Never outside a fresh namespace: it has only a loopback interface.
	ifs, err := net.Interfaces()
	if err != nil || len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		t.Fatalf("not in a fresh network namespace (interfaces %v, %v): refusing to test broadcasts here", ifs, err)
	}
	ipTool := testutil.NeedTool(t, "ip")
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		// A veth pair with both ends here (the dummy driver may not be
		// built): what goes out of one end comes in at the other, and
		// nothing leaves the namespace.
		{"link", "add", "ftb0", "type", "veth", "peer", "name", "ftb1"},
		{"addr", "add", "10.9.8.1/24", "broadcast", "10.9.8.255", "dev", "ftb0"},
		{"link", "set", "ftb1", "up"},
		{"link", "set", "ftb0", "up"},
		{"route", "add", "default", "dev", "ftb0"},
	} {
		if out, err := exec.Command(ipTool, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	// The listener: every address, so broadcasts and the all-hosts group
	// looped back to this host land here.
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	port := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	got := make(chan string, 100)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := sink.ReadFromUDP(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	dests := []struct {
		name string
		key  []byte // ATYP, address, port
	}{
		{"limited", socks5wire.AppendAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), port))},
		{"subnet", socks5wire.AppendAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("10.9.8.255"), port))},
		{"multicast", socks5wire.AppendAddrPort(nil, netip.AddrPortFrom(netip.MustParseAddr("224.0.0.1"), port))},
		{"name", append(append([]byte{3, byte(len("bc.test"))}, "bc.test"...), byte(port>>8), byte(port))},
	}
	for _, allow := range []bool{false, true} {
		echo := testutil.UDPEchoServer(t).AddrPort()
		env := newLoopEnv(t, map[string]string{"p": "hosts bc.test=10.9.8.255 | direct"})
		s := &Server{Selector: funnel.Selector{Profile: "p"}, UDPBroadcast: allow}
		addr := env.serve(t, s, "tcp")
		mine := udpSocket(t)
		_, relay := udpAssociate(t, addr, udpPort(mine))
		for _, d := range dests {
			mine.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(d.key, fmt.Sprintf("%s allow=%v", d.name, allow)...)...), relay)
		}
		if !roundTrip(mine, relay, echo, "ordinary", 5*time.Second) {
			t.Fatal("an ordinary destination got no answer")
		}
		arrived := map[string]bool{}
		timeout := time.After(time.Second)
	collect:
		for {
			select {
			case m := <-got:
				arrived[m] = true
			case <-timeout:
				break collect
			}
		}
		for _, d := range dests {
			m := fmt.Sprintf("%s allow=%v", d.name, allow)
			if arrived[m] != allow {
				t.Errorf("UDPBroadcast=%v: the %s destination arrived %v, want %v", allow, d.name, arrived[m], allow)
			}
		}
		if n := s.UDPRefused(); allow && n != 0 || !allow && n != int64(len(dests)) {
			t.Errorf("UDPBroadcast=%v: UDPRefused() = %d", allow, n)
		}
		if !allow {
			r := env.rec.wait(t, "the name's refused flow", func(r logRec) bool {
				return r.msg == "flow failed" && r.attrs["dst"] == "bc.test:"+strconv.Itoa(int(port))
			})
			if r.attrs["kind"] != funnel.KindDenied.String() {
				t.Errorf("the name's flow ended as %q, want %q", r.attrs["kind"], funnel.KindDenied.String())
			}
		}
	}
}

// The relay socket answers only its client and has no SO_BROADCAST.
func TestUDPRelayHasNoBroadcastOption(t *testing.T) {
	c, err := listenRelay(context.Background(), netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := c.SyscallConn()
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST) })
	if gerr != nil || v != 0 {
		t.Fatalf("SO_BROADCAST = %d (%v), want 0", v, gerr)
	}
}

// --- item 3: a reload is atomic across profiles, users and map ---

// In process: a users file whose user's profile is gone refuses the whole
// reload (profiles included), with an error that names the line, the user
// and the profile; fixed, the next reload takes all of it.
func TestReloadRefusedWhenAUsersProfileGoes(t *testing.T) {
	echo := echoAddr(t)
	env := newLoopEnv(t, map[string]string{"p": "direct", "work": "rewrite from=hello to=WORK! | direct"})
	usersFile := writeUsers(t, "alice:secret", "bob:pw:work")
	s := &Server{Selector: funnel.Selector{Profile: "p"}, GeneralOnly: true}
	s.SetUsers(mustLoadUsers(t, usersFile))
	addr := env.serve(t, s, "tcp")
	step := reloadFiles(&cli.Env{Log: env.log}, env.eng.Catalog, s, usersFile, "")
	before := env.eng.Catalog.Current()

	os.Remove(filepath.Join(env.dir, "work"+funnel.ProfileExt))
	env.writeProfile(t, "p", "rewrite from=hello to=NEW!! | direct") // a change that must not go in alone
	err := cli.Reload(env.eng, step)
	want := fmt.Sprintf("users file %s:2: no profile named %q, which user bob takes", usersFile, "work")
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("reload: %v\nwant an error with %q", err, want)
	}
	if env.eng.Catalog.Current() != before {
		t.Fatal("the profiles changed although the reload was refused")
	}
	for user, sees := range map[string]string{"alice": "hello\n", "bob": "WORK!\n"} {
		r := dialRaw(t, addr)
		r.login(user, map[string]string{"alice": "secret", "bob": "pw"}[user])
		connectEcho(t, r, echo, sees)
	}

	env.writeProfile(t, "work", "rewrite from=hello to=FIXED | direct")
	if err := cli.Reload(env.eng, step); err != nil {
		t.Fatal(err)
	}
	for user, sees := range map[string]string{"alice": "NEW!!\n", "bob": "FIXED\n"} {
		r := dialRaw(t, addr)
		r.login(user, map[string]string{"alice": "secret", "bob": "pw"}[user])
		connectEcho(t, r, echo, sees)
	}
}

// The binary, with SIGHUP: its own profile deleted, the reload is refused
// and clients are still served; a user's profile deleted, refused too and
// the user still served; fixed, the next SIGHUP takes it.
func TestSIGHUPReloadIsAtomic(t *testing.T) {
	bin := testutil.Funtun(t)
	echo := echoAddr(t)
	dir := profileDir(t, map[string]string{
		"mine": "rewrite from=hello to=MINE! | direct",
		"work": "rewrite from=hello to=WORK! | direct",
	})
	usersFile := writeUsers(t, "alice:secret", "bob:pw:work")
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	cmd, out := startFuntun(t, []string{"FUNTUN_PROFILE_PATH=" + dir}, bin,
		"socks5d", "--listen", addr, "--users", usersFile, "profile=mine")
	waitLog(t, out, "socks5d serving")
	served := func(user, pass, sees string) {
		t.Helper()
		r := dialRaw(t, addr)
		r.login(user, pass)
		connectEcho(t, r, echo, sees)
		r.c.Close()
	}
	hup := func() {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	served("alice", "secret", "MINE!\n")
	served("bob", "pw", "WORK!\n")

	// The daemon's own profile goes.
	mine := filepath.Join(dir, "mine.profile")
	os.Remove(mine)
	hup()
	waitLogCount(t, out, "reload failed", 1)
	if !strings.Contains(out.String(), `the command's profile=mine: no profile named \"mine\"`) {
		t.Errorf("the refusal does not name the missing profile:\n%s", out)
	}
	served("alice", "secret", "MINE!\n")
	served("bob", "pw", "WORK!\n")

	// Back, but a user's profile goes.
	os.WriteFile(mine, []byte("rewrite from=hello to=MINE2 | direct\n"), 0o644)
	work := filepath.Join(dir, "work.profile")
	os.Remove(work)
	hup()
	waitLogCount(t, out, "reload failed", 2)
	if want := fmt.Sprintf(`users file %s:2: no profile named \"work\", which user bob takes`, usersFile); !strings.Contains(out.String(), want) {
		t.Errorf("the refusal does not name the user's missing profile (%s):\n%s", want, out)
	}
	served("bob", "pw", "WORK!\n")
	served("alice", "secret", "MINE!\n")
	if strings.Contains(out.String(), "profiles reloaded") {
		t.Fatalf("a refused reload logged success:\n%s", out)
	}

	// Fixed: the next SIGHUP takes it all.
	os.WriteFile(work, []byte("rewrite from=hello to=WORK2 | direct\n"), 0o644)
	hup()
	waitLog(t, out, "profiles reloaded")
	waitLog(t, out, "users file reloaded")
	served("alice", "secret", "MINE2\n")
	served("bob", "pw", "WORK2\n")
}

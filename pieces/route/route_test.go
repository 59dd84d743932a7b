package route_test

import (
	"bytes"
	"context"
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
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/route"
)

// compile builds a set from name/text pairs; each profile's origin is
// NAME.profile so that errors can be checked for their position.
func compile(t *testing.T, kv ...string) (*funnel.Set, error) {
	t.Helper()
	var srcs []funnel.Source
	for i := 0; i+1 < len(kv); i += 2 {
		srcs = append(srcs, funnel.Source{Name: kv[i], Origin: kv[i] + ".profile", Text: kv[i+1]})
	}
	return funnel.CompileSet(srcs)
}

func mustProfile(t *testing.T, kv ...string) func(string) *funnel.Pipeline {
	t.Helper()
	set, err := compile(t, kv...)
	if err != nil {
		t.Fatal(err)
	}
	return func(name string) *funnel.Pipeline {
		pl, ok := set.Profile(name)
		if !ok {
			t.Fatalf("no profile %s", name)
		}
		return pl
	}
}

func port(a net.Addr) uint16 {
	switch a := a.(type) {
	case *net.TCPAddr:
		return uint16(a.Port)
	case *net.UDPAddr:
		return uint16(a.Port)
	}
	panic("not a TCP or UDP address")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// echoDgram sends one datagram through a datagram flow and expects it back.
func echoDgram(t *testing.T, dc funnel.DgramConn) {
	t.Helper()
	msg := []byte("one datagram")
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), msg))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	back, err := dc.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer back.Release()
	if !bytes.Equal(back.Bytes(), msg) {
		t.Fatalf("echo gave %q, want %q", back.Bytes(), msg)
	}
}

func wantKind(t *testing.T, err error, k funnel.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("flow went through, want it refused with %v", k)
	}
	if got := funnel.Classify(err); got != k {
		t.Fatalf("error %q is %v, want %v", err, got, k)
	}
}

func TestRoutesByPortTCPAndUDP(t *testing.T) {
	open, closed := testutil.EchoServer(t), testutil.EchoServer(t)
	uopen, uclosed := testutil.UDPEchoServer(t), testutil.UDPEchoServer(t)
	profile := mustProfile(t,
		"direct", "direct",
		"blocked", "deny all=true reason='this port is closed'",
		"p", "route port:"+itoa(port(closed))+","+"port:"+itoa(port(uclosed))+"=blocked default=direct",
	)
	pl := profile("p")

	c, err := pl.DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("127.0.0.1", port(open))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("route handed back a %T, want the *net.TCPConn direct made (splice fast path)", c)
	}
	testutil.EchoOnce(t, c, "through the funnel\n")

	_, err = pl.DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("127.0.0.1", port(closed))))
	wantKind(t, err, funnel.KindDenied)
	if !strings.Contains(err.Error(), "this port is closed") || !strings.Contains(err.Error(), "blocked.profile:1:1") {
		t.Errorf("refusal %q should give the reason and where the deny is written", err)
	}

	dc, err := pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("127.0.0.1", port(uopen))))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	echoDgram(t, dc)

	_, err = pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("127.0.0.1", port(uclosed))))
	wantKind(t, err, funnel.KindDenied)
}

func TestFirstRuleWins(t *testing.T) {
	echo := testutil.EchoServer(t)
	p := itoa(port(echo))
	profile := mustProfile(t,
		"direct", "direct",
		"blocked", "deny all=true",
		// The same destination matches both rules; only the order decides.
		"open-first", "route port:"+p+"=direct 127.0.0.0/8=blocked default=blocked",
		"closed-first", "route 127.0.0.0/8=blocked port:"+p+"=direct",
		"by-version", "route ipv6=blocked ipv4=direct default=blocked",
	)
	dest := funnel.MakeAddr("127.0.0.1", port(echo))
	c, err := profile("open-first").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, dest))
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "through the funnel\n")
	c.Close()

	_, err = profile("closed-first").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, dest))
	wantKind(t, err, funnel.KindDenied)

	c, err = profile("by-version").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, dest))
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "through the funnel\n")
	c.Close()
	_, err = profile("by-version").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("::1", port(echo))))
	wantKind(t, err, funnel.KindDenied)
}

// hosts above route resolves first, so route sees the address; route above
// hosts sees the name. Both orders are useful and the test pins both.
func TestRouteWithHosts(t *testing.T) {
	echo := testutil.EchoServer(t)
	uecho := testutil.UDPEchoServer(t)
	profile := mustProfile(t,
		"direct", "direct",
		"blocked", "deny all=true",
		"resolved", "hosts demo.test=127.0.0.1",
		"a", "hosts demo.test=127.0.0.1 | route .test=blocked default=direct",
		"b", "route .test=resolved name=blocked default=direct",
	)
	demo := funnel.MakeAddr("demo.test", port(echo))
	other := funnel.MakeAddr("other.test", port(echo))
	for _, name := range []string{"a", "b"} {
		c, err := profile(name).DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, demo))
		if err != nil {
			t.Fatalf("profile %s: %v", name, err)
		}
		if _, ok := c.(*net.TCPConn); !ok {
			t.Errorf("profile %s handed back a %T, want *net.TCPConn", name, c)
		}
		testutil.EchoOnce(t, c, "through the funnel\n")
		c.Close()

		dc, err := profile(name).DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("demo.test", port(uecho))))
		if err != nil {
			t.Fatalf("profile %s: %v", name, err)
		}
		echoDgram(t, dc)
		dc.Close()
	}
	// In a, other.test is still a name when it reaches route: refused.
	_, err := profile("a").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, other))
	wantKind(t, err, funnel.KindDenied)
	// In b, a name outside .test is refused by the name rule, before direct
	// would try to resolve it.
	_, err = profile("b").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("example.invalid", 80)))
	wantKind(t, err, funnel.KindDenied)
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		text string
		want string
	}{
		{"route .example.org=nowhere", `p.profile:1:20: piece "route": .example.org=nowhere: no profile named "nowhere"`},
		{"route 10.0.0.0/33=direct", `p.profile:1:7: piece "route": "10.0.0.0/33" is not a CIDR`},
		{"route\n  port:25=direct\n  port:9000-8000=direct", `p.profile:3:3: piece "route": "port:9000-8000": port range 9000-8000 runs backwards`},
		{"route port:25,port:99999=direct", `p.profile:1:15: piece "route": "port:99999": port "99999" is not a number`},
		{"route default=nowhere", `p.profile:1:15: piece "route": default=nowhere: no profile named "nowhere"`},
		{"route default=direct default=direct", `p.profile:1:22: piece "route": default= given twice`},
		{"route .test=", `p.profile:1:13: piece "route": .test= needs a profile name`},
		{"route .test=direct | direct", `p.profile:1:22: piece "direct" follows piece "route", which already ends the chain`},
	}
	for _, tc := range tests {
		_, err := compile(t, "direct", "direct", "p", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("compiling %q: got %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestDefaultNeedsDirectProfile(t *testing.T) {
	_, err := compile(t, "p", "route .test=p")
	if err == nil || !strings.Contains(err.Error(), "default= is not given") {
		t.Fatalf("got %v, want an error about the missing direct profile", err)
	}
}

func TestLoopsAreRefused(t *testing.T) {
	_, err := compile(t,
		"direct", "direct",
		"a", "route .test=b",
		"b", "route port:80=a",
	)
	if err == nil || !strings.Contains(err.Error(), "loop") {
		t.Fatalf("got %v, want a loop error", err)
	}
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

func TestPiecesCommandBuildsWithoutCompiler(t *testing.T) {
	// `funtun pieces route` calls New with no Builder to show the shapes.
	info, _ := funnel.Lookup("route")
	p, err := info.New(funnel.NewParams("route", ".test", "blocked"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := funnel.AppShapes(p.Curves()).String(); got != "stream or dgram" {
		t.Errorf("shapes %q", got)
	}
	_, err = p.(funnel.StreamDialer).DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("a.test", 1)), nil)
	if err == nil {
		t.Fatal("a route built without the compiler carried a flow")
	}
}

// TestForwardProfiles runs the real binary with profile files: curl gets
// the page through route's default, and the flow to the port routed to a
// deny profile is refused, with the reason in funtun's log.
func TestForwardProfiles(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	funtun := testutil.Funtun(t)
	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte("routed\n"), 0o644)
	srvPort := strconv.Itoa(testutil.FreePort(t))
	testutil.StartDaemon(t, "python3", "-m", "http.server", srvPort, "--bind", "127.0.0.1", "--directory", www)
	testutil.WaitListen(t, "127.0.0.1:"+srvPort)
	closed := testutil.EchoServer(t)

	dir, env := testutil.ProfileDir(t)
	os.WriteFile(filepath.Join(dir, "blocked.profile"), []byte("# refuses everything\ndeny all=true reason='closed by policy'\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "split.profile"), []byte("route\n  port:"+itoa(port(closed))+"=blocked\n  default=direct\n"), 0o644)

	for _, tc := range []struct {
		to     string
		want   string
		denied bool
	}{
		{to: "127.0.0.1:" + srvPort, want: "routed\n"},
		{to: closed.String(), denied: true},
	} {
		listen := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
		fwd := exec.Command(funtun, "forward", "--listen", listen, "--to", tc.to, "profile=split")
		fwd.Env = env
		logs := &testutil.LogBuffer{}
		fwd.Stdout, fwd.Stderr = logs, logs
		if err := fwd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- fwd.Wait() }()
		t.Cleanup(func() {
			fwd.Process.Signal(syscall.SIGTERM)
			<-exited
			if t.Failed() {
				t.Logf("funtun log (--to %s):\n%s", tc.to, logs.String())
			}
		})
		testutil.WaitListen(t, listen)

		out, err := exec.Command(curl, "-sS", "--max-time", "10", "http://"+listen+"/index.html").CombinedOutput()
		if !tc.denied {
			if err != nil || string(out) != tc.want {
				t.Fatalf("curl via %s: %v: %q", tc.to, err, out)
			}
			continue
		}
		if err == nil {
			t.Fatalf("curl to the routed-away port succeeded: %q", out)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(logs.String(), "closed by policy") {
			if time.Now().After(deadline) {
				t.Fatal("funtun's log does not say why the flow was refused")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if l := logs.String(); !strings.Contains(l, "kind=denied") || !strings.Contains(l, "blocked.profile:2:1") {
			t.Errorf("the refusal should be of kind denied and point at blocked.profile:2:1:\n%s", l)
		}
	}
}

// TestThisHostRoutesAsLoopback: a rule for the loopback range takes every
// spelling that reaches this host's loopback (the unspecified address,
// mapped and numeric forms, localhost); route never looks a name up, so a
// name that only resolves there goes by its name rules.
func TestThisHostRoutesAsLoopback(t *testing.T) {
	echo := testutil.EchoServer(t)
	p := port(echo)
	profile := mustProfile(t,
		"direct", "direct",
		"blocked", "deny all=true reason='loopback is routed here'",
		"p", "route 127.0.0.0/8,::1=blocked default=direct",
		"v4", "route ipv4=blocked default=direct",
	)
	for _, a := range []funnel.Addr{
		funnel.MakeAddr("0.0.0.0", p), funnel.MakeAddr("::", p), funnel.MakeAddr("::ffff:127.0.0.1", p),
		{IP: netip.MustParseAddr("::ffff:0.0.0.0"), Port: p},
		{Name: "0", Port: p}, {Name: "127.1", Port: p}, {Name: "0x7f.1", Port: p}, {Name: "2130706433", Port: p},
		{Name: "0.0.0.0", Port: p}, {Name: "localhost", Port: p}, {Name: "app.localhost.", Port: p},
	} {
		_, err := profile("p").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, a))
		if err == nil || !strings.Contains(err.Error(), "loopback is routed here") {
			t.Errorf("%q/%v: %v, want it routed to blocked", a.Name, a.IP, err)
		}
		_, err = profile("p").DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, a))
		if err == nil || !strings.Contains(err.Error(), "loopback is routed here") {
			t.Errorf("udp %q/%v: %v, want it routed to blocked", a.Name, a.IP, err)
		}
	}
	// A numeric name is an IPv4 address for ipv4 too; localhost is a
	// name the application gave, not an address it asked for.
	for name, blocked := range map[string]bool{"127.1": true, "0": true, "localhost": false} {
		c, err := profile("v4").DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.Addr{Name: name, Port: p}))
		if got := err != nil && strings.Contains(err.Error(), "loopback is routed here"); got != blocked {
			t.Errorf("route ipv4=blocked with the name %q: %v", name, err)
		}
		if err == nil {
			testutil.EchoOnce(t, c, "by default\n") // localhost went to direct
			c.Close()
		}
	}
}

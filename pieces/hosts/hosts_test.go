package hosts_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	"github.com/funtun/funtun/pieces/hosts"
)

// probe ends a chain by refusing every flow with the destination it was
// given, so tests can see what hosts passed down without any resolver
// (and so without any DNS query leaving the machine).
type probe struct{}

func (probe) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}, {App: funnel.Dgram, Net: funnel.Kernel}}
}
func (probe) DialStream(_ context.Context, f *funnel.Flow, _ funnel.Next) (net.Conn, error) {
	return nil, funnel.Errorf(funnel.KindGeneral, "probe saw %s name=%v", f.Dest, f.Dest.IsName())
}
func (probe) DialDgram(_ context.Context, f *funnel.Flow, _ funnel.Next) (funnel.DgramConn, error) {
	return nil, funnel.Errorf(funnel.KindGeneral, "probe saw %s name=%v", f.Dest, f.Dest.IsName())
}

func init() {
	funnel.Register(funnel.PieceInfo{Name: "hoststestprobe", New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) { return probe{}, nil }})
}

func chain(t *testing.T, text string) (*funnel.Pipeline, error) {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
	if err != nil {
		return nil, err
	}
	pl, _ := set.Profile("p")
	return pl, nil
}

func mustChain(t *testing.T, text string) *funnel.Pipeline {
	t.Helper()
	pl, err := chain(t, text)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func dial(t *testing.T, pl *funnel.Pipeline, host string, port int) (net.Conn, error) {
	t.Helper()
	return pl.DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(host, uint16(port))))
}

func probeSaw(t *testing.T, pl *funnel.Pipeline, host string, want string) {
	t.Helper()
	_, err := dial(t, pl, host, 80)
	if err == nil || !strings.Contains(err.Error(), "probe saw "+want) {
		t.Errorf("%s: got %v, want the next piece to see %s", host, err, want)
	}
}

func TestLookup(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts")
	os.WriteFile(file, []byte(`# a comment line
127.0.0.2   fromfile.test alias.test   # trailing comment
127.0.0.3   fromfile.test
::2         demo.test
10.9.9.9    *.wild.test
`), 0o644)
	pl := mustChain(t, "hosts file="+file+" demo.test=127.0.0.1 Other.Test=::1 *.corp.test=10.1.2.3 *.deep.corp.test=10.4.5.6 exact.corp.test=10.7.8.9 | hoststestprobe")
	h := pl.Pieces()[0].(*hosts.Hosts)
	tests := []struct{ name, want string }{
		{"demo.test", "127.0.0.1"}, // the profile wins over the file
		{"DEMO.test.", "127.0.0.1"},
		{"other.test", "::1"},
		{"a.corp.test", "10.1.2.3"},
		{"a.b.corp.test", "10.1.2.3"},
		{"x.deep.corp.test", "10.4.5.6"}, // the closest wildcard wins
		{"exact.corp.test", "10.7.8.9"},  // an exact name beats a wildcard
		{"fromfile.test", "127.0.0.2"},   // the file's first line for a name wins
		{"alias.test", "127.0.0.2"},
		{"x.wild.test", "10.9.9.9"},
		{"corp.test", ""}, // *.corp.test is for names under it only
		{"wild.test", ""},
		{"unknown.test", ""},
		{"", ""},
	}
	for _, tc := range tests {
		ip, ok := h.Lookup(tc.name)
		got := ""
		if ok {
			got = ip.String()
		}
		if got != tc.want {
			t.Errorf("Lookup(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}

	// What reaches the next piece: the address with the port kept, or the
	// name untouched when hosts does not know it.
	probeSaw(t, pl, "a.corp.test", "10.1.2.3:80 name=false")
	probeSaw(t, pl, "unknown.test", "unknown.test:80 name=true")
	probeSaw(t, pl, "192.0.2.7", "192.0.2.7:80 name=false")
}

func TestReachesEchoServerByName(t *testing.T) {
	echo := testutil.EchoServer(t)
	port := echo.(*net.TCPAddr).Port
	pl := mustChain(t, "hosts demo.test=127.0.0.1")
	c, err := dial(t, pl, "demo.test", port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("hosts handed back a %T, want the *net.TCPConn direct made (splice fast path)", c)
	}
	if got := c.RemoteAddr().String(); got != echo.String() {
		t.Errorf("connected to %s, want %s", got, echo)
	}
	testutil.EchoOnce(t, c, "hello demo.test\n")
}

func TestReachesIPv6EchoServerByName(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	pl := mustChain(t, "hosts *.v6.test=::1")
	c, err := dial(t, pl, "www.v6.test", l.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testutil.EchoOnce(t, c, "hello demo.test\n")
}

func TestDatagramsByName(t *testing.T) {
	uecho := testutil.UDPEchoServer(t)
	pl := mustChain(t, "hosts demo.test=127.0.0.1")
	dc, err := pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("demo.test", uint16(uecho.Port))))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, ok := dc.(*funnel.UDPConn); !ok {
		t.Errorf("hosts handed back a %T, want direct's *funnel.UDPConn", dc)
	}
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), "ping"))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	back, err := dc.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer back.Release()
	if string(back.Bytes()) != "ping" {
		t.Errorf("datagram came back as %q", back.Bytes())
	}
}

func TestStrict(t *testing.T) {
	echo := testutil.EchoServer(t)
	port := echo.(*net.TCPAddr).Port
	pl := mustChain(t, "hosts strict=true demo.test=127.0.0.1")
	_, err := dial(t, pl, "unknown.test", port)
	if k := funnel.Classify(err); k != funnel.KindHostUnreachable {
		t.Fatalf("unknown name gave %v (%v), want host unreachable", err, k)
	}
	if !strings.Contains(err.Error(), "unknown.test is not a known name") {
		t.Errorf("error %q does not name the host", err)
	}
	_, err = pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("unknown.test", 53)))
	if k := funnel.Classify(err); k != funnel.KindHostUnreachable {
		t.Fatalf("unknown name over UDP gave %v, want host unreachable", err)
	}
	// strict is about names: addresses still pass.
	c, err := dial(t, pl, "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "hello demo.test\n")
	c.Close()
	c, err = dial(t, pl, "demo.test", port)
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "hello demo.test\n")
	c.Close()
}

func TestCompileErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(bad, []byte("127.0.0.1 ok.test\n\n300.1.1.1 broken.test\n"), 0o644)
	tests := []struct{ text, want string }{
		{"hosts", `p.profile:1:1: piece "hosts": knows no names`},
		{"hosts demo.test=1.2.3", `p.profile:1:17: piece "hosts": demo.test: "1.2.3" is not an IP address`},
		{"hosts stict=true", `p.profile:1:13: piece "hosts": stict: "true" is not an IP address (names are given as NAME=IP; the other parameters are file= and strict=)`},
		{"hosts\n  a.test=::1\n  a.test=::2", `p.profile:3:3: piece "hosts": a.test is given an address twice`},
		{"hosts bad/name=::1", `p.profile:1:7: piece "hosts": "bad/name" is not a host name`},
		{"hosts strict=perhaps a.test=::1", `p.profile:1:14: piece "hosts": strict: "perhaps" is not true or false`},
		{"hosts file=/nonexistent/hosts", `p.profile:1:12: piece "hosts": file: open /nonexistent/hosts: no such file or directory`},
		{"hosts file=" + bad, `p.profile:1:12: piece "hosts": file: ` + bad + `:3: "300.1.1.1" is not an IP address`},
	}
	for _, tc := range tests {
		_, err := chain(t, tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("compiling %q: got %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestLookupAllocatesNothing(t *testing.T) {
	pl := mustChain(t, "hosts *.corp.test=10.1.2.3 | hoststestprobe")
	h := pl.Pieces()[0].(*hosts.Hosts)
	if n := testing.AllocsPerRun(100, func() { h.Lookup("a.b.c.corp.test") }); n != 0 {
		t.Errorf("Lookup allocates %v times per call", n)
	}
}

// TestForwardCurl runs the real binary: curl reaches a local HTTP server
// through `funtun forward --to demo.test:PORT`, a name only hosts knows.
func TestForwardCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	funtun := testutil.Funtun(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hello demo.test\n"), 0o644)
	srvPort := strconv.Itoa(testutil.FreePort(t))
	testutil.StartDaemon(t, "python3", "-m", "http.server", srvPort, "--bind", "127.0.0.1", "--directory", dir)
	testutil.WaitListen(t, "127.0.0.1:"+srvPort)

	_, env := testutil.ProfileDir(t)
	listen := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	fwd := exec.Command(funtun, "--debug", "forward", "--listen", listen, "--to", "demo.test:"+srvPort, "chain=hosts demo.test=127.0.0.1")
	fwd.Env = env
	var logs syncBuffer
	fwd.Stdout, fwd.Stderr = &logs, &logs
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- fwd.Wait() }()
	t.Cleanup(func() {
		fwd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("funtun log:\n%s", logs.String())
		}
	})
	// Wait for the listener, but fail at once if funtun exits instead (a
	// chain it cannot compile, say).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("funtun exited before listening: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", listen, 200*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("funtun does not listen on %s after 10s", listen)
		}
	}

	out, err := exec.Command(curl, "-sS", "--max-time", "10", "http://"+listen+"/index.html").CombinedOutput()
	if err != nil || string(out) != "hello demo.test\n" {
		t.Fatalf("curl: %v: %q", err, out)
	}
	// The debug line proves the name went through hosts, not the system.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "name=demo.test addr=127.0.0.1") {
		if time.Now().After(deadline) {
			t.Fatalf("no hosts debug line in the log")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestFilePaths(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "lab.hosts"), []byte("127.0.0.9 lab.test\n"), 0o644)
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, "my.hosts"), []byte("127.0.0.8 home.test\n"), 0o644)
	t.Setenv("HOME", home)

	// A relative path is read beside the profile file that names it.
	profile := filepath.Join(dir, "lab.profile")
	set, err := funnel.CompileSet([]funnel.Source{{Name: "lab", Origin: profile, Text: "hosts file=lab.hosts file=~/my.hosts | hoststestprobe"}})
	if err != nil {
		t.Fatal(err)
	}
	pl, _ := set.Profile("lab")
	probeSaw(t, pl, "lab.test", "127.0.0.9:80")
	probeSaw(t, pl, "home.test", "127.0.0.8:80")
}

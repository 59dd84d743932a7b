package sdactivate

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The test binary doubles as the activated program: started (by
// systemd-socket-activate, the real thing) with SDACTIVATE_CHILD set, it
// takes its sockets, prints what it got as one JSON line, and then answers
// one client on each socket with the socket's name.

type childSocket struct {
	Name, Net, Addr string
	FD              int
	Stream, Dgram   bool
	FileFD          int
}

type childReport struct {
	Sockets   []childSocket
	TakeError string
	Again     bool // a second Take returned the very same sockets
	EnvLeft   []string
	Picks     map[string]string // spec -> "fd N" / "not fd:" / error text
}

func TestMain(m *testing.M) {
	if os.Getenv("SDACTIVATE_CHILD") != "" {
		os.Exit(activatedChild())
	}
	os.Exit(m.Run())
}

func activatedChild() int {
	var r childReport
	sockets, err := Take()
	if err != nil {
		r.TakeError = err.Error()
	}
	again, _ := Take()
	r.Again = len(again) == len(sockets) && (len(sockets) == 0 || &again[0] == &sockets[0])
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, set := os.LookupEnv(v); set {
			r.EnvLeft = append(r.EnvLeft, v)
		}
	}
	for _, s := range sockets {
		r.Sockets = append(r.Sockets, childSocket{
			Name: s.Name, FD: s.FD, Net: s.Addr().Network(), Addr: s.Addr().String(),
			Stream: s.Listener != nil, Dgram: s.Packet != nil, FileFD: int(s.File.Fd()),
		})
	}
	r.Picks = map[string]string{}
	for _, spec := range strings.Fields(os.Getenv("SDACTIVATE_PICK")) {
		switch s, ok, err := Pick(spec); {
		case err != nil:
			r.Picks[spec] = "error: " + err.Error()
		case !ok:
			r.Picks[spec] = "not fd:"
		default:
			r.Picks[spec] = "fd " + strconv.Itoa(s.FD)
		}
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	done := make(chan struct{}, len(sockets))
	for _, s := range sockets {
		go func() {
			defer func() { done <- struct{}{} }()
			if s.Listener != nil {
				c, err := s.Listener.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(s.Name))
				c.Close()
				return
			}
			buf := make([]byte, 512)
			_, from, err := s.Packet.ReadFrom(buf)
			if err != nil {
				return
			}
			s.Packet.WriteTo([]byte(s.Name), from)
		}()
	}
	timeout := time.After(30 * time.Second)
	for range sockets {
		select {
		case <-done:
		case <-timeout:
			return 1
		}
	}
	return 0
}

// startActivated runs the test binary under systemd-socket-activate with
// these options and returns its report. systemd-socket-activate starts
// the program at the first client, so trigger is one (run while the
// report is awaited).
func startActivated(t *testing.T, picks string, trigger func(), ssaArgs ...string) childReport {
	t.Helper()
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	args := append(ssaArgs, "-E", "SDACTIVATE_CHILD=1", "-E", "SDACTIVATE_PICK="+picks, os.Args[0], "-test.run=^$")
	return runChild(t, exec.Command(ssa, args...), trigger)
}

func runChild(t *testing.T, cmd *exec.Cmd, trigger func()) childReport {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testutil.LogBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child's stderr:\n%s", stderr)
		}
	})
	triggered := make(chan struct{})
	go func() {
		defer close(triggered)
		if trigger != nil {
			trigger()
		}
	}()
	type result struct {
		line string
		err  error
	}
	lines := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		lines <- result{line, err}
	}()
	var got result
	select {
	case got = <-lines:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		got = <-lines
	}
	<-triggered
	if got.err != nil {
		t.Fatalf("no report from the activated child: %v", got.err)
	}
	var r childReport
	if err := json.Unmarshal([]byte(got.line), &r); err != nil {
		t.Fatalf("report %q: %v", got.line, err)
	}
	return r
}

// answers connects to each socket and returns what the child answered,
// waiting for systemd-socket-activate to listen first.
func answers(t *testing.T, got map[string]string, socks ...[2]string) func() {
	return func() {
		for _, s := range socks {
			got[s[1]] = readAll(t, s[0], s[1])
		}
	}
}

// Stream (TCP and Unix) and datagram sockets come with their names in
// order from fd 3, usable, with the File kept for children; the variables
// are gone and a second Take gives the same sockets.
func TestTakeStreamAndDatagramSockets(t *testing.T) {
	tcp := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	unixPath := filepath.Join(t.TempDir(), "s.sock")
	got := map[string]string{}
	r := startActivated(t, "", answers(t, got, [2]string{"tcp", tcp}, [2]string{"unix", unixPath}),
		"-l", tcp, "-l", unixPath, "--fdname=web:local")
	if r.TakeError != "" {
		t.Fatalf("Take: %s", r.TakeError)
	}
	want := []childSocket{
		{Name: "web", FD: 3, Net: "tcp", Addr: tcp, Stream: true, FileFD: 3},
		{Name: "local", FD: 4, Net: "unix", Addr: unixPath, Stream: true, FileFD: 4},
	}
	if fmt.Sprint(r.Sockets) != fmt.Sprint(want) {
		t.Fatalf("sockets\n got %+v\nwant %+v", r.Sockets, want)
	}
	if len(r.EnvLeft) > 0 || !r.Again {
		t.Errorf("variables left %v; second Take the same: %v", r.EnvLeft, r.Again)
	}
	if got[tcp] != "web" || got[unixPath] != "local" {
		t.Errorf("answers %q", got)
	}

	udp := "127.0.0.1:" + strconv.Itoa(freeUDPPort(t))
	answer := make(chan string, 1)
	r = startActivated(t, "fd:dns fd:3", func() { answer <- askUDP(t, udp) }, "--datagram", "-l", udp, "--fdname=dns")
	if r.TakeError != "" || len(r.Sockets) != 1 || !r.Sockets[0].Dgram || r.Sockets[0].Stream || r.Sockets[0].Net != "udp" {
		t.Fatalf("datagram socket: %+v", r)
	}
	if r.Picks["fd:dns"] != "fd 3" || r.Picks["fd:3"] != "fd 3" {
		t.Errorf("picks %v", r.Picks)
	}
	if a := <-answer; a != "dns" {
		t.Errorf("datagram answer %q", a)
	}
}

// askUDP sends datagrams until one is answered: the first may arrive
// before anyone reads, and systemd-socket-activate starts the program on
// it, so it is not lost, but a test should not count on one datagram.
func askUDP(t *testing.T, addr string) string {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Error(err)
		return ""
	}
	// Unconnected, so that an ICMP error from before the socket existed
	// does not stick to it.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Error(err)
		return ""
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range 30 {
		c.WriteTo([]byte("who?"), to)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFrom(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	return "no answer"
}

// Pick: by name, by number, ordinary addresses untouched; a wrong name
// lists what was passed; a name two sockets share is refused by Pick.
func TestPick(t *testing.T) {
	a := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	b := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	c := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	got := map[string]string{}
	r := startActivated(t, "fd:socks fd:admin fd:4 fd:5 fd:9 fd:nope fd: 127.0.0.1:1080 :8080",
		answers(t, got, [2]string{"tcp", a}, [2]string{"tcp", b}, [2]string{"tcp", c}),
		"-l", a, "-l", b, "-l", c, "--fdname=admin:socks:socks")
	want := map[string]string{
		"fd:admin":       "fd 3",
		"fd:4":           "fd 4",
		"fd:5":           "fd 5",
		"127.0.0.1:1080": "not fd:",
		":8080":          "not fd:",
	}
	for spec, w := range want {
		if r.Picks[spec] != w {
			t.Errorf("Pick(%q) = %q, want %q", spec, r.Picks[spec], w)
		}
	}
	for spec, parts := range map[string][]string{
		"fd:socks": {"--listen fd:socks", `2 passed sockets are named "socks"`, "fd 4, 5", "FileDescriptorName="},
		"fd:nope":  {"--listen fd:nope", "no passed socket has that name", "passed: admin (fd 3), socks (fd 4, 5)"},
		"fd:9":     {"--listen fd:9", "passed: admin (fd 3), socks (fd 4, 5)"},
		"fd:":      {"name or descriptor number must follow fd:"},
	} {
		for _, p := range parts {
			if !strings.Contains(r.Picks[spec], p) {
				t.Errorf("Pick(%q) = %q, lacks %q", spec, r.Picks[spec], p)
			}
		}
	}
	if got[a] != "admin" || got[b] != "socks" || got[c] != "socks" {
		t.Errorf("answers %q", got)
	}
}

// Without sockets, fd: values say that nothing was passed.
func TestPickWithoutActivation(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SDACTIVATE_CHILD=1", "SDACTIVATE_PICK=fd:socks 127.0.0.1:1", "LISTEN_FDS=1", "LISTEN_PID=1")
	r := runChild(t, cmd, nil)
	if r.TakeError != "" || len(r.Sockets) != 0 {
		t.Fatalf("LISTEN_PID of another process: %+v", r)
	}
	if !strings.Contains(r.Picks["fd:socks"], "no sockets were passed to funtun") || r.Picks["127.0.0.1:1"] != "not fd:" {
		t.Errorf("picks %v", r.Picks)
	}
	if len(r.EnvLeft) > 0 {
		t.Errorf("variables meant for another process stay: %v", r.EnvLeft)
	}
}

// Sockets funtun cannot serve are errors naming the descriptor, its name
// and the .socket setting to use.
func TestTakeRefusesOtherSockets(t *testing.T) {
	t.Run("seqpacket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sp.sock")
		r := startActivated(t, "", func() {
			if c, err := dialRetry("unixpacket", path); err == nil {
				c.Close()
			}
		}, "--seqpacket", "-l", path, "--fdname=pkt")
		wantError(t, r, "passed fd 3 (pkt) is neither a listening stream socket nor a datagram socket", "ListenStream= or ListenDatagram=")
	})
	t.Run("accept=yes", func(t *testing.T) {
		addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
		r := startActivated(t, "", func() {
			if c, err := dialRetry("tcp", addr); err == nil {
				defer c.Close()
			}
		}, "--accept", "-l", addr, "--fdname=conn")
		wantError(t, r, "passed fd 3 (conn) is a connected stream socket", "Accept=no")
	})
	t.Run("pipe", func(t *testing.T) {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pw.Close()
		// sh puts its own pid in LISTEN_PID and execs, as a service
		// manager does; systemd-socket-activate cannot pass a pipe.
		cmd := exec.Command("sh", "-c", `export LISTEN_PID=$$; exec "$0" -test.run='^$'`, os.Args[0])
		cmd.Env = append(os.Environ(), "SDACTIVATE_CHILD=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=fifo")
		cmd.ExtraFiles = []*os.File{pr}
		r := runChild(t, cmd, nil)
		pr.Close()
		wantError(t, r, "passed fd 3 (fifo) is neither a listening stream socket nor a datagram socket", "not ListenFIFO=")
	})
}

func wantError(t *testing.T, r childReport, parts ...string) {
	t.Helper()
	if len(r.Sockets) != 0 {
		t.Errorf("sockets returned beside the error: %+v", r.Sockets)
	}
	for _, p := range parts {
		if !strings.Contains(r.TakeError, p) {
			t.Errorf("Take error %q lacks %q", r.TakeError, p)
		}
	}
}

// dialRetry waits for systemd-socket-activate to listen.
func dialRetry(network, addr string) (net.Conn, error) {
	var err error
	for range 100 {
		var c net.Conn
		if c, err = net.DialTimeout(network, addr, 10*time.Second); err == nil {
			return c, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

func readAll(t *testing.T, network, addr string) string {
	c, err := dialRetry(network, addr)
	if err != nil {
		t.Error(err)
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// Notify sends each state as one datagram to NOTIFY_SOCKET, a path or an
// abstract name, and is silent without it.
func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Errorf("Ready without NOTIFY_SOCKET: %v", err)
	}
	abstract := "@funtun-sdactivate-test-" + strconv.Itoa(os.Getpid())
	if runtime.GOOS != "linux" {
		abstract = filepath.Join(t.TempDir(), "notify2")
	}
	for i, name := range []string{filepath.Join(t.TempDir(), "notify"), abstract} {
		t.Run(name[:1], func(t *testing.T) {
			sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			t.Setenv("NOTIFY_SOCKET", name)
			// STOPPING=1 is said once per process: the second round
			// sends nothing for it.
			for _, send := range []func() error{Ready, Reloading, Stopping, func() error { return Notify("STATUS=busy") }} {
				if err := send(); err != nil {
					t.Fatal(err)
				}
			}
			want := []string{"READY=1", "RELOADING=1\nMONOTONIC_USEC=", "STOPPING=1", "STATUS=busy"}
			if i > 0 {
				want = []string{"READY=1", "RELOADING=1\nMONOTONIC_USEC=", "STATUS=busy"}
			}
			buf := make([]byte, 512)
			sock.SetReadDeadline(time.Now().Add(10 * time.Second))
			for _, w := range want {
				n, err := sock.Read(buf)
				if err != nil {
					t.Fatal(err)
				}
				if got := string(buf[:n]); !strings.HasPrefix(got, w) || (!strings.HasSuffix(w, "=") && got != w) {
					t.Errorf("message %q, want %q", got, w)
				}
			}
		})
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	if err := Ready(); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET="+os.Getenv("NOTIFY_SOCKET")) {
		t.Errorf("Ready to a missing socket: %v", err)
	}
}

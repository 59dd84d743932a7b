package socks5d

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/socks5wire"
	"github.com/funtun/funtun/internal/testutil"
	// The built-in profiles (6bed4) need every piece to compile.
	_ "github.com/funtun/funtun/pieces/all"
	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/rewrite"
	builtin "github.com/funtun/funtun/profiles"
	"golang.org/x/crypto/bcrypt"
)

// The chain every real-client test goes through: it visibly acts on the
// bytes (the server says "hello", the client reads "HOWDY"), and it gives
// demo.test an address that exists only inside the funnel, so a client
// that reaches demo.test proves the name travelled unresolved.
const actingChain = "rewrite from=hello to=HOWDY | hosts demo.test=127.0.0.1 strict=true"

const (
	serverSays = "hello from the test server\n"
	clientSees = "HOWDY from the test server\n"
)

func TestMain(m *testing.M) {
	hashCost = bcrypt.MinCost
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// funtunBin builds the funtun binary once per test run, for the tests that
// run it as a user would.
func funtunBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "funtun-socks5d-test")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "funtun")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/funtun/funtun/cmd/funtun").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// testEngine is an engine whose profiles are only the given ones.
func testEngine(t testing.TB, profiles map[string]string) *funnel.Engine {
	t.Helper()
	dir := t.TempDir()
	for name, text := range profiles {
		if err := os.WriteFile(filepath.Join(dir, name+funnel.ProfileExt), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{dir}, Builtins: builtin.Builtin}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// testLogger sends log lines to the test's log, shown when it fails.
// Lines written after the test ended are dropped (testing would panic).
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// startServer serves on a fresh loopback port until the test ends.
func startServer(t testing.TB, s *Server, network string) string {
	t.Helper()
	if s.Log == nil {
		s.Log = testLogger(t)
	}
	host := "127.0.0.1:0"
	if network == "tcp6" {
		host = "[::1]:0"
	}
	l, err := net.Listen(network, host)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, l)
	return l.Addr().String()
}

// serveOn serves s on l until the test ends.
func serveOn(t testing.TB, s *Server, l net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return within 10s of its context ending")
		}
	})
}

// simpleServer is a socks5d with the acting chain and no authentication.
func simpleServer(t testing.TB) string {
	eng := testEngine(t, nil)
	return startServer(t, &Server{Engine: eng, Selector: funnel.Selector{Chain: actingChain}}, "tcp")
}

// helloServer is an HTTP server on loopback whose every answer is
// serverSays.
func helloServer(t testing.TB) *net.TCPAddr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, serverSays)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr)
}

// closedPort is a loopback port where nothing listens.
func closedPort(t testing.TB) int {
	return testutil.FreePort(t)
}

// runTool runs a client program with a bound on its time.
func runTool(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runToolInput(t, env, "", name, args...)
}

// runToolInput is runTool with the given text on the program's stdin.
func runToolInput(t *testing.T, env []string, input, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Stdin = strings.NewReader(input)
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s: %v", name, err)
		}
		code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within 30s; stderr: %s", name, args, e.String())
	}
	return o.String(), e.String(), code
}

// rawClient speaks SOCKS5 by hand, for what no client program sends.
type rawClient struct {
	t testing.TB
	c net.Conn
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c}
}

func (r *rawClient) send(b ...byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawClient) expect(want ...byte) {
	r.t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r.c, got); err != nil {
		r.t.Fatalf("reading %d bytes (want % x): %v", len(want), want, err)
	}
	if !bytes.Equal(got, want) {
		r.t.Fatalf("server sent % x, want % x", got, want)
	}
}

// noAuth runs the greeting with method 0.
func (r *rawClient) noAuth() {
	r.t.Helper()
	r.send(5, 1, 0)
	r.expect(5, 0)
}

// readReply reads a full reply and returns its code and bound address.
func (r *rawClient) readReply() (byte, netip.AddrPort) {
	r.t.Helper()
	h := make([]byte, 4)
	if _, err := io.ReadFull(r.c, h); err != nil {
		r.t.Fatalf("reading the reply: %v", err)
	}
	if h[0] != 5 || h[2] != 0 {
		r.t.Fatalf("reply starts % x: want version 5 and RSV 0", h)
	}
	var ip netip.Addr
	switch h[3] {
	case 1:
		b := make([]byte, 4)
		io.ReadFull(r.c, b)
		ip = netip.AddrFrom4([4]byte(b))
	case 4:
		b := make([]byte, 16)
		io.ReadFull(r.c, b)
		ip = netip.AddrFrom16([16]byte(b))
	default:
		r.t.Fatalf("reply has ATYP %d", h[3])
	}
	p := make([]byte, 2)
	if _, err := io.ReadFull(r.c, p); err != nil {
		r.t.Fatal(err)
	}
	return h[1], netip.AddrPortFrom(ip, binary.BigEndian.Uint16(p))
}

// expectClosed waits (bounded) for the server to close the connection
// without sending anything more.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [16]byte
	n, err := r.c.Read(b[:])
	if n > 0 {
		r.t.Fatalf("server sent % x, want a close", b[:n])
	}
	if err == nil || isTimeout(err) {
		r.t.Fatalf("connection still open after 10s (err %v), want a close", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func connectReq(a netip.AddrPort) []byte {
	b := []byte{5, 1, 0}
	return socks5wire.AppendAddrPort(b, a)
}

func nameReq(cmd byte, name string, port uint16) []byte {
	b := []byte{5, cmd, 0, 3, byte(len(name))}
	b = append(b, name...)
	return binary.BigEndian.AppendUint16(b, port)
}

// waitGoroutines waits (bounded) for the goroutine count to fall to want.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines 10s later, want at most %d:\n%s", n, want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeUsers(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	for _, l := range lines {
		user, rest, _ := strings.Cut(l, ":")
		pass, profile, _ := strings.Cut(rest, ":")
		if _, err := AddUser(path, user, pass, profile); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func mustLoadUsers(t testing.TB, path string) *Users {
	t.Helper()
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

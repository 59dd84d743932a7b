//go:build linux

package preload

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"

	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/hosts"
	_ "github.com/funtun/funtun/pieces/rewrite"
)

// built holds what TestMain builds once: the funtun binary, the library
// (with -Werror: the C must stay -Wall -Wextra clean) and the C test client,
// all in one directory, as in the build tree.
var built struct {
	dir, funtun, lib, client string
	err                      error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "funtun-preload-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	built.dir = dir
	built.err = buildAll(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

func buildAll(dir string) error {
	if _, err := exec.LookPath("cc"); err != nil {
		return fmt.Errorf("cc is not installed: %v", err)
	}
	root := moduleRoot()
	built.funtun = filepath.Join(dir, "funtun")
	built.lib = filepath.Join(dir, "libfuntun.so")
	built.client = filepath.Join(dir, "ftclient")
	sources, _ := filepath.Glob(filepath.Join(root, "preload", "*.c"))
	steps := [][]string{
		{"go", "build", "-o", built.funtun, "./cmd/funtun"},
		append(append([]string{"cc", "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o", built.lib}, sources...), "-ldl", "-lpthread"),
		{"cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", built.client, filepath.Join(root, "preload", "test", "ftclient.c"), "-lpthread"},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

func needBuild(t testing.TB) {
	t.Helper()
	testutil.NeedTool(t, "cc")
	if built.err != nil {
		t.Fatalf("building the binary, library and test client: %v", built.err)
	}
}

// testFunnel is a funnel served from the test process, with the pieces
// the test imports; programs reach it through the library.
type testFunnel struct {
	sock string
	log  *testutil.LogBuffer
	srv  *Server
	stop func() // returns once no request is answered any more
}

func startFunnel(t *testing.T, chain string) *testFunnel {
	t.Helper()
	needBuild(t)
	logs := &testutil.LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cat := &funnel.Catalog{Builtins: fstest.MapFS{"t.profile": {Data: []byte(chain)}}}
	eng, err := funnel.NewEngine(cat, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(eng, funnel.Selector{Profile: "t"})
	// Not t.TempDir: a socket path must stay short (108 bytes).
	dir, err := os.MkdirTemp("", "ftsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "control")
	l, err := srv.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		srv.Serve(ctx, l)
		close(done)
	}()
	stop := func() {
		cancel()
		<-done
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("funnel log:\n%s", logs.String())
		}
	})
	return &testFunnel{sock: sock, log: logs, srv: srv, stop: stop}
}

// cleanEnv is the test's environment without proxies or an earlier hook.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "ld_preload", "funtun_socket", "funtun_preload", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// hooked runs a program with the library and this funnel's socket.
func (ft *testFunnel) hooked(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cleanEnv(), "LD_PRELOAD="+built.lib, "FUNTUN_SOCKET="+ft.sock)
	return cmd
}

// run runs cmd with a time bound and returns its stdout and stderr.
func run(t *testing.T, cmd *exec.Cmd, stdin string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// python3 is the system's interpreter, not a version manager's shim.
func python(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return testutil.NeedTool(t, "python3")
}

// acceptLog is an echo server that remembers who connected, to tell a
// handed-off socket (the program's own address) from a relayed one.
type acceptLog struct {
	net.Listener
	mu      sync.Mutex
	remotes []string
}

func echoWithLog(t *testing.T) *acceptLog {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptLog{Listener: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.remotes = append(a.remotes, c.RemoteAddr().String())
			a.mu.Unlock()
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return a
}

func (a *acceptLog) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.remotes...)
}

func (a *acceptLog) port() int { return a.Addr().(*net.TCPAddr).Port }

// exec2 runs an unhooked program with a time bound.
func exec2(t *testing.T, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctxFor(t, 30*time.Second), name, args...)
	cmd.Env = cleanEnv()
	return cmd
}

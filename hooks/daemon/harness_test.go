//go:build linux

package daemon

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// built holds what TestMain builds once, as `make build` does: the funtun
// binary, libfuntun.so (the preload library), libfuntun-api (shared and
// static, the hooks renamed for link-in mode) and the C examples — with
// -Werror, so the C stays -Wall -Wextra clean in both builds.
var built struct {
	dir                      string
	funtun, lib, apiSO, apiA string
	front                    string // the launcher's C front-end
	fetch, serve, httpget    string
	err                      error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "funtun-daemon-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Another user (nobody) runs the examples in the wrong-uid test.
	os.Chmod(dir, 0o755)
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

// wrapFlags is the link-in mode's -Wl,--wrap=… list, read from the header
// that renames the hooks (as the Makefile does).
func wrapFlags(root string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, "preload", "ft_linkin.h"))
	if err != nil {
		return "", err
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^#define ([a-z0-9_]+) __wrap_`).FindAllStringSubmatch(string(data), -1) {
		names = append(names, "--wrap="+m[1])
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no --wrap names in ft_linkin.h")
	}
	return "-Wl," + strings.Join(names, ","), nil
}

func buildAll(dir string) error {
	if _, err := exec.LookPath("cc"); err != nil {
		return fmt.Errorf("cc is not installed: %v", err)
	}
	root := moduleRoot()
	built.funtun = filepath.Join(dir, "funtun")
	built.lib = filepath.Join(dir, "libfuntun.so")
	built.apiSO = filepath.Join(dir, "libfuntun-api.so")
	built.apiA = filepath.Join(dir, "libfuntun-api.a")
	exdir := filepath.Join(dir, "examples")
	os.Mkdir(exdir, 0o755)
	built.fetch = filepath.Join(exdir, "fetch")
	built.serve = filepath.Join(exdir, "serve")
	built.httpget = filepath.Join(exdir, "httpget")
	built.front = filepath.Join(dir, "funtun-front")
	sources, _ := filepath.Glob(filepath.Join(root, "preload", "*.c"))
	wrap, err := wrapFlags(root)
	if err != nil {
		return err
	}
	cflags := []string{"-O2", "-g", "-Wall", "-Wextra", "-Werror"}
	steps := [][]string{
		{"go", "build", "-o", built.funtun, "./cmd/funtun"},
		append(append([]string{"cc"}, cflags...), "-o", built.front, "preload/launch/funtun.c"),
		append(append(append([]string{"cc", "-shared", "-fPIC"}, cflags...), append([]string{"-o", built.lib}, sources...)...), "-ldl", "-lpthread"),
	}
	objdir := filepath.Join(dir, "obj-api")
	os.Mkdir(objdir, 0o755)
	var objs []string
	for _, src := range sources {
		obj := filepath.Join(objdir, strings.TrimSuffix(filepath.Base(src), ".c")+".o")
		objs = append(objs, obj)
		steps = append(steps, append(append([]string{"cc", "-c", "-fPIC"}, cflags...), "-include", "preload/ft_linkin.h", "-o", obj, src))
	}
	steps = append(steps,
		append(append([]string{"cc", "-shared", "-o", built.apiSO}, objs...), "-ldl", "-lpthread"),
		append([]string{"ar", "rcs", built.apiA}, objs...),
		append(append([]string{"cc"}, cflags...), "-Ipreload/include", "-o", built.fetch, "examples/c/fetch.c", "-L"+dir, "-lfuntun-api", "-Wl,-rpath,$ORIGIN/.."),
		append(append([]string{"cc"}, cflags...), "-Ipreload/include", "-o", built.serve, "examples/c/serve.c", "-L"+dir, "-lfuntun-api", "-Wl,-rpath,$ORIGIN/.."),
		append(append([]string{"cc"}, cflags...), "-o", built.httpget, "examples/c/httpget.c", wrap, built.apiA, "-ldl", "-lpthread"),
	)
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
		t.Fatalf("building the binary, the libraries and the examples: %v", built.err)
	}
}

// cleanEnv is the test's environment without proxies, an earlier hook or
// the user's own funtun settings.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "ld_preload", "funtun_socket", "funtun_daemon", "funtun_template", "funtun_preload", "funtun_profile_path",
			"xdg_runtime_dir", "xdg_config_home", "notify_socket", "listen_pid", "listen_fds", "listen_fdnames",
			"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// testDaemon is `funtun daemon` run for one test, with its own runtime
// and configuration directories.
type testDaemon struct {
	dir, run, cfg string
	sock          string
	log           *testutil.LogBuffer
	cmd           *exec.Cmd
	args          []string
	exited        chan struct{}
}

// startDaemon writes the profiles (name → chain) and the programs file and
// starts the daemon; it returns once the daemon serves.
func startDaemon(t testing.TB, profiles map[string]string, programs string, args ...string) *testDaemon {
	t.Helper()
	needBuild(t)
	// Not t.TempDir: the socket's path must stay short (108 bytes).
	dir, err := os.MkdirTemp("", "ftd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &testDaemon{dir: dir, run: filepath.Join(dir, "run"), cfg: filepath.Join(dir, "cfg"), log: &testutil.LogBuffer{}}
	d.sock = filepath.Join(d.run, "funtun", "daemon.sock")
	os.Mkdir(d.run, 0o700)
	for name, chain := range profiles {
		d.writeProfile(t, name, chain)
	}
	d.writePrograms(t, programs)
	d.args = args
	d.start(t)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	return d
}

// start runs the daemon and returns once it serves.
func (d *testDaemon) start(t testing.TB) {
	t.Helper()
	d.cmd = exec.Command(built.funtun, append([]string{"--debug", "daemon"}, d.args...)...)
	d.cmd.Env = append(cleanEnv(), "XDG_RUNTIME_DIR="+d.run, "XDG_CONFIG_HOME="+d.cfg)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	n := strings.Count(d.log.String(), "daemon serving")
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(d.cmd, d.exited)
	d.waitLog(t, "daemon serving", n+1, d.exited)
}

// stop ends the daemon (SIGTERM) and waits for it.
func (d *testDaemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *testDaemon) writeProfile(t testing.TB, name, chain string) {
	t.Helper()
	pdir := filepath.Join(d.cfg, "funtun", "profiles")
	os.MkdirAll(pdir, 0o755)
	if err := os.WriteFile(filepath.Join(pdir, name+".profile"), []byte(chain+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *testDaemon) writePrograms(t testing.TB, programs string) {
	t.Helper()
	os.MkdirAll(filepath.Join(d.cfg, "funtun"), 0o755)
	if err := os.WriteFile(filepath.Join(d.cfg, "funtun", "programs"), []byte(programs), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until the log holds text n times (or the daemon exits).
func (d *testDaemon) waitLog(t testing.TB, text string, n int, exited <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(d.log.String(), text) < n {
		select {
		case <-exited:
			t.Fatalf("the daemon exited before %q:\n%s", text, d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q (×%d) in the daemon's log after 15s:\n%s", text, n, d.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reload sends SIGHUP and waits until the reload is done.
func (d *testDaemon) reload(t testing.TB) {
	t.Helper()
	n := strings.Count(d.log.String(), "profiles reloaded") + strings.Count(d.log.String(), "reload failed")
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(d.log.String(), "profiles reloaded")+strings.Count(d.log.String(), "reload failed") <= n {
		if time.Now().After(deadline) {
			t.Fatalf("no reload in the log after SIGHUP:\n%s", d.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// clientEnv is what a program of the daemon's user has: the same runtime
// directory, nothing else of funtun's.
func (d *testDaemon) clientEnv(extra ...string) []string {
	return append(append(cleanEnv(), "XDG_RUNTIME_DIR="+d.run), extra...)
}

// runProgram runs a program with a time bound; stdout, stderr and the error.
func runProgram(t testing.TB, env []string, stdin string, name string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), errb.String(), err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish within 60s; stdout %q stderr %q", name, args, out.String(), errb.String())
	}
	return "", "", nil
}

// lineEcho answers the first line of each connection with "echo: LINE"
// and closes it.
func lineEcho(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil && err != io.EOF {
			return
		}
		io.WriteString(c, "echo: "+line)
	})
	return l.Addr().(*net.TCPAddr).Port
}

// webServer serves body at / on loopback and records who connected.
func webServer(t *testing.T, body string) (port int, peers chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers = make(chan string, 64)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case peers <- r.RemoteAddr:
		default:
		}
		io.WriteString(w, body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port, peers
}

// activatedDaemon runs the daemon under systemd-socket-activate, which
// stands in for the user's systemd and funtun-daemon.socket (a
// sequenced-packet socket at sock, passed as fd 3), with env (KEY=VALUE)
// for the daemon; it returns once the socket exists, the daemon not yet
// started, and stops both at the test's end.
func activatedDaemon(t *testing.T, sock string, env ...string) *testutil.LogBuffer {
	t.Helper()
	activate := testutil.NeedTool(t, "systemd-socket-activate")
	args := []string{"--seqpacket", "-l", sock}
	for _, kv := range env {
		args = append(args, "-E", kv)
	}
	log := &testutil.LogBuffer{}
	cmd := exec.Command(activate, append(args, built.funtun, "--debug", "daemon")...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-socket-activate made no socket:\n%s", log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

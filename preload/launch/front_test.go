//go:build linux

// The launcher's C front-end (funtun.c), run as users run it: the real
// front-end and funtun-core, a real daemon's socket served by a fake
// daemon written here, real programs (sh, python3) exec'ed under it.
package launch_test

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/internal/testutil"
)

// builtDir holds a front-end, core and library built by this test binary
// when the test command gave none (no FUNTUN_BIN); removed in TestMain.
var builtDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

type binaries struct {
	front, core string
}

var (
	buildOnce sync.Once
	built     binaries
	buildErr  error
)

// bins returns the front-end and the core beside it: the test command's
// ($FUNTUN_BIN, the Makefile's bin/), else built here the way the
// Makefile builds them, so that the core finds libfuntun.so beside itself.
func bins(t *testing.T) binaries {
	t.Helper()
	if dir := os.Getenv("FUNTUN_BIN"); dir != "" {
		b := binaries{filepath.Join(dir, "funtun"), filepath.Join(dir, "funtun-core")}
		_, err1 := os.Stat(b.front)
		_, err2 := os.Stat(b.core)
		if err1 == nil && err2 == nil {
			return b
		}
	}
	cc := testutil.NeedTool(t, "cc")
	core := testutil.FuntunCore(t)
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "funtun-front")
		if buildErr != nil {
			return
		}
		b := binaries{filepath.Join(builtDir, "funtun"), filepath.Join(builtDir, "funtun-core")}
		steps := [][]string{
			{cc, "-O2", "-Wall", "-Wextra", "-o", b.front, "funtun.c"},
			{"cp", core, b.core},
			{"sh", "-c", cc + " -shared -fPIC -O2 -o " + builtDir + "/libfuntun.so ../*.c -ldl -lpthread"},
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
		built = b
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// baseEnv is the test's environment without anything that would steer
// the front-end, with an empty profile directory and no daemon.
func baseEnv(t *testing.T) []string {
	t.Helper()
	_, env := testutil.ProfileDir(t)
	drop := []string{"FUNTUN_DAEMON=", "FUNTUN_NO_DAEMON=", "FUNTUN_CORE=", "FUNTUN_FRONT=", "LISTEN_FDS=", "LISTEN_PID=", "FUNTUN_SOCKET="}
	env = slices.DeleteFunc(env, func(kv string) bool {
		return slices.ContainsFunc(drop, func(p string) bool { return strings.HasPrefix(kv, p) })
	})
	return append(env, "FUNTUN_DAEMON="+filepath.Join(t.TempDir(), "nobody-listens.sock"))
}

func setEnv(env []string, kv ...string) []string {
	for _, s := range kv {
		key, _, _ := strings.Cut(s, "=")
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, key+"=") })
		env = append(env, s)
	}
	return env
}

func unsetEnv(env []string, keys ...string) []string {
	return slices.DeleteFunc(env, func(e string) bool {
		k, _, _ := strings.Cut(e, "=")
		return slices.Contains(keys, k)
	})
}

type result struct {
	stdout, stderr string
	code           int
	pid            int // the front-end's
}

// run starts exe with argv[0] "funtun", as a user's shell would.
func run(t *testing.T, exe string, env []string, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Args[0] = "funtun"
	cmd.Env, cmd.Dir = env, dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("funtun %q did not finish; stderr: %s", args, errb.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode(), cmd.Process.Pid}
}

// programPid is the first line of a program that printed its own pid:
// equal to the front-end's, the front-end exec'ed it in place; another,
// funtun-core started it as its child.
func programPid(t *testing.T, r result) int {
	t.Helper()
	first, _, _ := strings.Cut(r.stdout, "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("the program printed no pid: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	return pid
}

// The subcommands, their exit codes and errors are the core's, whether
// the user runs funtun or funtun-core.
func TestSubcommandsPassThrough(t *testing.T) {
	b := bins(t)
	env := baseEnv(t)
	cases := [][]string{
		{"version"},
		{"help"},
		{"--help"},
		{"-h"},
		{"help", "forward"},
		{"forward", "--help"},
		{"profiles", "list"},
		{"profiles", "show", "no-such-profile"},
		{"pieces"},
		{"--no-such-option"},
		{},
		{"profile=direct"},
		{"--"},
		{"profile=direct", "chain=direct", "true"},
		{"mode=bogus", "true"},
	}
	for _, args := range cases {
		front := run(t, b.front, env, "", args...)
		core := run(t, b.core, env, "", args...)
		if front.code != core.code || front.stdout != core.stdout || front.stderr != core.stderr {
			t.Errorf("funtun %q: front-end exit %d, stdout %q, stderr %q; funtun-core exit %d, stdout %q, stderr %q",
				args, front.code, front.stdout, front.stderr, core.code, core.stdout, core.stderr)
		}
	}
	if r := run(t, b.front, env, "", "version"); r.code != 0 || !strings.Contains(r.stdout, "funtun") {
		t.Errorf("funtun version: exit %d, %q", r.code, r.stdout)
	}
	if r := run(t, b.front, env, "", "profiles", "show", "no-such-profile"); r.code == 0 {
		t.Errorf("funtun profiles show no-such-profile succeeded: %q", r.stdout)
	}
}

// funtun_commands[] in funtun.c is funtun-core's list of subcommands: a
// command missing from it would start as a program of that name.
func TestCommandListMatchesCore(t *testing.T) {
	b := bins(t)
	src, err := os.ReadFile("funtun.c")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)funtun_commands\[\] = \{(.*?)\};`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no funtun_commands[] in funtun.c")
	}
	var front []string
	for _, q := range regexp.MustCompile(`"([^"]*)"`).FindAllSubmatch(m[1], -1) {
		front = append(front, string(q[1]))
	}
	out, err := exec.Command(b.core, "help").Output()
	if err != nil {
		t.Fatalf("funtun-core help: %v", err)
	}
	_, list, ok := strings.Cut(string(out), "\nCommands:\n")
	if !ok {
		t.Fatalf("funtun-core help has no Commands: section:\n%s", out)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	var core []string
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			core = append(core, f[0])
		}
	}
	slices.Sort(front)
	slices.Sort(core)
	if len(core) < 10 || !slices.Equal(front, core) {
		t.Errorf("funtun.c's funtun_commands[] %q differ from `funtun-core help`'s %q: update funtun_commands[]", front, core)
	}
}

// A temporary PATH directory with a program named like a subcommand.
func versionProgram(t *testing.T) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "version")
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho \"$$\"\necho i-am-the-program \"$@\"\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// Without a daemon every launch is the core's.
func TestWithoutDaemon(t *testing.T) {
	b := bins(t)
	pathDir, _ := versionProgram(t)
	for name, env := range map[string][]string{
		"nothing listens":    baseEnv(t),
		"FUNTUN_NO_DAEMON=1": setEnv(baseEnv(t), "FUNTUN_NO_DAEMON=1"),
	} {
		t.Run(name, func(t *testing.T) {
			env := setEnv(env, "PATH="+pathDir+":"+os.Getenv("PATH"))
			r := run(t, b.front, env, "", "profile=direct", "sh", "-c", `echo "$$"; exit 7`)
			if r.code != 7 {
				t.Fatalf("exit %d, want 7; stderr %q", r.code, r.stderr)
			}
			if programPid(t, r) == r.pid {
				t.Errorf("the program ran as the front-end's own process, not under funtun-core")
			}
			r = run(t, b.front, env, "", "nosuchprog-funtun-test")
			if r.code != 127 || r.stderr != "funtun: nosuchprog-funtun-test: command not found\n" {
				t.Errorf("a missing program: exit %d, stderr %q", r.code, r.stderr)
			}
			r = run(t, b.front, env, "", "--", "version", "x")
			if r.code != 4 || !strings.Contains(r.stdout, "i-am-the-program x") {
				t.Errorf("funtun -- version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
			}
			r = run(t, b.front, env, "", "version")
			if r.code != 0 || strings.Contains(r.stdout, "i-am-the-program") {
				t.Errorf("funtun version ran the program named version: exit %d, stdout %q", r.code, r.stdout)
			}
		})
	}
}

// A program that cannot be run is refused as the core refuses it (Go's
// exec.LookPath), without asking the daemon.
func TestProgramErrors(t *testing.T) {
	b := bins(t)
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"notexec": 0o644, "runnable": 0o755} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\necho \"$$\"\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		t.Errorf("the daemon was asked about %q", req)
	})
	base := setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path)
	for _, c := range []struct {
		path string
		args []string
		code int
		msg  string
	}{
		{dir + ":/usr/bin:/bin", []string{"profile=direct", "nosuchprog-funtun-test"}, 127, "funtun: nosuchprog-funtun-test: command not found\n"},
		{dir + ":/usr/bin:/bin", []string{"notexec"}, 127, "funtun: notexec: command not found\n"},
		{dir + ":/usr/bin:/bin", []string{"./notexec"}, 126, "funtun: ./notexec: permission denied\n"},
		{dir + ":/usr/bin:/bin", []string{"./nothere"}, 127, "funtun: ./nothere: command not found\n"},
		{dir + ":/usr/bin:/bin", []string{"adir"}, 127, "funtun: adir: command not found\n"},
		{dir + ":/usr/bin:/bin", []string{"./adir"}, 127, "funtun: ./adir: command not found\n"},
		{dir + ":/usr/bin:/bin", []string{".."}, 127, "funtun: ..: command not found\n"},
		// A program in the current directory runs only when named so.
		{".:/usr/bin:/bin", []string{"runnable"}, 127, "funtun: runnable: command not found\n"},
		{"/usr/bin::/bin", []string{"runnable"}, 127, "funtun: runnable: command not found\n"},
		{"", []string{"sh"}, 127, "funtun: sh: command not found\n"},
	} {
		env := setEnv(base, "PATH="+c.path)
		front := run(t, b.front, env, dir, c.args...)
		core := run(t, b.core, env, dir, c.args...)
		if front.code != c.code || front.stderr != c.msg || core.code != c.code || core.stderr != c.msg {
			t.Errorf("PATH=%s funtun %q: front-end exit %d, stderr %q; funtun-core exit %d, stderr %q; want %d, %q",
				c.path, c.args, front.code, front.stderr, core.code, core.stderr, c.code, c.msg)
		}
	}
}

func TestCoreNotFound(t *testing.T) {
	b := bins(t)
	env := setEnv(baseEnv(t), "FUNTUN_CORE=/nonexistent/funtun-core")
	r := run(t, b.front, env, "", "version")
	if r.code != 127 || !strings.Contains(r.stderr, "cannot find funtun-core") || !strings.Contains(r.stderr, "/nonexistent/funtun-core") {
		t.Errorf("FUNTUN_CORE pointing nowhere: exit %d, stderr %q", r.code, r.stderr)
	}
	// A front-end alone, with no core beside it nor in ../lib/funtun.
	dir := t.TempDir()
	lone := filepath.Join(dir, "bin", "funtun")
	copyFile(t, b.front, lone)
	r = run(t, lone, baseEnv(t), "", "version")
	want := fmt.Sprintf("funtun: cannot find funtun-core (looked in %s/bin/funtun-core and %s/bin/../lib/funtun/funtun-core); reinstall funtun, or set FUNTUN_CORE=/path/to/funtun-core\n", dir, dir)
	if r.code != 127 || r.stderr != want {
		t.Errorf("a front-end without a core: exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
	// The installed layout: PREFIX/bin/funtun, PREFIX/lib/funtun/funtun-core.
	copyFile(t, b.core, filepath.Join(dir, "lib", "funtun", "funtun-core"))
	if r = run(t, lone, baseEnv(t), "", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "funtun ") {
		t.Errorf("the installed layout: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// FUNTUN_CORE naming the front-end itself would exec it for ever.
	r = run(t, b.front, setEnv(baseEnv(t), "FUNTUN_CORE="+b.front), "", "version")
	if r.code != 127 || !strings.Contains(r.stderr, "is this front-end, not funtun-core") {
		t.Errorf("FUNTUN_CORE=the front-end: exit %d, stderr %q", r.code, r.stderr)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeDaemon listens where the front-end looks (FUNTUN_DAEMON) and hands
// each connection's request, split in lines, to serve.
type fakeDaemon struct {
	path  string
	conns atomic.Int32
}

func startFakeDaemon(t *testing.T, serve func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred)) *fakeDaemon {
	t.Helper()
	// A short directory: socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "ftd")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDaemon{path: filepath.Join(dir, "daemon.sock")}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: d.path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		os.RemoveAll(dir)
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			d.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				buf := make([]byte, 16<<10)
				n, err := c.Read(buf)
				if err != nil {
					t.Errorf("reading the request: %v", err)
					return
				}
				text := string(buf[:n])
				if !strings.HasSuffix(text, "\n") {
					t.Errorf("the request does not end in a newline: %q", text)
				}
				cred, err := peerCred(c)
				if err != nil {
					t.Error(err)
					return
				}
				serve(t, c, strings.Split(strings.TrimSuffix(text, "\n"), "\n"), cred)
			}()
		}
	}()
	return d
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, cerr
}

func reply(lines ...string) []byte {
	return []byte("FUNTUN-LAUNCH 1\n" + strings.Join(lines, "\n") + "\n")
}

func inoLine(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("ino=%d:%d", st.Dev, st.Ino)
}

// fastMode is a mode= word the front-end takes to the daemon here: under
// Yama ptrace_scope 1+ only mode=preload does (the daemon could not take
// the sockets of a program it did not start).
func fastMode(want string) string {
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err == nil && strings.TrimSpace(string(b)) != "0" {
		return "preload"
	}
	return want
}

func TestDaemonSaysExit(t *testing.T) {
	b := bins(t)
	pathDir, program := versionProgram(t)
	profiles := t.TempDir()
	mode := fastMode("seccomp")
	want := []string{
		"FUNTUN-LAUNCH 1",
		"program=" + program,
		inoLine(t, program),
		"profile=work.2_x-y",
		"mode=" + mode,
		"io_uring=allow",
		"env.FUNTUN_PROFILE_PATH=" + profiles,
		"env.XDG_CONFIG_HOME=",
		"env.HOME=/home/someone",
	}
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		if !slices.Equal(req, want) {
			t.Errorf("request %q, want %q", req, want)
		}
		if cred.Uid != uint32(os.Geteuid()) {
			t.Errorf("the front-end runs as uid %d", cred.Uid)
		}
		c.Write(reply("say=funtun: first line", "action=exit", "say=funtun: second line", "code=3"))
	})
	env := setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path, "PATH="+pathDir+":"+os.Getenv("PATH"),
		"FUNTUN_PROFILE_PATH="+profiles, "XDG_CONFIG_HOME=", "HOME=/home/someone")
	env = unsetEnv(env, "FUNTUN_PRELOAD")
	for _, c := range []struct {
		dir  string
		args []string
	}{
		{"", []string{"io_uring=allow", "profile=work.2_x-y", "mode=" + mode, "--", "version", "arg"}},
		{pathDir, []string{"mode=" + mode, "profile=work.2_x-y", "io_uring=allow", "./version", "arg"}},
	} {
		r := run(t, b.front, env, c.dir, c.args...)
		if r.code != 3 || r.stderr != "funtun: first line\nfuntun: second line\n" || r.stdout != "" {
			t.Errorf("funtun %q: exit %d, stdout %q, stderr %q; want 3 and the daemon's two lines", c.args, r.code, r.stdout, r.stderr)
		}
	}
	if n := d.conns.Load(); n != 2 {
		t.Errorf("the daemon was asked %d times, want 2", n)
	}
}

func TestDaemonSaysExecWithEnvironment(t *testing.T) {
	b := bins(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		if len(req) < 3 || req[1] != "program="+sh || req[2] != inoLine(t, sh) || !slices.Contains(req, "profile=direct") {
			t.Errorf("request %q, want program=%s with its ino and profile=direct", req, sh)
		}
		c.Write(reply("action=exec", "say=funtun: a warning", "unset=BAR", "unset=FUNTUN_SOCKET", "set=FOO=hello world=x", "set=BAR=again-unset-first", "unset=BAR", "preload=libm.so.6"))
	})
	script := `echo "$$"; echo "$LD_PRELOAD|$FOO|${BAR-unset}|${FUNTUN_SOCKET-unset}"`
	for _, c := range []struct{ userPreload, want string }{
		{"  libc.so.6 ", "libc.so.6 libm.so.6"},
		{"", "libm.so.6"},
	} {
		env := setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path, "BAR=1", "FUNTUN_SOCKET=/outer/control", "LD_PRELOAD="+c.userPreload)
		r := run(t, b.front, env, "", "profile=direct", "mode="+fastMode("auto"), "sh", "-c", script)
		if r.code != 0 || r.stderr != "funtun: a warning\n" {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if programPid(t, r) != r.pid {
			t.Errorf("the program is not the front-end's process (pid %d, front-end %d)", programPid(t, r), r.pid)
		}
		_, got, _ := strings.Cut(strings.TrimSpace(r.stdout), "\n")
		// set= comes after every unset=, so BAR is set again.
		if want := c.want + "|hello world=x|again-unset-first|unset"; got != want {
			t.Errorf("the program's environment %q, want %q", got, want)
		}
	}
}

// connectFilter sends connect to the supervisor (or fails it with ret,
// without a listener) and allows everything else.
func connectFilter(t *testing.T, ret uint32) []byte {
	t.Helper()
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		t.Skipf("no test filter for %s", runtime.GOARCH)
	}
	const (
		offNr   = 0 // struct seccomp_data
		offArch = 4
	)
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch, SkipFalse: 2},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CONNECT, SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
		bpf.RetConstant{Val: ret},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, ins := range prog {
		out = binary.NativeEndian.AppendUint16(out, ins.Op)
		out = append(out, ins.Jt, ins.Jf)
		out = binary.NativeEndian.AppendUint32(out, ins.K)
	}
	return out
}

func filterReply(filter []byte, listener int) []byte {
	head := fmt.Sprintf("FUNTUN-LAUNCH 1\naction=exec\nfilter=%d\nlistener=%d\n\n", len(filter)/8, listener)
	return append([]byte(head), filter...)
}

const connectScript = `import os, socket
print(os.getpid(), flush=True)
socket.socket().connect(("127.0.0.1", 9))`

// The kernel's structures (linux/seccomp.h); x/sys has only the ioctls.
type seccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Data  seccompData
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// A filter with a listener: the daemon takes the listener from the
// front-end (pidfd_getfd) and answers the program's trapped connect with
// an errno of its choosing, which the program reports.
func TestDaemonTakesSeccompListener(t *testing.T) {
	b := bins(t)
	python := testutil.NeedTool(t, "python3")
	filter := connectFilter(t, unix.SECCOMP_RET_USER_NOTIF)
	var answered atomic.Int32
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		c.Write(filterReply(filter, 1))
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		if err != nil {
			t.Errorf("no listener named: %v", err)
			return
		}
		fdText, ok := strings.CutPrefix(string(buf[:n]), "listener=")
		fd, err := strconv.Atoi(strings.TrimSuffix(fdText, "\n"))
		if !ok || err != nil || !strings.HasSuffix(fdText, "\n") {
			t.Errorf("the front-end wrote %q, want listener=FD\\n", buf[:n])
			return
		}
		pidfd, err := unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			t.Error(err)
			return
		}
		listener, err := unix.PidfdGetfd(pidfd, fd, 0)
		unix.Close(pidfd)
		if err != nil {
			t.Errorf("pidfd_getfd(%d): %v", fd, err)
			return
		}
		defer unix.Close(listener)
		if link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", listener)); link != "anon_inode:seccomp notify" {
			t.Errorf("descriptor %d of the front-end is %q, not a seccomp listener", fd, link)
			return
		}
		c.Write([]byte("ok\n"))
		for {
			// Until every process under the filter is gone (POLLHUP).
			pfd := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, 30000); err != nil && err != unix.EINTR {
				t.Error(err)
				return
			}
			if pfd[0].Revents&unix.POLLIN == 0 {
				return
			}
			var n seccompNotif
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(listener), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n))); e != 0 {
				if e == unix.EINTR || e == unix.ENOENT {
					continue
				}
				t.Error(e)
				return
			}
			resp := seccompNotifResp{ID: n.ID, Error: -int32(unix.EHOSTUNREACH)}
			if n.Data.Nr != unix.SYS_CONNECT {
				t.Errorf("trapped system call %d, want connect", n.Data.Nr)
				resp.Error = -int32(unix.ENOSYS)
			}
			unix.Syscall(unix.SYS_IOCTL, uintptr(listener), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&resp)))
			answered.Add(1)
		}
	})
	env := setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path)
	r := run(t, b.front, env, "", "profile=direct", "mode="+fastMode("seccomp"), python, "-c", connectScript)
	if r.code != 1 || !strings.Contains(r.stderr, "No route to host") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want python's EHOSTUNREACH", r.code, r.stdout, r.stderr)
	}
	if programPid(t, r) != r.pid {
		t.Errorf("python is not the front-end's process")
	}
	if answered.Load() == 0 {
		t.Errorf("no connect reached the daemon's listener")
	}
}

// A filter without a listener is installed all the same.
func TestDaemonFilterWithoutListener(t *testing.T) {
	b := bins(t)
	python := testutil.NeedTool(t, "python3")
	filter := connectFilter(t, unix.SECCOMP_RET_ERRNO|uint32(unix.EHOSTUNREACH))
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		c.Write(filterReply(filter, 0))
	})
	r := run(t, b.front, setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path), "", "profile=direct", "mode="+fastMode("auto"), python, "-c", connectScript)
	if r.code != 1 || !strings.Contains(r.stderr, "No route to host") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want python's EHOSTUNREACH", r.code, r.stdout, r.stderr)
	}
}

// The filter is in and cannot be removed: a daemon that does not take
// the listener leaves the program unrun.
func TestDaemonRefusesListener(t *testing.T) {
	b := bins(t)
	filter := connectFilter(t, unix.SECCOMP_RET_USER_NOTIF)
	for name, answer := range map[string][]byte{
		"an error": []byte("pidfd_getfd: operation not permitted\n"),
		"silence":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
				c.Write(filterReply(filter, 1))
				buf := make([]byte, 256)
				if _, err := c.Read(buf); err != nil {
					t.Error(err)
				}
				if answer != nil {
					c.Write(answer)
				}
			})
			dir := t.TempDir()
			marker := filepath.Join(dir, "ran")
			r := run(t, b.front, setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path), "", "profile=direct", "mode="+fastMode("seccomp"), "touch", marker)
			want := "funtun: the daemon did not take the seccomp listener: "
			if answer != nil {
				want += strings.TrimSuffix(string(answer), "\n") + "\n"
			} else {
				want += "it closed the connection\n"
			}
			if r.code != 126 || r.stderr != want {
				t.Errorf("exit %d, stderr %q; want 126, %q", r.code, r.stderr, want)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("the program ran")
			}
		})
	}
}

// A fallback, and every reply the front-end does not fully understand,
// runs the core, which launches the program itself.
func TestDaemonFallsBackToCore(t *testing.T) {
	b := bins(t)
	for name, c := range map[string]struct {
		answer []byte
		say    string
	}{
		"fallback":          {reply("say=funtun: the daemon passes", "action=fallback"), "funtun: the daemon passes\n"},
		"not the protocol":  {[]byte("HELLO\n"), ""},
		"unknown key":       {reply("action=exec", "say=unseen", "frobnicate=1"), ""},
		"no action":         {reply("preload=/x.so"), ""},
		"exit without code": {reply("action=exit"), ""},
		"short filter":      {append([]byte("FUNTUN-LAUNCH 1\naction=exec\nfilter=2\nlistener=0\n\n"), make([]byte, 8)...), ""},
		"closed, no answer": {nil, ""},
		// The front-end gives up waiting (SO_RCVTIMEO) and execs the core,
		// which closes the connection (SOCK_CLOEXEC).
		"silence": {[]byte{}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			d := startFakeDaemon(t, func(t *testing.T, conn *net.UnixConn, req []string, cred *unix.Ucred) {
				switch {
				case c.answer == nil:
				case len(c.answer) == 0:
					if _, err := conn.Read(make([]byte, 64)); err != io.EOF {
						t.Errorf("the front-end's connection did not end: %v", err)
					}
				default:
					conn.Write(c.answer)
				}
			})
			r := run(t, b.front, setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path), "", "profile=direct", "sh", "-c", `echo "$$"; exit 5`)
			if r.code != 5 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 5", r.code, r.stdout, r.stderr)
			}
			if programPid(t, r) == r.pid {
				t.Errorf("the front-end ran the program itself")
			}
			if !strings.HasPrefix(r.stderr, c.say) || (c.say == "" && strings.Contains(r.stderr, "unseen")) {
				t.Errorf("stderr %q, want it to begin with %q", r.stderr, c.say)
			}
			if d.conns.Load() != 1 {
				t.Errorf("the daemon was asked %d times", d.conns.Load())
			}
		})
	}
}

// Launches the fast path does not cover go to the core without a word to
// the daemon, and end as they end under the core.
func TestNotAskingDaemon(t *testing.T) {
	b := bins(t)
	d := startFakeDaemon(t, func(t *testing.T, c *net.UnixConn, req []string, cred *unix.Ucred) {
		t.Errorf("the daemon was asked: %q", req)
	})
	base := setEnv(baseEnv(t), "FUNTUN_DAEMON="+d.path)
	prog := []string{"sh", "-c", `echo "$$"; exit 9`}
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"FUNTUN_NO_DAEMON", []string{"FUNTUN_NO_DAEMON=1"}, []string{"profile=direct"}},
		{"LISTEN_FDS", []string{"LISTEN_FDS=1", "LISTEN_PID=1"}, []string{"profile=direct"}},
		{"a newline in HOME", []string{"HOME=/home/a\nb"}, []string{"profile=direct"}},
		{"an empty chain=", nil, []string{"chain="}},
		{"profile= and chain=", nil, []string{"profile=direct", "chain=direct"}},
		{"a newline in chain=", nil, []string{"chain=direct\n| deny"}},
		{"guard=", nil, []string{"guard=none"}},
		{"--allow-unhooked", nil, []string{"--allow-unhooked"}},
		{"--debug", nil, []string{"--debug", "profile=direct"}},
		{"two profiles", nil, []string{"profile=direct", "profile=direct"}},
		{"two modes", nil, []string{"mode=auto", "mode=auto"}},
		{"a bad profile name", nil, []string{"profile=.hidden"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := setEnv(base, c.env...)
			args := append(slices.Clone(c.args), prog...)
			front := run(t, b.front, env, "", args...)
			core := run(t, b.core, env, "", args...)
			if front.code != core.code || front.stderr != core.stderr {
				t.Errorf("funtun %q: front-end exit %d, stderr %q; funtun-core exit %d, stderr %q", args, front.code, front.stderr, core.code, core.stderr)
			}
			if front.code == 9 && programPid(t, front) == front.pid {
				t.Errorf("the front-end ran the program itself")
			}
		})
	}
	if n := d.conns.Load(); n != 0 {
		t.Errorf("the daemon was asked %d times", n)
	}
}

// The Makefile builds the front-end with -Wall -Wextra and no warnings.
func TestCompilesWithoutWarnings(t *testing.T) {
	cc := testutil.NeedTool(t, "cc")
	out, err := exec.Command(cc, "-fsyntax-only", "-O2", "-Wall", "-Wextra", "-Werror", "funtun.c").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// The real daemon (funtun daemon) prepares the launch and the program's
// connection passes its funnel: the whole fast path, as users run it.
func TestRealDaemon(t *testing.T) {
	b := bins(t)
	python := testutil.NeedTool(t, "python3")
	dir, err := os.MkdirTemp("", "ftd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "daemon.sock")
	// The daemon reads the profiles the launcher would (same environment).
	env := setEnv(baseEnv(t), "FUNTUN_DAEMON="+sock)
	programs := filepath.Join(dir, "programs")
	if err := os.WriteFile(programs, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(b.core, "--debug", "daemon", "--socket", sock, "--programs", programs)
	daemon.Env = env
	log := &testutil.LogBuffer{}
	daemon.Stdout, daemon.Stderr = log, log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		daemon.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("the daemon's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unixpacket", sock); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("the daemon ended")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon does not listen on %s", sock)
		}
	}
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	script := fmt.Sprintf(`import os, socket
print(os.getpid(), flush=True)
s = socket.create_connection(("127.0.0.1", %d))
s.sendall(b"through the funnel")
print(s.recv(100).decode())`, echo.Port)
	for _, mode := range []string{"", "mode=" + fastMode("seccomp"), "mode=preload"} {
		t.Run(cmp.Or(mode, "mode=auto by default"), func(t *testing.T) {
			args := []string{"profile=direct"}
			if mode != "" {
				args = append(args, mode)
			}
			before := strings.Count(log.String(), "flow ")
			r := run(t, b.front, env, "", append(args, python, "-c", script)...)
			if r.code != 0 || !strings.Contains(r.stdout, "through the funnel") {
				t.Fatalf("funtun %q: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
			}
			if programPid(t, r) != r.pid {
				t.Errorf("the program is not the front-end's process: the daemon did not prepare the launch")
			}
			if after := strings.Count(log.String(), "flow "); after <= before {
				t.Errorf("the daemon logged no flow for the program's connection")
			}
		})
	}
}

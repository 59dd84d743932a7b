//go:build linux

package preload

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// launcher runs the funtun binary as a user would, with no profile
// directories of the user's own.
func launcher(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	needBuild(t)
	cmd := exec.CommandContext(ctxFor(t, 60*time.Second), built.funtun, args...)
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir())
	return cmd
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestLauncherExitStatus(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 7", 7},
		{"kill -TERM $$", 128 + 15},
		{"kill -KILL $$", 128 + 9},
	} {
		_, stderr, err := run(t, launcher(t, "profile=direct", "sh", "-c", tc.script), "")
		if got := exitCode(err); got != tc.want {
			t.Errorf("sh -c %q: funtun exited %d, want %d\n%s", tc.script, got, tc.want, stderr)
		}
	}
}

func TestLauncherCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	out, stderr, err := run(t, launcher(t, "chain=hosts demo.test=127.0.0.1", curl, "-sS", "http://demo.test:"+port+"/"), "")
	if err != nil {
		t.Fatalf("funtun curl: %v\n%s", err, stderr)
	}
	if out != "hello X from demo.test:"+port+"\n" {
		t.Fatalf("curl printed %q", out)
	}
}

func TestLauncherNotFound(t *testing.T) {
	_, stderr, err := run(t, launcher(t, "profile=direct", "no-such-program-funtun"), "")
	if exitCode(err) != 127 || !strings.Contains(stderr, "command not found") {
		t.Fatalf("exit %d, %q", exitCode(err), stderr)
	}
}

// TestLauncherDoubleDash: a program named like a funtun command runs
// after --.
func TestLauncherDoubleDash(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pieces"), []byte("#!/bin/sh\necho the program named pieces\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := launcher(t, "--", "pieces")
	cmd.Env = append(cmd.Env, "PATH="+dir+":"+os.Getenv("PATH"))
	out, stderr, err := run(t, cmd, "")
	if err != nil || out != "the program named pieces\n" {
		t.Fatalf("funtun -- pieces: %v %q %s", err, out, stderr)
	}
}

func staticProgram(t *testing.T) string { return goProgram(t, "0") }

// goProgram builds a small Go program that prints "static ran"; with cgo
// it is linked dynamically (it uses the C library's resolver).
func goProgram(t *testing.T, cgo string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module statictest\n\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"net\"\n)\n\nvar _ = net.Dial\n\nfunc main() { fmt.Println(\"static ran\") }\n"), 0o644)
	bin := filepath.Join(dir, "static")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a static program: %v\n%s", err, out)
	}
	return bin
}

// TestLauncherRefusesStatic: mode=preload, the library alone, refuses
// what it cannot hook; the default mode runs it under the supervisor.
func TestLauncherRefusesStatic(t *testing.T) {
	bin := staticProgram(t)
	out, stderr, err := run(t, launcher(t, "profile=direct", bin), "")
	if err != nil || out != "static ran\n" {
		t.Fatalf("the default mode: %v, out %q, stderr %q", err, out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "mode=preload", "profile=direct", bin), "")
	if exitCode(err) != 126 || out != "" || !strings.Contains(stderr, "statically linked") || !strings.Contains(stderr, "--allow-unhooked") {
		t.Fatalf("static program: exit %d, out %q, stderr %q", exitCode(err), out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "mode=preload", "profile=direct", "--allow-unhooked", bin), "")
	if err != nil || out != "static ran\n" || !strings.Contains(stderr, "UNHOOKED") {
		t.Fatalf("--allow-unhooked: %v, out %q, stderr %q", err, out, stderr)
	}
	// A Go program linked dynamically still makes its own system calls.
	if _, err := exec.LookPath("cc"); err == nil {
		dyn := goProgram(t, "1")
		_, stderr, err = run(t, launcher(t, "mode=preload", "profile=direct", dyn), "")
		if exitCode(err) != 126 || !strings.Contains(stderr, "is a Go program") {
			t.Fatalf("dynamically linked Go program: exit %d, %q", exitCode(err), stderr)
		}
	}
	// A script is judged by its interpreter.
	script := filepath.Join(t.TempDir(), "script")
	os.WriteFile(script, []byte("#!"+bin+"\n"), 0o755)
	_, stderr, err = run(t, launcher(t, "mode=preload", "profile=direct", script), "")
	if exitCode(err) != 126 || !strings.Contains(stderr, "statically linked") {
		t.Fatalf("script with a static interpreter: exit %d, %q", exitCode(err), stderr)
	}
}

func TestLauncherRefusesSetuid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a set-user-ID program of another user needs root")
	}
	src, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "suid-true")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(bin, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bin, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(bin), 0o755)
	_, stderr, err := run(t, launcher(t, "profile=direct", bin), "")
	if exitCode(err) != 126 || !strings.Contains(stderr, "set-user-ID") {
		t.Fatalf("setuid program: exit %d, %q", exitCode(err), stderr)
	}
}

func TestLauncherLibrary(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "libfuntun.so")
	os.WriteFile(empty, nil, 0o644)
	cmd := launcher(t, "profile=direct", "true")
	cmd.Env = append(cmd.Env, "FUNTUN_PRELOAD="+empty)
	_, stderr, err := run(t, cmd, "")
	if exitCode(err) != 1 || !strings.Contains(stderr, "not a shared library") {
		t.Fatalf("empty library: exit %d, %q", exitCode(err), stderr)
	}

	// The installed layout: P/bin/funtun and P/lib/funtun/libfuntun.so.
	prefix := t.TempDir()
	os.MkdirAll(filepath.Join(prefix, "bin"), 0o755)
	os.MkdirAll(filepath.Join(prefix, "lib", "funtun"), 0o755)
	copyFile(t, built.funtun, filepath.Join(prefix, "bin", "funtun"))
	copyFile(t, built.lib, filepath.Join(prefix, "lib", "funtun", "libfuntun.so"))
	cmd = launcher(t, "profile=direct", "sh", "-c", `echo "$LD_PRELOAD"`)
	cmd.Path = filepath.Join(prefix, "bin", "funtun")
	out, stderr, err := run(t, cmd, "")
	if err != nil || strings.TrimSpace(out) != filepath.Join(prefix, "lib", "funtun", "libfuntun.so") {
		t.Fatalf("installed layout: %v, LD_PRELOAD=%q, %s", err, out, stderr)
	}

	// No library anywhere.
	os.Remove(filepath.Join(prefix, "lib", "funtun", "libfuntun.so"))
	_, stderr, err = run(t, cmd2(cmd), "")
	if exitCode(err) != 1 || !strings.Contains(stderr, "cannot find libfuntun.so") {
		t.Fatalf("no library: exit %d, %q", exitCode(err), stderr)
	}
}

func cmd2(c *exec.Cmd) *exec.Cmd {
	n := exec.Command(c.Path, c.Args[1:]...)
	n.Env = c.Env
	return n
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"A=1", "LD_PRELOAD=/x/other.so", "FUNTUN_SOCKET=/old", "B=2"}, "/lib/libfuntun.so", "/tmp/s")
	want := []string{"A=1", "B=2", "LD_PRELOAD=/x/other.so /lib/libfuntun.so", "FUNTUN_SOCKET=/tmp/s"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("childEnv: %q, want %q", got, want)
	}
	got = childEnv([]string{"LD_PRELOAD="}, "/lib/libfuntun.so", "/tmp/s")
	if got[0] != "LD_PRELOAD=/lib/libfuntun.so" {
		t.Fatalf("empty LD_PRELOAD: %q", got)
	}
}

// startWatched starts funtun in a process group of its own (so that a
// signal to "the terminal's group" reaches it and its program, not the
// test) and waits for the program's first line.
func startWatched(t *testing.T, script string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := launcher(t, "profile=direct", "sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("program's first line: %q, %v", line, err)
	}
	return cmd, r
}

func TestLauncherForwardsSIGTERM(t *testing.T) {
	cmd, r := startWatched(t, `trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.1; done`)
	cmd.Process.Signal(syscall.SIGTERM)
	line, _ := r.ReadString('\n')
	err := cmd.Wait()
	if line != "got TERM\n" || exitCode(err) != 5 {
		t.Fatalf("after SIGTERM to funtun: program said %q, funtun exited %d", line, exitCode(err))
	}
}

// TestLauncherLeavesSIGINTToProgram: Ctrl-C goes to the whole foreground
// group; funtun must survive it and report what the program made of it.
func TestLauncherLeavesSIGINTToProgram(t *testing.T) {
	cmd, r := startWatched(t, `trap 'echo got INT; exit 42' INT; echo ready; while :; do sleep 0.1; done`)
	// As the terminal does it: to every process of the group.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	line, _ := r.ReadString('\n')
	err := cmd.Wait()
	if line != "got INT\n" || exitCode(err) != 42 {
		t.Fatalf("after Ctrl-C: program said %q, funtun exited %d", line, exitCode(err))
	}
}

const jobControlDriver = `
import os, pty, sys, time, select
funtun = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
buf = b""
def wait_for(marker, timeout=20):
    global buf
    end = time.time() + timeout
    while marker not in buf:
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            print("TIMEOUT waiting for %r in %r" % (marker, buf))
            sys.exit(1)
        try:
            buf += os.read(fd, 4096)
        except OSError:
            print("EOF waiting for %r in %r" % (marker, buf))
            sys.exit(1)
    i = buf.index(marker) + len(marker)
    seen, buf = buf[:i], buf[i:]
    return seen
os.write(fd, b"PS1='PROMPT> '\n")
wait_for(b"PROMPT> ")
os.write(fd, (funtun + " profile=direct sh -c 'trap \"exit 42\" INT; echo READ''Y; while :; do sleep 0.1; done'\n").encode())
wait_for(b"READY")
time.sleep(0.3)
os.write(fd, b"\x1a")          # Ctrl-Z
wait_for(b"Stopped")
wait_for(b"PROMPT> ")
print("stopped")
os.write(fd, b"fg\n")
time.sleep(0.5)
os.write(fd, b"\x03")          # Ctrl-C
wait_for(b"PROMPT> ")
os.write(fd, b"echo STA''TUS=$?\n")
wait_for(b"STATUS=")
s = wait_for(b"\n")
print("status", s.decode().strip())
os.write(fd, b"exit\n")
`

// TestLauncherJobControl drives an interactive bash in a pseudo-terminal:
// Ctrl-Z stops the job (funtun stops with its program), fg brings it
// back, Ctrl-C reaches the program, and the shell sees its status.
func TestLauncherJobControl(t *testing.T) {
	py := python(t)
	testutil.NeedTool(t, "bash")
	needBuild(t)
	cmd := exec.CommandContext(ctxFor(t, 60*time.Second), py, "-c", jobControlDriver, built.funtun)
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir(), "TERM=dumb")
	out, stderr, err := run(t, cmd, "")
	if err != nil || out != "stopped\nstatus 42\n" {
		t.Fatalf("job control: %v\n%s%s", err, out, stderr)
	}
}

// TestLauncherKeepsIgnoredSignals: under nohup the program must ignore
// SIGHUP as it would without funtun.
func TestLauncherKeepsIgnoredSignals(t *testing.T) {
	nohup := testutil.NeedTool(t, "nohup")
	needBuild(t)
	cmd := exec.CommandContext(ctxFor(t, 30*time.Second), nohup, built.funtun, "profile=direct", "sh", "-c", "kill -HUP $$; echo survived")
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir())
	cmd.Dir = t.TempDir() // nohup.out, if it makes one
	out, stderr, err := run(t, cmd, "")
	if err != nil || out != "survived\n" {
		t.Fatalf("nohup funtun sh: %v %q %s", err, out, stderr)
	}
}

//go:build linux

package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// The launcher's C front-end (preload/launch/funtun.c) with a daemon
// running: the launch is prepared by the daemon and the program is
// exec'd by the front-end itself, so its parent is whoever ran funtun —
// here the test — where the Go launcher would be the parent of a program
// it runs. Each test checks which of the two ran it, and that the
// profile visibly acted.

const demoChain = "hosts demo.test=127.0.0.1 | rewrite from=X to=Y dir=down"

// launchEnv is a shell of the daemon's user that runs funtun (the
// front-end), with the Go launcher and the library of this build.
func (d *testDaemon) launchEnv(extra ...string) []string {
	return d.clientEnv(append([]string{"XDG_CONFIG_HOME=" + d.cfg, "FUNTUN_CORE=" + built.funtun, "FUNTUN_PRELOAD=" + built.lib}, extra...)...)
}

// parentOf runs `sh -c 'cat /proc/$PPID/comm'` through the front-end.
func parentOf(t *testing.T, env []string, words ...string) string {
	t.Helper()
	out, errOut, err := runProgram(t, env, "", built.front, append(words, "sh", "-c", "cat /proc/$PPID/comm")...)
	if err != nil {
		t.Fatalf("funtun %s sh: %v\n%s", strings.Join(words, " "), err, errOut)
	}
	return strings.TrimSpace(out)
}

func testComm() string {
	exe, _ := os.Executable()
	name := filepath.Base(exe)
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

func TestLaunchThroughDaemon(t *testing.T) {
	testutil.NeedTool(t, "curl")
	testutil.NeedTool(t, "python3")
	d := startDaemon(t, map[string]string{"demo": demoChain}, "")
	port, _ := webServer(t, "hello X\n")
	env := d.launchEnv()
	url := fmt.Sprintf("http://demo.test:%d/", port)

	for _, mode := range []string{"mode=preload", "mode=auto", "mode=seccomp"} {
		t.Run(mode, func(t *testing.T) {
			if p := parentOf(t, env, "profile=demo", mode); p != testComm() {
				t.Fatalf("the program's parent is %q, not the test (%q): the launch did not go through the daemon\n%s", p, testComm(), d.log.String())
			}
			out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", mode, "curl", "-sS", "--max-time", "20", url)
			if err != nil || out != "hello Y\n" {
				t.Fatalf("curl through the daemon's launch: %v, %q\n%s\ndaemon log:\n%s", err, out, errOut, d.log.String())
			}
		})
	}
	if !strings.Contains(d.log.String(), "launch prepared") {
		t.Fatalf("the daemon logged no prepared launch:\n%s", d.log.String())
	}

	// The guard under the library, in the daemon: a raw connect system
	// call, which the library never sees, still passes the profile.
	t.Run("raw connect under the guard", func(t *testing.T) {
		script := fmt.Sprintf(`
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket()
sa = struct.pack("!HH4s8x", socket.AF_INET, %d, socket.inet_aton("127.0.0.1"))
sa = struct.pack("=H", socket.AF_INET) + sa[2:]
if libc.syscall(42, s.fileno(), ctypes.c_char_p(sa), len(sa)) != 0:
    raise OSError(ctypes.get_errno(), "raw connect")
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    data += b
print(data.split(b"\r\n\r\n", 1)[1].decode(), end="")
`, port)
		out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", "python3", "-c", script)
		if err != nil || out != "hello Y\n" {
			t.Fatalf("a raw connect under the daemon's guard: %v, %q\n%s\ndaemon log:\n%s", err, out, errOut, d.log.String())
		}
	})

	// A static Go program, which only the seccomp supervisor hooks
	// (mode=auto picks it), resolving a name only the profile knows with
	// Go's own resolver.
	t.Run("static Go program", func(t *testing.T) {
		testutil.NeedTool(t, "go")
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fetch\n\ngo 1.21\n"), 0o644)
		os.WriteFile(filepath.Join(src, "main.go"), []byte(`package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	fmt.Fprintf(os.Stderr, "pid %d\n", os.Getpid())
	r, err := http.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	io.Copy(os.Stdout, r.Body)
}
`), 0o644)
		bin := filepath.Join(src, "fetch")
		build := exec.Command("go", "build", "-o", bin, ".")
		build.Dir = src
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", bin, url)
		if err != nil || out != "hello Y\n" {
			t.Fatalf("a static Go program through the daemon's launch: %v, %q\n%s\ndaemon log:\n%s", err, out, errOut, d.log.String())
		}
		if !strings.Contains(d.log.String(), "listener=true") {
			t.Fatalf("no supervised launch in the daemon's log:\n%s", d.log.String())
		}
		// Go connects from a thread other than its first: the flow is
		// still the process's.
		var pid int
		fmt.Sscanf(errOut, "pid %d", &pid)
		want := fmt.Sprintf("dst=demo.test:%d", port)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(flowLineOf(d.log.String(), want), fmt.Sprintf(" pid=%d ", pid)) {
			if time.Now().After(deadline) {
				t.Fatalf("the flow to %s does not name the program's process %d:\n%s", want, pid, d.log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("chain", func(t *testing.T) {
		if p := parentOf(t, env, "chain="+demoChain); p != testComm() {
			t.Fatalf("a chain='…' launch was not served by the daemon (the program's parent is %q)", p)
		}
		out, errOut, err := runProgram(t, env, "", built.front, "chain="+demoChain, "curl", "-sS", "--max-time", "20", url)
		if err != nil || out != "hello Y\n" {
			t.Fatalf("curl under chain='…' through the daemon's launch: %v, %q\n%s", err, out, errOut)
		}
		// A chain longer than the library can name to the daemon: the
		// in-process launcher runs it, so it is still funnelled.
		var pads strings.Builder
		for i := 0; i < 12; i++ {
			fmt.Fprintf(&pads, "pad%d.invalid=127.0.0.2 ", i)
		}
		long := "hosts " + pads.String() + "demo.test=127.0.0.1 | rewrite from=X to=Y dir=down"
		if p := parentOf(t, env, "chain="+long); p == testComm() {
			t.Fatal("a chain too long for the library's template was served by the daemon, whose library would leave the program alone")
		}
		out, errOut, err = runProgram(t, env, "", built.front, "chain="+long, "curl", "-sS", "--max-time", "20", url)
		if err != nil || out != "hello Y\n" {
			t.Fatalf("curl under a long chain='…': %v, %q\n%s", err, out, errOut)
		}
		_, errOut, err = runProgram(t, env, "", built.front, "chain=rewrite from=", "true")
		if code := exitCode(err); code != 1 || !strings.Contains(errOut, "rewrite") {
			t.Fatalf("a broken chain: exit %d, stderr %q; want 1 and what is wrong", code, errOut)
		}
	})

	t.Run("edited profile", func(t *testing.T) {
		d.writeProfile(t, "demo", "hosts demo.test=127.0.0.1 | rewrite from=X to=Z dir=down")
		out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", "curl", "-sS", "--max-time", "20", url)
		if err != nil || out != "hello Z\n" {
			t.Fatalf("after editing the profile: %v, %q (want the new profile's hello Z)\n%s", err, out, errOut)
		}
		d.writeProfile(t, "demo", demoChain)
	})

	t.Run("unknown profile", func(t *testing.T) {
		_, errOut, err := runProgram(t, env, "", built.front, "profile=nosuch", "true")
		if code := exitCode(err); code != 1 || !strings.Contains(errOut, `no profile named "nosuch"`) {
			t.Fatalf("profile=nosuch: exit %d, stderr %q; want 1 and the name", code, errOut)
		}
	})

	t.Run("broken profile", func(t *testing.T) {
		d.writeProfile(t, "broken", "rewrite from=")
		_, errOut, err := runProgram(t, env, "", built.front, "profile=broken", "true")
		if code := exitCode(err); code != 1 || !strings.Contains(errOut, "broken.profile:1") {
			t.Fatalf("a broken profile: exit %d, stderr %q; want 1 and FILE:LINE", code, errOut)
		}
		os.Remove(filepath.Join(d.cfg, "funtun", "profiles", "broken.profile"))
	})

	t.Run("exit status and arguments", func(t *testing.T) {
		out, _, err := runProgram(t, env, "", built.front, "profile=demo", "sh", "-c", `printf '%s|' "$@"; exit 7`, "sh", "a b", "", "$x")
		if code := exitCode(err); code != 7 || out != "a b||$x|" {
			t.Fatalf("exit %d, output %q; want 7 and the arguments unchanged", code, out)
		}
	})

	t.Run("other profile directory", func(t *testing.T) {
		other := t.TempDir()
		os.WriteFile(filepath.Join(other, "demo.profile"), []byte("hosts demo.test=127.0.0.1 | rewrite from=X to=W dir=down\n"), 0o644)
		env := d.launchEnv("FUNTUN_PROFILE_PATH=" + other)
		if p := parentOf(t, env, "profile=demo"); p == testComm() {
			t.Fatalf("profiles from elsewhere were served by the daemon, which reads its own")
		}
		out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", "curl", "-sS", "--max-time", "20", url)
		if err != nil || out != "hello W\n" {
			t.Fatalf("the Go launcher with its own profiles: %v, %q\n%s", err, out, errOut)
		}
	})
}

// Without a daemon the front-end runs the Go launcher, which does the
// whole launch itself.
func TestLaunchWithoutDaemon(t *testing.T) {
	testutil.NeedTool(t, "curl")
	needBuild(t)
	cfg := t.TempDir()
	os.MkdirAll(filepath.Join(cfg, "funtun", "profiles"), 0o755)
	os.WriteFile(filepath.Join(cfg, "funtun", "profiles", "demo.profile"), []byte(demoChain+"\n"), 0o644)
	run := t.TempDir()
	env := append(cleanEnv(), "XDG_RUNTIME_DIR="+run, "XDG_CONFIG_HOME="+cfg, "FUNTUN_CORE="+built.funtun, "FUNTUN_PRELOAD="+built.lib)
	if p := parentOf(t, env, "profile=demo"); p != filepath.Base(built.funtun) {
		t.Fatalf("without a daemon the program's parent is %q, not the Go launcher", p)
	}
	port, _ := webServer(t, "hello X\n")
	out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", "curl", "-sS", "--max-time", "20", fmt.Sprintf("http://demo.test:%d/", port))
	if err != nil || out != "hello Y\n" {
		t.Fatalf("curl through the Go launcher: %v, %q\n%s", err, out, errOut)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// With funtun-daemon.socket enabled (systemd-socket-activate stands in
// for the user's systemd), the first launch starts the daemon and is
// served by it: the launch waits in the socket's queue while the daemon
// starts, rather than going to the Go launcher.
func TestLaunchStartsActivatedDaemon(t *testing.T) {
	needBuild(t)
	testutil.NeedTool(t, "curl")
	dir, err := os.MkdirTemp("", "ftla")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	run, cfg := filepath.Join(dir, "run"), filepath.Join(dir, "cfg")
	os.MkdirAll(filepath.Join(run, "funtun"), 0o700)
	os.MkdirAll(filepath.Join(cfg, "funtun", "profiles"), 0o755)
	os.WriteFile(filepath.Join(cfg, "funtun", "profiles", "demo.profile"), []byte(demoChain+"\n"), 0o644)
	sock := filepath.Join(run, "funtun", "daemon.sock")

	log := activatedDaemon(t, sock, "XDG_CONFIG_HOME="+cfg, "XDG_RUNTIME_DIR="+run, "FUNTUN_PRELOAD="+built.lib)
	if strings.Contains(log.String(), "daemon serving") {
		t.Fatal("the daemon started before anything asked for it")
	}
	port, _ := webServer(t, "hello X\n")
	env := append(cleanEnv(), "XDG_RUNTIME_DIR="+run, "XDG_CONFIG_HOME="+cfg, "FUNTUN_CORE="+built.funtun, "FUNTUN_PRELOAD="+built.lib)
	out, errOut, err := runProgram(t, env, "", built.front, "profile=demo", "sh", "-c",
		fmt.Sprintf(`cat /proc/$PPID/comm; curl -sS --max-time 20 http://demo.test:%d/`, port))
	if err != nil || out != testComm()+"\nhello Y\n" {
		t.Fatalf("the first launch, which starts the daemon: %v, %q (want the test as the parent, then hello Y)\n%s", err, out, errOut)
	}
	if !strings.Contains(log.String(), "launch prepared") {
		t.Fatalf("the activated daemon prepared no launch:\n%s", log.String())
	}
}

// flowLineOf is the last end-of-flow log line that contains want.
func flowLineOf(log, want string) string {
	found := ""
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "msg=flow ") && strings.Contains(line, want) {
			found = line
		}
	}
	return found + " "
}

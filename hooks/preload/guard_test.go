//go:build linux

package preload

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// guardNet is two network namespaces the test makes: the program's side
// ("client", where the launcher runs) and a server's side, joined by a
// veth pair. The server echoes what it gets and says from where it came.
type guardNet struct {
	client, server string // namespace names
	serverIP       string
	ip             string // the ip tool
}

func newGuardNet(t *testing.T) *guardNet {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("making network namespaces needs root")
		}
		t.Skip("making network namespaces needs root")
	}
	ip := testutil.NeedTool(t, "ip")
	py := python(t)
	id := fmt.Sprintf("%d%d", os.Getpid()%10000, time.Now().UnixNano()%1000)
	n := &guardNet{client: "ftgc" + id, server: "ftgs" + id, ip: ip}
	octet := os.Getpid()%200 + 20
	n.serverIP = fmt.Sprintf("10.197.%d.2", octet)
	clientIP := fmt.Sprintf("10.197.%d.1", octet)
	must := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{n.client, n.server} {
		must("netns", "add", ns)
		t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
		must("-n", ns, "link", "set", "lo", "up")
	}
	vc, vs := "ftgc"+id, "ftgs"+id
	if len(vc) > 15 {
		vc, vs = vc[:15], vs[:15]
	}
	must("-n", n.client, "link", "add", vc, "type", "veth", "peer", "name", vs, "netns", n.server)
	must("-n", n.client, "addr", "add", clientIP+"/24", "dev", vc)
	must("-n", n.client, "link", "set", vc, "up")
	must("-n", n.server, "addr", "add", n.serverIP+"/24", "dev", vs)
	must("-n", n.server, "link", "set", vs, "up")
	srv := exec.Command(ip, "netns", "exec", n.server, py, "-c", guardEchoPy, n.serverIP)
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// Ready once it answers from the client's side.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := exec.Command(ip, "netns", "exec", n.client, py, "-c",
			"import socket,sys; s=socket.create_connection((sys.argv[1],8000),2); s.sendall(b'x'); print(s.recv(100).decode())", n.serverIP).Output()
		if strings.Contains(string(out), "x from") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the echo server in %s does not answer", n.server)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n
}

// guardEchoPy echoes each connection's first message, with the peer's
// address, so that a rewrite of the funnel's shows in the answer.
const guardEchoPy = `
import socket, sys, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], 8000))
l.listen(64)
def serve(c, a):
    with c:
        d = c.recv(1000)
        c.sendall(d + b" from " + a[0].encode())
while True:
    c, a = l.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
`

// rawConnectC connects twice to the address given: once through libc's
// connect(), which the library hooks, and once with syscall(SYS_connect),
// which no LD_PRELOAD library sees. Each line says what came back.
const rawConnectC = `
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void try(const char *how, const char *ip, int port, int raw) {
	struct sockaddr_in sa = {0};
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	inet_pton(AF_INET, ip, &sa.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int r = raw ? syscall(SYS_connect, fd, (struct sockaddr *)&sa, sizeof sa)
	            : connect(fd, (struct sockaddr *)&sa, sizeof sa);
	if (r != 0) {
		printf("%s: error %s\n", how, strerrorname_np(errno));
		close(fd);
		return;
	}
	char buf[200];
	write(fd, "hello", 5);
	ssize_t n = read(fd, buf, sizeof buf - 1);
	buf[n > 0 ? n : 0] = 0;
	printf("%s: %s\n", how, buf);
	close(fd);
}

int main(int argc, char **argv) {
	if (argc != 3)
		return 2;
	try("libc", argv[1], atoi(argv[2]), 0);
	try("raw", argv[1], atoi(argv[2]), 1);
	return 0;
}
`

// guardTools copies the launcher, the library and the probe into a
// directory any user may read, for the run as an ordinary user.
func guardTools(t *testing.T) (funtun, probe string) {
	t.Helper()
	needBuild(t)
	src := compileC(t, "rawconnect", rawConnectC)
	dir, err := os.MkdirTemp("", "ftguard")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	for _, f := range []string{built.funtun, built.lib, src} {
		copyFile(t, f, filepath.Join(dir, filepath.Base(f)))
		os.Chmod(filepath.Join(dir, filepath.Base(f)), 0o755)
	}
	return filepath.Join(dir, "funtun"), filepath.Join(dir, "rawconnect")
}

func (n *guardNet) launch(t *testing.T, asUser bool, args ...string) (string, string, error) {
	return n.launchIn(t, "/nonexistent", asUser, args...)
}

// launchIn runs the launcher in the client's namespace, with profiles
// from profileDir.
func (n *guardNet) launchIn(t *testing.T, profileDir string, asUser bool, args ...string) (string, string, error) {
	t.Helper()
	argv := []string{"netns", "exec", n.client}
	if asUser {
		argv = append(argv, testutil.NeedTool(t, "setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups")
	}
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctxFor(t, 60*time.Second), n.ip, argv...)
	cmd.Env = append(cleanEnv(), "HOME=/nonexistent", "XDG_CONFIG_HOME=/nonexistent", "FUNTUN_PROFILE_PATH="+profileDir, "TMPDIR=/tmp")
	return run(t, cmd, "")
}

// TestGuardNetns: a raw syscall(SYS_connect) escapes the library and
// reaches the server without the guard (under mode=preload: the default
// mode's seccomp guard would catch it too, see seccomp_guard_test.go); with guard=netns it has nowhere
// to go (ENETUNREACH), while the hooked connect still reaches the server
// through the funnel, whose rewrite shows in the answer.
func TestGuardNetns(t *testing.T) {
	n := newGuardNet(t)
	funtun, probe := guardTools(t)
	chain := "chain=rewrite from=hello to=HELLO"

	out, errOut, err := n.launch(t, false, funtun, "mode=preload", chain, probe, n.serverIP, "8000")
	if err != nil {
		t.Fatalf("without the guard: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "libc: HELLO from") || !strings.Contains(out, "raw: hello from") {
		t.Fatalf("without the guard, want the hooked connect rewritten and the raw one escaping:\n%s%s", out, errOut)
	}

	check := func(t *testing.T, profileDir string, asUser bool, args ...string) {
		out, errOut, err := n.launchIn(t, profileDir, asUser, append([]string{funtun}, args...)...)
		if err != nil {
			t.Fatalf("%v\n%s%s", err, out, errOut)
		}
		if !strings.Contains(out, "libc: HELLO from") {
			t.Errorf("the hooked connect does not reach the server through the funnel:\n%s%s", out, errOut)
		}
		if !strings.Contains(out, "raw: error ENETUNREACH") {
			t.Errorf("the raw connect escapes the guard:\n%s%s", out, errOut)
		}
	}
	t.Run("root", func(t *testing.T) { check(t, "/nonexistent", false, "guard=netns", chain, probe, n.serverIP, "8000") })
	t.Run("user", func(t *testing.T) {
		needUserNamespaces(t)
		check(t, "/nonexistent", true, "guard=netns", chain, probe, n.serverIP, "8000")
	})

	// The same from a profile's option line; guard=none on the command
	// line wins over it.
	dir, err := os.MkdirTemp("", "ftguardprof")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	prof := "# the program sees loopback only\noption guard=netns\n\nrewrite from=hello to=HELLO\n"
	if err := os.WriteFile(filepath.Join(dir, "guarded.profile"), []byte(prof), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("profile", func(t *testing.T) { check(t, dir, false, "profile=guarded", probe, n.serverIP, "8000") })
	t.Run("command line wins", func(t *testing.T) {
		out, errOut, err := n.launchIn(t, dir, false, funtun, "mode=preload", "profile=guarded", "guard=none", probe, n.serverIP, "8000")
		if err != nil || !strings.Contains(out, "raw: hello from") {
			t.Errorf("guard=none on the command line should run the program unguarded: %v\n%s%s", err, out, errOut)
		}
	})
}

// needUserNamespaces: the guard as an ordinary user needs a kernel that
// lets users make user namespaces; where it does not, the launcher
// refuses (TestGuardRefusesWithoutUserNamespaces), and there is nothing
// more to test.
func needUserNamespaces(t *testing.T) {
	t.Helper()
	setpriv := testutil.NeedTool(t, "setpriv")
	unshare := testutil.NeedTool(t, "unshare")
	out, err := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", unshare, "-U", "-n", "true").CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("this system does not let an ordinary user make user namespaces: %v %s", err, out)
		}
		t.Skipf("this system does not let an ordinary user make user namespaces: %v %s", err, out)
	}
}

// TestGuardRefusesWithoutUserNamespaces: where an ordinary user may make
// no user namespace (here: a user namespace whose limit is spent, made
// with unshare), the launcher says why and does not run the program
// unguarded.
func TestGuardRefusesWithoutUserNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("setting a user namespace limit needs root")
		}
		t.Skip("setting a user namespace limit needs root")
	}
	unshare := testutil.NeedTool(t, "unshare")
	funtun, _ := guardTools(t)
	// The outer namespace (root inside) allows one namespace below it:
	// the inner one, as uid 1000, leaves none for the launcher.
	script := `echo 1 > /proc/sys/user/max_user_namespaces && exec "$0" -U --map-user=1000 --map-group=1000 "$@"`
	cmd := exec.CommandContext(ctxFor(t, 30*time.Second), unshare, "-U", "-r", "sh", "-c", script, unshare,
		funtun, "guard=netns", "chain=direct", "echo", "the program ran")
	cmd.Env = append(cleanEnv(), "FUNTUN_PROFILE_PATH=/nonexistent", "XDG_CONFIG_HOME=/nonexistent")
	out, errOut, err := run(t, cmd, "")
	if exitCode(err) != 126 {
		t.Errorf("exit status %d, want 126\n%s%s", exitCode(err), out, errOut)
	}
	if strings.Contains(out, "the program ran") {
		t.Errorf("the program ran without the guard:\n%s", out)
	}
	if !strings.Contains(errOut, "guard=netns: cannot make the program's network namespace") || !strings.Contains(errOut, "user namespaces") {
		t.Errorf("the refusal does not say why:\n%s", errOut)
	}
}

// TestIOUringProfileOption: `option io_uring=allow` in a profile does
// what --allow-io-uring does (the io_uring connect bypasses the rewrite,
// with the warning); io_uring=deny on the command line wins over it, and
// `funtun profiles check` names a bad value's place.
func TestIOUringProfileOption(t *testing.T) {
	needLiburing(t)
	probe := compileC(t, "uringsetup", uringSetupProbe)
	needIOUring(t, probe)
	conn := compileC(t, "uringconnect", uringConnect, "-luring")
	echo := echoWithLog(t)
	port := strconv.Itoa(echo.port())
	dir := t.TempDir()
	prof := "option io_uring=allow   # this program needs it\nrewrite from=ping to=pong dir=down\n"
	if err := os.WriteFile(filepath.Join(dir, "uring.profile"), []byte(prof), 0o644); err != nil {
		t.Fatal(err)
	}
	withProfiles := func(args ...string) *exec.Cmd {
		cmd := launcher(t, args...)
		cmd.Env = append(cmd.Env, "FUNTUN_PROFILE_PATH="+dir)
		return cmd
	}
	out, stderr, err := run(t, withProfiles("profile=uring", conn, port, "nofallback"), "")
	if err != nil || out != "via io_uring\nreply ping\n" {
		t.Fatalf("with option io_uring=allow: %v %q %s", err, out, stderr)
	}
	if !strings.Contains(stderr, "io_uring allowed") || !strings.Contains(stderr, "bypass the funnel") {
		t.Fatalf("option io_uring=allow did not warn: %q", stderr)
	}
	out, stderr, err = run(t, withProfiles("profile=uring", "io_uring=deny", conn, port, "nofallback"), "")
	if exitCode(err) != 3 || out != "io_uring_queue_init: ENOSYS\n" {
		t.Fatalf("io_uring=deny on the command line: exit %d %q %s", exitCode(err), out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "chain=rewrite from=ping to=pong dir=down", "io_uring=allow", conn, port, "nofallback"), "")
	if err != nil || out != "via io_uring\nreply ping\n" || !strings.Contains(stderr, "io_uring allowed") {
		t.Fatalf("io_uring=allow on the command line: %v %q %s", err, out, stderr)
	}

	bad := filepath.Join(t.TempDir(), "bad.profile")
	os.WriteFile(bad, []byte("# comment\noption io_uring=yes\ndirect\n"), 0o644)
	_, stderr, err = run(t, launcher(t, "profiles", "check", bad), "")
	if exitCode(err) != 1 || !strings.Contains(stderr, bad+":2:17: option io_uring: \"yes\" is not one of [allow deny]") {
		t.Fatalf("profiles check of a bad option: exit %d %s", exitCode(err), stderr)
	}
	_, stderr, err = run(t, launcher(t, "io_uring=yes", "true"), "")
	if exitCode(err) != 2 || !strings.Contains(stderr, "io_uring: \"yes\" is not one of [allow deny]") {
		t.Fatalf("a bad io_uring= on the command line: exit %d %s", exitCode(err), stderr)
	}
	good := filepath.Join(t.TempDir(), "good.profile")
	os.WriteFile(good, []byte("option guard=netns io_uring=allow\ndirect\n"), 0o644)
	cmd := launcher(t, "profiles", "show", "good")
	cmd.Env = append(cmd.Env, "FUNTUN_PROFILE_PATH="+filepath.Dir(good))
	out, stderr, err = run(t, cmd, "")
	if err != nil || !strings.Contains(out, "  option guard=netns\n  option io_uring=allow\n") {
		t.Fatalf("profiles show: %v %q %s", err, out, stderr)
	}
}

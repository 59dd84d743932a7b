//go:build linux

package preload

import (
	"context"
	"encoding/json"
	"errors"
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

// sdAnswer is what hooks/activate/testdata/sdserver.py answers, a
// socket-activated HTTP server that insists on LISTEN_PID being its own.
type sdAnswer struct {
	PID   int      `json:"pid"`
	Names []string `json:"names"`
	FDs   int      `json:"fds"`
	Sock  string   `json:"sock"`
	Peer  string   `json:"peer"`
}

// launchActivated runs `systemd-socket-activate -l addr funtun args…`: the
// launcher itself is socket-activated, so the socket is the program's.
func launchActivated(t *testing.T, addr string, args ...string) (*exec.Cmd, *testutil.LogBuffer, *waited) {
	t.Helper()
	needBuild(t)
	sa := testutil.NeedTool(t, "systemd-socket-activate")
	cmd := exec.Command(sa, append([]string{"-l", addr, built.funtun}, args...)...)
	cmd.Env = append(cleanEnv(), "XDG_CONFIG_HOME="+t.TempDir(), "FUNTUN_PROFILE_PATH="+t.TempDir())
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := &waited{ch: make(chan struct{})}
	go func() {
		done.err = cmd.Wait()
		close(done.ch)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done.ch:
		case <-time.After(10 * time.Second):
		}
		if t.Failed() {
			t.Logf("output:\n%s", out.String())
		}
	})
	testutil.WaitListen(t, addr)
	return cmd, out, done
}

// waited is a process's end: ch closes when err is set.
type waited struct {
	ch  chan struct{}
	err error
}

// getSD fetches url and returns the answer and the client's own address.
func getSD(t *testing.T, url string) (sdAnswer, string, string) {
	t.Helper()
	var local string
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		},
	}}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a sdAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("GET %s: %q: %v", url, body, err)
	}
	return a, local, string(body)
}

func sdServerScript() string {
	return filepath.Join(moduleRoot(), "hooks", "activate", "testdata", "sdserver.py")
}

// stopLauncher sends SIGTERM and returns the exit status.
func stopLauncher(t *testing.T, cmd *exec.Cmd, done *waited) int {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done.ch:
		var ee *exec.ExitError
		if errors.As(done.err, &ee) {
			return ee.ExitCode()
		}
		if done.err != nil {
			t.Fatal(done.err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatal("the launcher did not exit within 20s of SIGTERM")
	}
	return -1
}

// TestLauncherInheritedRewrite: `systemd-socket-activate -l ADDR funtun
// chain='rewrite …' python3 sdserver.py`. The socket passed to the launcher
// is served in the funnel, as the program's own listen() would be: the
// rewrite piece changes the server's answer, curl sees it, and through the
// library the program still sees the real client and its public address.
func TestLauncherInheritedRewrite(t *testing.T) {
	py := python(t)
	curl := testutil.NeedTool(t, "curl")
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cmd, out, done := launchActivated(t, addr, "--debug", "chain=rewrite from=names to=NAMES dir=up", py, sdServerScript())

	body, err := exec.Command(curl, "-sS", "--max-time", "20", "http://"+addr+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, body)
	}
	if !strings.Contains(string(body), `"NAMES": ["unknown"]`) || !strings.Contains(string(body), `"fds": 1`) {
		t.Fatalf("curl got %s; want the answer rewritten (NAMES) by the funnel", body)
	}
	a, local, raw := getSD(t, "http://"+addr+"/peer")
	if a.Peer != local || a.Sock != addr {
		t.Errorf("the program saw peer %s on %s; want the real client %s on the public %s (%s)", a.Peer, a.Sock, local, addr, raw)
	}
	if !strings.Contains(out.String(), "feeding the program's inherited socket") || !strings.Contains(out.String(), "hook=preload") {
		t.Errorf("no fed socket or no flow in the log")
	}
	// The hidden listener takes connections from the funnel only: one
	// made to it directly, around the pieces, is turned away unanswered.
	m := regexp.MustCompile(`feeding the program's inherited socket.* hidden=(\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no hidden address in the log")
	}
	c, err := net.DialTimeout("tcp", m[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /around HTTP/1.0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	around, err := io.ReadAll(c)
	c.Close()
	// Closed with our request unread: a reset, or an end.
	if len(around) > 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("a connection to the hidden listener %s got %q, %v; want it closed unanswered", m[1], around, err)
	}
	if code := stopLauncher(t, cmd, done); code != 128+int(syscall.SIGTERM) {
		t.Errorf("the launcher exited %d; the server died of SIGTERM, want %d", code, 128+int(syscall.SIGTERM))
	}
	if syscall.Kill(a.PID, 0) != syscall.ESRCH {
		t.Errorf("the server (pid %d) outlived the launcher", a.PID)
	}
}

// TestLauncherInheritedDirect: with a profile that leaves incoming flows
// alone, the program gets the inherited socket itself.
func TestLauncherInheritedDirect(t *testing.T) {
	py := python(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cmd, out, done := launchActivated(t, addr, "--debug", "profile=direct", py, sdServerScript())
	a, local, raw := getSD(t, "http://"+addr+"/")
	if a.Peer != local || a.Sock != addr || a.FDs != 1 {
		t.Errorf("the program saw %s; want peer %s on %s", raw, local, addr)
	}
	if !strings.Contains(out.String(), "the program gets its inherited socket itself") || strings.Contains(out.String(), "inbound=true") {
		t.Errorf("the socket was not handed over, or a flow was relayed")
	}
	stopLauncher(t, cmd, done)
}

// TestFedOpMatchesC: FT_OP_FED in funtun_wire.h is opFed here.
func TestFedOpMatchesC(t *testing.T) {
	cc := testutil.NeedTool(t, "cc")
	dir := t.TempDir()
	src := filepath.Join(dir, "fed.c")
	os.WriteFile(src, []byte("#include <stdio.h>\n#include \"funtun_wire.h\"\nint main(void) { printf(\"%d\\n\", FT_OP_FED); return 0; }\n"), 0o644)
	bin := filepath.Join(dir, "fed")
	if out, err := exec.Command(cc, "-I", filepath.Join(moduleRoot(), "preload"), "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != fmt.Sprint(opFed) {
		t.Fatalf("FT_OP_FED is %s in C, opFed %d in Go", got, opFed)
	}
}

// TestLauncherInheritedBadStarts: a missing program, a wrong profile and a
// program that exits at once, each under socket activation: a clear
// message and status, and the launcher gone.
func TestLauncherInheritedBadStarts(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"chain=rewrite from=a to=b", "no-such-program-here"}, 127, "no-such-program-here: command not found"},
		{[]string{"profile=no-such-profile", "true"}, 1, `no profile named "no-such-profile"`},
		{[]string{"chain=rewrite from=a to=b", "sh", "-c", `[ "$LISTEN_PID" = $$ ] && [ "$LISTEN_FDS" = 1 ] && exit 7`}, 7, ""},
		{[]string{"profile=direct", "sh", "-c", `[ "$LISTEN_PID" = $$ ] && [ "$LISTEN_FDNAMES" = unknown ] && exit 5`}, 5, ""},
	} {
		addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		_, out, done := launchActivated(t, addr, c.args...)
		select {
		case <-done.ch:
		case <-time.After(20 * time.Second):
			t.Fatalf("%q: still running after 20s", c.args)
		}
		var ee *exec.ExitError
		code := 0
		if errors.As(done.err, &ee) {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(out.String(), c.want) {
			t.Errorf("%q: exit %d, want %d with %q:\n%s", c.args, code, c.code, c.want, out.String())
		}
	}
}

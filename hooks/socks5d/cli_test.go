package socks5d

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// These tests run the funtun binary the way a user does.

// profileDir holds the profiles the binary sees (FUNTUN_PROFILE_PATH).
func profileDir(t *testing.T, profiles map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range profiles {
		if err := os.WriteFile(filepath.Join(dir, name+".profile"), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startFuntun runs a long-lived funtun command until the test ends; its
// output goes to the test log when the test fails.
func startFuntun(t *testing.T, env []string, name string, args ...string) (*exec.Cmd, *testutil.LogBuffer) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &testutil.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not end within 10s of SIGINT", name)
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, out.String())
		}
	})
	return cmd, out
}

// binaryChain is the acting chain for the binary, made of the pieces it
// has built in (cmd/funtun/pieces.go decides): the rewrite when it is
// there, else the hosts piece alone (demo.test still exists only inside
// the funnel). It returns the chain, what a user of the "work" profile
// sees, and what other clients see.
func binaryChain(t *testing.T, bin string) (chain, work, other string) {
	t.Helper()
	out, _, _ := runTool(t, nil, bin, "pieces")
	if regexp.MustCompile(`(?m)^rewrite\s`).MatchString(out) {
		return actingChain, "rewrite from=hello to=WORK! | hosts demo.test=127.0.0.1 strict=true", clientSees
	}
	t.Log("the binary has no rewrite piece: using hosts alone")
	return "hosts demo.test=127.0.0.1 strict=true", "hosts demo.test=127.0.0.1 strict=true", serverSays
}

func TestRefusesToListenOpenWithoutAuth(t *testing.T) {
	bin := funtunBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "socks5d", "--listen", "0.0.0.0:0")
	cmd.Env = append(os.Environ(), "FUNTUN_PROFILE_PATH="+profileDir(t, nil))
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, output %s; want exit status 1", err, out)
	}
	for _, want := range []string{
		"funtun socks5d: refusing to listen on 0.0.0.0:0 without",
		"without --users or --allow: that is every address of this machine",
		"Require logins with --users FILE (add users with `funtun socks5d adduser FILE USER`)",
		"--allow CIDR (e.g. --allow 192.168.1.0/24)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestAddUserCommand(t *testing.T) {
	bin := funtunBin(t)
	file := filepath.Join(t.TempDir(), "users")
	add := func(pass string, args ...string) string {
		t.Helper()
		_, errOut, code := runToolInput(t, nil, pass+"\n", bin, append([]string{"socks5d", "adduser", file}, args...)...)
		if code != 0 {
			t.Fatalf("adduser exit %d: %s", code, errOut)
		}
		return errOut
	}
	if got := add("first", "bob", "work"); got != "added user bob (profile work) in "+file+"\n" {
		t.Errorf("adduser said %q", got)
	}
	add("pw", "carol")
	if got := add("second", "bob"); got != "replaced user bob in "+file+"\n" {
		t.Errorf("adduser said %q", got)
	}
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("users file has mode %v, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(file)
	if !regexp.MustCompile(`^bob:\$2a\$10\$[./A-Za-z0-9]{53}\ncarol:\$2a\$10\$[./A-Za-z0-9]{53}\n$`).Match(data) {
		t.Fatalf("users file:\n%s", data)
	}
	u := mustLoadUsers(t, file)
	if _, ok := u.Check("bob", "first"); ok {
		t.Error("bob's old password still works")
	}
	if e, ok := u.Check("bob", "second"); !ok || e.profile != "" {
		t.Errorf("bob/second: ok=%v profile=%q; want ok and no profile", ok, e.profile)
	}
	if _, code := runToolCode(t, bin, "", "socks5d", "adduser", file, "bad:name"); code != 2 {
		t.Errorf("a user name with a colon: exit %d, want 2", code)
	}
	if _, code := runToolCode(t, bin, "\n", "socks5d", "adduser", file, "dave"); code != 1 {
		t.Errorf("an empty password: exit %d, want 1", code)
	}
}

func runToolCode(t *testing.T, bin, input string, args ...string) (string, int) {
	t.Helper()
	_, errOut, code := runToolInput(t, nil, input, bin, args...)
	return errOut, code
}

// The binary with two listeners (IPv4 and IPv6), a users file whose user
// picks a profile, and curl through each.
func TestBinaryEndToEnd(t *testing.T) {
	bin := funtunBin(t)
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	chain, work, sees := binaryChain(t, bin)
	workSees := sees
	if work != chain {
		workSees = "WORK! from the test server\n"
	}
	dir := profileDir(t, map[string]string{"work": work})
	users := filepath.Join(t.TempDir(), "users")
	runToolInput(t, nil, "secret\n", bin, "socks5d", "adduser", users, "alice")
	runToolInput(t, nil, "office\n", bin, "socks5d", "adduser", users, "work", "work")
	p4, p6 := testutil.FreePort(t), freePort6(t)
	l4, l6 := "127.0.0.1:"+strconv.Itoa(p4), "[::1]:"+strconv.Itoa(p6)
	daemon, _ := startFuntun(t, []string{"FUNTUN_PROFILE_PATH=" + dir}, bin, "socks5d", "--listen", l4, "--listen", l6, "--users", users, "chain="+chain)
	testutil.WaitListen(t, l4)
	testutil.WaitListen(t, l6)
	url := "http://demo.test:" + strconv.Itoa(web.Port) + "/"
	for _, c := range []struct{ proxy, want string }{
		{"socks5h://alice:secret@" + l4, sees},
		{"socks5h://alice:secret@" + l6, sees},
		{"socks5h://work:office@" + l4, workSees},
	} {
		out, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "-x", c.proxy, url)
		if code != 0 || out != c.want {
			t.Errorf("curl -x %s: exit %d, output %q, stderr %q; want %q", c.proxy, code, out, errOut, c.want)
		}
	}

	// A user added while socks5d runs can log in after SIGHUP.
	runToolInput(t, nil, "later\n", bin, "socks5d", "adduser", users, "carol")
	proxy := "socks5h://carol:later@" + l4
	if _, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "-x", proxy, url); code != 97 || !strings.Contains(errOut, "User was rejected") {
		t.Fatalf("carol before SIGHUP: exit %d, stderr %q; want her rejected", code, errOut)
	}
	daemon.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "-x", proxy, url)
		if code == 0 && out == sees {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("carol 10s after SIGHUP: exit %d, output %q, stderr %q", code, out, errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort6(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Socket activation with systemd's own tool: the listening socket comes
// from it, and no default listener is opened.
func TestSystemdSocketActivation(t *testing.T) {
	bin := funtunBin(t)
	ssa := testutil.NeedTool(t, "systemd-socket-activate")
	curl := testutil.NeedTool(t, "curl")
	web := helloServer(t)
	chain, _, sees := binaryChain(t, bin)
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	_, out := startFuntun(t, nil, ssa, "-l", addr, "--fdname=socks",
		"-E", "FUNTUN_PROFILE_PATH="+profileDir(t, nil),
		bin, "socks5d", "chain="+chain)
	testutil.WaitListen(t, addr)
	got, errOut, code := runTool(t, nil, curl, "-sS", "--max-time", "20", "--socks5-hostname", addr, "http://demo.test:"+strconv.Itoa(web.Port)+"/")
	if code != 0 || got != sees {
		t.Fatalf("curl: exit %d, output %q, stderr %q; want %q", code, got, errOut, sees)
	}
	if log := out.String(); !strings.Contains(log, "listen="+addr+" ") {
		t.Errorf("socks5d does not say it serves only the activated socket %s:\n%s", addr, log)
	}
}

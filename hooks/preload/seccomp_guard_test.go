//go:build linux

package preload

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp guard under the library: mode=auto, the default, for a
// dynamically linked program. The launcher is run without any mode= word
// in these tests, as a user runs it.

// dynamicClient is testdata/seccomp/client.c linked dynamically, so that
// the library hooks its ordinary calls and only its raw ones escape it.
var dynamicClientBuild struct {
	once sync.Once
	path string
	err  error
}

func dynamicClient(t *testing.T) string {
	t.Helper()
	needBuild(t)
	b := &dynamicClientBuild
	b.once.Do(func() {
		b.path = filepath.Join(built.dir, "seccomp-client-dynamic")
		cmd := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", b.path, "testdata/seccomp/client.c")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("building the dynamic client: %v", b.err)
	}
	return b.path
}

// TestGuardRawConnect: a raw syscall(SYS_connect) in a hooked program goes
// through the profile under the default mode. Under mode=preload the same
// call passes the library by (the bytes come back unrewritten): that is
// what the guard is for.
func TestGuardRawConnect(t *testing.T) {
	client := dynamicClient(t)
	port := helloServer(t)
	out, stderr, err := run(t, launcher(t, rewriteChain, client, "rawget", "127.0.0.1", port, "/"), "")
	if err != nil || out != "hello Y from test\n" {
		t.Fatalf("under the default mode the raw connect read %q (%v), want the rewritten answer\n%s", out, err, stderr)
	}
	out, stderr, err = run(t, launcher(t, "mode=preload", rewriteChain, client, "rawget", "127.0.0.1", port, "/"), "")
	if err != nil || out != "hello X from test\n" {
		t.Fatalf("mode=preload: %q (%v), want the raw connect to pass the library by\n%s", out, err, stderr)
	}
}

// TestGuardChildren: a hooked sh starts a static child and a dynamic
// child with an empty environment (no LD_PRELOAD, no FUNTUN_SOCKET):
// both stay in the funnel.
func TestGuardChildren(t *testing.T) {
	static, _ := seccompClients(t)
	client := dynamicClient(t)
	port := helloServer(t)
	script := fmt.Sprintf("%s get 127.0.0.1 %s / && env -i %s get 127.0.0.1 %s /", static, port, client, port)
	out, stderr, err := run(t, launcher(t, rewriteChain, "sh", "-c", script), "")
	if err != nil || out != "hello Y from test\nhello Y from test\n" {
		t.Fatalf("the children read %q (%v), want the rewritten answer twice\n%s", out, err, stderr)
	}
}

// TestGuardDatagrams: DNS with sendto and recvfrom to the nameserver of
// resolv.conf (demo.test exists in the profile only). Made through the C
// library, the library sends the query to the funnel's responder itself,
// and the guard must let that datagram reach the responder unchanged
// rather than route it a second time (under a profile for streams only
// that second flow would be refused). Made as raw system calls, the light
// guard stops the sendto and sends the query to the funnel's responder,
// but leaves recvfrom alone (stopping it would cost every Unix-socket
// message a round trip): the answer shows the responder's address, which
// a resolver rejects — it fails, and nothing leaks. mode=seccomp, which
// stops recvfrom too, resolves it (TestSeccompDNSDatagram).
func TestGuardDatagrams(t *testing.T) {
	client := dynamicClient(t)
	synthetic := netip.MustParsePrefix("198.18.0.0/15")
	out, stderr, err := run(t, launcher(t, "--debug", demoSeccompChain, client, "resolve", "demo.test", "sendto"), "")
	a, perr := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil || perr != nil || !synthetic.Contains(a) {
		t.Fatalf("resolve: demo.test resolved to %q (%v), want an address of the funnel's %s\n%s", out, err, synthetic, stderr)
	}
	if strings.Contains(stderr, "flow failed") {
		t.Errorf("resolve: a flow failed:\n%s", stderr)
	}
	out, stderr, err = run(t, launcher(t, "--debug", demoSeccompChain, client, "rawresolve", "demo.test"), "")
	if err == nil {
		t.Fatalf("rawresolve: resolved to %q under the guard, want the answer rejected for its source\n%s", out, stderr)
	}
	if !strings.Contains(stderr, "answering DNS datagrams inside the funnel") || !strings.Contains(stderr, "the answer came from 127.0.0.1:") {
		t.Fatalf("rawresolve: the query did not reach the funnel's responder, or failed otherwise:\n%s", stderr)
	}
}

// TestDefaultGoProgram: a Go program built with CGO_ENABLED=0 runs under
// the default mode, through the funnel: its own resolver and connect.
func TestDefaultGoProgram(t *testing.T) {
	_, goclient := seccompClients(t)
	port := helloServer(t)
	out, stderr, err := run(t, launcher(t, demoSeccompChain, goclient, "http://demo.test:"+port+"/"), "")
	if want := "hello Y from demo.test:" + port + "\n"; err != nil || out != want {
		t.Fatalf("the Go client printed %q (%v), want %q\n%s", out, err, want, stderr)
	}
}

// TestGuardPlainDirect: under profile=direct the library connects literal
// addresses itself after the first answer (its fast path); under the guard
// those connects stop in the kernel and must go on there, each reported
// once (by the library), none failed, none taken over by the supervisor.
// A raw connect in the same run is the supervisor's to report.
func TestGuardPlainDirect(t *testing.T) {
	echo := echoWithLog(t)
	port := strconv.Itoa(echo.port())
	const n = 20
	out, stderr, err := run(t, launcher(t, "--debug", "profile=direct", built.client, "echo", "127.0.0.1", port, strconv.Itoa(n)), "")
	if err != nil || !strings.HasPrefix(out, "ok "+strconv.Itoa(n)+" ") {
		t.Fatalf("ftclient: %v\n%s%s", err, out, stderr)
	}
	handed := strings.Count(stderr, `msg="flow handed off"`)
	fast := strings.Count(stderr, `msg="flow connected by the library"`)
	byGuard := strings.Count(stderr, "flow connected by the program")
	if handed != 1 || fast != n-1 || byGuard != 0 {
		t.Errorf("%d handed off, %d connected by the library, %d by the supervisor: want 1, %d, 0\n%s", handed, fast, byGuard, n-1, stderr)
	}
	if strings.Contains(stderr, "failed") || strings.Contains(stderr, "WARN") {
		t.Errorf("something failed or warned:\n%s", stderr)
	}
	if got := len(echo.seen()); got != n {
		t.Errorf("the server saw %d connections, want %d", got, n)
	}

	port2 := helloServer(t)
	out, stderr, err = run(t, launcher(t, "--debug", "profile=direct", dynamicClient(t), "rawget", "127.0.0.1", port2, "/"), "")
	if err != nil || out != "hello X from test\n" {
		t.Fatalf("raw connect under profile=direct: %q (%v)\n%s", out, err, stderr)
	}
	if c := strings.Count(stderr, "flow connected by the program past the library"); c != 1 {
		t.Errorf("the raw connect was reported %d times, want once:\n%s", c, stderr)
	}
}

// TestGuardFallback: where the supervisor cannot work (here pidfd_getfd
// fails with ENOSYS, as before Linux 5.6), the default mode runs a dynamic
// program with the library alone and says so; a static program is refused
// as under mode=seccomp, never run around the funnel.
func TestGuardFallback(t *testing.T) {
	client := dynamicClient(t)
	static, _ := seccompClients(t)
	port := helloServer(t)
	type result struct {
		out, stderr string
		err         error
	}
	// The launcher inherits a filter from the thread that starts it: the
	// thread is never unlocked, so Go ends it with the goroutine.
	runWithoutPidfdGetfd := func(args ...string) result {
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			if err := denyPidfdGetfdHere(); err != nil {
				done <- result{err: err}
				return
			}
			cmd := launcher(t, args...)
			var out, errOut bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errOut
			err := cmd.Run()
			done <- result{out.String(), errOut.String(), err}
		}()
		return <-done
	}
	r := runWithoutPidfdGetfd(rewriteChain, client, "get", "127.0.0.1", port, "/")
	if r.err != nil || r.out != "hello Y from test\n" {
		t.Fatalf("without the guard: %q (%v)\n%s", r.out, r.err, r.stderr)
	}
	if !strings.Contains(r.stderr, "no seccomp guard under the library") || !strings.Contains(r.stderr, "pidfd_getfd") {
		t.Errorf("no warning that the guard is missing:\n%s", r.stderr)
	}
	r = runWithoutPidfdGetfd(rewriteChain, static, "get", "127.0.0.1", port, "/")
	if exitCode(r.err) != 126 || r.out != "" || !strings.Contains(r.stderr, "refusing to run") {
		t.Fatalf("a static program without the supervisor: exit %d, %q\n%s", exitCode(r.err), r.out, r.stderr)
	}
}

// denyPidfdGetfdHere makes pidfd_getfd (438 on every architecture since
// Linux 5.1's common numbering) fail with ENOSYS on this thread and all
// it starts.
func denyPidfdGetfdHere() error {
	filter, err := sockFilter([]bpf.Instruction{
		bpf.LoadAbsolute{Off: seccompDataNr, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 438, SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
	})
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return errno
	}
	runtime.KeepAlive(filter)
	return nil
}

// TestGuardedStart: the guard's start function falls back to the
// library's only when the supervisor could not be set up, and passes any
// other failure (the program's own) on.
func TestGuardedStart(t *testing.T) {
	var warned bytes.Buffer
	fellBack := false
	fallback := func(start func() (*os.Process, error)) (*os.Process, error) {
		fellBack = true
		return start()
	}
	noSup := func(func() (*os.Process, error)) (*os.Process, error) {
		return nil, errNoSupervisor{errors.New("this kernel has no seccomp user notification (Linux 5.6 or later is needed)")}
	}
	me := &os.Process{Pid: os.Getpid()}
	p, err := guardedStart(noSup, fallback, &warned, "/usr/bin/prog")(func() (*os.Process, error) { return me, nil })
	if err != nil || p != me || !fellBack || !strings.Contains(warned.String(), "/usr/bin/prog runs with the library alone") {
		t.Errorf("no supervisor: %v %v fell back %v, warned %q", p, err, fellBack, warned.String())
	}
	fellBack = false
	warned.Reset()
	notFound := errors.New("fork/exec: no such file")
	failing := func(start func() (*os.Process, error)) (*os.Process, error) { return start() }
	_, err = guardedStart(failing, fallback, &warned, "x")(func() (*os.Process, error) { return nil, notFound })
	if err != notFound || fellBack || warned.Len() != 0 {
		t.Errorf("a failed start: %v, fell back %v, warned %q", err, fellBack, warned.String())
	}
}

// TestLaunchMode: what each mode= word, and none, gives for each kind of
// program.
func TestLaunchMode(t *testing.T) {
	static := errSelfCalling{errors.New("statically linked")}
	setuid := errors.New("set-user-ID")
	for _, tc := range []struct {
		word     string
		hookable error
		mode     string
		guarded  bool
	}{
		{"", nil, modePreload, true},
		{"", static, modeSeccomp, false},
		{"", setuid, modePreload, false},
		{"auto", nil, modePreload, true},
		{"preload", nil, modePreload, false},
		{"preload", static, modePreload, false},
		{"seccomp", nil, modeSeccomp, false},
	} {
		mode, guarded := launchMode(tc.word, tc.hookable)
		if mode != tc.mode || guarded != tc.guarded {
			t.Errorf("mode=%q, %v: %s guarded %v, want %s guarded %v", tc.word, tc.hookable, mode, guarded, tc.mode, tc.guarded)
		}
	}
}

// TestGuardOrphans: what the program leaves running after it exits (here
// a background job of sh that starts once funtun is gone) keeps working
// on Unix sockets, and its network calls fail closed, as with the library
// alone: the listener went to the keeper. Without it every stopped call
// would fail with ENOSYS, a Unix-socket recvmsg included.
func TestGuardOrphans(t *testing.T) {
	client := dynamicClient(t)
	static, _ := seccompClients(t)
	py := python(t)
	port := helloServer(t)
	out := filepath.Join(t.TempDir(), "out")
	ipc := `import socket
a, b = socket.socketpair()
a.sendmsg([b"ping"])
print("unix:", b.recvmsg(10)[0].decode())`
	for _, mode := range []string{"mode=auto", "mode=seccomp"} {
		os.Remove(out)
		// The job waits for funtun to exit: it reads the pipe funtun's
		// stdout is, until funtun and sh have closed it.
		script := fmt.Sprintf(`exec 3>&1; ( exec >%s 2>&1 3>&-; cat <&4 >/dev/null; %s -c '%s'; %s rawget 127.0.0.1 %s /; %s get 127.0.0.1 %s /; echo done ) 4<&0 &`,
			out, py, ipc, client, port, static, port)
		cmd := launcher(t, mode, rewriteChain, "sh", "-c", script)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, o)
		}
		// funtun has exited: the job may go on.
		stdin.Close()
		var got string
		for i := 0; i < 200; i++ {
			data, _ := os.ReadFile(out)
			if got = string(data); strings.HasSuffix(got, "done\n") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(got, "unix: ping\n") {
			t.Errorf("%s: the Unix socket did not work after funtun exited:\n%s", mode, got)
		}
		if strings.Contains(got, "hello") || strings.Count(got, "Connection refused") != 2 || !strings.HasSuffix(got, "done\n") {
			t.Errorf("%s: want both connects refused (closed, not open) after funtun exited:\n%s", mode, got)
		}
	}
}

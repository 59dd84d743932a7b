//go:build linux

package preload

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The programs of mode=seccomp's tests, built once: a C client linked
// with gcc -static and a Go client built with CGO_ENABLED=0, neither of
// which LD_PRELOAD can hook (see testdata/seccomp).
var seccompPrograms struct {
	once             sync.Once
	client, goclient string
	err              error
}

func seccompClients(t *testing.T) (client, goclient string) {
	t.Helper()
	needBuild(t)
	testutil.NeedTool(t, "gcc")
	seccompPrograms.once.Do(func() {
		p := &seccompPrograms
		p.client = filepath.Join(built.dir, "seccomp-client")
		p.goclient = filepath.Join(built.dir, "seccomp-goclient")
		steps := [][]string{
			{"gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", p.client, "testdata/seccomp/client.c"},
			{"go", "build", "-o", p.goclient, "./testdata/seccomp/goclient"},
		}
		for _, s := range steps {
			cmd := exec.Command(s[0], s[1:]...)
			cmd.Env = append(cleanEnv(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				p.err = fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
	})
	if seccompPrograms.err != nil {
		t.Fatalf("building the test programs (a static libc is needed: libc6-dev / glibc-static): %v", seccompPrograms.err)
	}
	return seccompPrograms.client, seccompPrograms.goclient
}

// rewriteChain visibly acts: the hello server says X, the program must
// read Y, so the bytes went through the pieces and not around them.
const rewriteChain = "chain=rewrite from=X to=Y dir=down"

// demoSeccompChain adds a name only the profile knows.
const demoSeccompChain = "chain=hosts demo.test=127.0.0.1 | rewrite from=X to=Y dir=down"

func runSeccomp(t *testing.T, chain string, program ...string) (string, string) {
	t.Helper()
	out, stderr, err := run(t, launcher(t, append([]string{"mode=seccomp", chain}, program...)...), "")
	if err != nil {
		t.Fatalf("funtun mode=seccomp %s: %v\nstdout: %s\nstderr: %s", strings.Join(program, " "), err, out, stderr)
	}
	return out, stderr
}

func TestSeccompStaticC(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	out, _ := runSeccomp(t, rewriteChain, client, "get", "127.0.0.1", port, "/")
	if out != "hello Y from test\n" {
		t.Fatalf("the static client printed %q, want %q", out, "hello Y from test\n")
	}
}

func TestSeccompNonBlockingConnect(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	// The client connects with O_NONBLOCK, polls its own socket and asks
	// SO_ERROR: the supervisor's connect on the duplicate must leave that
	// socket to carry the result.
	out, stderr := runSeccomp(t, rewriteChain, client, "nbget", "127.0.0.1", port, "/")
	if out != "hello Y from test\n" {
		t.Fatalf("the static client printed %q\n%s", out, stderr)
	}
	t.Logf("client: %s", strings.TrimSpace(stderr))
}

func TestSeccompGoProgram(t *testing.T) {
	_, goclient := seccompClients(t)
	port := helloServer(t)
	// demo.test exists in the profile only: Go's own resolver asks the
	// nameserver of resolv.conf over UDP, and the funnel answers.
	out, _ := runSeccomp(t, demoSeccompChain, goclient, "http://demo.test:"+port+"/")
	if want := "hello Y from demo.test:" + port + "\n"; out != want {
		t.Fatalf("the Go client printed %q, want %q", out, want)
	}
}

func TestSeccompCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	out, _ := runSeccomp(t, demoSeccompChain, curl, "-sS", "--noproxy", "*", "http://demo.test:"+port+"/")
	if want := "hello Y from demo.test:" + port + "\n"; out != want {
		t.Fatalf("curl printed %q, want %q", out, want)
	}
}

// TestSeccompDNSDatagram: a static program's own DNS query to the
// nameserver of resolv.conf is answered inside the funnel, over a
// connected socket and with sendto; the answer comes from the nameserver's
// address as the program sees it (resolvers check it).
func TestSeccompDNSDatagram(t *testing.T) {
	client, _ := seccompClients(t)
	synthetic := netip.MustParsePrefix("198.18.0.0/15")
	for _, how := range []string{"connect", "sendto"} {
		out, stderr := runSeccomp(t, demoSeccompChain, client, "resolve", "demo.test", how)
		a, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil || !synthetic.Contains(a) {
			t.Fatalf("%s: demo.test resolved to %q, want an address of the funnel's %s\n%s", how, out, synthetic, stderr)
		}
	}
	port := helloServer(t)
	out, stderr := runSeccomp(t, demoSeccompChain, client, "nameget", "demo.test", port, "/")
	if out != "hello Y from test\n" {
		t.Fatalf("the static client printed %q\n%s", out, stderr)
	}
}

// TestSeccompEmptyEnvironment: a child started with no environment at
// all (no LD_PRELOAD, no FUNTUN_SOCKET) stays hooked: the filter is the
// kernel's, inherited across fork and exec.
func TestSeccompEmptyEnvironment(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	out, _ := runSeccomp(t, rewriteChain, client, "exec-empty", client, "get", "127.0.0.1", port, "/")
	if out != "hello Y from test\n" {
		t.Fatalf("the child printed %q", out)
	}
}

// TestSeccompHundredChildren: a program that forks 100 children, each of
// which connects: every one of them reads the rewritten answer.
func TestSeccompHundredChildren(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	out, stderr := runSeccomp(t, rewriteChain, client, "fork", "100", "127.0.0.1", port, "/")
	if strings.TrimSpace(out) != "100" {
		t.Fatalf("%s of 100 children read the answer through the funnel\n%s", strings.TrimSpace(out), stderr)
	}
}

// TestSeccompGetpeername: a relayed socket's peer is the relay hub; the
// program is shown the address it connected to.
func TestSeccompGetpeername(t *testing.T) {
	py := python(t)
	port := helloServer(t)
	out, _ := runSeccomp(t, rewriteChain, py, "-c",
		"import socket; s = socket.create_connection(('127.0.0.1', "+port+")); print('%s:%d' % s.getpeername())")
	if want := "127.0.0.1:" + port + "\n"; out != want {
		t.Fatalf("getpeername said %q, want %q", out, want)
	}
}

// TestSeccompPreloadRefusesStatic: without the supervisor, a static
// program is refused as before, not run around the funnel.
func TestSeccompPreloadRefusesStatic(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	_, stderr, err := run(t, launcher(t, "mode=preload", rewriteChain, client, "get", "127.0.0.1", port, "/"), "")
	if exitCode(err) != 126 || !strings.Contains(stderr, "statically linked") {
		t.Fatalf("mode=preload ran the static client: exit %d\n%s", exitCode(err), stderr)
	}
	// mode=auto picks the supervisor for it.
	out, stderr, err := run(t, launcher(t, "mode=auto", rewriteChain, client, "get", "127.0.0.1", port, "/"), "")
	if err != nil || out != "hello Y from test\n" {
		t.Fatalf("mode=auto: %v, %q\n%s", err, out, stderr)
	}
}

func TestSeccompBadMode(t *testing.T) {
	_, stderr, err := run(t, launcher(t, "mode=ptrace", "true"), "")
	if exitCode(err) != 2 || !strings.Contains(stderr, "mode=ptrace") {
		t.Fatalf("exit %d, %q", exitCode(err), stderr)
	}
}

// seccompInput builds struct seccomp_data for x/net/bpf's interpreter.
// The kernel's filter loads a word of seccomp_data in the machine's order,
// the interpreter in network order (it is made for packets): each word is
// stored so that the interpreter reads what the kernel's load would, the
// halves of an argument where argOffset says they are.
func seccompInput(arch uint32, nr int32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[seccompDataNr:], uint32(nr))
	binary.BigEndian.PutUint32(b[seccompDataArch:], arch)
	for i, a := range args {
		lo, hi := argOffset(i)
		binary.BigEndian.PutUint32(b[lo:], uint32(a))
		binary.BigEndian.PutUint32(b[hi:], uint32(a>>32))
	}
	return b
}

// TestSupervisorFilter runs the filter in x/net/bpf's interpreter over
// every kind of call it must tell apart, on each ABI of x86-64.
func TestSupervisorFilter(t *testing.T) {
	abis, err := sockABIs("amd64")
	if err != nil {
		t.Fatal(err)
	}
	const (
		notify = unix.SECCOMP_RET_USER_NOTIF
		allow  = unix.SECCOMP_RET_ALLOW
		enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	)
	x64, i386 := uint32(unix.AUDIT_ARCH_X86_64), uint32(unix.AUDIT_ARCH_I386)
	for _, tc := range []struct {
		name string
		in   []byte
		want uint32
	}{
		{"connect", seccompInput(x64, 42, 3, 0x1000, 16), notify},
		{"read", seccompInput(x64, 0, 3, 0x1000, 16), allow},
		{"sendto with an address", seccompInput(x64, 44, 3, 0x1000, 10, 0, 0x2000, 16), notify},
		{"sendto with an address above 4 GiB", seccompInput(x64, 44, 3, 0x1000, 10, 0, 0x7fff00000000, 16), notify},
		{"send (sendto without an address)", seccompInput(x64, 44, 3, 0x1000, 10, 0, 0, 0), allow},
		{"sendmsg", seccompInput(x64, 46, 3, 0x1000, 0), notify},
		{"sendmmsg", seccompInput(x64, 307, 3, 0x1000, 2, 0), notify},
		{"recvfrom asking who sent", seccompInput(x64, 45, 3, 0x1000, 10, 0, 0x2000, 0x3000), notify},
		{"recv", seccompInput(x64, 45, 3, 0x1000, 10, 0, 0, 0), allow},
		{"getpeername", seccompInput(x64, 52, 3, 0x1000, 0x2000), notify},
		{"io_uring_setup", seccompInput(x64, 425, 8, 0x1000), enosys},
		{"io_uring_register", seccompInput(x64, 427), enosys},
		{"x32 connect", seccompInput(x64, 42|x32SyscallBit, 3, 0x1000, 16), notify},
		{"x32 sendmsg", seccompInput(x64, 518|x32SyscallBit, 3, 0x1000, 0), notify},
		{"x32 io_uring_setup", seccompInput(x64, 425|x32SyscallBit), enosys},
		{"x32 read", seccompInput(x64, 0|x32SyscallBit), allow},
		{"i386 connect", seccompInput(i386, 362, 3, 0x1000, 16), notify},
		{"i386 socketcall(connect)", seccompInput(i386, 102, 3, 0x1000), notify},
		{"i386 socketcall(sendto)", seccompInput(i386, 102, 11, 0x1000), notify},
		{"i386 socketcall(socket)", seccompInput(i386, 102, 1, 0x1000), allow},
		{"i386 sendto with an address", seccompInput(i386, 369, 3, 0x1000, 10, 0, 0x2000, 16), notify},
		{"i386 send", seccompInput(i386, 369, 3, 0x1000, 10, 0, 0, 0), allow},
		{"i386 io_uring_setup", seccompInput(i386, 425), enosys},
		{"another ABI", seccompInput(unix.AUDIT_ARCH_AARCH64, 203), enosys},
	} {
		vm, err := bpf.NewVM(supervisorFilter(abis, false, false, false, 0))
		if err != nil {
			t.Fatal(err)
		}
		got, err := vm.Run(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if uint32(got) != tc.want {
			t.Errorf("%s: the filter says %#x, want %#x", tc.name, uint32(got), tc.want)
		}
	}
	vm, _ := bpf.NewVM(supervisorFilter(abis, true, false, false, 0))
	if got, _ := vm.Run(seccompInput(x64, 425)); uint32(got) != allow {
		t.Errorf("io_uring=allow: io_uring_setup gets %#x", uint32(got))
	}
	if got, _ := vm.Run(seccompInput(x64, 50, 3, 128)); uint32(got) != allow {
		t.Errorf("listen without a piece for incoming flows gets %#x", uint32(got))
	}
	vm, _ = bpf.NewVM(supervisorFilter(abis, false, true, false, 0))
	for _, in := range [][]byte{seccompInput(x64, 50, 3, 128), seccompInput(i386, 363, 3, 128), seccompInput(i386, 102, 4, 0x1000)} {
		if got, _ := vm.Run(in); uint32(got) != notify {
			t.Errorf("listen under a piece for incoming flows gets %#x", uint32(got))
		}
	}
	// The guard under the library stops only what reaches somewhere new:
	// a program's Unix-socket messages must not pay a round trip each.
	const pass = 0x1234abcd_8765fedc
	vm, _ = bpf.NewVM(supervisorFilter(abis, false, false, true, pass))
	for _, tc := range []struct {
		name string
		in   []byte
		want uint32
	}{
		{"connect", seccompInput(x64, 42, 3, 0x1000, 16), notify},
		{"the library's connect", seccompInput(x64, 42, 3, 0x1000, 16, pass&0xffffffff, pass>>32), allow},
		{"a connect with half the pass", seccompInput(x64, 42, 3, 0x1000, 16, pass&0xffffffff, 0), notify},
		{"a connect with the halves swapped", seccompInput(x64, 42, 3, 0x1000, 16, pass>>32, pass&0xffffffff), notify},
		{"i386 connect with the pass", seccompInput(i386, 362, 3, 0x1000, 16, pass&0xffffffff, pass>>32), notify},
		{"sendto with an address", seccompInput(x64, 44, 3, 0x1000, 10, 0, 0x2000, 16), notify},
		{"send", seccompInput(x64, 44, 3, 0x1000, 10, 0, 0, 0), allow},
		{"sendmsg", seccompInput(x64, 46, 3, 0x1000, 0), allow},
		{"sendmmsg", seccompInput(x64, 307, 3, 0x1000, 2, 0), allow},
		{"recvmsg", seccompInput(x64, 47, 3, 0x1000, 0), allow},
		{"recvfrom asking who sent", seccompInput(x64, 45, 3, 0x1000, 10, 0, 0x2000, 0x3000), allow},
		{"getpeername", seccompInput(x64, 52, 3, 0x1000, 0x2000), allow},
		{"io_uring_setup", seccompInput(x64, 425, 8, 0x1000), enosys},
		{"x32 connect", seccompInput(x64, 42|x32SyscallBit, 3, 0x1000, 16), notify},
		{"i386 connect", seccompInput(i386, 362, 3, 0x1000, 16), notify},
		{"i386 socketcall(connect)", seccompInput(i386, 102, 3, 0x1000), notify},
		{"i386 socketcall(sendto)", seccompInput(i386, 102, 11, 0x1000), notify},
		{"i386 socketcall(sendmsg)", seccompInput(i386, 102, 16, 0x1000), allow},
		{"i386 socketcall(getpeername)", seccompInput(i386, 102, 7, 0x1000), allow},
		{"another ABI", seccompInput(unix.AUDIT_ARCH_AARCH64, 203), enosys},
	} {
		if got, _ := vm.Run(tc.in); uint32(got) != tc.want {
			t.Errorf("guard: %s: the filter says %#x, want %#x", tc.name, uint32(got), tc.want)
		}
	}
}

// TestNativeControl: control messages of a 32-bit program become ours.
func TestNativeControl(t *testing.T) {
	// One IP_TOS byte... in the compat layout: len 13, level, type, data, padding.
	in := make([]byte, 16)
	binary.NativeEndian.PutUint32(in[0:], 13)
	binary.NativeEndian.PutUint32(in[4:], unix.IPPROTO_IP)
	binary.NativeEndian.PutUint32(in[8:], unix.IP_TOS)
	in[12] = 0x10
	out, err := nativeControl(in)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(out)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("%v %v", msgs, err)
	}
	m := msgs[0]
	if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_TOS || len(m.Data) != 1 || m.Data[0] != 0x10 {
		t.Fatalf("got %+v", m)
	}
	if _, err := nativeControl([]byte{200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil {
		t.Fatal("a length past the end was taken")
	}
}

// TestSeccompListen: under a profile with a piece for incoming flows, a
// server's listening socket is the funnel's and the server gets a hidden
// one in its place: what a client sends arrives rewritten.
func TestSeccompListen(t *testing.T) {
	ncat := testutil.NeedTool(t, "ncat")
	needBuild(t)
	port := strconv.Itoa(testutil.FreePort(t))
	cmd := launcher(t, "mode=seccomp", "chain=rewrite from=ping to=pong dir=down", ncat, "-l", "-k", "127.0.0.1", port)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// funtun passes SIGTERM on to ncat, which would outlive a SIGKILL.
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("funtun: %s", stderr.String())
		}
	}()
	testutil.WaitListen(t, "127.0.0.1:"+port)
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping from a client\n"))
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "pong from a client\n" {
		t.Fatalf("ncat -l printed %q", line)
	}
}

// TestSeccompPlainDirect: under profile=direct the program's connects go
// on in the kernel (the fast path), but its DNS query to the system's
// resolver is still answered inside the funnel, and a name still maps back.
func TestSeccompPlainDirect(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	out, _ := runSeccomp(t, "profile=direct", client, "get", "127.0.0.1", port, "/")
	if out != "hello X from test\n" {
		t.Fatalf("the static client printed %q", out)
	}
	out, stderr := runSeccomp(t, "profile=direct", client, "resolve", "example.invalid")
	if a, err := netip.ParseAddr(strings.TrimSpace(out)); err != nil || !netip.MustParsePrefix("198.18.0.0/15").Contains(a) {
		t.Fatalf("example.invalid resolved to %q: the query left the funnel\n%s", out, stderr)
	}
}

// TestSeccompIOUringRefused: io_uring_setup gets ENOSYS under the
// supervisor's filter too (io_uring's socket operations pass no filter),
// and io_uring=allow lets it through.
func TestSeccompIOUringRefused(t *testing.T) {
	probe := compileC(t, "uringsetup", uringSetupProbe)
	needIOUring(t, probe)
	out, stderr, err := run(t, launcher(t, "mode=seccomp", "profile=direct", probe), "")
	if exitCode(err) != 1 || out != "io_uring_setup: ENOSYS\n" {
		t.Fatalf("under mode=seccomp: exit %d, %q %s", exitCode(err), out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "mode=seccomp", "profile=direct", "io_uring=allow", probe), "")
	if err != nil || out != "io_uring_setup: fd\n" {
		t.Fatalf("with io_uring=allow: %v %q %s", err, out, stderr)
	}
}

// TestSeccompMuslResolver: a static musl program's getaddrinfo asks the
// nameserver with sendto and takes only an answer from that nameserver's
// address; the funnel answers, and the program is shown the nameserver.
func TestSeccompMuslResolver(t *testing.T) {
	musl := testutil.NeedTool(t, "musl-gcc")
	needBuild(t)
	bin := filepath.Join(t.TempDir(), "gai")
	if out, err := exec.Command(musl, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", bin, "testdata/seccomp/gai.c").CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc: %v\n%s", err, out)
	}
	port := helloServer(t)
	out, _ := runSeccomp(t, demoSeccompChain, bin, "demo.test", port)
	if out != "hello Y from test\n" {
		t.Fatalf("the musl program printed %q", out)
	}
}

// TestSeccompI386Entry: a 64-bit program that connects through the 32-bit
// entry (int 0x80: connect, and socketcall) is stopped all the same.
// Kernels built without that entry (CONFIG_IA32_EMULATION, or
// ia32_emulation=0) kill the program instead: nothing to test there.
func TestSeccompI386Entry(t *testing.T) {
	client, _ := seccompClients(t)
	port := helloServer(t)
	for _, how := range []string{"get32", "getsc"} {
		out, stderr, err := run(t, exec2(t, client, how, "127.0.0.1", port, "/"), "")
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			t.Skipf("this kernel has no 32-bit entry for 64-bit programs (%s: %v)", how, err)
		}
		if err != nil || out != "hello X from test\n" {
			t.Fatalf("%s unhooked: %v %q %s", how, err, out, stderr)
		}
		out, _ = runSeccomp(t, rewriteChain, client, how, "127.0.0.1", port, "/")
		if out != "hello Y from test\n" {
			t.Fatalf("%s under mode=seccomp printed %q: the 32-bit call passed the funnel by", how, out)
		}
	}
}

// TestSeccompUnderGuard: with guard=netns the program's namespace has
// loopback only, so the supervisor's plain-direct fast path (the kernel
// connecting the program's socket itself) must not be taken: the connect
// goes through the funnel outside.
func TestSeccompUnderGuard(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("guard=netns as this test runs it needs root")
		}
		t.Skip("guard=netns as this test runs it needs root")
	}
	client, _ := seccompClients(t)
	port := helloServer(t)
	out, stderr, err := run(t, launcher(t, "mode=seccomp", "guard=netns", "profile=direct", client, "get", "127.0.0.1", port, "/"), "")
	if err != nil || out != "hello X from test\n" {
		t.Fatalf("under the guard: %v, %q\n%s", err, out, stderr)
	}
}

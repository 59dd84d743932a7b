//go:build linux

package preload

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// uringSetupProbe calls io_uring_setup(2) itself, as a runtime without
// liburing does, and says what the kernel answered.
const uringSetupProbe = `#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/io_uring.h>

int main(void) {
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	long fd = syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0) {
		printf("io_uring_setup: %s\n", errno == ENOSYS ? "ENOSYS" : strerror(errno));
		return 1;
	}
	printf("io_uring_setup: fd\n");
	return 0;
}
`

// uringConnect connects to 127.0.0.1:PORT with liburing's
// io_uring_prep_connect, sends "ping\n" and prints the reply. With
// "fallback" it does what liburing users do on a kernel without io_uring:
// connect(2) instead.
const uringConnect = `#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <liburing.h>

int main(int argc, char **argv) {
	if (argc != 3) return 2;
	int fallback = strcmp(argv[2], "fallback") == 0;
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons(atoi(argv[1]));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0) { perror("socket"); return 1; }
	struct io_uring ring;
	int r = io_uring_queue_init(4, &ring, 0);
	if (r == -ENOSYS && fallback) {
		if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
		printf("via connect(2)\n");
	} else if (r < 0) {
		printf("io_uring_queue_init: %s\n", r == -ENOSYS ? "ENOSYS" : strerror(-r));
		return 3;
	} else {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		io_uring_prep_connect(sqe, s, (struct sockaddr *)&sa, sizeof sa);
		io_uring_submit(&ring);
		struct io_uring_cqe *cqe;
		if ((r = io_uring_wait_cqe(&ring, &cqe)) < 0) { printf("wait: %s\n", strerror(-r)); return 1; }
		if (cqe->res < 0) { printf("io_uring connect: %s\n", strerror(-cqe->res)); return 1; }
		io_uring_cqe_seen(&ring, cqe);
		io_uring_queue_exit(&ring);
		printf("via io_uring\n");
	}
	if (write(s, "ping\n", 5) != 5) { perror("write"); return 1; }
	char buf[64];
	ssize_t n = read(s, buf, sizeof buf - 1);
	if (n <= 0) { perror("read"); return 1; }
	buf[n] = 0;
	printf("reply %s", buf);
	return 0;
}
`

// compileC builds a test program; extra are the linker's flags.
func compileC(t *testing.T, name, src string, extra ...string) string {
	t.Helper()
	needBuild(t)
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	args := append([]string{"-O2", "-Wall", "-Wextra", "-Werror", "-o", bin, c}, extra...)
	if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		t.Fatalf("cc %s: %v\n%s", name, err, out)
	}
	return bin
}

// needIOUring: the kernel must offer io_uring for the refusal to be the
// filter's; a kernel (or sysctl) without it proves nothing here.
func needIOUring(t *testing.T, probe string) {
	t.Helper()
	out, _ := exec2(t, probe).Output()
	if string(out) != "io_uring_setup: fd\n" {
		if os.Getenv("CI") != "" {
			t.Fatalf("this kernel does not offer io_uring (%q): the filter cannot be tested", out)
		}
		t.Skipf("this kernel does not offer io_uring: %q", out)
	}
}

// TestIOUringSetupRefused: io_uring_setup called directly gets ENOSYS
// under the launcher only; the library alone and no hook at all leave it
// working, so the refusal is the filter's.
func TestIOUringSetupRefused(t *testing.T) {
	probe := compileC(t, "uringsetup", uringSetupProbe)
	needIOUring(t, probe)
	ft := startFunnel(t, "direct")
	out, stderr, err := run(t, ft.hooked(ctxFor(t, 30*time.Second), probe), "")
	if err != nil || out != "io_uring_setup: fd\n" {
		t.Fatalf("with the library alone: %v %q %s", err, out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "profile=direct", probe), "")
	if exitCode(err) != 1 || out != "io_uring_setup: ENOSYS\n" {
		t.Fatalf("under the launcher: exit %d, %q %s", exitCode(err), out, stderr)
	}
	out, stderr, err = run(t, launcher(t, "profile=direct", "--allow-io-uring", probe), "")
	if err != nil || out != "io_uring_setup: fd\n" {
		t.Fatalf("with --allow-io-uring: %v %q %s", err, out, stderr)
	}
	if !strings.Contains(stderr, "io_uring allowed") || !strings.Contains(stderr, "bypass the funnel") {
		t.Fatalf("--allow-io-uring did not warn: %q", stderr)
	}
}

func needLiburing(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/include/liburing.h"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("liburing-dev is not installed (scripts/test-deps.sh installs it)")
		}
		t.Skip("liburing-dev is not installed")
	}
}

// TestIOUringConnect: a liburing program that falls back to connect(2)
// reaches an echo server through the funnel (the rewrite shows it), one
// without the fallback says ENOSYS, and --allow-io-uring lets the
// io_uring connect out past the funnel (no rewrite) with a warning.
func TestIOUringConnect(t *testing.T) {
	needLiburing(t)
	probe := compileC(t, "uringsetup", uringSetupProbe)
	needIOUring(t, probe)
	conn := compileC(t, "uringconnect", uringConnect, "-luring")
	echo := echoWithLog(t)
	port := strconv.Itoa(echo.port())
	const chain = "chain=rewrite from=ping to=pong dir=down"

	out, stderr, err := run(t, launcher(t, chain, conn, port, "fallback"), "")
	if err != nil || out != "via connect(2)\nreply pong\n" {
		t.Fatalf("with fallback: %v %q %s", err, out, stderr)
	}
	out, stderr, err = run(t, launcher(t, chain, conn, port, "nofallback"), "")
	if exitCode(err) != 3 || out != "io_uring_queue_init: ENOSYS\n" {
		t.Fatalf("without fallback: exit %d %q %s", exitCode(err), out, stderr)
	}
	out, stderr, err = run(t, launcher(t, chain, "--allow-io-uring", conn, port, "nofallback"), "")
	if err != nil || out != "via io_uring\nreply ping\n" {
		t.Fatalf("with --allow-io-uring: %v %q %s", err, out, stderr)
	}
	if !strings.Contains(stderr, "io_uring allowed") {
		t.Fatalf("--allow-io-uring did not warn: %q", stderr)
	}
}

// TestIOUringFilterCurl: curl, an ordinary program, works under the
// filter, and the filter is on in what the launcher starts.
func TestIOUringFilterCurl(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	port := helloServer(t)
	script := `grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status && exec "$0" -sS http://demo.test:` + port + `/`
	out, stderr, err := run(t, launcher(t, "chain=hosts demo.test=127.0.0.1 | rewrite from=X to=Y dir=down", "sh", "-c", script, curl), "")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(out, "NoNewPrivs:\t1\n") || !strings.Contains(out, "Seccomp:\t2\n") {
		t.Fatalf("the filter is not on: %q", out)
	}
	if !strings.HasSuffix(out, "hello Y from demo.test:"+port+"\n") {
		t.Fatalf("curl printed %q", out)
	}
}

// TestIOUringFilterProgram runs the filter in x/net/bpf's machine on
// seccomp_data records of each ABI. The machine loads big-endian where the
// kernel loads in the machine's order, so the records are written
// big-endian here: the program sees the same numbers.
func TestIOUringFilterProgram(t *testing.T) {
	arches, err := seccompArches("amd64")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(ioUringFilter(arches))
	if err != nil {
		t.Fatal(err)
	}
	deny := unix.SECCOMP_RET_ERRNO | int(unix.ENOSYS)
	allow := unix.SECCOMP_RET_ALLOW
	for _, tc := range []struct {
		arch uint32
		nr   uint32
		want int
	}{
		{unix.AUDIT_ARCH_X86_64, 425, deny},
		{unix.AUDIT_ARCH_X86_64, 426, deny},
		{unix.AUDIT_ARCH_X86_64, 427, deny},
		{unix.AUDIT_ARCH_X86_64, 424, allow},
		{unix.AUDIT_ARCH_X86_64, 428, allow},
		{unix.AUDIT_ARCH_X86_64, unix.SYS_CONNECT, allow},
		{unix.AUDIT_ARCH_X86_64, x32SyscallBit | 425, deny},
		{unix.AUDIT_ARCH_X86_64, x32SyscallBit | 42, allow},
		{unix.AUDIT_ARCH_I386, 426, deny},
		{unix.AUDIT_ARCH_I386, 102, allow},
		{unix.AUDIT_ARCH_AARCH64, 425, allow}, // not an ABI of this build: allowed
	} {
		rec := make([]byte, 64) // struct seccomp_data
		binary.BigEndian.PutUint32(rec[seccompDataNr:], tc.nr)
		binary.BigEndian.PutUint32(rec[seccompDataArch:], tc.arch)
		got, err := vm.Run(rec)
		if err != nil || got != tc.want {
			t.Errorf("arch %#x nr %#x: %#x %v, want %#x", tc.arch, tc.nr, got, err, tc.want)
		}
	}
	if _, err := seccompArches("mips64"); err == nil {
		t.Error("a filter for an architecture whose numbers differ")
	}
}

// noSeccompWrapper runs a program where seccomp filters cannot be
// installed, as under a kernel built without them: seccomp(2) and
// prctl(PR_SET_SECCOMP) fail with EINVAL.
const noSeccompWrapper = `#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

int main(int argc, char **argv) {
	(void)argc;
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_SECCOMP, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof f / sizeof f[0], f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
		perror("seccomp");
		return 1;
	}
	execv(argv[1], argv + 1);
	perror("execv");
	return 127;
}
`

// TestIOUringNoSeccomp: where the filter cannot be installed, the
// launcher says so and refuses; --allow-io-uring runs the program.
func TestIOUringNoSeccomp(t *testing.T) {
	wrapper := compileC(t, "noseccomp", noSeccompWrapper)
	cmd := launcher(t, "profile=direct", "true")
	cmd.Args = append([]string{wrapper}, cmd.Args...)
	cmd.Path = wrapper
	out, stderr, err := run(t, cmd, "")
	if exitCode(err) != 126 || !strings.Contains(stderr, "cannot install the seccomp filter") || !strings.Contains(stderr, "--allow-io-uring") {
		t.Fatalf("exit %d, %q %q", exitCode(err), out, stderr)
	}
	cmd = launcher(t, "profile=direct", "--allow-io-uring", "true")
	cmd.Args = append([]string{wrapper}, cmd.Args...)
	cmd.Path = wrapper
	if _, stderr, err := run(t, cmd, ""); err != nil || !strings.Contains(stderr, "io_uring allowed") {
		t.Fatalf("with --allow-io-uring: %v %q", err, stderr)
	}
}

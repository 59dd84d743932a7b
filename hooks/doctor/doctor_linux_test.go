//go:build linux

package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
	"github.com/vishvananda/netlink"
)

// needRoot: the lab is made of network namespaces. CI runs as root, so
// there a missing privilege is a failure, not a reason to skip.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("funtun doctor's tests need root (network namespaces)")
	}
	t.Skip("needs root (network namespaces)")
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (make test-deps)", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// binDir holds funtun, libfuntun.so and both probes side by side, as the
// doctor and the launcher look for them: $FUNTUN_BIN when it has all four,
// else built once for these tests.
func binDir(t *testing.T) string {
	t.Helper()
	names := []string{"funtun", "libfuntun.so", "funtun-probe", "funtun-probe-static"}
	if dir := os.Getenv("FUNTUN_BIN"); dir != "" {
		all := true
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				all = false
			}
		}
		if all {
			return dir
		}
	}
	needTool(t, "cc")
	funtun := testutil.Funtun(t)
	built.once.Do(func() { built.dir, built.err = buildBin(funtun) })
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

var built struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

func buildBin(funtun string) (string, error) {
	dir, err := os.MkdirTemp("", "funtun-doctor-test")
	if err != nil {
		return "", err
	}
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	lib, _ := filepath.Glob(filepath.Join(root, "preload", "*.c"))
	probe := filepath.Join(root, "preload", "probe", "probe.c")
	data, err := os.ReadFile(funtun)
	if err != nil {
		return dir, err
	}
	if err := os.WriteFile(filepath.Join(dir, "funtun"), data, 0o755); err != nil {
		return dir, err
	}
	for _, step := range [][]string{
		append(append([]string{"cc", "-shared", "-fPIC", "-O2", "-o", filepath.Join(dir, "libfuntun.so")}, lib...), "-ldl", "-lpthread"),
		{"cc", "-O2", "-o", filepath.Join(dir, "funtun-probe"), probe, "-lresolv", "-lanl"},
		{"cc", "-static", "-DFUNTUN_PROBE_STATIC", "-O2", "-o", filepath.Join(dir, "funtun-probe-static"), probe},
	} {
		if out, err := exec.Command(step[0], step[1:]...).CombinedOutput(); err != nil {
			return dir, fmt.Errorf("%s: %v\n%s", strings.Join(step, " "), err, out)
		}
	}
	return dir, nil
}

// doctor runs `funtun doctor ARGS…` and returns its stdout, stderr and
// exit status.
func doctor(t *testing.T, args ...string) (stdout, stderr string, exit int) {
	t.Helper()
	return doctorAs(t, nil, args...)
}

// doctorAs is doctor run with the given credentials (nil: ours).
func doctorAs(t *testing.T, cred *syscall.Credential, args ...string) (stdout, stderr string, exit int) {
	t.Helper()
	needRoot(t)
	dir := binDir(t)
	if cred != nil {
		dir = sharedCopy(t, dir)
	}
	// An empty profile directory (the user's own profiles stay out),
	// readable by whoever runs the doctor.
	profiles := sharedDir(t)
	env := append(os.Environ(), "FUNTUN_PROFILE_PATH="+profiles)
	var out, errOut bytes.Buffer
	cmd := exec.Command(filepath.Join(dir, "funtun"), append([]string{"doctor"}, args...)...)
	// The launcher finds libfuntun.so next to funtun; the doctor its
	// probes in FUNTUN_BIN.
	cmd.Env = append(withoutVar(env, "FUNTUN_PRELOAD"), "FUNTUN_BIN="+dir)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Dir = "/"
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		exit = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("funtun doctor: %v", err)
	}
	return out.String(), errOut.String(), exit
}

// sharedDir is a temporary directory that another user may read (the
// testing package's are its own).
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "funtun-doctor-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sharedCopy copies the binaries where another user can run them: the
// build tree may be in a home directory that user cannot enter.
func sharedCopy(t *testing.T, from string) string {
	t.Helper()
	dir := sharedDir(t)
	for _, name := range []string{"funtun", "funtun-core", "libfuntun.so", "funtun-probe", "funtun-probe-static"} {
		data, err := os.ReadFile(filepath.Join(from, name))
		if name == "funtun-core" && os.IsNotExist(err) {
			continue // a funtun built by the test: the Go program alone
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func probeResults(t *testing.T, stdout string) map[string]result {
	t.Helper()
	var rep probeReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("the report is not JSON: %v\n%s", err, stdout)
	}
	byName := map[string]result{}
	for _, r := range rep.Results {
		byName[r.Probe] = r
	}
	return byName
}

// Under profile=direct with the library alone (mode=preload), every probe
// the library can see goes through the funnel, and the three it cannot see
// (a child that lost LD_PRELOAD, a static child, a raw system call) leak:
// the doctor must see exactly that, from outside.
func TestProbesUnderDirect(t *testing.T) {
	stdout, stderr, exit := doctor(t, "--json", "mode=preload", "profile=direct")
	if exit != 1 {
		t.Errorf("exit status %d, want 1 (probes leaked)\nstderr:\n%s", exit, stderr)
	}
	got := probeResults(t, stdout)
	leaks := map[string]bool{"scrubbed-child": true, "static-child": true, "raw-syscall": true}
	for _, p := range probes {
		r, ok := got[p.name]
		if !ok {
			t.Errorf("%s: not in the report", p.name)
			continue
		}
		want := verdictOK
		if leaks[p.name] {
			want = verdictLeak
		}
		if r.Verdict != want {
			t.Errorf("%s: verdict %s (%s; the probe said %q), want %s", p.name, r.Verdict, r.Observed, r.Detail, want)
			continue
		}
		switch {
		case leaks[p.name]:
			// Seen at the far end, from the program's own address.
			found := false
			for _, o := range r.Seen {
				if o.Path == viaDirect && o.Kind == "tcp" && strings.HasPrefix(o.Src, inside4.String()+":") {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: no direct connection from %s among %+v", p.name, inside4, r.Seen)
			}
		case p.kind == connects:
			for _, o := range r.Seen {
				if o.Path != viaFunnel {
					t.Errorf("%s: %+v did not pass the funnel", p.name, o)
				}
			}
		case p.kind == resolves:
			// The library answers these itself: no query of the
			// program's may reach the resolver.
			if !strings.HasPrefix(r.Observed, "answered in the funnel") {
				t.Errorf("%s: observed %q", p.name, r.Observed)
			}
		}
	}
	// The lab is gone with the doctor: no veth end was left in the host's
	// namespace, and none was ever there.
	for _, name := range []string{insideLink, outsideLink} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s exists in the host's namespace", name)
		}
	}
}

// With --allow-io-uring the launcher installs no filter, and the probe's
// IORING_OP_CONNECT passes the library by: a leak the doctor must report.
// Without it, the same probe falls back to connect() and goes through.
func TestIOUring(t *testing.T) {
	stdout, stderr, exit := doctor(t, "--json", "--probe=io-uring", "--allow-io-uring", "profile=direct")
	r := probeResults(t, stdout)["io-uring"]
	if r.Verdict != verdictLeak || exit != 1 {
		t.Errorf("with --allow-io-uring: verdict %s (%s; probe: %q), exit %d; want LEAK, 1\nstderr:\n%s", r.Verdict, r.Observed, r.Detail, exit, stderr)
	}
	if !strings.Contains(r.Detail, "IORING_OP_CONNECT") {
		t.Errorf("with --allow-io-uring the probe said %q, want a connect through io_uring", r.Detail)
	}
	stdout, stderr, exit = doctor(t, "--json", "--probe=io-uring", "profile=direct")
	r = probeResults(t, stdout)["io-uring"]
	if r.Verdict != verdictOK || exit != 0 {
		t.Errorf("with the filter: verdict %s (%s; probe: %q), exit %d; want ok, 0\nstderr:\n%s", r.Verdict, r.Observed, r.Detail, exit, stderr)
	}
	if !strings.Contains(r.Detail, "ENOSYS") {
		t.Errorf("with the filter the probe said %q, want io_uring_setup: ENOSYS", r.Detail)
	}
}

func programReportOf(t *testing.T, stdout string) programReport {
	t.Helper()
	var rep programReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("the report is not JSON: %v\n%s", err, stdout)
	}
	return rep
}

// curl by name under profile=direct: the page comes back, the name and the
// connection went through the funnel, nothing is listed as a leak.
func TestProgramCurl(t *testing.T) {
	curl := needTool(t, "curl")
	stdout, stderr, exit := doctor(t, "--json", "profile=direct", curl, "-sS", "http://"+labDomain+"/")
	if exit != 0 {
		t.Errorf("exit status %d, want 0\nstderr:\n%s\nstdout:\n%s", exit, stderr, stdout)
	}
	if !strings.Contains(stderr, strings.TrimSpace(httpBody)) {
		t.Errorf("curl's output (on stderr) lacks the responder's page:\n%s", stderr)
	}
	rep := programReportOf(t, stdout)
	if len(rep.Outside) != 0 {
		t.Errorf("leaks listed: %+v", rep.Outside)
	}
	found := false
	for _, o := range rep.Through {
		if o.Kind == "tcp" && strings.HasSuffix(o.Dst, ":80") {
			found = true
		}
	}
	if !found {
		t.Errorf("curl's connection to port 80 is not listed through the funnel: %+v", rep.Through)
	}
}

// A program that runs helpers without LD_PRELOAD (env -i) leaks both a
// connection and a DNS query with the library alone (mode=preload; the
// default mode's seccomp guard would catch them); the doctor lists both as
// outside the funnel, and what the hooked shell did itself through it.
func TestProgramLeaks(t *testing.T) {
	curl, dig := needTool(t, "curl"), needTool(t, "dig")
	// IPv6 as well: the kernel may pick the funnel's address for an
	// unmarked socket, and the lab must not take that for the funnel.
	script := "env -i " + dig + " +short +tries=1 +time=2 leak." + labDomain +
		"; env -i " + curl + " -sS http://" + outside4.String() + "/" +
		"; env -i " + curl + " -sS http://[" + outside6.String() + "]/"
	stdout, stderr, exit := doctor(t, "--json", "mode=preload", "profile=direct", "sh", "-c", script)
	if exit != 1 {
		t.Errorf("exit status %d, want 1 (leaks)\nstderr:\n%s", exit, stderr)
	}
	rep := programReportOf(t, stdout)
	var conn, conn6, query bool
	for _, o := range rep.Outside {
		if o.Kind == "tcp" && o.Dst == outside4.String()+":80" && strings.HasPrefix(o.Src, inside4.String()+":") {
			conn = true
		}
		if o.Kind == "tcp" && o.Dst == "["+outside6.String()+"]:80" && strings.HasPrefix(o.Src, "["+inside6.String()+"]:") {
			conn6 = true
		}
		if o.Kind == "dns" && o.Query == "A leak."+labDomain {
			query = true
		}
	}
	if !conn || !conn6 || !query {
		t.Errorf("want the connections to %s and %s port 80 and the query for leak.%s outside the funnel, got %+v\nstderr:\n%s", outside4, outside6, labDomain, rep.Outside, stderr)
	}
	for _, o := range rep.Through {
		if o.Kind == "tcp" {
			t.Errorf("%+v listed through the funnel: every connection was a helper's without LD_PRELOAD", o)
		}
	}
}

// --help and bad words print and build nothing.
func TestUsage(t *testing.T) {
	funtun := testutil.Funtun(t)
	out, err := exec.Command(funtun, "doctor", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "funtun doctor [--json]") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	out, err = exec.Command(funtun, "doctor", "--probe=nothing").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `no probe "nothing"`) {
		t.Errorf("--probe=nothing: %v\n%s", err, out)
	}
}

// Launcher words the doctor does not know itself pass through: the
// launcher's other modes catch what the library cannot, and the doctor
// must see the difference. With guard=netns the unhookable calls find no
// way out (failed, nothing leaked); with mode=seccomp, and with the
// default mode's seccomp guard under the library, they go through.
func TestLauncherWords(t *testing.T) {
	for _, tc := range []struct {
		word, verdict string
	}{
		{"guard=netns", verdictFailed},
		{"mode=seccomp", verdictOK},
		{"mode=auto", verdictOK},
	} {
		stdout, stderr, exit := doctor(t, "--json", "--probe=raw-syscall,static-child,tcp-addr", tc.word, "profile=direct")
		got := probeResults(t, stdout)
		if exit != 0 {
			t.Errorf("%s: exit status %d, want 0\nstderr:\n%s", tc.word, exit, stderr)
		}
		if r := got["tcp-addr"]; r.Verdict != verdictOK {
			t.Errorf("%s: tcp-addr %s (%s; %q)", tc.word, r.Verdict, r.Observed, r.Detail)
		}
		for _, p := range []string{"raw-syscall", "static-child"} {
			if r := got[p]; r.Verdict != tc.verdict {
				t.Errorf("%s: %s %s (%s; %q), want %s", tc.word, p, r.Verdict, r.Observed, r.Detail, tc.verdict)
			}
		}
	}
}

// An ordinary user gets the lab in a user namespace of its own, where the
// system allows those, and the same findings.
func TestUnprivileged(t *testing.T) {
	needRoot(t)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	// Whether this system lets an ordinary user make a user namespace at
	// all is its policy, asked here without the doctor.
	probe := exec.Command(needTool(t, "unshare"), "--user", "--map-root-user", "--net", "true")
	probe.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("this system gives ordinary users no user namespaces: %v %s", err, out)
	}
	stdout, stderr, exit := doctorAs(t, nobody, "--json", "--probe=tcp-name,raw-syscall", "mode=preload", "profile=direct")
	got := probeResults(t, stdout)
	if exit != 1 || got["tcp-name"].Verdict != verdictOK || got["raw-syscall"].Verdict != verdictLeak {
		t.Errorf("as nobody: exit %d, tcp-name %s, raw-syscall %s; want 1, ok, LEAK\nstderr:\n%s", exit, got["tcp-name"].Verdict, got["raw-syscall"].Verdict, stderr)
	}
}

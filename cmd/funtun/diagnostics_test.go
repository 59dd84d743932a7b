package main

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// funtun version prints what the build recorded; built from a git work
// tree, that is the revision, its time and the modified flag.
func TestVersion(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	out, code := funtun(t, env, "version")
	if code != 0 || !strings.HasPrefix(out, "funtun ") || !strings.Contains(out, "module   github.com/funtun/funtun") ||
		!regexp.MustCompile(`(?m)^go       go1\.`).MatchString(out) {
		t.Fatalf("funtun version: exit %d\n%s", code, out)
	}
	t.Logf("funtun version:\n%s", out)
	if again, code := funtun(t, env, "--version"); code != 0 || again != out {
		t.Errorf("funtun --version: exit %d, differs from funtun version:\n%s", code, again)
	}
	if help, _ := funtun(t, env, "help"); !regexp.MustCompile(`(?m)^  version +print the version`).MatchString(help) {
		t.Errorf("funtun help does not list version:\n%s", help)
	}

	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git work tree (%v): no revision to expect", err)
	}
	// Built here with VCS stamping asked for explicitly, since GOFLAGS may
	// say -buildvcs=false, and with the version make sets.
	bin := t.TempDir() + "/funtun"
	build := exec.Command("go", "build", "-buildvcs=auto", "-ldflags", "-X main.version=v-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=auto: %v\n%s", err, out)
	}
	got, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	rev := strings.TrimSpace(string(head))
	if !strings.HasPrefix(string(got), "funtun v-test\n") ||
		!regexp.MustCompile(`(?m)^revision `+rev+`$`).Match(got) ||
		!regexp.MustCompile(`(?m)^modified (true|false)$`).Match(got) ||
		!regexp.MustCompile(`(?m)^time     \d{4}-\d\d-\d\dT`).Match(got) {
		t.Errorf("funtun version built from git at %s shows no version, revision, time and modified flag:\n%s", rev, got)
	}
}

// Every daemon mode refuses --pprof off loopback, as a usage error, before
// it binds anything.
func TestPprofRefusesNonLoopback(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	for _, args := range [][]string{
		{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--pprof", "0.0.0.0:6060", "profile=direct"},
		{"socks5d", "--listen", "127.0.0.1:0", "--pprof", "[::]:6060", "profile=direct"},
		{"forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--pprof", ":6060"},
	} {
		out, code := funtun(t, env, args...)
		if code != 2 || !strings.Contains(out, "--pprof") || !strings.Contains(out, "loopback") || strings.Contains(out, "serving") {
			t.Errorf("funtun %s: exit %d, want 2 and a message about --pprof:\n%s", strings.Join(args, " "), code, out)
		}
	}
}

// --pprof on loopback serves /debug/pprof/ while the daemon runs.
func TestPprofServes(t *testing.T) {
	for _, mode := range []string{"forward", "socks5d"} {
		t.Run(mode, func(t *testing.T) {
			pprof := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
			listen := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
			args := []string{mode, "--listen", listen, "--pprof", pprof, "profile=direct"}
			if mode == "forward" {
				args = append(args, "--to", "127.0.0.1:9")
			}
			help, _ := funtun(t, nil, mode, "--help")
			if !strings.Contains(help, "-pprof ADDR") {
				t.Errorf("funtun %s --help does not show --pprof:\n%s", mode, help)
			}
			testutil.StartDaemon(t, testutil.Funtun(t), args...)
			testutil.WaitListen(t, listen)
			testutil.WaitListen(t, pprof)
			hc := &http.Client{Timeout: 10 * time.Second}
			resp, err := hc.Get("http://" + pprof + "/debug/pprof/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine") {
				t.Fatalf("GET /debug/pprof/: %s\n%.500s", resp.Status, body)
			}
		})
	}
}

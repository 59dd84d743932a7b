package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

func funtun(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Funtun(t), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// Every subcommand answers --help with its synopsis and exits 0.
func TestEveryCommandHasHelp(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	out, code := funtun(t, env, "help")
	if code != 0 {
		t.Fatalf("funtun help: exit %d", code)
	}
	section := out[strings.Index(out, "Commands:"):strings.Index(out, "Global options:")]
	cmds := regexp.MustCompile(`(?m)^  ([a-z][a-z0-9-]*) +\S`).FindAllStringSubmatch(section, -1)
	if len(cmds) < 4 {
		t.Fatalf("funtun help lists %d commands:\n%s", len(cmds), out)
	}
	for _, m := range cmds {
		name := m[1]
		help, code := funtun(t, env, name, "--help")
		if code != 0 || !strings.Contains(help, "funtun "+name) {
			t.Errorf("funtun %s --help: exit %d:\n%s", name, code, help)
		}
		again, code := funtun(t, env, "help", name)
		if code != 0 || again != help {
			t.Errorf("funtun help %s differs from funtun %s --help", name, name)
		}
	}
}

func TestProfilesCommands(t *testing.T) {
	dir, env := testutil.ProfileDir(t)
	os.WriteFile(filepath.Join(dir, "good.profile"), []byte("# a comment\ndirect timeout=3s\n"), 0o644)

	out, code := funtun(t, env, "profiles")
	if code != 0 || !regexp.MustCompile(`(?m)^good +`+regexp.QuoteMeta(filepath.Join(dir, "good.profile"))).MatchString(out) ||
		!regexp.MustCompile(`(?m)^direct +built-in`).MatchString(out) {
		t.Errorf("funtun profiles:\n%s", out)
	}
	out, code = funtun(t, env, "profiles", "show", "good")
	if code != 0 || !strings.Contains(out, "direct timeout=3s") || !strings.Contains(out, "carries: stream or dgram") {
		t.Errorf("profiles show good:\n%s", out)
	}
	out, code = funtun(t, env, "profiles", "check")
	if code != 0 || !strings.Contains(out, "no errors") {
		t.Errorf("profiles check on good profiles: exit %d\n%s", code, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.profile")
	os.WriteFile(bad, []byte("direct\n  timeout=soon\n"), 0o644)
	out, code = funtun(t, env, "profiles", "check", bad)
	if code != 1 || !strings.Contains(out, bad+`:2:11: piece "direct": timeout: "soon" is not a duration`) {
		t.Errorf("profiles check bad: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "profiles", "check", "/nonexistent/x.profile")
	if code != 1 || !strings.Contains(out, "/nonexistent/x.profile: cannot read") {
		t.Errorf("profiles check unreadable: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "profiles", "show", "nope")
	if code != 1 || !strings.Contains(out, `no profile named "nope"`) {
		t.Errorf("profiles show nope: exit %d\n%s", code, out)
	}
}

func TestPiecesCommand(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	out, code := funtun(t, env, "pieces", "direct")
	if code != 0 || !strings.Contains(out, "stream→kernel") || !strings.Contains(out, "timeout=DURATION") {
		t.Errorf("pieces direct:\n%s", out)
	}
	out, code = funtun(t, env, "pieces", "nosuch")
	if code != 1 || !strings.Contains(out, `no piece named "nosuch"`) {
		t.Errorf("pieces nosuch: exit %d\n%s", code, out)
	}
}

func TestUnknownOption(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	out, code := funtun(t, env, "--frobnicate")
	if code != 2 || !strings.Contains(out, "unknown option --frobnicate") {
		t.Errorf("exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "--log-format", "xml", "help")
	if code != 2 || !strings.Contains(out, "use text or json") {
		t.Errorf("bad log format: exit %d\n%s", code, out)
	}
}

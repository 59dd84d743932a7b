package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
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
	if code != 0 || !regexp.MustCompile(`(?m)^good +ok +`+regexp.QuoteMeta(filepath.Join(dir, "good.profile"))).MatchString(out) ||
		!regexp.MustCompile(`(?m)^direct +ok +built-in`).MatchString(out) {
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

// One broken profile, or a file with a name no profile can have, does not
// hide the others: every profile is listed with its state, every error is
// reported, and the exit status says that something is broken.
func TestProfilesWithBrokenOnes(t *testing.T) {
	dir, env := testutil.ProfileDir(t)
	os.WriteFile(filepath.Join(dir, "good.profile"), []byte("direct\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "bad.profile"), []byte("direct nosuch=1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "bad name!.profile"), []byte("direct\n"), 0o644)
	out, code := funtun(t, env, "profiles")
	if code != 1 || !regexp.MustCompile(`(?m)^good +ok `).MatchString(out) || !regexp.MustCompile(`(?m)^bad +BROKEN `).MatchString(out) ||
		!strings.Contains(out, `piece "direct" has no parameter "nosuch"`) || !strings.Contains(out, `"bad name!" is not a usable profile name`) {
		t.Errorf("funtun profiles: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "profiles", "show", "good")
	if code != 0 || !strings.Contains(out, "profile good") {
		t.Errorf("profiles show good beside a broken one: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "profiles", "show", "bad")
	if code != 1 || !strings.Contains(out, `bad.profile:1:8: piece "direct" has no parameter "nosuch"`) {
		t.Errorf("profiles show bad: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "profiles", "check")
	if code != 1 || !strings.Contains(out, `bad.profile:1:8:`) || !strings.Contains(out, `"bad name!" is not a usable profile name`) || !strings.Contains(out, " profiles compiled, 2 broken") {
		t.Errorf("profiles check: exit %d\n%s", code, out)
	}
}

// -h, --help and help say the same.
func TestShortHelp(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	long, _ := funtun(t, env, "--help")
	short, code := funtun(t, env, "-h")
	if code != 0 || short != long || !strings.Contains(short, "Commands:") {
		t.Errorf("funtun -h (exit %d) differs from funtun --help:\n%s", code, short)
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
	// pcap cannot be built without file=; its shapes come from its
	// registration, not from a built piece.
	out, code = funtun(t, env, "pieces", "pcap")
	if code != 0 || !strings.Contains(out, "shapes (app→net): stream→stream, dgram→dgram") {
		t.Errorf("pieces pcap: exit %d\n%s", code, out)
	}
}

// Every piece declares its curves at registration, and a piece built from
// its example carries no curve it did not declare (the declaration is the
// union of what parameters can choose).
func TestEveryPieceDeclaresCurves(t *testing.T) {
	infos := funnel.Pieces()
	if len(infos) < 10 {
		t.Fatalf("only %d pieces registered", len(infos))
	}
	for _, info := range infos {
		if len(info.Curves) == 0 {
			t.Errorf("piece %s declares no curves (funnel.PieceInfo.Curves)", info.Name)
			continue
		}
		params := funnel.NewParams(info.Name)
		if info.Example != "" {
			specs, err := funnel.ParseChain("example", info.Name+" "+info.Example)
			if err != nil || len(specs) != 1 {
				t.Errorf("piece %s: example %q does not parse: %v", info.Name, info.Example, err)
				continue
			}
			params = funnel.ParamsOf(specs[0])
		}
		p, err := info.New(params, nil)
		if err != nil {
			t.Errorf("piece %s does not build from its example %q: %v", info.Name, info.Example, err)
			continue
		}
		for _, c := range p.Curves() {
			if !slices.Contains(info.Curves, c) {
				t.Errorf("piece %s carries %s→%s, which its registration does not declare", info.Name, c.App, c.Net)
			}
		}
	}
}

// `funtun profiles check`, `profiles show` and `pieces` only compile: a
// capture file that a running daemon writes stays byte for byte as it was,
// and one that does not exist is not created.
func TestLookingTouchesNothing(t *testing.T) {
	dir, env := testutil.ProfileDir(t)
	caps := t.TempDir()
	running := filepath.Join(caps, "running.pcap")
	precious := []byte("a running daemon's capture, not to be wiped\n")
	if err := os.WriteFile(running, precious, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(caps, "new.pcap")
	os.WriteFile(filepath.Join(dir, "cap.profile"), []byte("pcap file="+running+"\n"), 0o644)
	extra := filepath.Join(t.TempDir(), "extra.profile")
	os.WriteFile(extra, []byte("pcap file="+fresh+"\n"), 0o644)
	check := func(what string) {
		t.Helper()
		if got, err := os.ReadFile(running); err != nil || !bytes.Equal(got, precious) {
			t.Fatalf("%s changed %s: %q %v", what, running, got, err)
		}
		if _, err := os.Stat(fresh); err == nil {
			t.Fatalf("%s created %s", what, fresh)
		}
	}
	for _, args := range [][]string{
		{"profiles", "check"},
		{"profiles", "check", extra},
		{"profiles", "show", "cap"},
		{"profiles", "show", "chain=pcap file=" + fresh},
		{"pieces", "pcap"},
	} {
		out, code := funtun(t, env, args...)
		if code != 0 {
			t.Fatalf("funtun %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		check("funtun " + strings.Join(args, " "))
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

// A bad option gets one line naming it and a pointer to --help, not the
// whole usage text.
func TestBadOptionIsOneLine(t *testing.T) {
	_, env := testutil.ProfileDir(t)
	out, code := funtun(t, env, "forward", "--bogus")
	if code != 2 || strings.Count(out, "-bogus") != 1 || !strings.Contains(out, "see `funtun forward --help`") || strings.Contains(out, "Options:") {
		t.Errorf("funtun forward --bogus: exit %d\n%s", code, out)
	}
	out, code = funtun(t, env, "forward", "--help")
	if code != 0 || !strings.Contains(out, "Options:") {
		t.Errorf("funtun forward --help: exit %d\n%s", code, out)
	}
}

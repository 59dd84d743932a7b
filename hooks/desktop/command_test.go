package desktop

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/cli"
)

// runCLI runs `funtun desktop ARGS…` in this process, on the tree's XDG
// directories and profiles.
func runCLI(t *testing.T, tr *tree, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("XDG_DATA_HOME", tr.home)
	t.Setenv("XDG_DATA_DIRS", tr.sys)
	t.Setenv("FUNTUN_PROFILE_PATH", tr.profiles)
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Log: slog.New(slog.NewTextHandler(&errb, nil))}
	c, ok := cli.Lookup("desktop")
	if !ok {
		t.Fatal("desktop is not registered")
	}
	code := c.Run(context.Background(), env, args)
	return code, out.String(), errb.String()
}

func TestCommandHelpAndDryRunWriteNothing(t *testing.T) {
	tr := newTree(t)
	for _, args := range [][]string{
		{"--help"}, {"list", "--help"}, {"status", "-h"}, {"apply", "--help"}, {"remove", "--help"}, {"ui", "--help"},
	} {
		code, out, errs := runCLI(t, tr, args...)
		if code != 0 || !strings.Contains(out, "funtun desktop") || errs != "" {
			t.Errorf("%q: exit %d, out %q, err %q", args, code, out, errs)
		}
	}
	code, out, errs := runCLI(t, tr, "apply", "org.funtun.Quoted", "profile=work", "--dry-run", "--funtun", testFuntun)
	if code != 0 || !strings.Contains(out, "dry run") || !strings.Contains(out, `Exec="/opt/fun tun/bin/funtun" profile=work "/opt/My Apps/demo"`) {
		t.Errorf("apply --dry-run: exit %d\n%s\n%s", code, out, errs)
	}
	if _, err := os.Stat(tr.home); !os.IsNotExist(err) {
		t.Errorf("--help or --dry-run created %s", tr.home)
	}
}

func TestCommandApplyStatusRemove(t *testing.T) {
	tr := newTree(t)
	code, out, errs := runCLI(t, tr, "apply", "org.funtun.Quoted", "vim.desktop", "profile=work", "--funtun", testFuntun)
	if _, err := os.Stat("/usr/share/applications/vim.desktop"); err != nil {
		// vim is not one of the test tools: only the hand-made entry then.
		code, out, errs = runCLI(t, tr, "apply", "org.funtun.Quoted", "profile=work", "--funtun", testFuntun)
	}
	if code != 0 || !strings.Contains(out, "org.funtun.Quoted.desktop: profile work") {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	validate(t, filepath.Join(tr.home, "applications", "org.funtun.Quoted.desktop"))

	code, out, _ = runCLI(t, tr, "list")
	if code != 0 || !strings.Contains(out, "org.funtun.Quoted.desktop") || !strings.Contains(out, "cannot: DBusActivatable=true") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "org.funtun.Quoted.desktop ") && !strings.Contains(line, " work ") {
			t.Errorf("list line without the profile: %q", line)
		}
		if strings.HasPrefix(line, "broken.desktop ") && !strings.Contains(line, "broken.desktop:4:") {
			t.Errorf("list line of a broken file without FILE:LINE: %q", line)
		}
	}
	code, out, _ = runCLI(t, tr, "status")
	if code != 0 || !strings.Contains(out, "profile  work (funtun's override)") || !strings.Contains(out, "profile  direct (written in the file itself)") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, tr, "status", "--json", "org.funtun.Quoted")
	var entries []Entry
	if err := json.Unmarshal([]byte(out), &entries); code != 0 || err != nil || len(entries) != 1 || entries[0].Profile != "work" || len(entries[0].Execs) != 3 {
		t.Errorf("status --json: exit %d, %v\n%s", code, err, out)
	}

	code, out, errs = runCLI(t, tr, "remove", "org.funtun.Quoted", "no.such.thing")
	if code != 1 || !strings.Contains(out, "profile removed") || !strings.Contains(errs, "no desktop entry no.such.thing.desktop") {
		t.Errorf("remove: exit %d\n%s\n%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(tr.home, "applications", "org.funtun.Quoted.desktop")); !os.IsNotExist(err) {
		t.Errorf("override still there: %v", err)
	}
}

func TestCommandUsageErrors(t *testing.T) {
	tr := newTree(t)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "name a command"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"apply", "vim"}, 2, "needs profile=NAME"},
		{[]string{"apply", "profile=work"}, 2, "name the entries"},
		{[]string{"apply", "vim", "chain=direct"}, 2, "take profile=NAME"},
		{[]string{"list", "profile=work"}, 2, "takes no profile="},
		{[]string{"remove"}, 2, "name the entries"},
		{[]string{"apply", "org.funtun.DBus", "profile=work", "--funtun", testFuntun}, 1, "DBusActivatable=true"},
		{[]string{"apply", "org.funtun.Terminal", "profile=missing", "--funtun", testFuntun}, 1, `no profile named "missing"`},
		{[]string{"ui", "--listen", "0.0.0.0:0"}, 1, "not a loopback address"},
	} {
		code, _, errs := runCLI(t, tr, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%q: exit %d, %q; want %d and %q", c.args, code, errs, c.code, c.msg)
		}
	}
	if left := tr.userApps(t); len(left) != 0 {
		t.Errorf("failed commands left files: %q", left)
	}
}

func TestCommandUIServesUntilStopped(t *testing.T) {
	tr := newTree(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Setenv("XDG_DATA_HOME", tr.home)
	t.Setenv("XDG_DATA_DIRS", tr.sys)
	t.Setenv("FUNTUN_PROFILE_PATH", tr.profiles)
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	r, w, _ := os.Pipe()
	env := &cli.Env{Stdout: w, Stderr: w, Log: slog.New(slog.NewTextHandler(w, nil))}
	c, _ := cli.Lookup("desktop")
	done := make(chan int)
	go func() { done <- c.Run(ctx, env, []string{"ui", "--funtun", testFuntun}) }()
	buf := make([]byte, 4096)
	n, _ := r.Read(buf)
	first := strings.Fields(string(buf[:n]))
	if len(first) < 4 || !strings.HasPrefix(first[3], "http://127.0.0.1:") {
		t.Fatalf("ui printed %q", buf[:n])
	}
	status, body := do(t, "GET", first[3], "", nil, nil)
	if status != 200 || !strings.Contains(body, "Quoted Demo") {
		t.Errorf("the printed URL gave %d", status)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("ui exited %d", code)
	}
}

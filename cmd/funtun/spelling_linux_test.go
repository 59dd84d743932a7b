//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// The specification's spelling, --profile=NAME -- PROGRAM, selects the
// profile as profile=NAME does: for the launcher and for a command.
func TestProfileOptionSpelling(t *testing.T) {
	dir, env := testutil.ProfileDir(t)
	writeProfile(t, dir, "shout", "rewrite dir=up from=a to=b\n")
	for _, args := range [][]string{
		{"--profile=nosuch", "--", "true"},
		{"--profile", "nosuch", "--", "true"},
		{"--profile=nosuch", "true"},
		{"--profile=nosuch", "forward", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"},
	} {
		out, code := funtun(t, env, args...)
		if code == 0 || !strings.Contains(out, `"nosuch"`) {
			t.Errorf("funtun %s: exit %d, output lacks the profile's name:\n%s", strings.Join(args, " "), code, out)
		}
	}
	for _, args := range [][]string{
		{"--profile=shout", "--", "sh", "-c", "exit 7"},
		{"--chain=rewrite dir=up from=a to=b", "--", "sh", "-c", "exit 7"},
	} {
		if out, code := funtun(t, env, args...); code != 7 {
			t.Errorf("funtun %s: exit %d, want the program's 7:\n%s", strings.Join(args, " "), code, out)
		}
	}
	if out, code := funtun(t, env, "--profile=shout"); code != 2 || !strings.Contains(out, "name a program") {
		t.Errorf("--profile alone: exit %d:\n%s", code, out)
	}
}

func writeProfile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+".profile"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

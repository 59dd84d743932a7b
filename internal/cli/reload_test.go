package cli

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
	// The built-in profiles (6bed4) need every piece to compile.
	_ "github.com/funtun/funtun/pieces/all"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/route"
)

// startCommand does what a hook's run does before serving: parse its
// words (profile= or chain=) and load the engine.
func startCommand(t *testing.T, dir string, words ...string) (*funnel.Engine, funnel.Selector, *bytes.Buffer) {
	t.Helper()
	t.Setenv("FUNTUN_PROFILE_PATH", dir)
	var logs bytes.Buffer
	env := &Env{Stdout: io.Discard, Stderr: io.Discard, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	sel, _, _, err := env.ParseFlags(env.FlagSet(&Command{Name: "test-reload"}), words)
	if err != nil {
		t.Fatal(err)
	}
	e, err := env.Engine()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { commandSelectors.Delete(e) })
	return e, sel, &logs
}

func writeProfile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+funnel.ProfileExt), []byte(text+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A reload that loses the command's own profile (profile=, or one its
// chain='route …' names) is refused as a whole, with the old set kept;
// once the profile is back, the next reload takes the new set.
func TestReloadKeepsTheCommandsProfile(t *testing.T) {
	for _, words := range [][]string{{"profile=mine"}, {"chain=route default=mine"}} {
		t.Run(words[0], func(t *testing.T) {
			dir := t.TempDir()
			writeProfile(t, dir, "mine", "direct")
			e, sel, logs := startCommand(t, dir, words...)
			before := e.Catalog.Current()

			os.Remove(filepath.Join(dir, "mine"+funnel.ProfileExt))
			writeProfile(t, dir, "other", "direct")
			err := Reload(e)
			if err == nil || !strings.Contains(err.Error(), `no profile named "mine"`) || !strings.Contains(err.Error(), "the command's "+sel.String()) {
				t.Fatalf("reload without the command's profile: %v", err)
			}
			if e.Catalog.Current() != before || !strings.Contains(logs.String(), "reload failed") || strings.Contains(logs.String(), "profiles reloaded") {
				t.Fatalf("a refused reload changed the set or logged success:\n%s", logs)
			}
			if _, err := e.Resolve(sel); err != nil {
				t.Fatalf("the command's profile is gone after a refused reload: %v", err)
			}

			writeProfile(t, dir, "mine", "direct")
			if err := Reload(e); err != nil {
				t.Fatal(err)
			}
			if _, ok := e.Catalog.Current().Profile("other"); !ok {
				t.Fatal("the fixed reload did not take the new set")
			}
		})
	}
}

// A step's error refuses the reload, and no step's commit runs; when all
// accept, every commit runs once the new set is in force.
func TestReloadStepsAreAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	writeProfile(t, dir, "mine", "direct")
	e, _, _ := startCommand(t, dir, "profile=mine")
	before := e.Catalog.Current()
	var committed []string
	ok := func(name string) ReloadStep {
		return func(set *funnel.Set) (func(), error) {
			if _, found := set.Profile("mine"); !found {
				return nil, errors.New("step " + name + " sees no profile mine")
			}
			return func() {
				if e.Catalog.Current() != set {
					t.Errorf("step %s committed before its set was in force", name)
				}
				committed = append(committed, name)
			}, nil
		}
	}
	bad := func(*funnel.Set) (func(), error) {
		return func() { committed = append(committed, "bad") }, errors.New("users file F:3: user alice takes profile \"gone\", which does not exist")
	}
	if err := Reload(e, ok("a"), bad, ok("b")); err == nil || !strings.Contains(err.Error(), `user alice takes profile "gone"`) {
		t.Fatalf("reload with a failing step: %v", err)
	}
	if len(committed) != 0 || e.Catalog.Current() != before {
		t.Fatalf("a refused reload committed %v or changed the set", committed)
	}
	if err := Reload(e, ok("a"), ok("b")); err != nil {
		t.Fatal(err)
	}
	if strings.Join(committed, ",") != "a,b" || e.Catalog.Current() == before {
		t.Fatalf("commits %v, set changed %v; want a,b and a new set", committed, e.Catalog.Current() != before)
	}
}

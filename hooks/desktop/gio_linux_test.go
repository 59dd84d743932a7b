//go:build linux

package desktop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/internal/testutil"
)

// TestGLibLaunchesTheWrappedEntry has GLib itself (gio launch, the code
// GNOME and most desktops start applications with) read the override:
// the program must get exactly the arguments it gets from the original
// entry — quotes, escapes and field codes included — and run under
// funtun's launcher, through a funtun path with a space and a dollar sign
// in it.
func TestGLibLaunchesTheWrappedEntry(t *testing.T) {
	gio := testutil.NeedTool(t, "gio")
	funtun := testutil.Funtun(t)
	tr := newTree(t)
	dir := t.TempDir()

	odd := filepath.Join(dir, "fun tun $dir")
	if err := os.MkdirAll(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(funtun, filepath.Join(odd, "funtun")); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"XDG_DATA_HOME="+tr.home, "XDG_DATA_DIRS="+tr.sys,
		"FUNTUN_PROFILE_PATH="+tr.profiles, "DISPLAY=", "WAYLAND_DISPLAY=")
	if lib := preloadLibrary(t, funtun); lib != "" {
		env = append(env, "FUNTUN_PRELOAD="+lib)
	}

	// The program records its arguments (NUL-separated) and whether
	// funtun's library is preloaded, then moves the record into place.
	rec := filepath.Join(dir, "bin dir", "record")
	writeFile(t, rec, "#!/bin/sh\n{ printf '%s\\0' \"$@\"; printf 'LD_PRELOAD=%s' \"$LD_PRELOAD\"; } > \"$OUT.tmp\" && mv \"$OUT.tmp\" \"$OUT\"\n")
	os.Chmod(rec, 0o755)
	entry := "[Desktop Entry]\nType=Application\nName=Recorder\nName[de]=Rekorder\n" +
		"TryExec=" + EscapeString(rec) + "\n" +
		"Exec=" + QuoteExec([]string{rec}) + ` "a b" "say \"hi\"" "\\$HOME" "back\\\\slash" 100%% --name %c %f` + "\n" +
		"Actions=other;\n\n[Desktop Action other]\nName=Other\nExec=" + QuoteExec([]string{rec}) + " --other\n"
	writeFile(t, filepath.Join(tr.sys, "applications", "org.funtun.Recorder.desktop"), entry)
	validate(t, filepath.Join(tr.sys, "applications", "org.funtun.Recorder.desktop"))

	runs := 0
	launch := func(path string) (args []string, preload string) {
		t.Helper()
		runs++
		out := filepath.Join(dir, fmt.Sprintf("record-%d", runs))
		cmd := exec.Command(gio, "launch", path, "/etc/hostname")
		cmd.Env = append(env, "OUT="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gio launch %s: %v\n%s", path, err, b)
		}
		// gio returns once the program is started; wait for its record.
		deadline := time.Now().Add(60 * time.Second)
		for {
			data, err := os.ReadFile(out)
			if err == nil {
				parts := strings.Split(string(data), "\x00")
				return parts[:len(parts)-1], parts[len(parts)-1]
			}
			if time.Now().After(deadline) {
				t.Fatalf("the program launched from %s wrote no record", path)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	want := []string{"a b", `say "hi"`, "$HOME", `back\slash`, "100%", "--name", "Recorder", "/etc/hostname"}
	args, preload := launch(filepath.Join(tr.sys, "applications", "org.funtun.Recorder.desktop"))
	if !slices.Equal(args, want) || strings.Contains(preload, "libfuntun") {
		t.Fatalf("the original entry gave %q, %s; want %q without funtun", args, preload, want)
	}

	tr.m.Launcher = Launcher{Funtun: filepath.Join(odd, "funtun")}
	c, err := tr.m.Apply("org.funtun.Recorder", "work", false)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, c.Path)
	args, preload = launch(c.Path)
	if !slices.Equal(args, want) {
		t.Errorf("the override gave the program %q, want %q", args, want)
	}
	if !strings.Contains(preload, "libfuntun") {
		t.Errorf("the program did not run under funtun's launcher (%s)", preload)
	}
}

// preloadLibrary makes sure the launcher finds libfuntun.so: the test
// command's (FUNTUN_PRELOAD, or beside $FUNTUN_BIN/funtun), else one built
// here from preload/*.c.
func preloadLibrary(t *testing.T, funtun string) string {
	t.Helper()
	if p := os.Getenv("FUNTUN_PRELOAD"); p != "" {
		return p
	}
	if real, err := filepath.EvalSymlinks(funtun); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(real), "libfuntun.so")); err == nil {
			return ""
		}
	}
	cc := testutil.NeedTool(t, "cc")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	sources, _ := filepath.Glob(filepath.Join(root, "preload", "*.c"))
	lib := filepath.Join(t.TempDir(), "libfuntun.so")
	args := append(append([]string{"-shared", "-fPIC", "-O2", "-o", lib}, sources...), "-ldl", "-lpthread")
	if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("building libfuntun.so: %v\n%s", err, out)
	}
	return lib
}

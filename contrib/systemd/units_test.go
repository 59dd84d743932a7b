// Package systemd holds the example units; this test checks them with
// systemd's own verifier and security analyser, offline: no systemd as
// PID 1 is needed.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// installedPath is where the units expect funtun (make install's PREFIX).
const installedPath = "/usr/local/bin/funtun"

type unitSet struct {
	dir  string // where the unit files are
	user bool   // systemd-analyze --user
	// services and the highest exposure `systemd-analyze security` may
	// give each: a guard against hardening lost in an edit.
	exposure map[string]float64
}

// unitSets: every directory of units here.
var unitSets = []unitSet{
	{"user", true, map[string]float64{"funtun-socks5d.service": 2.5}},
	// root, to run each line's program as its user
	{"system", false, map[string]float64{"funtun-inetd.service": 3.0, "funtun-activate@8443.service": 2.0}},
}

// units lists dir's unit files, a template by an instance.
func (set unitSet) units(t *testing.T) []string {
	t.Helper()
	var units []string
	for _, pattern := range []string{"*.socket", "*.service"} {
		files, err := filepath.Glob(filepath.Join(set.dir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			units = append(units, strings.Replace(filepath.Base(f), "@.", "@8443.", 1))
		}
	}
	if len(units) == 0 {
		t.Fatalf("no units in %s", set.dir)
	}
	return units
}

// copyUnits copies dir's units with ExecStart= and the like pointing at a
// funtun that exists (verify checks that it does).
func copyUnits(t *testing.T, dir, bin string) string {
	t.Helper()
	out := t.TempDir()
	files, err := filepath.Glob(filepath.Join(dir, "*.s*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !strings.HasSuffix(f, ".socket") && !strings.HasSuffix(f, ".service") {
			continue
		}
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".service") && !strings.Contains(string(text), "ExecStart="+installedPath+" ") {
			t.Errorf("%s: ExecStart= does not run %s", f, installedPath)
		}
		fixed := strings.ReplaceAll(string(text), installedPath, bin)
		if err := os.WriteFile(filepath.Join(out, filepath.Base(f)), []byte(fixed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func analyze(t *testing.T, set unitSet, dir string, args ...string) (string, error) {
	t.Helper()
	tool := testutil.NeedTool(t, "systemd-analyze")
	if set.user {
		args = append([]string{"--user"}, args...)
	}
	cmd := exec.Command(tool, args...)
	cmd.Dir = dir
	if set.user {
		// A user manager's runtime directory; verify needs one, not a
		// running manager.
		runtime := t.TempDir()
		os.Chmod(runtime, 0o700)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtime)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// systemd-analyze verify exits 0 on unknown keys and values it cannot
// parse (it only warns), so any output at all is a failure.
func TestUnitsVerify(t *testing.T) {
	bin := testutil.Funtun(t)
	for _, set := range unitSets {
		t.Run(set.dir, func(t *testing.T) {
			dir := copyUnits(t, set.dir, bin)
			args := []string{"verify", "--man=no"}
			for _, u := range set.units(t) {
				args = append(args, "./"+u)
			}
			out, err := analyze(t, set, dir, args...)
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+)`)

func TestUnitsHardening(t *testing.T) {
	bin := testutil.Funtun(t)
	for _, set := range unitSets {
		for service, most := range set.exposure {
			t.Run(service, func(t *testing.T) {
				dir := copyUnits(t, set.dir, bin)
				out, err := analyze(t, set, dir, "security", "--offline=yes", "--no-pager", "./"+service)
				m := exposureRE.FindStringSubmatch(out)
				if err != nil || m == nil {
					t.Fatalf("systemd-analyze security %s: %v\n%s", service, err, out)
				}
				if got, _ := strconv.ParseFloat(m[2], 64); got > most {
					t.Errorf("%s: exposure %s, more than %.1f: hardening was lost\n%s", service, m[2], most, out)
				}
			})
		}
	}
}

// What a unit promises must be what funtun does: the socket's name is the
// one --listen picks, Type=notify only where the command notifies.
func TestUnitsMatchTheCommands(t *testing.T) {
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	socket, service := read("user/funtun-socks5d.socket"), read("user/funtun-socks5d.service")
	name := regexp.MustCompile(`(?m)^FileDescriptorName=(\S+)$`).FindStringSubmatch(socket)
	if name == nil || !strings.Contains(service, "--listen fd:"+name[1]) {
		t.Errorf("funtun-socks5d.service does not --listen fd:NAME the socket's FileDescriptorName (%v)", name)
	}
	for _, f := range []string{"user/funtun-socks5d.service", "system/funtun-inetd.service"} {
		if !strings.Contains(read(f), "\nType=notify\n") {
			t.Errorf("%s is not Type=notify", f)
		}
	}
}

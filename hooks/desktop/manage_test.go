package desktop

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// checkApplied: the override passes desktop-file-validate, carries the
// marker, runs every Exec of the original (main group and actions) under
// funtun profile=NAME with the original text after it, and is otherwise
// the original byte for byte (comments, localized keys, TryExec, unknown
// keys, spacing, the final newline or its absence).
func checkApplied(t *testing.T, path, profile string, original []byte) {
	t.Helper()
	validate(t, path)
	data := readFile(t, path)
	f, err := Parse(path, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	orig, err := Parse("original", original)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.String(mainGroup, MarkerKey); got != profile {
		t.Errorf("%s: %s=%q, want %q", path, MarkerKey, got, profile)
	}
	groups := execGroups(orig)
	if len(groups) == 0 || !slices.Equal(groups, execGroups(f)) {
		t.Fatalf("%s: Exec groups %q, original %q", path, execGroups(f), groups)
	}
	for _, g := range groups {
		raw, _ := f.Raw(g, "Exec")
		was, _ := orig.Raw(g, "Exec")
		w, err := ParseWrapped(raw)
		inner, _ := ParseWrapped(was)
		if err != nil || !w.Yes || w.Profile != profile || w.Program != inner.Program {
			t.Errorf("%s [%s] Exec=%s: %+v, %v", path, g, raw, w, err)
		}
		args, _ := ExecArgs(raw)
		if args[0].Text != testFuntun {
			t.Errorf("%s [%s]: runs %q, want %q", path, g, args[0].Text, testFuntun)
		}
	}
	if a, b := f.String(mainGroup, "TryExec"), orig.String(mainGroup, "TryExec"); a != b {
		t.Errorf("%s: TryExec %q became %q", path, b, a)
	}
	// Without funtun's words both are the same, byte for byte (an entry
	// provisioned with funtun in Exec had those words replaced).
	back, err := unwrapped(f)
	want, _ := unwrapped(orig)
	if err != nil || string(back.Bytes()) != string(want.Bytes()) {
		t.Errorf("%s: apart from Exec and the marker, the override differs from the original:\n%s\n--- original:\n%s", path, back.Bytes(), original)
	}
}

func TestApplyAndRemoveEveryApplicableEntry(t *testing.T) {
	tr := newTree(t)
	ids := append(append([]string(nil), applicable...), tr.real...)
	for _, id := range ids {
		t.Run(id, func(t *testing.T) {
			sysPath := filepath.Join(tr.sys, "applications", strings.Replace(id, "vendor-", "vendor/", 1))
			original := []byte(readFile(t, sysPath))
			override := filepath.Join(tr.home, "applications", id)

			c, err := tr.m.Apply(id, "work", false)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Changed || c.Path != override {
				t.Fatalf("apply: %+v", c)
			}
			checkApplied(t, override, "work", original)

			// Again: nothing changes, not even the file's time.
			st1, _ := os.Stat(override)
			c, err = tr.m.Apply(strings.TrimSuffix(id, ".desktop"), "work", false)
			if err != nil || c.Changed {
				t.Fatalf("second apply: %+v, %v", c, err)
			}
			if st2, _ := os.Stat(override); !st2.ModTime().Equal(st1.ModTime()) {
				t.Error("applying the same profile again rewrote the file")
			}
			// Another profile replaces the first.
			if c, err = tr.m.Apply(override, "direct", false); err != nil || !c.Changed {
				t.Fatalf("apply direct: %+v, %v", c, err)
			}
			checkApplied(t, override, "direct", original)
			if strings.Contains(readFile(t, override), "profile=work") {
				t.Error("the first profile is still in the file")
			}
			e, err := tr.m.Status(id)
			if err != nil || e.Profile != "direct" || !e.Override || e.Path != override {
				t.Errorf("status: %+v, %v", e, err)
			}

			if c, err = tr.m.Remove(id, false, false); err != nil || !c.Changed {
				t.Fatalf("remove: %+v, %v", c, err)
			}
			if _, err := os.Stat(override); !os.IsNotExist(err) {
				t.Errorf("override still there after remove: %v", err)
			}
			if got := readFile(t, sysPath); got != string(original) {
				t.Error("the system entry changed")
			}
		})
	}
	if left := tr.userApps(t); len(left) != 0 {
		t.Errorf("left in the user's applications: %q", left)
	}
}

func TestRemoveRestoresTheUsersOwnFileExactly(t *testing.T) {
	tr := newTree(t)
	// The user's own entry for an ID the system has too: a changed name,
	// odd spacing, a comment, no final newline, mode 0600.
	own := "[Desktop Entry]\n# my own launcher\nType=Application\nName = My Quoted\nExec=\"/opt/My Apps/demo\" --mine %U\nTryExec=/usr/bin/env"
	userPath := filepath.Join(tr.home, "applications", "org.funtun.Quoted.desktop")
	writeFile(t, userPath, own)
	os.Chmod(userPath, 0o600)

	c, err := tr.m.Apply("org.funtun.Quoted", "work", false)
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(tr.home, "funtun", "desktop-backup", "org.funtun.Quoted.desktop")
	if c.Backup != backup || readFile(t, backup) != own {
		t.Fatalf("backup %q: %q", c.Backup, readFile(t, backup))
	}
	checkApplied(t, userPath, "work", []byte(own))
	if st, _ := os.Stat(userPath); st.Mode().Perm() != 0o600 {
		t.Errorf("override mode %v, want the user's 0600", st.Mode().Perm())
	}
	// Another profile must not put the override into the backup.
	if _, err := tr.m.Apply("org.funtun.Quoted", "direct", false); err != nil {
		t.Fatal(err)
	}
	if readFile(t, backup) != own {
		t.Fatal("a second apply overwrote the backup")
	}
	e, _ := tr.m.Status("org.funtun.Quoted.desktop")
	if e.Backup != backup {
		t.Errorf("status does not show the backup: %+v", e)
	}
	if _, err := tr.m.Remove("org.funtun.Quoted", false, false); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, userPath); got != own {
		t.Fatalf("restored file differs:\n%q\nwant\n%q", got, own)
	}
	if st, _ := os.Stat(userPath); st.Mode().Perm() != 0o600 {
		t.Errorf("restored mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := os.Stat(backup); !os.IsNotExist(err) {
		t.Error("the backup is still there after it was restored")
	}
	// Now it is the user's file again, and remove leaves it alone.
	if _, err := tr.m.Remove("org.funtun.Quoted", false, false); err == nil || !strings.Contains(err.Error(), "your own file") {
		t.Errorf("remove on the user's own file: %v", err)
	}
}

func TestRemoveKeepsAnOverrideChangedSinceApply(t *testing.T) {
	tr := newTree(t)
	if _, err := tr.m.Apply("org.funtun.Terminal", "work", false); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(tr.home, "applications", "org.funtun.Terminal.desktop")
	edited := readFile(t, path) + "Keywords=mine;\n"
	writeFile(t, path, edited)
	_, err := tr.m.Remove("org.funtun.Terminal", false, false)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("remove of an edited override: %v", err)
	}
	if readFile(t, path) != edited {
		t.Fatal("the edited override was touched")
	}
	// Applying another profile keeps the user's edit.
	if _, err := tr.m.Apply("org.funtun.Terminal", "direct", false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(readFile(t, path), "Keywords=mine;") {
		t.Error("apply lost an edit of the override")
	}
	validate(t, path)
	if _, err := tr.m.Remove("org.funtun.Terminal", true, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("remove --force left the override")
	}
}

func TestStaleBackupIsNotResurrected(t *testing.T) {
	tr := newTree(t)
	userPath := filepath.Join(tr.home, "applications", "org.funtun.Terminal.desktop")
	writeFile(t, userPath, handMade["org.funtun.Terminal.desktop"]+"Comment=mine\n")
	if _, err := tr.m.Apply("org.funtun.Terminal", "work", false); err != nil {
		t.Fatal(err)
	}
	validate(t, userPath)
	os.Remove(userPath) // the user deletes the override by hand
	if _, err := tr.m.Apply("org.funtun.Terminal", "work", false); err != nil {
		t.Fatal(err)
	}
	validate(t, userPath)
	if _, err := tr.m.Remove("org.funtun.Terminal", false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(userPath); !os.IsNotExist(err) {
		t.Errorf("remove brought back a file the user had deleted: %v", err)
	}
}

func TestRefusedEntriesAreReportedAndNotWritten(t *testing.T) {
	tr := newTree(t)
	for id, why := range refused {
		_, err := tr.m.Apply(id, "work", false)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("apply %s: %v, want it refused with %q", id, err, why)
		}
	}
	if left := tr.userApps(t); len(left) != 0 {
		t.Errorf("refused entries left files: %q", left)
	}
	for _, c := range []struct{ id, profile, msg string }{
		{"org.funtun.Terminal", "nope", `no profile named "nope"; known:`},
		{"no.such.App", "work", "no desktop entry no.such.App.desktop"},
		{"/elsewhere/x.desktop", "work", "not in an applications directory"},
	} {
		if _, err := tr.m.Apply(c.id, c.profile, false); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("apply %s profile=%s: %v, want %q", c.id, c.profile, err, c.msg)
		}
	}
	writeFile(t, filepath.Join(tr.profiles, "bad.profile"), "direct\nno-such-piece\n")
	if _, err := tr.m.Apply("org.funtun.Terminal", "bad", false); err == nil || !strings.Contains(err.Error(), "does not compile") || !strings.Contains(err.Error(), "bad.profile:2") {
		t.Errorf("apply with a broken profile: %v", err)
	}
}

func TestListShowsProfilesAndWhatStandsInTheWay(t *testing.T) {
	tr := newTree(t)
	if _, err := tr.m.Apply("vendor/sub.desktop", "work", true); err == nil {
		t.Error("a relative path outside the applications directories was taken")
	}
	if _, err := tr.m.Apply(filepath.Join(tr.sys, "applications", "vendor", "sub.desktop"), "work", false); err != nil {
		t.Fatal(err)
	}
	entries, err := tr.m.List()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]Entry{}
	for _, e := range entries {
		byID[e.ID] = e
	}
	want := map[string]func(Entry) bool{
		"vendor-sub.desktop":             func(e Entry) bool { return e.Profile == "work" && e.Override },
		"org.funtun.Provisioned.desktop": func(e Entry) bool { return e.Profile == "direct" && !e.Override },
		"org.funtun.Quoted.desktop":      func(e Entry) bool { return e.Profile == "" && e.Name == "Quoted Demo" && len(e.Execs) == 3 },
		"org.funtun.DBus.desktop":        func(e Entry) bool { return strings.Contains(e.Refusal, "DBusActivatable") },
		"org.funtun.Deleted.desktop":     func(e Entry) bool { return slices.Contains(e.Notes, "deleted (Hidden=true)") },
		"org.funtun.NoDisplay.desktop": func(e Entry) bool {
			return strings.Contains(strings.Join(e.Notes, ";"), "NoDisplay=true") && e.Refusal == ""
		},
		"org.funtun.Terminal.desktop": func(e Entry) bool {
			return strings.Contains(strings.Join(e.Notes, ";"), "Terminal=true") && e.Refusal == ""
		},
		"broken.desktop": func(e Entry) bool { return strings.Contains(e.Error, "broken.desktop:4:") },
	}
	for id, ok := range want {
		if e, found := byID[id]; !found || !ok(e) {
			t.Errorf("%s: %+v", id, e)
		}
	}
	if _, found := byID["org.funtun.Link.desktop"]; found {
		t.Error("a Type=Link entry is listed as an application")
	}
	for _, id := range tr.real {
		if _, found := byID[id]; !found {
			t.Errorf("the Debian entry %s is not listed", id)
		}
	}
	// Provisioned centrally: nothing of funtun's to remove, and apply
	// replaces the launcher words instead of stacking a second funtun.
	if _, err := tr.m.Remove("org.funtun.Provisioned", false, false); err == nil || !strings.Contains(err.Error(), "provisioned") {
		t.Errorf("remove on a provisioned entry: %v", err)
	}
	c, err := tr.m.Apply("org.funtun.Provisioned", "work", false)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := Parse("x", c.Text); got.String(mainGroup, "Exec") != QuoteArg(testFuntun)+" profile=work twinkle %u" {
		t.Errorf("provisioned entry rewrapped as %q", got.String(mainGroup, "Exec"))
	}
	validate(t, c.Path)
}

func TestDryRunWritesNothing(t *testing.T) {
	tr := newTree(t)
	c, err := tr.m.Apply("org.funtun.Quoted", "work", true)
	if err != nil || !c.Changed || !strings.Contains(string(c.Text), "profile=work") {
		t.Fatalf("dry run: %+v, %v", c, err)
	}
	if _, err := os.Stat(tr.home); !os.IsNotExist(err) {
		t.Errorf("a dry run created %s", tr.home)
	}
}

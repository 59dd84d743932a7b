package desktop

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

const (
	mainGroup    = "Desktop Entry"
	actionPrefix = "Desktop Action "
	// MarkerKey in an override names the profile it applied; list and
	// status read it, and remove refuses files without it.
	MarkerKey = "X-Funtun-Profile"
)

// Profile is one name the profile registry knows.
type Profile struct {
	Name   string
	Origin string
	Broken error // why it does not compile; nil when usable
}

// Manager lists, applies and removes profiles on desktop entries.
type Manager struct {
	Dirs     Dirs
	Launcher Launcher
	// Profiles lists the profiles apply accepts (funtun profiles).
	Profiles func() ([]Profile, error)
}

// Entry is one application as the desktop sees it.
type Entry struct {
	ID   string `json:"id"`
	Path string `json:"path"` // the file in force
	Name string `json:"name"`
	// Profile is the profile its Exec runs under ("" for none): the
	// NAME of profile=NAME, or chain='…' for a hand-written chain.
	Profile string `json:"profile,omitempty"`
	// Override is true when Path is funtun's user-level override.
	Override bool `json:"override,omitempty"`
	// Backup is the user's own file the override replaced, kept for
	// remove.
	Backup  string   `json:"backup,omitempty"`
	Notes   []string `json:"notes,omitempty"`
	Refusal string   `json:"refusal,omitempty"` // why apply would refuse
	Error   string   `json:"error,omitempty"`   // the file does not parse
	// Execs are the Exec values (main group first, then each action),
	// decoded from their string escapes, as they are now.
	Execs []string `json:"exec,omitempty"`
}

// List reads every entry of type Application in force.
func (m *Manager) List() ([]Entry, error) {
	found, order, scanErr := m.Dirs.scan()
	var out []Entry
	for _, id := range order {
		e := m.describe(id, found[id])
		if e.Error == "" && e.Refusal == notApplication {
			continue
		}
		out = append(out, e)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := strings.ToLower(out[i].Name), strings.ToLower(out[j].Name)
		if a != b {
			return a < b
		}
		return out[i].ID < out[j].ID
	})
	return out, scanErr
}

// Status describes one entry.
func (m *Manager) Status(arg string) (Entry, error) {
	id, err := m.Dirs.resolveID(arg)
	if err != nil {
		return Entry{}, err
	}
	found, _, _ := m.Dirs.scan()
	files := found[id]
	if len(files) == 0 {
		return Entry{}, m.notFound(id)
	}
	return m.describe(id, files), nil
}

func (m *Manager) notFound(id string) error {
	return fmt.Errorf("no desktop entry %s in %s (see `funtun desktop list`)", id, strings.Join(m.Dirs.appDirs(), ", "))
}

const notApplication = "not an application"

func (m *Manager) describe(id string, files []located) Entry {
	top := files[0]
	e := Entry{ID: id, Path: top.path}
	f, err := readEntry(top.path)
	if err != nil {
		e.Error = err.Error()
		e.Name = id
		return e
	}
	e.Name = f.String(mainGroup, "Name")
	if e.Name == "" {
		e.Name = id
	}
	if v, ok := f.Raw(mainGroup, MarkerKey); ok && top.user {
		e.Override, e.Profile = true, UnescapeString(v)
		if _, err := os.Stat(m.backupPath(id)); err == nil {
			e.Backup = m.backupPath(id)
		}
	}
	for _, g := range execGroups(f) {
		raw, _ := f.Raw(g, "Exec")
		e.Execs = append(e.Execs, UnescapeString(raw))
		if w, err := ParseWrapped(raw); err == nil && w.Yes && g == mainGroup && e.Profile == "" {
			e.Profile = w.Profile
			if e.Profile == "" {
				e.Profile = w.Selector
			}
		}
	}
	e.Refusal = refusal(f, top.path)
	if f.Bool(mainGroup, "Hidden") {
		e.Notes = append(e.Notes, "deleted (Hidden=true)")
	}
	if f.Bool(mainGroup, "NoDisplay") {
		e.Notes = append(e.Notes, "not shown in menus (NoDisplay=true)")
	}
	if f.Bool(mainGroup, "Terminal") {
		e.Notes = append(e.Notes, "runs in a terminal (Terminal=true)")
	}
	return e
}

// maxEntrySize bounds what is read as a desktop entry; real ones are a
// few kilobytes even with every translation.
const maxEntrySize = 1 << 20

func readEntry(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxEntrySize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxEntrySize {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a desktop entry", path, maxEntrySize)
	}
	return Parse(path, data)
}

// execGroups are the groups whose Exec launches the application: the
// main group and each [Desktop Action NAME].
func execGroups(f *File) []string {
	var out []string
	for _, g := range f.Groups() {
		if g != mainGroup && !strings.HasPrefix(g, actionPrefix) {
			continue
		}
		if _, ok := f.Raw(g, "Exec"); ok {
			out = append(out, g)
		}
	}
	return out
}

// refusal says why wrapping Exec would not give the application a
// profile, or "" when it would.
func refusal(f *File, path string) string {
	if t := f.String(mainGroup, "Type"); t != "Application" {
		if _, ok := f.Raw(mainGroup, "Type"); !ok && len(f.Groups()) > 0 && f.Groups()[0] == mainGroup {
			return "no Type= key: not a valid application entry"
		}
		return notApplication
	}
	if f.Bool(mainGroup, "Hidden") {
		return "Hidden=true: the entry is deleted, the desktop does not start it"
	}
	if f.Bool(mainGroup, "DBusActivatable") {
		return "DBusActivatable=true: the desktop starts it over D-Bus, not with Exec, so a wrapped Exec would not be used"
	}
	if _, ok := f.Raw(mainGroup, "X-Flatpak"); ok {
		return "a Flatpak application: it runs in Flatpak's sandbox, which funtun's library cannot enter"
	}
	if _, ok := f.Raw(mainGroup, "X-SnapInstanceName"); ok || strings.HasPrefix(path, "/var/lib/snapd/") {
		return "a Snap application: snap confinement keeps funtun's library out"
	}
	raw, ok := f.Raw(mainGroup, "Exec")
	if !ok {
		return "no Exec= key: nothing to run under funtun"
	}
	for _, g := range execGroups(f) {
		raw, _ = f.Raw(g, "Exec")
		w, err := ParseWrapped(raw)
		if err != nil {
			return fmt.Sprintf("%s:%d: Exec: %v", f.Path, f.Line(g, "Exec"), err)
		}
		args, _ := ExecArgs(w.Program)
		if len(args) == 0 {
			return fmt.Sprintf("%s:%d: Exec is empty", f.Path, f.Line(g, "Exec"))
		}
		// env VAR=… PROGRAM is how Snap's entries start the program.
		prog := 0
		if filepath.Base(args[0].Text) == "env" {
			for prog = 1; prog < len(args) && strings.Contains(args[prog].Text, "="); prog++ {
			}
		}
		if prog < len(args) {
			p := args[prog].Text
			switch {
			case filepath.Base(p) == "flatpak":
				return "a Flatpak application (flatpak run): it runs in Flatpak's sandbox, which funtun's library cannot enter"
			case strings.HasPrefix(p, "/snap/bin/") || filepath.Base(p) == "snap":
				return "a Snap application (" + p + "): snap confinement keeps funtun's library out"
			}
		}
	}
	return ""
}

// Change is what apply or remove did, or would do with DryRun.
type Change struct {
	ID   string
	Path string // the user-level file written or removed
	// Text is the file's new content (nil when it is deleted).
	Text    []byte
	Changed bool
	Backup  string // the user's own file kept aside, or restored from
	Msg     string // one line for the user
}

func (m *Manager) backupPath(id string) string { return filepath.Join(m.Dirs.BackupDir(), id) }

// userFile is where the override for id lives: the user's existing file
// of that ID (possibly in a subdirectory), else applications/ID.
func (m *Manager) userFile(files []located) (string, bool) {
	for _, l := range files {
		if l.user {
			return l.path, true
		}
	}
	return "", false
}

// unwrapped is the entry before apply: every wrapped Exec put back and
// the marker removed.
func unwrapped(f *File) (*File, error) {
	g := f.Clone()
	for _, grp := range execGroups(g) {
		raw, _ := g.Raw(grp, "Exec")
		w, err := ParseWrapped(raw)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: Exec: %v", f.Path, f.Line(grp, "Exec"), err)
		}
		if w.Yes {
			if err := g.SetRaw(grp, "Exec", w.Program); err != nil {
				return nil, err
			}
		}
	}
	g.Delete(mainGroup, MarkerKey)
	return g, nil
}

// wrapped is f with every Exec run by the launcher under profile, and
// the marker set.
func (m *Manager) wrapped(f *File, profile string) (*File, error) {
	g := f.Clone()
	for _, grp := range execGroups(g) {
		raw, _ := g.Raw(grp, "Exec")
		v, err := m.Launcher.Wrap(raw, profile)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: Exec: %v", f.Path, f.Line(grp, "Exec"), err)
		}
		if err := g.SetRaw(grp, "Exec", v); err != nil {
			return nil, err
		}
	}
	if err := g.InsertAfter(mainGroup, "Exec", MarkerKey, EscapeString(profile)); err != nil {
		return nil, err
	}
	return g, nil
}

func (m *Manager) checkProfile(name string) error {
	if m.Profiles == nil {
		return errors.New("no profile registry")
	}
	ps, err := m.Profiles()
	var names []string
	for _, p := range ps {
		if p.Name == name {
			if p.Broken != nil {
				return fmt.Errorf("profile %s does not compile, so the application would not start: %v", name, p.Broken)
			}
			return nil
		}
		names = append(names, p.Name)
	}
	if err != nil {
		return fmt.Errorf("no profile named %q (%v)", name, err)
	}
	return fmt.Errorf("no profile named %q; known: %s (see `funtun profiles`)", name, strings.Join(names, ", "))
}

// Apply gives an entry a profile: a user-level override whose every Exec
// runs funtun profile=NAME. With dryRun nothing is written.
func (m *Manager) Apply(arg, profile string, dryRun bool) (Change, error) {
	id, err := m.Dirs.resolveID(arg)
	if err != nil {
		return Change{}, err
	}
	if err := m.checkProfile(profile); err != nil {
		return Change{ID: id}, err
	}
	found, _, _ := m.Dirs.scan()
	files := found[id]
	if len(files) == 0 {
		return Change{ID: id}, m.notFound(id)
	}
	target, hasUser := m.userFile(files)
	if !hasUser {
		target = filepath.Join(m.Dirs.UserApps(), id)
	}
	var base, current *File
	ours := false
	if hasUser {
		current, err = readEntry(target)
		if err != nil {
			return Change{ID: id}, err
		}
		// Our own override is wrapped again in place: its profile word
		// is replaced, and edits made to it since, or launcher options
		// written into it, stay.
		_, ours = current.Raw(mainGroup, MarkerKey)
		base = current
	} else {
		if base, err = readEntry(files[0].path); err != nil {
			return Change{ID: id}, err
		}
	}
	if why := refusal(base, base.Path); why != "" {
		return Change{ID: id}, fmt.Errorf("%s: not applied: %s", id, why)
	}
	next, err := m.wrapped(base, profile)
	if err != nil {
		return Change{ID: id}, err
	}
	text := next.Bytes()
	// The result must read back as the same entry; a file that would
	// not is never written.
	if _, err := Parse(target, text); err != nil {
		return Change{ID: id}, fmt.Errorf("internal error: the override would not parse: %v", err)
	}
	c := Change{ID: id, Path: target, Text: text}
	if ours && bytes.Equal(text, current.Bytes()) {
		c.Msg = fmt.Sprintf("%s already runs under profile %s (%s)", id, profile, target)
		return c, nil
	}
	c.Changed = true
	switch {
	case ours:
		c.Msg = fmt.Sprintf("%s: profile %s (was %s) in %s", id, profile, current.String(mainGroup, MarkerKey), target)
	case hasUser:
		c.Backup = m.backupPath(id)
		c.Msg = fmt.Sprintf("%s: profile %s in %s (your own file kept in %s)", id, profile, target, c.Backup)
	default:
		c.Msg = fmt.Sprintf("%s: profile %s in %s (overrides %s)", id, profile, target, files[0].path)
	}
	if dryRun {
		return c, nil
	}
	mode := fs.FileMode(0o644)
	if hasUser {
		if st, err := os.Stat(target); err == nil {
			mode = st.Mode().Perm()
		}
	}
	if !ours {
		// A backup left from an override deleted by hand is stale:
		// remove must not bring back a file the user removed since.
		if hasUser {
			if err := writeAtomic(c.Backup, current.Bytes(), mode); err != nil {
				return c, fmt.Errorf("keeping your own %s: %v", target, err)
			}
		} else if err := os.Remove(m.backupPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c, err
		}
	}
	if err := writeAtomic(target, text, mode); err != nil {
		return c, err
	}
	return c, nil
}

// Remove restores the state before apply: the user's own file when apply
// replaced one, else no user-level file. An override changed since apply
// (by hand, or a package upgrade changed the file beneath it) is kept
// unless force.
func (m *Manager) Remove(arg string, force, dryRun bool) (Change, error) {
	id, err := m.Dirs.resolveID(arg)
	if err != nil {
		return Change{}, err
	}
	found, _, _ := m.Dirs.scan()
	files := found[id]
	target, hasUser := m.userFile(files)
	if !hasUser {
		if len(files) == 0 {
			return Change{ID: id}, m.notFound(id)
		}
		if e := m.describe(id, files); e.Profile != "" {
			return Change{ID: id}, fmt.Errorf("%s has no funtun override to remove: its profile %s is in %s itself (provisioned there; `funtun desktop apply` another profile to override it)", id, e.Profile, files[0].path)
		}
		return Change{ID: id, Msg: fmt.Sprintf("%s has no profile; nothing to remove", id)}, nil
	}
	current, err := readEntry(target)
	if err != nil {
		return Change{ID: id}, err
	}
	if _, ours := current.Raw(mainGroup, MarkerKey); !ours {
		return Change{ID: id}, fmt.Errorf("%s is your own file, not a funtun override (no %s= key): left alone", target, MarkerKey)
	}
	c := Change{ID: id, Path: target, Changed: true}
	backup := m.backupPath(id)
	var before []byte
	var beforeMode fs.FileMode
	if st, err := os.Stat(backup); err == nil {
		if before, err = os.ReadFile(backup); err != nil {
			return c, err
		}
		beforeMode = st.Mode().Perm()
		c.Backup, c.Text = backup, before
	}
	if !force {
		orig, err := unwrapped(current)
		if err != nil {
			return c, err
		}
		// Compared without funtun's words on either side: an entry
		// provisioned with `funtun profile=…` in Exec had its words
		// replaced, and the funtun path may have moved since.
		against, againstPath := before, backup
		if c.Backup == "" {
			if len(files) < 2 {
				againstPath = ""
			} else {
				againstPath = files[1].path
				against, _ = os.ReadFile(againstPath)
			}
		}
		if againstPath != "" && !sameWithoutFuntun(orig, againstPath, against) {
			return c, fmt.Errorf("%s changed since funtun wrote it (without funtun's words it differs from %s: edited by hand, or a package upgrade changed that file); remove --force discards it", target, againstPath)
		}
	}
	if c.Backup != "" {
		c.Msg = fmt.Sprintf("%s: profile removed, your own %s restored", id, target)
	} else {
		c.Msg = fmt.Sprintf("%s: profile removed (%s deleted)", id, target)
		if len(files) > 1 {
			c.Msg += "; " + files[1].path + " is in force again"
		}
	}
	if dryRun {
		return c, nil
	}
	if c.Backup != "" {
		if err := writeAtomic(target, before, beforeMode); err != nil {
			return c, err
		}
		return c, os.Remove(backup)
	}
	return c, os.Remove(target)
}

func sameWithoutFuntun(orig *File, path string, data []byte) bool {
	f, err := Parse(path, data)
	if err != nil {
		return false
	}
	g, err := unwrapped(f)
	return err == nil && bytes.Equal(orig.Bytes(), g.Bytes())
}

// writeAtomic replaces path in one rename, so a desktop that watches the
// directory never reads half a file. The temporary name does not end in
// .desktop, so it is never taken for an entry.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".funtun-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

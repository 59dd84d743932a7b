package desktop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Dirs are the XDG base directories that hold applications: the user's
// data directory first (where overrides go), then the system ones, in
// precedence order (XDG Base Directory Specification).
type Dirs struct {
	DataHome string
	DataDirs []string
}

// DirsFromEnv reads $XDG_DATA_HOME (default ~/.local/share) and
// $XDG_DATA_DIRS (default /usr/local/share:/usr/share). Relative paths
// are ignored, as the specification says.
func DirsFromEnv() (Dirs, error) {
	var d Dirs
	if h := os.Getenv("XDG_DATA_HOME"); filepath.IsAbs(h) {
		d.DataHome = h
	} else {
		home, err := os.UserHomeDir()
		if err != nil {
			return d, fmt.Errorf("no $XDG_DATA_HOME and no home directory: %v", err)
		}
		d.DataHome = filepath.Join(home, ".local", "share")
	}
	list := os.Getenv("XDG_DATA_DIRS")
	if list == "" {
		list = "/usr/local/share:/usr/share"
	}
	for _, p := range filepath.SplitList(list) {
		if filepath.IsAbs(p) {
			d.DataDirs = append(d.DataDirs, filepath.Clean(p))
		}
	}
	return d, nil
}

// UserApps is where user-level entries, and so the overrides, live.
func (d Dirs) UserApps() string { return filepath.Join(d.DataHome, "applications") }

// BackupDir keeps a user's own entry that an override replaced.
func (d Dirs) BackupDir() string { return filepath.Join(d.DataHome, "funtun", "desktop-backup") }

func (d Dirs) appDirs() []string {
	out := []string{d.UserApps()}
	for _, p := range d.DataDirs {
		out = append(out, filepath.Join(p, "applications"))
	}
	return out
}

// located is one file that has a desktop file ID.
type located struct {
	id, path string
	user     bool // in $XDG_DATA_HOME/applications
}

// scan finds every *.desktop file under the applications directories; the
// result maps each desktop file ID to its files in precedence order (the
// first is the one in force). The ID is the path below applications/
// with '/' turned into '-'.
func (d Dirs) scan() (map[string][]located, []string, error) {
	found := map[string][]located{}
	var order []string
	var errs []error
	seenDir := map[string]bool{}
	for i, dir := range d.appDirs() {
		if seenDir[dir] {
			continue // XDG_DATA_DIRS listing a directory twice
		}
		seenDir[dir] = true
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				errs = append(errs, err)
				if e != nil && e.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if e.IsDir() || !strings.HasSuffix(p, ".desktop") {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			id := strings.ReplaceAll(filepath.ToSlash(rel), "/", "-")
			if _, ok := found[id]; !ok {
				order = append(order, id)
			}
			found[id] = append(found[id], located{id: id, path: p, user: i == 0})
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	sort.Strings(order)
	return found, order, errors.Join(errs...)
}

// resolveID turns what the user typed into a desktop file ID: the ID
// (vim.desktop), the ID without .desktop (vim), or the path of a file in
// one of the applications directories.
func (d Dirs) resolveID(arg string) (string, error) {
	if strings.ContainsRune(arg, os.PathSeparator) {
		abs, err := filepath.Abs(arg)
		if err != nil {
			return "", err
		}
		for _, dir := range d.appDirs() {
			if rel, err := filepath.Rel(dir, abs); err == nil && !strings.HasPrefix(rel, "..") {
				return strings.ReplaceAll(filepath.ToSlash(rel), "/", "-"), nil
			}
		}
		return "", fmt.Errorf("%s is not in an applications directory (%s), so it has no desktop file ID; the desktop would not show it either", arg, strings.Join(d.appDirs(), ", "))
	}
	if !strings.HasSuffix(arg, ".desktop") {
		arg += ".desktop"
	}
	return arg, nil
}

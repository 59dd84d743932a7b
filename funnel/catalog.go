package funnel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// ProfileExt is the file name ending of a profile file: NAME.profile.
const ProfileExt = ".profile"

// IsProfileName says whether name can name a profile: a letter or digit,
// then letters, digits, '.', '_' and '-'. A loop rather than a regexp:
// a regexp compiled at package init costs every start of funtun.
func IsProfileName(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return name != ""
}

// Catalog finds profile sources in order of precedence (the user's
// directory, the system directory, built-ins) and holds the current compiled
// set. Reload swaps in a new set atomically, or keeps the old one on error.
type Catalog struct {
	Dirs     []string // highest precedence first
	Builtins fs.FS    // NAME.profile files compiled into the binary

	mu  sync.Mutex // serialises reloads
	cur atomic.Pointer[Set]
}

// DefaultDirs are $XDG_CONFIG_HOME/funtun/profiles (or
// ~/.config/funtun/profiles) and /etc/funtun/profiles; FUNTUN_PROFILE_PATH,
// colon-separated, replaces both.
func DefaultDirs() []string { return DirsFor(os.Getenv) }

// DirsFor is DefaultDirs for another process's environment (the launcher
// front-end's, which the daemon compares with its own).
func DirsFor(getenv func(string) string) []string {
	if p := getenv("FUNTUN_PROFILE_PATH"); p != "" {
		return filepath.SplitList(p)
	}
	var dirs []string
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		dirs = append(dirs, filepath.Join(x, "funtun", "profiles"))
	} else if h := getenv("HOME"); h != "" {
		dirs = append(dirs, filepath.Join(h, ".config", "funtun", "profiles"))
	}
	return append(dirs, "/etc/funtun/profiles")
}

// Sources reads every profile source; a name found earlier shadows later ones.
// Unreadable files are errors; a missing directory is not.
func (c *Catalog) Sources() ([]Source, error) {
	seen := map[string]bool{}
	var out []Source
	var errs []error
	add := func(name, origin, text string) {
		if seen[name] {
			return
		}
		seen[name] = true
		out = append(out, Source{Name: name, Origin: origin, Text: text})
	}
	for _, dir := range c.Dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("%s: cannot read profile directory: %v", dir, err))
			}
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() || !strings.HasSuffix(n, ProfileExt) {
				continue
			}
			name := strings.TrimSuffix(n, ProfileExt)
			path := filepath.Join(dir, n)
			if !IsProfileName(name) {
				errs = append(errs, fmt.Errorf("%s: %q is not a usable profile name (letters, digits, '.', '_', '-')", path, name))
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", path, err))
				continue
			}
			add(name, path, string(data))
		}
	}
	if c.Builtins != nil {
		entries, _ := fs.ReadDir(c.Builtins, ".")
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		for _, n := range names {
			if !strings.HasSuffix(n, ProfileExt) {
				continue
			}
			data, err := fs.ReadFile(c.Builtins, n)
			if err != nil {
				continue
			}
			add(strings.TrimSuffix(n, ProfileExt), "built-in", string(data))
		}
	}
	return out, errors.Join(errs...)
}

// Load compiles every profile, opens the new set's pieces (Opener: the set
// goes live) and makes it current. A reload is atomic: on any error, in
// compiling or in opening, the current set stays, and the error names every
// problem; a set that does not compile opens nothing. The new set opens
// before the old one is retired, so a resource both use (a capture file)
// passes from one to the other without being reopened. The first load has
// nothing to keep, so it makes the profiles that compiled and opened
// current and still returns the error: the caller decides whether a broken
// profile it does not use is a warning (see Resolve, which repeats a broken
// profile's error when asked for it).
func (c *Catalog) Load() error { return c.LoadChecked(nil) }

// LoadChecked is Load for a caller whose own configuration names profiles
// (a users file, a command's profile=): check runs on the new set once it
// compiles, before anything in it opens (ResolveIn finds what a selector
// would get there), and an error from check refuses the set as a compile
// error does: on a reload the current set stays, on the first load
// nothing becomes current. A nil check is Load.
func (c *Catalog) LoadChecked(check func(*Set) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	set, err := c.Compile()
	old := c.cur.Load()
	if check != nil && (err == nil || old == nil) {
		if cerr := check(set); cerr != nil {
			set.closePieces()
			return errors.Join(err, cerr)
		}
	}
	if old != nil {
		if err == nil {
			err = set.Open()
		}
		if err != nil {
			set.closePieces()
			return err
		}
		set.carryChains(old)
		c.cur.Store(set)
		old.Retire()
		return nil
	}
	err = errors.Join(err, set.openLenient())
	c.cur.Store(set)
	return err
}

// carryChains compiles and opens in s, before old is retired, the inline
// chains old has been asked for: a hook that runs chain='pcap file=X'
// keeps appending to X across a reload instead of truncating it on its
// next flow. A chain that no longer compiles or opens is left for its next
// flow to report.
func (s *Set) carryChains(old *Set) {
	old.chains.Range(func(k, v any) bool {
		if _, ok := v.(*Pipeline); ok {
			s.Chain(k.(string))
		}
		return true
	})
}

// Compile compiles every profile as Load does, but only that: the set is
// not made current and none of its pieces opens (see Opener), so nothing
// outside the process changes. For commands that look and do not run
// (`funtun profiles show`).
func (c *Catalog) Compile() (*Set, error) {
	srcs, srcErr := c.Sources()
	set, err := CompileSet(srcs)
	return set, errors.Join(srcErr, err)
}

// Current is the set in force.
func (c *Catalog) Current() *Set { return c.cur.Load() }

// Selector is how a command names the profile for its flows: profile=NAME
// or chain='…'. The zero Selector means the default profile, "direct".
type Selector struct {
	Profile string
	Chain   string
}

func (s Selector) String() string {
	if s.Chain != "" {
		return "chain=" + quote(RedactChain(s.Chain))
	}
	if s.Profile != "" {
		return "profile=" + s.Profile
	}
	return "profile=direct"
}

// TakeSelector removes profile=… and chain=… words from args, in the seed's
// key=value style, and returns what is left.
func TakeSelector(args []string) (Selector, []string, error) {
	var sel Selector
	var rest []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "profile="):
			sel.Profile = strings.TrimPrefix(a, "profile=")
			if sel.Profile == "" {
				return sel, nil, fmt.Errorf("profile= needs a name (see `funtun profiles`)")
			}
		case strings.HasPrefix(a, "chain="):
			sel.Chain = strings.TrimPrefix(a, "chain=")
			if strings.TrimSpace(sel.Chain) == "" {
				return sel, nil, fmt.Errorf("chain= needs pieces, e.g. chain='tls sni=example.org'")
			}
		default:
			rest = append(rest, a)
		}
	}
	if sel.Profile != "" && sel.Chain != "" {
		return sel, nil, fmt.Errorf("give profile=NAME or chain='…', not both")
	}
	return sel, rest, nil
}

// Resolve finds the pipeline a selector names in the current set.
func (c *Catalog) Resolve(sel Selector) (*Pipeline, error) {
	return c.ResolveIn(c.Current(), sel)
}

// ResolveIn finds the pipeline a selector names in set: the current one,
// or one from Compile. An inline chain opens only if set is live.
func (c *Catalog) ResolveIn(set *Set, sel Selector) (*Pipeline, error) {
	if set == nil {
		return nil, fmt.Errorf("no profiles loaded")
	}
	if sel.Chain != "" {
		return set.Chain(sel.Chain)
	}
	name := sel.Profile
	if name == "" {
		name = "direct"
	}
	pl, ok := set.Profile(name)
	if !ok {
		if err := set.Broken(name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("no profile named %q: put it in %s (see `funtun profiles` for the known ones)", name, filepath.Join(firstOr(c.Dirs, "~/.config/funtun/profiles"), name+ProfileExt))
	}
	return pl, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

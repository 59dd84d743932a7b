package desktop

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
)

const usage = `funtun desktop list|status|apply|remove|ui …

Gives GUI applications a profile through their desktop entries (the menu
entries of freedesktop.org desktops): apply writes a user-level copy of
an entry whose every Exec runs ` + "`funtun profile=NAME PROGRAM …`" + `, remove
puts back what was there.

  funtun desktop list [--json]                  applications and their profiles
  funtun desktop status [ENTRY…] [--json]       entries that have a profile, or these
  funtun desktop apply ENTRY… profile=NAME [--dry-run] [--funtun PATH]
  funtun desktop remove ENTRY… [--force] [--dry-run]
  funtun desktop ui [--listen 127.0.0.1:0] [--no-open]
                                                a local web page for the same

ENTRY is a desktop file ID (org.gnome.Maps.desktop, vim.desktop), the same
without .desktop, or the path of an entry in an applications directory.
Entries are found in $XDG_DATA_HOME/applications (~/.local/share) and each
$XDG_DATA_DIRS/applications (/usr/local/share:/usr/share); overrides are
written to $XDG_DATA_HOME/applications.

Run ` + "`funtun desktop COMMAND --help`" + ` for a command's options.

Examples:
  funtun desktop apply twinkle profile=6bed4
  funtun desktop remove twinkle
  funtun desktop ui`

func init() {
	cli.Register(&cli.Command{
		Name:    "desktop",
		Summary: "give GUI applications a profile through their menu entries (list, apply, remove, ui)",
		Usage:   usage,
		Run:     run,
	})
}

var subUsage = map[string]string{
	"list": `funtun desktop list [--json]

Lists the applications the desktop shows (desktop entries of Type=Application
in force: a user's entry hides a system one of the same ID), each with its
profile ("-" for none) and what stands in the way: DBusActivatable,
Flatpak and Snap applications cannot be given one, and entries that are
deleted (Hidden=true) or not shown in menus (NoDisplay=true) say so.`,
	"status": `funtun desktop status [ENTRY…] [--json]

Without ENTRY: the entries that run under a profile. With ENTRY: the file
in force, its profile, the file kept for remove, and every Exec.`,
	"apply": `funtun desktop apply ENTRY… profile=NAME [--dry-run] [--funtun PATH]

Writes $XDG_DATA_HOME/applications/ID, a copy of the entry in which the main
Exec and every [Desktop Action …] Exec run ` + "`funtun profile=NAME ORIGINAL`" + `
(quoting, escapes and field codes as the Desktop Entry Specification says),
with ` + MarkerKey + `=NAME to mark it. Comments, localized keys and every other
key stay as they were. Applying again with the same profile changes nothing;
another profile replaces the first. A user's own entry of that ID is kept in
$XDG_DATA_HOME/funtun/desktop-backup/ID for remove.

The profile must be one ` + "`funtun profiles`" + ` lists and compile. Entries that Exec
cannot control are refused: DBusActivatable=true, Flatpak and Snap
applications, deleted entries.

Exec names funtun by its absolute path: the one found in $PATH when that is
this binary (so a symlink such as /usr/local/bin/funtun survives upgrades),
else this binary's own path. --funtun PATH writes another (--funtun funtun
leaves the lookup to the desktop's PATH; useful when provisioning others).`,
	"remove": `funtun desktop remove ENTRY… [--force] [--dry-run]

Restores the state before apply: deletes the override, or puts back the
user's own file that apply kept aside (byte for byte). An override that
changed since apply (edited by hand, or the system entry beneath it was
upgraded) is kept unless --force.`,
	"ui": `funtun desktop ui [--listen 127.0.0.1:0] [--no-open] [--funtun PATH]

Serves a page on a loopback port that lists the applications with their
profiles, a profile chooser for each, and apply and remove buttons. The URL
carries a random 128-bit token; without it every request is refused (403),
so other users of this machine cannot drive the page. funtun prints the URL
and, when a desktop session is there (DISPLAY or WAYLAND_DISPLAY) and
xdg-open is installed, opens it in your browser through a private file, so
the token never appears in a process's command line. Ctrl-C stops it.`,
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	if len(args) == 0 {
		return env.Usagef("desktop", "name a command: list, status, apply, remove or ui")
	}
	sub := args[0]
	switch sub {
	case "-h", "--help", "-help", "help":
		fmt.Fprintln(env.Stdout, usage)
		return 0
	}
	text, ok := subUsage[sub]
	if !ok {
		return env.Usagef("desktop", "unknown command %q: use list, status, apply, remove or ui", sub)
	}
	name := "desktop " + sub
	c := &cli.Command{Name: name, Usage: text}
	fs := env.FlagSet(c)
	asJSON, dryRun, force, noOpen := new(bool), new(bool), new(bool), new(bool)
	funtunPath, listen := new(string), new(string)
	switch sub {
	case "list", "status":
		asJSON = fs.Bool("json", false, "print JSON for scripts")
	case "apply":
		dryRun = fs.Bool("dry-run", false, "print the override instead of writing it")
		funtunPath = fs.String("funtun", "", "the funtun `PATH` to put in Exec (default: this binary, see above)")
	case "remove":
		dryRun = fs.Bool("dry-run", false, "say what would be restored, write nothing")
		force = fs.Bool("force", false, "remove an override that changed since apply")
	case "ui":
		listen = fs.String("listen", "127.0.0.1:0", "loopback `ADDR` to serve on (port 0: any free port)")
		noOpen = fs.Bool("no-open", false, "only print the URL, do not start a browser")
		funtunPath = fs.String("funtun", "", "the funtun `PATH` to put in Exec (default: this binary)")
	}
	sel, rest, done, err := env.ParseFlags(fs, args[1:])
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef(name, "%v", err)
	}
	m, err := newManager(env, *funtunPath)
	if err != nil {
		return env.Errorf(name, "%v", err)
	}
	if sub != "apply" && sel != (funnel.Selector{}) {
		return env.Usagef(name, "takes no profile=/chain= (that is apply's)")
	}
	switch sub {
	case "list":
		if len(rest) > 0 {
			return env.Usagef(name, "takes no arguments (status ENTRY shows one)")
		}
		entries, err := m.List()
		if err != nil {
			env.Log.Warn("some applications directories could not be read", "err", err)
		}
		return printEntries(env, entries, *asJSON)
	case "status":
		var entries []Entry
		failed := 0
		if len(rest) == 0 {
			all, err := m.List()
			if err != nil {
				env.Log.Warn("some applications directories could not be read", "err", err)
			}
			for _, e := range all {
				if e.Profile != "" {
					entries = append(entries, e)
				}
			}
		}
		for _, a := range rest {
			e, err := m.Status(a)
			if err != nil {
				env.Errorf(name, "%v", err)
				failed++
				continue
			}
			entries = append(entries, e)
		}
		if *asJSON {
			printJSON(env, entries)
		} else if len(rest) == 0 && len(entries) == 0 {
			fmt.Fprintln(env.Stdout, "no application runs under a profile (funtun desktop apply ENTRY profile=NAME)")
		} else {
			for _, e := range entries {
				printStatus(env, e)
			}
		}
		return exitFor(failed)
	case "apply":
		if sel.Chain != "" {
			return env.Usagef(name, "desktop entries take profile=NAME: put the chain in a profile file (see docs/profiles.md)")
		}
		if sel.Profile == "" {
			return env.Usagef(name, "needs profile=NAME (see `funtun profiles`)")
		}
		if len(rest) == 0 {
			return env.Usagef(name, "name the entries, e.g. funtun desktop apply vim.desktop profile=%s", sel.Profile)
		}
		failed := 0
		for _, a := range rest {
			c, err := m.Apply(a, sel.Profile, *dryRun)
			if err != nil {
				env.Errorf(name, "%v", err)
				failed++
				continue
			}
			if *dryRun {
				fmt.Fprintf(env.Stdout, "# %s (dry run: not written)\n# %s\n%s", c.Path, c.Msg, c.Text)
				continue
			}
			fmt.Fprintln(env.Stdout, c.Msg)
		}
		return exitFor(failed)
	case "remove":
		if len(rest) == 0 {
			return env.Usagef(name, "name the entries, e.g. funtun desktop remove vim.desktop")
		}
		failed := 0
		for _, a := range rest {
			c, err := m.Remove(a, *force, *dryRun)
			if err != nil {
				env.Errorf(name, "%v", err)
				failed++
				continue
			}
			if *dryRun {
				fmt.Fprintf(env.Stdout, "(dry run) %s\n", c.Msg)
				continue
			}
			fmt.Fprintln(env.Stdout, c.Msg)
		}
		return exitFor(failed)
	case "ui":
		if len(rest) > 0 {
			return env.Usagef(name, "unexpected argument %q", rest[0])
		}
		return runUI(ctx, env, m, *listen, !*noOpen)
	}
	return 2
}

func exitFor(failed int) int {
	if failed > 0 {
		return 1
	}
	return 0
}

// newManager sets up the XDG directories, the profile registry every
// other command uses, and the funtun path for Exec.
func newManager(env *cli.Env, funtunPath string) (*Manager, error) {
	dirs, err := DirsFromEnv()
	if err != nil {
		return nil, err
	}
	if funtunPath == "" {
		if funtunPath, err = selfPath(); err != nil {
			return nil, err
		}
	}
	cat := env.Catalog()
	return &Manager{
		Dirs:     dirs,
		Launcher: Launcher{Funtun: funtunPath},
		Profiles: func() ([]Profile, error) { return CatalogProfiles(cat) },
	}, nil
}

// CatalogProfiles lists the profiles as `funtun profiles` does: every
// source, with its compile error if any. Compiling opens nothing.
func CatalogProfiles(cat *funnel.Catalog) ([]Profile, error) {
	srcs, err := cat.Sources()
	set, _ := funnel.CompileSet(srcs)
	out := make([]Profile, 0, len(srcs))
	for _, s := range srcs {
		p := Profile{Name: s.Name, Origin: s.Origin}
		if set != nil {
			p.Broken = set.Broken(s.Name)
		}
		out = append(out, p)
	}
	return out, err
}

// selfPath is the funtun that Exec should name: the one in $PATH when it
// is this very binary (its path, a symlink perhaps, outlives upgrades
// better than the file it points to), else this binary. Run through the
// launcher's front-end (cli.Front), "this binary" is the front-end: the
// command users run, and the one that launches fast.
func selfPath() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot tell where this funtun binary is (%v): give --funtun PATH", err)
	}
	if front := cli.Front; filepath.IsAbs(front) {
		if fi, err := os.Stat(front); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			self = front
		}
	}
	if p, err := exec.LookPath("funtun"); err == nil {
		if abs, err := filepath.Abs(p); err == nil && sameFile(abs, self) {
			return abs, nil
		}
	}
	return self, nil
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func printJSON(env *cli.Env, v any) {
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func printEntries(env *cli.Env, entries []Entry, asJSON bool) int {
	if asJSON {
		printJSON(env, entries)
		return 0
	}
	if len(entries) == 0 {
		fmt.Fprintln(env.Stdout, "no applications found")
		return 0
	}
	w := 0
	for _, e := range entries {
		w = max(w, len(e.ID))
	}
	for _, e := range entries {
		profile := e.Profile
		if profile == "" {
			profile = "-"
		}
		notes := e.Notes
		if e.Error != "" {
			notes = append([]string{"BROKEN: " + e.Error}, notes...)
		} else if e.Refusal != "" {
			notes = append([]string{"cannot: " + e.Refusal}, notes...)
		}
		line := fmt.Sprintf("%-*s  %-12s  %s", w, e.ID, profile, e.Name)
		if len(notes) > 0 {
			line += "  [" + strings.Join(notes, "; ") + "]"
		}
		fmt.Fprintln(env.Stdout, line)
	}
	return 0
}

func printStatus(env *cli.Env, e Entry) {
	fmt.Fprintf(env.Stdout, "%s  %s\n", e.ID, e.Name)
	fmt.Fprintf(env.Stdout, "  file     %s\n", e.Path)
	switch {
	case e.Override:
		fmt.Fprintf(env.Stdout, "  profile  %s (funtun's override)\n", e.Profile)
	case e.Profile != "":
		fmt.Fprintf(env.Stdout, "  profile  %s (written in the file itself)\n", e.Profile)
	default:
		fmt.Fprintln(env.Stdout, "  profile  none")
	}
	if e.Backup != "" {
		fmt.Fprintf(env.Stdout, "  kept     %s (your own file, restored by remove)\n", e.Backup)
	}
	for _, x := range e.Execs {
		fmt.Fprintf(env.Stdout, "  exec     %s\n", x)
	}
	if e.Error != "" {
		fmt.Fprintf(env.Stdout, "  broken   %s\n", e.Error)
	}
	if e.Refusal != "" {
		fmt.Fprintf(env.Stdout, "  cannot   %s\n", e.Refusal)
	}
	for _, n := range e.Notes {
		fmt.Fprintf(env.Stdout, "  note     %s\n", n)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
)

// version is set by the build (-ldflags "-X main.version=…").
var version = "dev"

func init() {
	cli.Register(&cli.Command{
		Name: "help", Summary: "show this help, or a command's: funtun help COMMAND",
		Usage: "funtun help [COMMAND]\n\nShows the list of commands, or one command's --help.",
		Run: func(ctx context.Context, env *cli.Env, args []string) int {
			if wantsHelp(args) {
				fmt.Fprintln(env.Stdout, "funtun help [COMMAND]\n\nShows the list of commands, or one command's --help.")
				return 0
			}
			if len(args) > 0 {
				if c, ok := cli.Lookup(args[0]); ok {
					return c.Run(ctx, env, []string{"--help"})
				}
				return env.Usagef("help", "no command %q", args[0])
			}
			usage(env)
			return 0
		},
	})
	cli.Register(&cli.Command{
		Name: "version", Summary: "print the version and the source revision it was built from",
		Usage: versionUsage,
		Run: func(ctx context.Context, env *cli.Env, args []string) int {
			if wantsHelp(args) {
				fmt.Fprintln(env.Stdout, versionUsage)
				return 0
			}
			if len(args) > 0 {
				return env.Usagef("version", "takes no arguments")
			}
			for _, l := range versionLines() {
				fmt.Fprintln(env.Stdout, l)
			}
			return 0
		},
	})
	cli.Register(&cli.Command{
		Name: "pieces", Summary: "list the Puzzle Pieces, or one piece's parameters",
		Usage: "funtun pieces [NAME]\n\nLists every piece with a one-line summary, or one piece's shapes and parameters.",
		Run:   runPieces,
	})
	cli.Register(&cli.Command{
		Name: "profiles", Summary: "list, show or check profiles",
		Usage: `funtun profiles [list]                 list profiles and where each comes from
funtun profiles show NAME | chain='…'  print the compiled chain, shapes included
funtun profiles check [FILE…]          compile every profile (or the given files);
                                       exit 1 with FILE:LINE:COL messages on errors`,
		Run: runProfiles,
	})
}

const versionUsage = `funtun version
funtun --version

Prints the version (what make set with -X main.version, else the module's
version), then what the Go toolchain recorded at build time: the module,
the VCS revision and its time, whether the work tree had uncommitted
changes (modified), and the Go version.`

// versionLines reads the build information the Go toolchain embeds
// (runtime/debug.ReadBuildInfo): the VCS settings are there when the binary
// was built from a git work tree.
func versionLines() []string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return []string{"funtun " + v, "(no build information in this binary)"}
	}
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	lines := []string{"funtun " + v, fmt.Sprintf("module   %s %s", info.Main.Path, info.Main.Version)}
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	if r := vcs["vcs.revision"]; r != "" {
		lines = append(lines, "revision "+r)
		if t := vcs["vcs.time"]; t != "" {
			lines = append(lines, "time     "+t)
		}
		if m := vcs["vcs.modified"]; m != "" {
			lines = append(lines, "modified "+m)
		}
	} else {
		lines = append(lines, "revision unknown (not built from a git work tree, or built with -buildvcs=false)")
	}
	return append(lines, "go       "+info.GoVersion)
}

func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			return true
		}
	}
	return false
}

func runProfiles(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("profiles")
	if wantsHelp(args) {
		fmt.Fprintln(env.Stdout, c.Usage)
		return 0
	}
	sub := "list"
	if len(args) > 0 {
		sub, args = args[0], args[1:]
	}
	cat := env.Catalog()
	switch sub {
	case "list":
		// Every profile with its state: a broken one is listed as such
		// (its first error line), and the exit status says whether any is.
		srcs, srcErr := cat.Sources()
		set, _ := funnel.CompileSet(srcs)
		broken := 0
		for _, src := range srcs {
			err := set.Broken(src.Name)
			state := "ok"
			if err != nil {
				state = "BROKEN"
				broken++
			}
			fmt.Fprintf(env.Stdout, "%-16s %-7s %s\n", src.Name, state, src.Origin)
			if err != nil {
				fmt.Fprintf(env.Stdout, "    %s\n", firstLine(err.Error()))
			}
		}
		if srcErr != nil {
			// Files that could not be read or have no usable name.
			for _, line := range strings.Split(srcErr.Error(), "\n") {
				fmt.Fprintf(env.Stdout, "%-16s %-7s %s\n", "?", "BROKEN", line)
				broken++
			}
		}
		if broken > 0 {
			fmt.Fprintf(env.Stderr, "funtun profiles: %d broken (`funtun profiles check` says why)\n", broken)
			return 1
		}
		return 0
	case "show":
		sel, rest, err := funnel.TakeSelector(args)
		if err != nil {
			return env.Usagef("profiles", "%v", err)
		}
		if len(rest) == 1 && sel == (funnel.Selector{}) {
			sel.Profile = rest[0]
		} else if len(rest) > 0 || sel == (funnel.Selector{}) {
			return env.Usagef("profiles", "show takes one profile name or chain='…'")
		}
		// Compile only: showing a profile must not open its files
		// (funnel.Opener), so the set never goes live.
		// Other profiles' errors do not matter here: the one asked for
		// shows, or says its own error.
		set, _ := cat.Compile()
		pl, err := cat.ResolveIn(set, sel)
		if err != nil {
			return env.Errorf("profiles", "%v", err)
		}
		fmt.Fprintf(env.Stdout, "profile %s (%s)\n  %s\n  carries: %s\n", pl.Name, pl.Origin, pl.String(), pl.Shapes())
		for _, o := range pl.Options {
			fmt.Fprintf(env.Stdout, "  option %s\n", o)
		}
		return 0
	case "check":
		return checkProfiles(env, cat, args)
	}
	return env.Usagef("profiles", "unknown subcommand %q: use list, show or check", sub)
}

// checkProfiles compiles the catalog, plus any named files as if they were
// in the user's directory, and prints every error. It only compiles: the
// set never goes live, so no piece opens anything (funnel.Opener) and a
// capture file of a running daemon stays as it is.
func checkProfiles(env *cli.Env, cat *funnel.Catalog, files []string) int {
	// Everything is checked and every error reported: a file with a bad
	// name or an unreadable one does not stop the others.
	srcs, srcErr := cat.Sources()
	var errs []error
	if srcErr != nil {
		errs = append(errs, srcErr)
	}
	var extra []funnel.Source
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: cannot read: %v", f, err))
			continue
		}
		name := strings.TrimSuffix(baseName(f), funnel.ProfileExt)
		extra = append(extra, funnel.Source{Name: name, Origin: f, Text: string(data)})
	}
	set, err := funnel.CompileSet(append(extra, srcs...))
	if err != nil {
		errs = append(errs, err)
	}
	broken := 0
	for _, name := range set.Names() {
		if set.Broken(name) != nil {
			broken++
		}
	}
	compiled := len(set.Names()) - broken
	if srcErr != nil {
		broken += strings.Count(srcErr.Error(), "\n") + 1
	}
	if len(errs) > 0 {
		fmt.Fprintln(env.Stderr, errors.Join(errs...))
		fmt.Fprintf(env.Stdout, "%d profiles compiled, %d broken\n", compiled, broken)
		return 1
	}
	fmt.Fprintf(env.Stdout, "%d profiles compiled, no errors\n", len(set.Names()))
	return 0
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

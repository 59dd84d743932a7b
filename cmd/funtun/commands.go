package main

import (
	"context"
	"fmt"
	"os"
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
		Name: "version", Summary: "print the version",
		Usage: "funtun version",
		Run: func(ctx context.Context, env *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintln(env.Stdout, "funtun version\n\nPrints the version.")
				return 0
			}
			fmt.Fprintln(env.Stdout, "funtun", version)
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

func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			return true
		}
	}
	return false
}

func runPieces(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("pieces")
	if wantsHelp(args) {
		fmt.Fprintln(env.Stdout, c.Usage)
		return 0
	}
	if len(args) == 0 {
		for _, p := range funnel.Pieces() {
			fmt.Fprintf(env.Stdout, "%-13s %s\n", p.Name, p.Summary)
		}
		return 0
	}
	p, ok := funnel.Lookup(args[0])
	if !ok {
		return env.Errorf("pieces", "no piece named %q (run `funtun pieces` for the list)", args[0])
	}
	fmt.Fprintf(env.Stdout, "%s — %s\n", p.Name, p.Summary)
	params := funnel.NewParams(p.Name)
	if p.Example != "" {
		fmt.Fprintf(env.Stdout, "example: %s %s\n", p.Name, p.Example)
		if specs, err := funnel.ParseChain("example", p.Name+" "+p.Example); err == nil && len(specs) == 1 {
			params = funnel.ParamsOf(specs[0])
		}
	}
	if piece, err := p.New(params, nil); err == nil {
		var cs []string
		for _, c := range piece.Curves() {
			net := string(c.Net)
			if c.Also != "" {
				net += "+" + string(c.Also)
			}
			cs = append(cs, fmt.Sprintf("%s→%s", c.App, net))
		}
		fmt.Fprintf(env.Stdout, "shapes (app→net): %s\n", strings.Join(cs, ", "))
		if cl, ok := piece.(funnel.Closer); ok {
			cl.Close()
		}
	}
	if p.Params != "" {
		fmt.Fprintln(env.Stdout, "\nParameters:")
		for _, line := range strings.Split(p.Params, "\n") {
			fmt.Fprintln(env.Stdout, "  "+line)
		}
	}
	fmt.Fprintf(env.Stdout, "\nSee docs/pieces/%s.md for examples.\n", p.Name)
	return 0
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
		srcs, err := cat.Sources()
		if err != nil {
			fmt.Fprintln(env.Stderr, err)
		}
		for _, s := range srcs {
			fmt.Fprintf(env.Stdout, "%-16s %s\n", s.Name, s.Origin)
		}
		if err != nil {
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
		if err := cat.Load(); err != nil {
			return env.Errorf("profiles", "%v", err)
		}
		pl, err := cat.Resolve(sel)
		if err != nil {
			return env.Errorf("profiles", "%v", err)
		}
		fmt.Fprintf(env.Stdout, "profile %s (%s)\n  %s\n  carries: %s\n", pl.Name, pl.Origin, pl.String(), pl.Shapes())
		return 0
	case "check":
		return checkProfiles(env, cat, args)
	}
	return env.Usagef("profiles", "unknown subcommand %q: use list, show or check", sub)
}

// checkProfiles compiles the catalog, plus any named files as if they were
// in the user's directory, and prints every error.
func checkProfiles(env *cli.Env, cat *funnel.Catalog, files []string) int {
	srcs, err := cat.Sources()
	if err != nil {
		fmt.Fprintln(env.Stderr, err)
		return 1
	}
	var extra []funnel.Source
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(env.Stderr, "%s: cannot read: %v\n", f, err)
			return 1
		}
		name := strings.TrimSuffix(baseName(f), funnel.ProfileExt)
		extra = append(extra, funnel.Source{Name: name, Origin: f, Text: string(data)})
	}
	set, err := funnel.CompileSet(append(extra, srcs...))
	if err != nil {
		fmt.Fprintln(env.Stderr, err)
		return 1
	}
	n := len(set.Names())
	fmt.Fprintf(env.Stdout, "%d profiles compiled, no errors\n", n)
	return 0
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

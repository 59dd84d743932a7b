package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"

	// Every piece registers itself; pieces/all imports each one.
	_ "github.com/funtun/funtun/pieces/all"
)

// runPieces lists the pieces, or describes one from its registration
// alone: nothing is built, so nothing a piece would open is touched.
func runPieces(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("pieces")
	if wantsHelp(args) {
		fmt.Fprintln(env.Stdout, c.Usage)
		return 0
	}
	if len(args) == 0 {
		width := 0
		for _, p := range funnel.Pieces() {
			width = max(width, len(p.Name))
		}
		for _, p := range funnel.Pieces() {
			fmt.Fprintf(env.Stdout, "%-*s  %s\n", width, p.Name, p.Summary)
		}
		return 0
	}
	p, ok := funnel.Lookup(args[0])
	if !ok {
		return env.Errorf("pieces", "no piece named %q (run `funtun pieces` for the list)", args[0])
	}
	fmt.Fprintf(env.Stdout, "%s — %s\n", p.Name, p.Summary)
	if p.Example != "" {
		fmt.Fprintf(env.Stdout, "example: %s %s\n", p.Name, p.Example)
	}
	if len(p.Curves) > 0 {
		fmt.Fprintf(env.Stdout, "shapes (app→net): %s\n", curvesString(p.Curves))
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

// curvesString is "stream→stream, dgram→stream+dgram".
func curvesString(curves []funnel.Curve) string {
	cs := make([]string, 0, len(curves))
	for _, c := range curves {
		net := string(c.Net)
		if c.Also != "" {
			net += "+" + string(c.Also)
		}
		cs = append(cs, fmt.Sprintf("%s→%s", c.App, net))
	}
	return strings.Join(cs, ", ")
}

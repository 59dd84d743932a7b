//go:build !linux

package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/funtun/funtun/internal/cli"
)

// The launcher (`funtun profile=NAME PROGRAM`) hooks a program with
// LD_PRELOAD and takes over its sockets by SCM_RIGHTS handoff, both built
// for Linux only. Elsewhere it stays a known mode that says so plainly,
// rather than "no such command".
func init() {
	cli.Launcher = launcherNeedsLinux
}

// exitCannotExecute is the shell's status for a command found but not
// runnable.
const exitCannotExecute = 126

func launcherNeedsLinux(_ context.Context, env *cli.Env, args []string) int {
	what := "the launcher"
	for _, a := range args {
		if a == "--" || strings.HasPrefix(a, "profile=") || strings.HasPrefix(a, "chain=") || strings.HasPrefix(a, "--") {
			continue
		}
		what = fmt.Sprintf("cannot run %s: the launcher", a)
		break
	}
	fmt.Fprintf(env.Stderr, "funtun: %s needs Linux (LD_PRELOAD and SCM_RIGHTS handoff); use funtun socks5d with a SOCKS-aware program instead (`funtun help` lists the commands)\n", what)
	return exitCannotExecute
}

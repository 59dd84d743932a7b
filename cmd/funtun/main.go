// Command funtun is the Funnel Tunnel: it passes an application's traffic
// through a chain of Puzzle Pieces chosen by a profile. Every mode is a
// subcommand; a first word that is no subcommand starts the launcher:
//
//	funtun profile=NAME twinkle
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/funtun/funtun/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cli.Front = os.Getenv("FUNTUN_FRONT")
	os.Unsetenv("FUNTUN_FRONT")
	format, level := "text", slog.LevelInfo
	launcherArgs := false
	pprofAddr := ""
	// --profile=NAME and --chain=… are the specification's spelling of
	// profile=NAME and chain='…': passed on as those words.
	var selWords []string
	if len(args) > 0 && args[0] == "-h" {
		// The same help as --help and `funtun help`.
		args = []string{"help"}
	}
	// Global options come before the subcommand or program.
	for len(args) > 0 && strings.HasPrefix(args[0], "--") && args[0] != "--" {
		opt := args[0]
		switch {
		case opt == "--log-format" && len(args) > 1:
			format, args = args[1], args[2:]
		case strings.HasPrefix(opt, "--log-format="):
			format, args = strings.TrimPrefix(opt, "--log-format="), args[1:]
		case opt == "--debug":
			level, args = slog.LevelDebug, args[1:]
		case opt == "--quiet":
			level, args = slog.LevelWarn, args[1:]
		case opt == "--help":
			args = []string{"help"}
		case opt == "--version":
			args = []string{"version"}
		case opt == "--pprof" && len(args) > 1:
			pprofAddr, args = args[1], args[2:]
		case strings.HasPrefix(opt, "--pprof="):
			pprofAddr, args = strings.TrimPrefix(opt, "--pprof="), args[1:]
		case (opt == "--profile" || opt == "--chain") && len(args) > 1:
			selWords, args = append(selWords, opt[2:]+"="+args[1]), args[2:]
		case strings.HasPrefix(opt, "--profile="), strings.HasPrefix(opt, "--chain="):
			selWords, args = append(selWords, opt[2:]), args[1:]
		case opt == "--allow-unhooked", opt == "--allow-raw", opt == "--allow-io-uring":
			// A launcher option; the launcher reads it itself.
			launcherArgs = true
		default:
			fmt.Fprintf(os.Stderr, "funtun: unknown option %s (see `funtun help`)\n", opt)
			return 2
		}
		if launcherArgs {
			break
		}
	}
	env, err := cli.NewEnv(format, level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "funtun: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if pprofAddr != "" {
		// The global form, for the launcher's funnel; daemon commands
		// also take it after their name.
		if err := env.ServePprof(pprofAddr); err != nil {
			fmt.Fprintf(os.Stderr, "funtun: %v\n", err)
			return 2
		}
		defer env.StopPprof()
	}

	if len(args) == 0 {
		if len(selWords) > 0 {
			fmt.Fprintf(env.Stderr, "funtun: name a program or a command after --%s\n", selWords[0])
			return 2
		}
		usage(env)
		return 2
	}
	if args[0] == "--" {
		return launch(ctx, env, append(selWords, args[1:]...))
	}
	if launcherArgs {
		return launch(ctx, env, append(selWords, args...))
	}
	if c, ok := cli.Lookup(args[0]); ok {
		return c.Run(ctx, env, append(selWords, args[1:]...))
	}
	return launch(ctx, env, append(selWords, args...))
}

func launch(ctx context.Context, env *cli.Env, args []string) int {
	if cli.Launcher == nil {
		fmt.Fprintf(env.Stderr, "funtun: %q is not a subcommand, and this build has no launcher (see `funtun help`)\n", args[0])
		return 2
	}
	return cli.Launcher(ctx, env, args)
}

func usage(env *cli.Env) {
	fmt.Fprint(env.Stdout, `funtun — the Funnel Tunnel: pass a program's traffic through Puzzle Pieces

Usage:
  funtun [global options] COMMAND [options] [profile=NAME | chain='PIECE k=v | …']
  funtun [global options] [profile=NAME | chain='…'] PROGRAM [ARGS…]
  funtun -- PROGRAM [ARGS…]        (when PROGRAM has a subcommand's name)

Commands:
`)
	for _, c := range cli.Commands() {
		fmt.Fprintf(env.Stdout, "  %-10s %s\n", c.Name, c.Summary)
	}
	fmt.Fprint(env.Stdout, `
Global options:
  --log-format text|json   log format on stderr (default text)
  --debug | --quiet        more or fewer log lines
  --profile=NAME, --chain='…'
                           the same as profile=NAME and chain='…' (the
                           specification's spelling: funtun --profile=NAME -- PROGRAM)
  --pprof ADDR             serve Go's profiler on a loopback ADDR while funtun
                           runs (the launcher's funnel; daemons also take it
                           after their command's name)

Profiles are read from $XDG_CONFIG_HOME/funtun/profiles/NAME.profile
(~/.config/funtun/profiles), /etc/funtun/profiles, then the built-ins.
Run `+"`funtun COMMAND --help`"+` for a command's options, `+"`funtun pieces`"+` for the pieces.
`)
}

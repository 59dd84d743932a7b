// Package cli is the command registry of the funtun binary: hooks register
// their subcommands here, so adding a hook does not edit the main package
// beyond one import.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/profiles"
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string // one line for `funtun help`
	Usage   string // the full --help text, first line the synopsis
	Run     func(ctx context.Context, env *Env, args []string) int
	// Daemon commands run until stopped: their flag set (Env.FlagSet)
	// has --pprof ADDR, served from when ParseFlags accepts it until Run
	// returns.
	Daemon bool
}

var commands = map[string]*Command{}

// Register adds a subcommand; call it from init().
func Register(c *Command) {
	if _, dup := commands[c.Name]; dup {
		panic("cli: command registered twice: " + c.Name)
	}
	if c.Daemon {
		run := c.Run
		c.Run = func(ctx context.Context, env *Env, args []string) int {
			defer env.StopPprof()
			raiseFileLimit(env.Log)
			return run(ctx, env, args)
		}
	}
	commands[c.Name] = c
}

// Lookup finds a subcommand.
func Lookup(name string) (*Command, bool) {
	c, ok := commands[name]
	return c, ok
}

// Commands lists the subcommands by name.
func Commands() []*Command {
	out := make([]*Command, 0, len(commands))
	for _, c := range commands {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Env is what every command gets: its output streams and logging setup.
type Env struct {
	Stdout, Stderr io.Writer
	Log            *slog.Logger

	pprof *http.Server // --pprof of a daemon command, while it runs
	// sel is the command's profile=/chain= from ParseFlags; Engine
	// passes it on to reloads, which refuse a set that loses it.
	sel *funnel.Selector
}

// NewEnv sets up logging on stderr in the given format ("text" or "json").
func NewEnv(format string, level slog.Level) (*Env, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case "", "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", format)
	}
	log := slog.New(h)
	slog.SetDefault(log)
	return &Env{Stdout: os.Stdout, Stderr: os.Stderr, Log: log}, nil
}

// Catalog is the profile catalog in the standard places.
func (env *Env) Catalog() *funnel.Catalog {
	return &funnel.Catalog{Dirs: funnel.DefaultDirs(), Builtins: profiles.Builtin}
}

// Engine loads every profile; on error it prints the problems and the
// caller should exit 1.
func (env *Env) Engine() (*funnel.Engine, error) {
	e, err := funnel.NewEngine(env.Catalog(), env.Log)
	if err == nil && env.sel != nil {
		commandSelectors.Store(e, *env.sel)
	}
	return e, err
}

// Errorf prints "funtun CMD: message" on stderr and returns exit status 1
// (2 for usage errors: use Usagef).
func (env *Env) Errorf(cmd, format string, args ...any) int {
	fmt.Fprintf(env.Stderr, "funtun %s: %s\n", cmd, fmt.Sprintf(format, args...))
	return 1
}

// Usagef reports a usage error and points at --help.
func (env *Env) Usagef(cmd, format string, args ...any) int {
	fmt.Fprintf(env.Stderr, "funtun %s: %s\n(see `funtun %s --help`)\n", cmd, fmt.Sprintf(format, args...), cmd)
	return 2
}

// FlagSet makes a flag set whose -h/--help prints the command's Usage text
// and whose errors point at --help (the flag package would print the whole
// usage after every error, burying the one line that matters).
func (env *Env) FlagSet(c *Command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	errOut := &errRecorder{}
	fs.SetOutput(errOut)
	fs.Usage = func() {
		if errOut.wrote {
			// An error was just printed: the caller points at --help.
			errOut.wrote = false
			return
		}
		fmt.Fprintln(env.Stdout, strings.TrimRight(c.Usage, "\n"))
		fmt.Fprintln(env.Stdout, "\nOptions:")
		fs.SetOutput(env.Stdout)
		fs.PrintDefaults()
		fs.SetOutput(errOut)
	}
	if c.Daemon {
		fs.String(pprofFlag, "", "serve Go's profiler (net/http/pprof) on this loopback `ADDR`, e.g. 127.0.0.1:6060, while running")
	}
	return fs
}

// ParseFlags parses flags with key=value selector words allowed anywhere
// (profile=NAME, chain='…'); it returns the selector and the other
// positional arguments. A nil error with done=true means --help was shown.
// A daemon's --pprof is checked here, before the command binds anything,
// and served from here on.
func (env *Env) ParseFlags(fs *flag.FlagSet, args []string) (sel funnel.Selector, rest []string, done bool, err error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return sel, nil, true, nil
			}
			return sel, nil, false, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	sel, rest, err = funnel.TakeSelector(positional)
	if err != nil {
		return sel, rest, false, err
	}
	env.sel = &sel
	return sel, rest, false, env.startPprof(fs)
}

// errRecorder takes the flag package's own error line, which every caller
// prints itself with the command's name (Usagef), and notes that it came,
// so that the usage the package asks for next can be left out.
type errRecorder struct {
	wrote bool
}

func (r *errRecorder) Write(p []byte) (int, error) {
	r.wrote = true
	return len(p), nil
}

// StringList is a repeatable string flag.
type StringList []string

func (s *StringList) String() string     { return strings.Join(*s, ",") }
func (s *StringList) Set(v string) error { *s = append(*s, v); return nil }

// Front is the launcher's C front-end (preload/launch/funtun.c) that
// handed this command to this binary, funtun-core; "" when funtun-core
// was run directly. It is what users run, so what files written for them
// (a desktop entry's Exec) should name. main takes it out of the
// environment, so that programs funtun starts do not inherit it.
var Front string

// Launcher runs `funtun [key=value…] PROGRAM [ARGS…]`; the preload hook
// sets it. Nil means the launcher is not built in.
var Launcher func(ctx context.Context, env *Env, args []string) int

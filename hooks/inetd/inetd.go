// Package inetd is the inetd hook: it reads a classic inetd.conf, listens
// for each line, and starts the line's program for each connection with
// the connection on its stdin and stdout — after the line's profile has
// acted on it (a tls piece terminates TLS, rewrite changes bytes). With a
// profile that leaves incoming streams alone the program gets the accepted
// socket itself, as from inetd or tcpserver.
package inetd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
)

const usage = `funtun inetd --config FILE [profile=NAME | chain='…'] [options]

An inetd: listens for every line of FILE, in the classic inetd.conf format

  service socket-type protocol wait|nowait[.N] user[.group] [profile=NAME | chain='…'] server-path [args…]

and runs server-path for each connection with the connection on its stdin
and stdout, the UCSPI-TCP variables (PROTO, TCPLOCALIP, TCPLOCALPORT,
TCPREMOTEIP, TCPREMOTEPORT) in its environment, as user and group (when
funtun runs as root), its stderr in funtun's log. Each connection is a flow
through the line's profile (a profile=/chain= word before server-path, else
the command's, else direct), coming in from the network: a tls piece
terminates TLS before the program sees the bytes. With a profile that
leaves incoming streams alone (direct) the program gets the socket itself.

service is a name from /etc/services or a port, optionally HOST:service;
protocols are tcp, tcp6, tcp46, udp, udp6, udp46. dgram lines must be wait:
the program gets the bound socket and reads the datagrams; funtun watches
the socket again once it exits. nowait.N allows N starts a minute.

Lines funtun cannot use are reported with FILE:LINE and skipped; the rest
serve. --check reports the same without listening. SIGHUP rereads FILE and
the profiles as one: a file with a bad line keeps the old configuration;
sockets of lines that stay stay open, running programs go on.

Examples:
  echo 'echo stream tcp nowait nobody /bin/cat cat' > inetd.conf
  echo "8443 stream tcp nowait nobody chain='tls cert=c.pem key=k.pem' /usr/bin/env env" >> inetd.conf
  funtun inetd --check --config inetd.conf
  funtun inetd --config inetd.conf --max-children 50 --max-per-source 5`

func init() {
	cli.Register(&cli.Command{
		Name:    "inetd",
		Summary: "an inetd: a program per connection, with the connection through a profile",
		Usage:   usage,
		Run:     run,
		Daemon:  true, // --pprof
	})
}

// Config is a running inetd's settings from the command line.
type Config struct {
	File        string
	Default     funnel.Selector
	Limits      Limits
	StopTimeout time.Duration
}

// defaultWaitRate bounds starts of a wait line without .N: a program that
// exits without reading leaves the socket readable, and funtun would
// start it again at once, for ever (OpenBSD inetd's default, 256).
const defaultWaitRate = 256

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("inetd")
	fs := env.FlagSet(c)
	file := fs.String("config", "", "the inetd.conf `FILE` to serve")
	check := fs.Bool("check", false, "check FILE and report every line, then exit: listens on nothing and starts nothing")
	maxChildren := fs.Int("max-children", 256, "programs a line may have running at once; more connections are closed at once (0: no limit)")
	maxPerSource := fs.Int("max-per-source", 0, "programs a line may have running at once for one client address (0: no limit)")
	rate := fs.Int("rate", 0, "starts a minute for lines without .N (0: none for nowait lines, 256 for wait lines)")
	stopTimeout := fs.Duration("stop-timeout", 5*time.Second, "on exit, how long running programs get after SIGTERM before SIGKILL")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("inetd", "%v", err)
	}
	if len(rest) > 0 {
		return env.Usagef("inetd", "unexpected argument %q", rest[0])
	}
	if *file == "" {
		return env.Usagef("inetd", "needs --config FILE")
	}
	if *maxChildren < 0 || *maxPerSource < 0 || *rate < 0 || *stopTimeout < 0 {
		return env.Usagef("inetd", "limits and --stop-timeout cannot be negative")
	}
	cfg := Config{
		File: *file, Default: sel, StopTimeout: *stopTimeout,
		Limits: Limits{MaxChildren: *maxChildren, MaxPerSource: *maxPerSource, Rate: *rate},
	}
	self, err := user.Current()
	if err != nil {
		return env.Errorf("inetd", "who am I: %v", err)
	}
	opt := ParseOptions{Root: os.Geteuid() == 0, Self: self, Default: sel}
	if *check {
		return runCheck(env, cfg, opt)
	}
	return serve(ctx, env, cfg, opt)
}

// runCheck is --check: it compiles the profiles (opening nothing) and
// reports every line.
func runCheck(env *cli.Env, cfg Config, opt ParseOptions) int {
	cat := env.Catalog()
	set, err := cat.Compile()
	if set == nil {
		return env.Errorf("inetd", "profiles: %v", err)
	}
	opt.Resolve = func(sel funnel.Selector) (*funnel.Pipeline, error) { return cat.ResolveIn(set, sel) }
	lines, errs := ParseFile(cfg.File, opt)
	if unreadable(errs) {
		return env.Errorf("inetd", "%v", errs[0])
	}
	for _, l := range lines {
		fmt.Fprintf(env.Stdout, "%s: ok: %s\n", l.Pos(), describe(l, cfg.Limits))
	}
	for _, e := range errs {
		fmt.Fprintf(env.Stderr, "funtun inetd: %v\n", e)
	}
	if len(errs) > 0 {
		fmt.Fprintf(env.Stderr, "funtun inetd: %s: %d usable lines, %d not\n", cfg.File, len(lines), len(errs))
		return 1
	}
	if len(lines) == 0 {
		fmt.Fprintf(env.Stderr, "funtun inetd: %s has no service lines\n", cfg.File)
		return 1
	}
	return 0
}

// describe is a line as --check and the startup log show it.
func describe(l *Line, lim Limits) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", l.Network, l.Addr, kindName(l.Stream))
	if l.Wait {
		b.WriteString(" wait")
	} else {
		b.WriteString(" nowait")
	}
	fmt.Fprintf(&b, " %s %s", l.Path, strings.Join(l.Args, " "))
	if l.Cred != nil {
		fmt.Fprintf(&b, " as %s (uid %d gid %d)", l.User, l.Cred.UID, l.Cred.GID)
	}
	fmt.Fprintf(&b, ", %s", l.Selector)
	if r := l.rate(lim); r > 0 {
		fmt.Fprintf(&b, ", %d starts a minute", r)
	}
	return b.String()
}

// rate is the line's starts a minute: its own .N, else the command's
// --rate, else none for nowait lines and the loop guard for wait lines.
func (l *Line) rate(lim Limits) int {
	switch {
	case l.Rate > 0:
		return l.Rate
	case lim.Rate > 0:
		return lim.Rate
	case l.Wait:
		return defaultWaitRate
	}
	return 0
}

// unreadable: the file could not be read at all.
func unreadable(errs []error) bool {
	var fe *FileError
	return len(errs) == 1 && errors.As(errs[0], &fe)
}

// Package daemon is `funtun daemon`: the per-user funnel that serves
// programs without the launcher — those hooked by a global preload
// (/etc/ld.so.preload, a session's LD_PRELOAD), those built in link-in
// mode, and those that use the C API (funtun.h). It listens on a Unix
// socket of the user's own, checks every peer's uid, picks the profile by
// the program (the programs file) or by the template the program names,
// and hands each control connection to the preload hook's Server for that
// profile: the same protocol, the same handoff of the program's own
// sockets.
package daemon

import "github.com/funtun/funtun/internal/cli"

const usage = `funtun daemon [--socket PATH] [--programs FILE] [--check]

The per-user funnel for programs started without the launcher: a global
preload (/etc/ld.so.preload, or LD_PRELOAD in the session), programs built
in link-in mode, and programs that use the C API (funtun.h, libfuntun-api).

It listens on $XDG_RUNTIME_DIR/funtun/daemon.sock (the directory mode
0700, the socket 0600) and serves only processes of its own user: the uid
of every connection is checked (SO_PEERCRED), and others are refused and
logged. Under systemd it takes the socket funtun-daemon.socket passes
(contrib/systemd/), and says READY=1 once it serves.

Which programs it funnels, and through which profile, the programs file
says ($XDG_CONFIG_HOME/funtun/programs, or ~/.config/funtun/programs):

  # PROGRAM        WHAT
  curl             profile=work
  /usr/bin/ssh     chain='socks5 server=127.0.0.1:9050'
  ping             untouched

A program that matches no line is LEFT ALONE: its calls go straight to the
C library, as if funtun were not there (failing closed would break every
program of the session). A program that matches is funnelled for its
whole life, and fails closed if the daemon goes away. A program may name
its template itself (FUNTUN_TEMPLATE=NAME, or the C API), whatever the
file says.

SIGHUP reloads the profiles and the programs file, as one: when either is
broken nothing changes and the log says FILE:LINE. A reload that narrows
a profile (a new deny) applies at once to programs already running.

--check reads the profiles and the programs file, reports what is wrong
and exits; it neither binds nor writes anything.

Examples:
  funtun daemon
  systemctl --user enable --now funtun-daemon.socket
  FUNTUN_DAEMON=/tmp/ft.sock funtun daemon --socket /tmp/ft.sock --programs ./programs
  funtun daemon --check`

func init() {
	cli.Register(&cli.Command{
		Name:    "daemon",
		Summary: "the per-user funnel for a global preload, link-in programs and the C API",
		Usage:   usage,
		Run:     run,
		Daemon:  true, // --pprof
	})
}

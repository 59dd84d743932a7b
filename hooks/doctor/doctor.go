// Package doctor is `funtun doctor`: it runs a program, or built-in
// probes that each reach the network one way (a plain connect, a name
// through each of glibc's resolver entry points, DNS packets of their own,
// io_uring, a child without LD_PRELOAD, a static child, a raw system
// call), under the launcher with a profile, and watches from outside the
// program what actually left: a lab of two network namespaces whose far
// side captures every packet and runs the only DNS resolver the program
// can reach. Whatever arrives there from the program rather than from the
// funnel is a leak, seen rather than assumed.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/funtun/funtun/internal/cli"
)

const usage = `funtun doctor [--json] [launcher options] [profile=NAME | chain='…'] [PROGRAM [ARGS…]]

Checks that the profile's traffic really passes through the funnel. The
doctor builds a small lab of two network namespaces joined by a virtual
cable: the "inside" one, where the launcher (funtun profile=NAME …) runs
with its funnel and the program, and the "outside" one, which holds the
only things the inside can reach: a TCP and UDP responder on 192.0.2.1
and 2001:db8::1 and a DNS resolver, the nameserver of the inside's
/etc/resolv.conf, which answers doctor.test and every name under it with
those addresses. Every packet that reaches the outside is captured and
every query logged, so a leak is seen, not assumed.

Without PROGRAM it runs built-in probes (bin/funtun-probe), one launcher
run each, and prints a table: probe, expected path, observed path,
verdict — ok, LEAK (something left the program outside the funnel) or
failed (nothing leaked, but the probe did not get through). It exits 1
if any probe leaked.

With PROGRAM it runs that program in the lab instead and lists every
destination and DNS query that came out of it, those outside the funnel
apart from those through it (the program's own output goes to stderr).
The lab has no way out to the world: only doctor.test names and the
lab's addresses answer, so point the program at them, e.g.
http://doctor.test/.

How a packet is told apart: the funnel's own sockets carry a firewall mark
(FUNTUN_MARK, which every direct piece without mark= uses) that the
inside namespace translates to a second source address, 192.0.2.3 (and
2001:db8::3); a socket the funnel connects on the program's behalf (a
handoff) is known from the funnel's own log; a DNS query from the funnel's
process (the direct piece resolving a name) is recognised by the socket
it came from. Anything else that arrives outside came from the program
past the funnel.

Launcher options (--allow-io-uring, --allow-raw, --allow-unhooked, and
any other word the launcher takes, such as mode= or guard=) are passed on
to every launcher run. The probes' io_uring probe falls back to connect()
when io_uring is filtered, as liburing users do; with --allow-io-uring
its connection bypasses the funnel and is reported as a leak.

The lab needs root, or, for an ordinary user, a user namespace of its
own where the system allows those (the doctor then runs in it, and the
program sees itself as root there). Nothing it makes outlives it, and no
packet leaves the lab.

Options:
  --json               print the report as JSON instead of a table
  --probe NAME[,NAME]  run only these probes: tcp-addr, tcp-name, gai, gai-a,
                       res-query, dns-udp, dns-tcp, udp-sendto, tcp6,
                       io-uring, scrubbed-child, static-child, raw-syscall

Examples:
  funtun doctor profile=direct
  funtun doctor --probe io-uring --allow-io-uring profile=direct
  funtun doctor guard=netns profile=direct
  funtun doctor profile=direct curl -s http://doctor.test/
  funtun doctor profile=direct sh -c 'env -i dig doctor.test'`

func init() {
	cli.Register(&cli.Command{
		Name:    "doctor",
		Summary: "show what leaks past the funnel: built-in probes or a program, watched from outside",
		Usage:   usage,
		Run:     run,
	})
}

// request is a parsed command line.
type request struct {
	json bool
	// only names the probes to run (nil: all).
	only map[string]bool
	// launcherWords go to every launcher run before the program: the
	// profile selector and the launcher's own options.
	launcherWords []string
	program       []string
}

// parseArgs splits the doctor's own options from the launcher's words and
// the program: every word before the program that is an option or a
// key=value belongs to the launcher (the doctor need not know them all,
// so that new launcher options work here at once).
func parseArgs(args []string) (req request, help bool, err error) {
words:
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--help" || a == "-h":
			return req, true, nil
		case a == "--json":
			req.json = true
		case a == "--probe" || strings.HasPrefix(a, "--probe="):
			list, ok := strings.CutPrefix(a, "--probe=")
			if !ok {
				if i+1 >= len(args) {
					return req, false, errors.New("--probe needs probe names")
				}
				i++
				list = args[i]
			}
			if err := req.choose(list); err != nil {
				return req, false, err
			}
		case a == "--":
			if i+1 >= len(args) {
				return req, false, errors.New("name a program after --")
			}
			req.program = args[i+1:]
			break words
		case strings.HasPrefix(a, "-") && a != "-":
			req.launcherWords = append(req.launcherWords, a)
		case strings.Contains(a, "=") && !strings.HasPrefix(a, "="):
			req.launcherWords = append(req.launcherWords, a)
		default:
			req.program = args[i:]
			break words
		}
	}
	if req.only != nil && req.program != nil {
		return req, false, errors.New("--probe is for the built-in probes, not with a program")
	}
	return req, false, nil
}

// choose adds the probes of a comma-separated list to those to run.
func (req *request) choose(list string) error {
	if req.only == nil {
		req.only = map[string]bool{}
	}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if !knownProbe(name) {
			var names []string
			for _, p := range probes {
				names = append(names, p.name)
			}
			return fmt.Errorf("--probe: no probe %q (probes: %s)", name, strings.Join(names, ", "))
		}
		req.only[name] = true
	}
	return nil
}

func knownProbe(name string) bool {
	for _, p := range probes {
		if p.name == name {
			return true
		}
	}
	return false
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	req, help, err := parseArgs(args)
	if help {
		fmt.Fprintln(env.Stdout, usage)
		return 0
	}
	if err != nil {
		return env.Usagef("doctor", "%v", err)
	}
	return examine(ctx, env, req)
}

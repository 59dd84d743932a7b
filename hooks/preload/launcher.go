//go:build linux

package preload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/hooks/activate"
	"github.com/funtun/funtun/internal/cli"
	"golang.org/x/sys/unix"
)

const launcherUsage = `funtun [global options] [profile=NAME | chain='…'] [mode=auto|preload|seccomp] [guard=netns] [io_uring=allow] [--allow-unhooked] [--allow-raw] PROGRAM [ARGS…]
funtun [global options] [profile=NAME | chain='…'] [--allow-…] -- PROGRAM [ARGS…]

Runs PROGRAM with its network traffic passed through the profile (default:
profile=direct). When your per-user daemon runs (funtun daemon; with
systemd, systemctl --user enable --now funtun-daemon.socket), funtun has
it prepare the launch and execs PROGRAM itself, which then starts about as
fast as under proxychains4, and the daemon's funnel serves it; otherwise
(or with FUNTUN_NO_DAEMON=1, chain='…', guard=netns, --debug or another
option below) the funnel runs inside this funtun process, as you. The
program gets libfuntun.so preloaded and a private control socket. Its
connections, name lookups and listening sockets go through the profile's
pieces; nothing falls back to the network directly: when the funnel is
gone, connect() fails with ECONNREFUSED and lookups with EAI_AGAIN.

funtun stays in the foreground with the program: Ctrl-C, Ctrl-Z and fg
work as without it, SIGTERM and SIGHUP are passed on, and funtun exits
with the program's status (128+N when a signal N ended it).

Use -- when PROGRAM has the name of a funtun command: funtun -- version
runs a program named version, not funtun's own command.

mode=auto, the default, hooks a dynamically linked program with the
library and keeps the kernel's seccomp filter of mode=seccomp under it as
a guard: a connect, sendto or sendmsg the library cannot see (a raw
system call, a child that dropped LD_PRELOAD or is statically linked)
stops in the kernel, and funtun carries it through the profile too.
Static and Go programs, which LD_PRELOAD cannot hook, run under
mode=seccomp. Where the kernel has no seccomp user notification (before
Linux 5.6), a dynamic program runs with the library alone, with a warning.

mode=seccomp hooks any program without the library: the kernel stops its
connect, sendto, sendmsg and the like and funtun carries them out for it
through the profile (every child the program starts stays hooked,
whatever its environment). mode=preload is the library alone, without
the guard: a little faster for programs that make many Unix-socket
sendmsg/recvmsg calls (desktop IPC), which the guard stops and lets go
on. See docs/hooks/seccomp.md.

Set-user-ID programs and programs of another machine cannot be hooked
with LD_PRELOAD (nor, under mode=preload, static and Go programs):
funtun refuses to start them rather than let their traffic bypass the
funnel. --allow-unhooked starts them anyway, with a warning.

Raw IP, packet and ICMP echo ("ping") sockets carry packets that no piece
of the profile could see, so the program cannot make them (EACCES,
"Permission denied"). --allow-raw lets it make them, and their packets
leave outside the funnel.

io_uring carries connections the library cannot see, so the program runs
under a seccomp filter in which io_uring_setup, io_uring_enter and
io_uring_register fail with ENOSYS, as on a kernel without io_uring:
liburing users and runtimes fall back to the ordinary calls the library
hooks. The filter needs "no new privileges": a set-user-ID or
file-capability program that the program starts (sudo, su, ping as a
user) does not gain its privileges. --allow-io-uring runs the program
without the filter, with a warning: its io_uring traffic bypasses the
funnel. When the kernel cannot install the filter, funtun refuses to
start the program unless --allow-io-uring is given. io_uring=allow is the
same as --allow-io-uring.

guard=netns runs the program in a network namespace of its own with
loopback only (through a user namespace for an ordinary user): a call
that escapes the library has nowhere to go, while the funnel, outside,
carries every flow the profile allows (always by relay; the program's
listening sockets are reachable from inside the namespace only). Where
the system forbids the namespaces, funtun refuses to run the program.

A profile may set the last two itself, on lines above its chain:
"option guard=netns", "option io_uring=allow"; the command line wins.

--debug logs every flow: one the funnel relayed with its byte counts, one
handed off to the program's own socket ("flow handed off") or connected
by the library itself ("flow connected by the library") without: those
bytes never pass the funnel.

The library is found next to the funtun binary (bin/libfuntun.so in the
build tree), in ../lib/funtun/ from it (after make install), or at
$FUNTUN_PRELOAD.

Examples:
  funtun profile=direct curl https://example.org/
  funtun chain='socks5 server=127.0.0.1:9050' ssh host.example   # via a SOCKS5 server (e.g. tor)
  funtun chain='hosts demo.test=127.0.0.1' curl http://demo.test:8000/
  funtun chain='tls cert=c.pem key=k.pem' python3 -m http.server 8443`

// ignoredAtStart: signals funtun's parent told it to ignore (nohup, a
// background job of a non-interactive shell). The program must inherit
// that, so they are ignored again before it starts. Only SIGHUP and SIGINT
// can be seen here: Go keeps no other inherited "ignore". Read in init,
// before main sets up its own handlers.
var ignoredAtStart = map[os.Signal]bool{}

func init() {
	cli.Launcher = Launch
	for _, sig := range []os.Signal{syscall.SIGHUP, syscall.SIGINT} {
		ignoredAtStart[sig] = signal.Ignored(sig)
	}
}

type launchArgs struct {
	sel           funnel.Selector
	allowUnhooked bool
	allowRaw      bool
	mode          string // mode=preload|seccomp|auto; "" is auto
	guard         string // guard=… on the command line; "" leaves it to the profile
	ioUring       string // io_uring=…, likewise
	program       string
	args          []string
}

// parseLaunch reads the launcher's own words, which all come before the
// program: everything from the program on belongs to it.
func parseLaunch(args []string) (launchArgs, bool, error) {
	var la launchArgs
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if i+1 >= len(args) {
				return la, false, errors.New("name a program after --")
			}
			la.program, la.args = args[i+1], args[i+2:]
			return la, false, nil
		case a == "--help" || a == "-h":
			return la, true, nil
		case a == "--allow-unhooked":
			la.allowUnhooked = true
		case strings.HasPrefix(a, "mode="):
			la.mode = strings.TrimPrefix(a, "mode=")
			if err := checkMode(la.mode); err != nil {
				return la, false, err
			}
		case a == "--allow-raw":
			la.allowRaw = true
		case a == "--allow-io-uring":
			la.ioUring = "allow"
		case strings.HasPrefix(a, optionGuard+"=") || strings.HasPrefix(a, optionIOUring+"="):
			key, value, _ := strings.Cut(a, "=")
			if err := checkOptionValue(key)(value); err != nil {
				return la, false, fmt.Errorf("%s: %v", key, err)
			}
			if key == optionGuard {
				la.guard = value
			} else {
				la.ioUring = value
			}
		case strings.HasPrefix(a, "profile=") || strings.HasPrefix(a, "chain="):
			sel, rest, err := funnel.TakeSelector([]string{a})
			if err != nil {
				return la, false, err
			}
			if len(rest) > 0 {
				return la, false, fmt.Errorf("unexpected %q", a)
			}
			if sel.Profile != "" {
				la.sel.Profile = sel.Profile
			}
			if sel.Chain != "" {
				la.sel.Chain = sel.Chain
			}
			if la.sel.Profile != "" && la.sel.Chain != "" {
				return la, false, errors.New("give profile=NAME or chain='…', not both")
			}
		case strings.HasPrefix(a, "-") && a != "-":
			return la, false, fmt.Errorf("unknown option %s (options come before the program)", a)
		default:
			la.program, la.args = a, args[i+1:]
			return la, false, nil
		}
	}
	return la, false, errors.New("name a program to run, e.g. funtun profile=direct curl https://example.org/")
}

// Launch is `funtun [key=value…] PROGRAM [ARGS…]`.
func Launch(ctx context.Context, env *cli.Env, args []string) int {
	la, help, err := parseLaunch(args)
	if help {
		fmt.Fprintln(env.Stdout, launcherUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: %v\n(see `funtun --help`)\n", err)
		return 2
	}
	path, err := exec.LookPath(la.program)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			fmt.Fprintf(env.Stderr, "funtun: %s: permission denied\n", la.program)
			return 126
		}
		fmt.Fprintf(env.Stderr, "funtun: %s: command not found\n", la.program)
		return 127
	}
	hookErr := checkHookable(path)
	var guarded bool
	la.mode, guarded = launchMode(la.mode, hookErr)
	if la.mode == modeSeccomp {
		warnSupervised(env.Stderr, path, hookErr)
	} else if err := hookErr; err != nil {
		if !la.allowUnhooked {
			fmt.Fprintf(env.Stderr, "funtun: %v\nfuntun: refusing to run it, since its traffic would bypass the funnel (--allow-unhooked runs it anyway)\n", err)
			return 126
		}
		fmt.Fprintf(env.Stderr, "funtun: warning: %v\nfuntun: warning: running it UNHOOKED: its traffic does not pass through the funnel\n", err)
	}
	var lib string
	if la.mode == modePreload {
		if lib, err = FindLibrary(); err != nil {
			fmt.Fprintf(env.Stderr, "funtun: %v\n", err)
			return 1
		}
	}
	eng, err := funnel.NewEngine(env.Catalog(), launcherLog(env.Log))
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: %v\n", err)
		return 1
	}
	pl, err := eng.Resolve(la.sel)
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: %v\n", err)
		return 1
	}
	la.takeProfileOptions(pl)
	// guard=netns leaves a call that escapes the library nowhere to go:
	// the seccomp guard would add a cost and catch nothing more.
	guarded = guarded && la.guard != "netns"

	dir, err := os.MkdirTemp("", "funtun-")
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: cannot make the control socket's directory: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Others may pass through to the socket (a program that drops
	// privileges keeps its funnel) but not list the directory; the server
	// checks every connection's credentials as well.
	os.Chmod(dir, 0o711)
	if lib != "" {
		lib, err = preloadablePath(lib, dir)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: %v\n", err)
		return 1
	}
	sock := filepath.Join(dir, "control")
	srv := NewServer(eng, la.sel)
	if la.guard == "netns" {
		if srv.guard, err = newNetnsGuard(); err != nil {
			fmt.Fprintf(env.Stderr, "funtun: %v\n", err)
			return 1
		}
		defer srv.guard.close()
	}
	l, err := srv.Listen(sock)
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: cannot make the control socket: %v\n", err)
		return 1
	}
	// The funnel lives as long as the program, whatever signals we get:
	// SIGINT from the terminal is the program's to handle.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go srv.Serve(sctx, l)

	// Sockets a service manager passed to us are the program's (see
	// inherited.go).
	inherited, err := srv.takeInherited()
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: the sockets passed in LISTEN_FDS: %v\n", err)
		return 1
	}
	defer inherited.close()

	environ := childEnv(os.Environ(), lib, sock)
	if la.mode == modeSeccomp {
		environ = supervisedEnv(os.Environ())
	}
	if la.allowRaw {
		environ = append(environ, "FUNTUN_ALLOW_RAW=1")
	}
	start := startWithoutIOUring
	if la.ioUring == "allow" {
		env.Log.Warn("io_uring allowed (io_uring=allow): connections the program makes through io_uring bypass the funnel and its profile", "program", path)
		start = func(f func() (*os.Process, error)) (*os.Process, error) { return f() }
	}
	supervision := &Supervision{}
	if la.mode == modeSeccomp {
		start = srv.startSupervised(sctx, la.ioUring == "allow", la.allowRaw, false, supervision, 0)
	} else if guarded {
		pass := libraryPass()
		environ = append(environ, fmt.Sprintf("%s=%016x", guardPassEnv, pass))
		start = guardedStart(srv.startSupervised(sctx, la.ioUring == "allow", la.allowRaw, true, supervision, pass), start, env.Stderr, path)
	}
	code := supervise(env, path, append([]string{la.program}, la.args...), append(environ, inherited.env()...), inherited, start, srv.guard)
	srv.waitIdle(250 * time.Millisecond)
	// What the program left running keeps its socket calls answered.
	supervision.HandOver()
	return code
}

// childEnv adds the library to LD_PRELOAD (after any the user has) and
// names the control socket. FUNTUN_ALLOW_RAW is dropped: raw sockets are
// allowed by this launcher's --allow-raw only, never by an environment
// that happens to have it; so is an outer launcher's guard pass.
func childEnv(environ []string, lib, sock string) []string {
	out := make([]string, 0, len(environ)+2)
	preload := lib
	for _, kv := range environ {
		switch {
		case strings.HasPrefix(kv, "LD_PRELOAD="):
			if old := strings.TrimSpace(strings.TrimPrefix(kv, "LD_PRELOAD=")); old != "" {
				preload = old + " " + lib
			}
		case strings.HasPrefix(kv, "FUNTUN_SOCKET="), strings.HasPrefix(kv, "FUNTUN_ALLOW_RAW="), strings.HasPrefix(kv, "FUNTUN_LISTEN_FED="), strings.HasPrefix(kv, guardPassEnv+"="):
		default:
			out = append(out, kv)
		}
	}
	return append(out, "LD_PRELOAD="+preload, "FUNTUN_SOCKET="+sock)
}

// preloadablePath copies the library into dir when its path cannot stand
// in LD_PRELOAD, whose entries are separated by spaces and colons.
func preloadablePath(lib, dir string) (string, error) {
	if !strings.ContainsAny(lib, " :\t") {
		return lib, nil
	}
	data, err := os.ReadFile(lib)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "libfuntun.so")
	return p, os.WriteFile(p, data, 0o755)
}

// launcherLog keeps the program's terminal for the program: only failed
// flows are logged, unless --debug asked for everything.
func launcherLog(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return slog.New(minLevel{min: slog.LevelWarn, Handler: log.Handler()})
}

type minLevel struct {
	min slog.Level
	slog.Handler
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

// WithAttrs is lazy: every flow gets a logger with its id, and most flows
// never write a line, so the attributes are formatted only for a record
// that passes.
func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return &lazyAttrs{min: m.min, parent: m.Handler, attrs: a}
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.min, m.Handler.WithGroup(g)} }

type lazyAttrs struct {
	min    slog.Level
	parent slog.Handler
	attrs  []slog.Attr
}

func (l *lazyAttrs) Enabled(ctx context.Context, lv slog.Level) bool {
	return lv >= l.min && l.parent.Enabled(ctx, lv)
}
func (l *lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	return l.parent.WithAttrs(l.attrs).Handle(ctx, r)
}
func (l *lazyAttrs) WithAttrs(a []slog.Attr) slog.Handler {
	return &lazyAttrs{min: l.min, parent: l.parent, attrs: append(append([]slog.Attr(nil), l.attrs...), a...)}
}
func (l *lazyAttrs) WithGroup(g string) slog.Handler {
	return minLevel{l.min, l.parent.WithAttrs(l.attrs).WithGroup(g)}
}

// Signals the terminal sends to the whole foreground process group: the
// program gets its own copy, so the launcher only keeps out of the way.
var terminalSignals = map[os.Signal]bool{syscall.SIGINT: true, syscall.SIGQUIT: true, syscall.SIGTSTP: true}

// supervise runs the program in our own process group (it keeps the
// terminal: no new group, no new session), passes signals on, follows it
// into job-control stops, and returns its exit status.
func supervise(env *cli.Env, path string, argv, environ []string, inherited *inheritedSockets, start func(func() (*os.Process, error)) (*os.Process, error), guard *netnsGuard) int {
	sigs := make(chan os.Signal, 16)
	// Caught, not ignored: a caught signal is back to its default in the
	// program after exec, an ignored one stays ignored there.
	for _, sig := range []os.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP, syscall.SIGTERM, syscall.SIGHUP,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGCONT} {
		if ignoredAtStart[sig] {
			signal.Ignore(sig)
			continue
		}
		signal.Notify(sigs, sig)
	}
	defer signal.Stop(sigs)
	exe, args := path, argv
	if inherited != nil {
		// Through funtun's own step, which sets LISTEN_PID to the
		// program's pid before it execs the program.
		exe, args = activate.StepArgs(path, argv)
	}
	attr := &os.ProcAttr{
		Env:   environ,
		Files: append([]*os.File{os.Stdin, os.Stdout, os.Stderr}, inherited.files()...),
	}
	if guard != nil {
		exe, args = guard.wrap(exe, args, attr)
	}
	proc, err := start(func() (*os.Process, error) { return startProcess(exe, args, attr) })
	if guard != nil {
		guard.started()
		if err != nil {
			fmt.Fprintf(env.Stderr, "funtun: %v\nfuntun: refusing to run %s without the guard\n", guard.startError(err), path)
			return 126
		}
	}
	if supervisedRefusal(env.Stderr, err, path) {
		return 126
	}
	var noFilter errNoFilter
	if errors.As(err, &noFilter) {
		fmt.Fprintf(env.Stderr, "funtun: %v\nfuntun: refusing to run %s, since its io_uring traffic would bypass the funnel (--allow-io-uring runs it without the filter)\n", noFilter, path)
		return 126
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "funtun: cannot start %s: %v\n", path, errors.Unwrap(err))
		if errors.Is(err, fs.ErrNotExist) {
			return 127
		}
		return 126
	}
	inherited.started()
	pid := proc.Pid
	events := make(chan unix.WaitStatus)
	go func() {
		defer close(events)
		for {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, unix.WUNTRACED, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			events <- ws
			if ws.Exited() || ws.Signaled() {
				return
			}
		}
	}()
	for {
		select {
		case sig := <-sigs:
			if !terminalSignals[sig] {
				unix.Kill(pid, sig.(syscall.Signal))
			}
		case ws, ok := <-events:
			switch {
			case !ok:
				fmt.Fprintf(env.Stderr, "funtun: lost track of %s (pid %d)\n", path, pid)
				return 1
			case ws.Exited():
				return ws.ExitStatus()
			case ws.Signaled():
				return 128 + int(ws.Signal())
			case ws.Stopped():
				// A job-control stop (Ctrl-Z, a background read): stop
				// with the program so that the shell sees the job stop,
				// and take it along when the shell continues us.
				switch ws.StopSignal() {
				case unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
					unix.Kill(os.Getpid(), unix.SIGSTOP)
					unix.Kill(pid, unix.SIGCONT)
				}
			}
		}
	}
}

// startProcess is os.StartProcess without the probe for pidfd support
// that os runs on its first start, which forks and reaps a child of its
// own: a second fork in every launch. The launcher needs no pidfd: it
// waits for the program by its pid, and the Process it returns works by
// pid as one from os does where pidfds are missing.
func startProcess(exe string, args []string, attr *os.ProcAttr) (*os.Process, error) {
	fds := make([]uintptr, len(attr.Files))
	for i, f := range attr.Files {
		fds[i] = f.Fd()
	}
	env := attr.Env
	if env == nil {
		env = os.Environ()
	}
	pid, err := syscall.ForkExec(exe, args, &syscall.ProcAttr{Dir: attr.Dir, Env: env, Files: fds, Sys: attr.Sys})
	runtime.KeepAlive(attr)
	if err != nil {
		return nil, &os.PathError{Op: "fork/exec", Path: exe, Err: err}
	}
	return &os.Process{Pid: pid}, nil
}

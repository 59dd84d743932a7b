//go:build linux

package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/funtun/funtun/internal/cli"
	"golang.org/x/sys/unix"
)

// stageArg starts funtun as the doctor's stage: the first process in the
// lab's inside network namespace, in a mount namespace of its own, which
// puts the lab's resolv.conf in place (as `ip netns exec` does with
// /etc/netns/NAME/resolv.conf) and becomes the launcher.
const stageArg = "__funtun-doctor-stage"

func init() {
	// Before main and every command: the stage does nothing else.
	if len(os.Args) >= 2 && os.Args[1] == stageArg {
		os.Exit(stage(os.Args[2:]))
	}
}

func stage(args []string) int {
	if len(args) < 2 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "funtun: "+stageArg+" is funtun doctor's own step")
		return 2
	}
	// The mount namespace is private (the doctor started us with
	// CLONE_NEWNS, which makes / private too): the host keeps its file.
	if err := unix.Mount(args[0], "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		fmt.Fprintf(os.Stderr, "funtun doctor: cannot put the lab's resolv.conf over /etc/resolv.conf: %v\n", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "funtun doctor: %v\n", err)
		return 1
	}
	err = unix.Exec(exe, append([]string{"funtun"}, args[2:]...), os.Environ())
	fmt.Fprintf(os.Stderr, "funtun doctor: cannot start the launcher: %v\n", err)
	return 1
}

func examine(ctx context.Context, env *cli.Env, req request) int {
	if os.Geteuid() != 0 {
		return examineAsUser(ctx, env)
	}
	var dynamic, static string
	if req.program == nil {
		var err error
		if dynamic, static, err = FindProbe(); err != nil {
			return env.Errorf("doctor", "%v", err)
		}
	}
	l, err := newLab()
	if err != nil {
		return env.Errorf("doctor", "cannot build the lab: %v", err)
	}
	defer l.close()
	o, err := startObserver(l)
	if err != nil {
		return env.Errorf("doctor", "%v", err)
	}
	defer o.close()
	if req.program != nil {
		return examineProgram(ctx, env, req, l, o)
	}
	return examineProbes(ctx, env, req, l, o, dynamic, static)
}

// userNSEnv marks the doctor run again in a user namespace of its own,
// so that it does not try that twice.
const userNSEnv = "FUNTUN_DOCTOR_USERNS"

// examineAsUser runs the doctor again, whole, in a user namespace where
// the user is root: there it may make the lab's network and mount
// namespaces (which that user namespace owns), and nothing it does
// reaches beyond them. A multithreaded process cannot enter a new user
// namespace itself, hence a new process.
func examineAsUser(ctx context.Context, env *cli.Env) int {
	needRoot := "needs root, or user namespaces for an ordinary user"
	if os.Getenv(userNSEnv) != "" {
		return env.Errorf("doctor", "%s: in its user namespace it still is not root", needRoot)
	}
	exe, err := os.Executable()
	if err != nil {
		return env.Errorf("doctor", "%v", err)
	}
	cmd := exec.CommandContext(ctx, exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, env.Stdout, env.Stderr
	cmd.Env = append(os.Environ(), userNSEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A network namespace of its own too: the host's belongs to
		// the initial user namespace, and a thread that left it for the
		// lab could not go back.
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	}
	return env.Errorf("doctor", "%s, which this system does not allow (%v): run it with sudo", needRoot, errors.Unwrap(err))
}

// probeRun is what one probe's launcher run gave.
type probeRun struct {
	probe     probe
	succeeded bool
	skipped   bool // not run at all (detail says why)
	detail    string
}

func examineProbes(ctx context.Context, env *cli.Env, req request, l *lab, o *observer, dynamic, static string) int {
	var runs []probeRun
	var handoffs []handoff
	for i, p := range probes {
		if ctx.Err() != nil {
			return 130
		}
		if req.only != nil && !req.only[p.name] {
			continue
		}
		if p.name == "static-child" && static == "" {
			runs = append(runs, probeRun{probe: p, skipped: true, detail: "not run: there is no funtun-probe-static next to funtun-probe (make builds it where a static libc is installed)"})
			continue
		}
		lp := labProbeOf(i, p, static)
		argv := append([]string{dynamic, p.subcommand()}, p.args(lp)...)
		var out, diag bytes.Buffer
		o.startRun(p.name, 0)
		exit, hs, err := launch(ctx, l, o, req.launcherWords, argv, nil, &out, &diag)
		if err != nil {
			return env.Errorf("doctor", "%v", err)
		}
		handoffs = append(handoffs, hs...)
		line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
		if line == "" && len(runs) == 0 && strings.Contains(diag.String(), "funtun") {
			// The launcher refused before the probe ran (an unknown
			// profile, a bad option): every probe would say the same.
			fmt.Fprint(env.Stderr, diag.String())
			return env.Errorf("doctor", "the launcher did not run the probes (exit status %d)", exit)
		}
		detail := line
		if detail == "" {
			detail = lastLine(diag.String())
		}
		if detail == "" {
			detail = "exit status " + strconv.Itoa(exit)
		}
		runs = append(runs, probeRun{probe: p, succeeded: exit == 0 && strings.HasPrefix(line, "ok"), detail: detail})
	}
	if err := o.barrier(l); err != nil {
		env.Log.Warn("doctor: " + err.Error())
	}
	seen := o.take()
	attribute(seen)
	classify(seen, handoffs)
	rep := &probeReport{Launcher: launcherWordsOrDefault(req.launcherWords)}
	for _, r := range runs {
		var mine []observation
		for _, ob := range seen {
			if ob.probe == r.probe.name {
				mine = append(mine, ob)
			}
		}
		res := judge(r.probe, r.succeeded, r.detail, mine)
		if r.skipped {
			res.Observed = "not run"
		}
		if res.Verdict == verdictLeak {
			rep.Leaks++
		}
		rep.Results = append(rep.Results, res)
	}
	if err := rep.write(env.Stdout, req.json); err != nil {
		return env.Errorf("doctor", "%v", err)
	}
	if rep.Leaks > 0 {
		return 1
	}
	return 0
}

func examineProgram(ctx context.Context, env *cli.Env, req request, l *lab, o *observer) int {
	o.startRun("program", 0)
	// The program's output goes to stderr: stdout is the report's.
	exit, handoffs, err := launch(ctx, l, o, req.launcherWords, req.program, os.Stdin, env.Stderr, env.Stderr)
	if err != nil {
		return env.Errorf("doctor", "%v", err)
	}
	if err := o.barrier(l); err != nil {
		env.Log.Warn("doctor: " + err.Error())
	}
	seen := o.take()
	classify(seen, handoffs)
	rep := newProgramReport(launcherWordsOrDefault(req.launcherWords), req.program, exit, seen)
	if !req.json {
		fmt.Fprintln(env.Stderr)
	}
	if err := rep.write(env.Stdout, req.json); err != nil {
		return env.Errorf("doctor", "%v", err)
	}
	if len(rep.Outside) > 0 {
		return 1
	}
	return 0
}

func launcherWordsOrDefault(words []string) []string {
	if len(words) == 0 {
		return []string{"profile=direct"}
	}
	return words
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// launch runs `funtun WORDS… -- ARGV…` (the launcher) in the lab through
// the stage, with the funnel's sockets marked and its flows logged as
// JSON, and returns the exit status and the flows the funnel handed off.
// The launcher's log lines are taken out of its stderr; the rest (the
// program's own stderr) goes to stderr.
func launch(ctx context.Context, l *lab, o *observer, words, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, []handoff, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, nil, err
	}
	args := []string{stageArg, l.resolvConf, "--", "--log-format=json", "--debug"}
	args = append(append(append(args, words...), "--"), argv...)
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(withoutMark(os.Environ()), fmt.Sprintf("FUNTUN_MARK=%#x", doctorMark))
	cmd.Stdin, cmd.Stdout = stdin, stdout
	log := &launcherLog{other: stderr}
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	// The launcher passes SIGTERM on to the program; a kill would leave
	// the program running without its funnel.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	// A process starts in the network namespace of the thread that
	// starts it.
	if err := l.in(l.inside, cmd.Start); err != nil {
		return 0, nil, fmt.Errorf("cannot start the launcher in the lab: %v", err)
	}
	o.mu.Lock()
	o.funnelPID = cmd.Process.Pid
	o.mu.Unlock()
	err = cmd.Wait()
	log.flush()
	o.mu.Lock()
	o.funnelPID = 0
	o.mu.Unlock()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, log.handoffs, nil
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), log.handoffs, nil
		}
		return exit.ExitCode(), log.handoffs, nil
	}
	return 0, nil, err
}

func withoutMark(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "FUNTUN_MARK=") {
			out = append(out, kv)
		}
	}
	return out
}

// FindProbe finds funtun-probe and funtun-probe-static (static is ""
// when only the first is there): in $FUNTUN_BIN when set, next to the
// funtun binary (bin/ in the build tree), or in ../lib/funtun/ from it
// (an installed layout).
func FindProbe() (dynamic, static string, err error) {
	var dirs []string
	if d := os.Getenv("FUNTUN_BIN"); d != "" {
		dirs = append(dirs, d)
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dirs = append(dirs, filepath.Dir(exe), filepath.Join(filepath.Dir(exe), "..", "lib", "funtun"))
	}
	for _, d := range dirs {
		dyn, st := filepath.Join(d, "funtun-probe"), filepath.Join(d, "funtun-probe-static")
		if !isExecutable(dyn) {
			continue
		}
		// The static probe needs a static libc to build, which not
		// every system has: without it only its own probe is skipped.
		if !isExecutable(st) {
			return filepath.Clean(dyn), "", nil
		}
		return filepath.Clean(dyn), filepath.Clean(st), nil
	}
	return "", "", fmt.Errorf("cannot find funtun-probe (looked in %s): build it with `make`, or set FUNTUN_BIN to its directory", strings.Join(dirs, ", "))
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

//go:build linux

package preload

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// The launcher's mode= word: how the program's calls reach the funnel.
const (
	modePreload = "preload" // libfuntun.so in LD_PRELOAD alone
	modeSeccomp = "seccomp" // the kernel traps the calls (seccomp_supervisor.go)
	modeAuto    = "auto"    // the default: seccomp where LD_PRELOAD cannot take hold, else the library with the seccomp guard under it
)

func checkMode(v string) error {
	switch v {
	case modePreload, modeSeccomp, modeAuto:
		return nil
	}
	return fmt.Errorf("mode=%s: say mode=preload, mode=seccomp or mode=auto", v)
}

// errSelfCalling is checkHookable's answer for a program that makes its
// system calls without the C library's dynamic symbols (static, or Go):
// the one case where the supervisor hooks what LD_PRELOAD cannot.
type errSelfCalling struct{ error }

func (e errSelfCalling) Unwrap() error { return e.error }

// launchMode decides mode=auto, the default, by what checkHookable found:
// a static or Go program runs under the supervisor alone; a program the
// library hooks gets the library and, under it, the supervisor's filter as
// a guard (guarded) for what the library cannot see. Anything else (a
// set-user-ID or foreign program) is the library's case as before: refused,
// or run unhooked with --allow-unhooked, and no guard, since the program
// would lose its privilege under no_new_privs and the guard is no promise
// for a program the launcher was told to run unhooked.
func launchMode(mode string, hookable error) (chosen string, guarded bool) {
	if mode == "" {
		mode = modeAuto
	}
	if mode != modeAuto {
		return mode, false
	}
	if errors.As(hookable, new(errSelfCalling)) {
		return modeSeccomp, false
	}
	return modePreload, hookable == nil
}

// guardedStart is the launcher's start function for the library with the
// seccomp guard: the supervisor's filter when the kernel has what it
// needs, else (Linux before 5.6, no pidfd_getfd, a seccomp policy that
// forbids user notification) the library alone, with its io_uring filter
// (plain unless allowIOUring), and a warning: a dynamic program is never
// refused for want of the guard.
func guardedStart(supervised, fallback func(func() (*os.Process, error)) (*os.Process, error), w io.Writer, path string) func(func() (*os.Process, error)) (*os.Process, error) {
	return func(start func() (*os.Process, error)) (*os.Process, error) {
		proc, err := supervised(start)
		var noSup errNoSupervisor
		if !errors.As(err, &noSup) {
			return proc, err
		}
		// The supervisor failed before it started anything.
		fmt.Fprintf(w, "funtun: warning: no seccomp guard under the library: %v\nfuntun: warning: %s runs with the library alone: raw system calls and static children escape the funnel (see docs/hooks/seccomp.md)\n", noSup.err, path)
		return fallback(start)
	}
}

// warnSupervised says what no_new_privs does to a set-ID or
// file-capability program: it runs without the privilege.
func warnSupervised(w io.Writer, path string, hookable error) {
	if hookable == nil || errors.As(hookable, new(errSelfCalling)) {
		return
	}
	if strings.Contains(hookable.Error(), "set-") || strings.Contains(hookable.Error(), "capabilities") {
		fmt.Fprintf(w, "funtun: warning: %s runs under mode=seccomp without its privilege (no_new_privs)\n", path)
	}
}

// supervisedEnv is the program's environment under mode=seccomp: nothing
// of the library's, which the supervisor does not need (a user's own
// LD_PRELOAD stays).
func supervisedEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		switch {
		case strings.HasPrefix(kv, "FUNTUN_SOCKET="), strings.HasPrefix(kv, "FUNTUN_ALLOW_RAW="), strings.HasPrefix(kv, "FUNTUN_LISTEN_FED="), strings.HasPrefix(kv, guardPassEnv+"="):
		default:
			out = append(out, kv)
		}
	}
	return out
}

// supervisedRefusal is the launcher's message when the supervisor cannot
// be set up: the program would run with nothing between it and the
// network.
func supervisedRefusal(w io.Writer, err error, path string) bool {
	var noSup errNoSupervisor
	if !errors.As(err, &noSup) {
		return false
	}
	// Point at the library only where it can hook the program: a static
	// or Go program has no way into the funnel without the supervisor.
	next := "mode=preload uses the library instead"
	if checkHookable(path) != nil {
		next = "the library cannot hook it either; mode=preload --allow-unhooked runs it outside the funnel"
	}
	fmt.Fprintf(w, "funtun: %v\nfuntun: refusing to run %s, since its traffic would bypass the funnel (%s)\n", noSup, path, next)
	return true
}

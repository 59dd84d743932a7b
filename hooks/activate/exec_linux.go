//go:build linux

package activate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

// execStep is the hidden first argument of funtun's own binary that makes
// it the step between fork and the program: sd_listen_fds() accepts the
// sockets only when LISTEN_PID is the program's pid, which nobody knows
// before the fork, and Go cannot run code between fork and exec. So the
// child is funtun again (/proc/self/exe), which learns its pid, sets
// LISTEN_PID and execve()s the program — the pid stays across exec.
const execStep = "__funtun-activate-exec"

// selfExe is the binary running now, even when its file has been
// replaced or removed since (an upgrade while the service runs).
const selfExe = "/proc/self/exe"

func init() {
	// Before main and every command: the step does nothing else.
	if len(os.Args) >= 4 && os.Args[1] == execStep {
		os.Exit(execProgram(os.Args[2], os.Args[3:]))
	}
}

// StepArgs is how to start the program at path with argv (argv[0]
// included) so that it sees LISTEN_PID as its own pid: run exe with args;
// the descriptors, environment and LISTEN_FDS given to exe reach the
// program unchanged.
func StepArgs(path string, argv []string) (exe string, args []string) {
	return selfExe, append([]string{"funtun", execStep, path}, argv...)
}

func execProgram(path string, argv []string) int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	err := syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "funtun: cannot start %s: %v\n", path, err)
	if errors.Is(err, fs.ErrNotExist) {
		return 127
	}
	return 126
}

//go:build !linux

package daemon

import (
	"context"
	"fmt"

	"github.com/funtun/funtun/internal/cli"
)

// The daemon serves the LD_PRELOAD library's control protocol, which hands
// the program's sockets over with SCM_RIGHTS and checks peers with
// SO_PEERCRED: Linux only, like the launcher.
func run(_ context.Context, env *cli.Env, args []string) int {
	for _, a := range args {
		if a == "--help" || a == "-h" || a == "-help" {
			fmt.Fprintln(env.Stdout, usage)
			return 0
		}
	}
	fmt.Fprintln(env.Stderr, "funtun daemon: needs Linux (LD_PRELOAD, SCM_RIGHTS handoff and SO_PEERCRED); use funtun socks5d with a SOCKS-aware program instead")
	return 126
}

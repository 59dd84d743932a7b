//go:build !linux

package activate

import (
	"context"
	"fmt"

	"github.com/funtun/funtun/internal/cli"
)

// Socket activation is systemd's, and starting the program with its own
// pid in LISTEN_PID goes through /proc/self/exe: elsewhere the command
// says so plainly rather than "no such command".
func init() {
	cli.Register(&cli.Command{
		Name:    "activate",
		Summary: "keep a service's listening sockets and feed the program its own, through a profile (Linux)",
		Usage:   usage,
		Run: func(ctx context.Context, env *cli.Env, args []string) int {
			for _, a := range args {
				if a == "--help" || a == "-h" || a == "-help" {
					fmt.Fprintln(env.Stdout, usage)
					return 0
				}
			}
			return env.Errorf("activate", "needs Linux (systemd socket activation); use funtun forward --inbound here")
		},
	})
}

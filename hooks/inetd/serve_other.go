//go:build !linux

package inetd

import (
	"context"

	"github.com/funtun/funtun/internal/cli"
)

// serve needs Linux: pidfds for reaping without a thread per program,
// accept4(2) and SysProcAttr credentials. --check works everywhere.
func serve(ctx context.Context, env *cli.Env, cfg Config, opt ParseOptions) int {
	return env.Errorf("inetd", "serving is not supported on this system (it needs Linux); --check works here")
}

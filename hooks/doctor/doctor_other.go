//go:build !linux

package doctor

import (
	"context"

	"github.com/funtun/funtun/internal/cli"
)

// examine needs network namespaces, which only Linux has.
func examine(_ context.Context, env *cli.Env, _ request) int {
	return env.Errorf("doctor", "needs Linux: its lab is made of network namespaces")
}

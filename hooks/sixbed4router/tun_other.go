//go:build !linux

package sixbed4router

import (
	"errors"
	"os"
)

func openTUN(string) (*os.File, error) {
	return nil, errors.New("TUN devices are supported on Linux only; leave out --tun to use the router's own stack")
}

//go:build !linux

package firewall

import (
	"errors"
	"io"
)

// nftables and policy routing are Linux's; elsewhere only --dry-run works,
// so an administrator can still read the script.
var errNeedsLinux = errors.New("needs Linux (nftables); --dry-run prints the rules anywhere")

func resolveCgroup(string) (cgroupSel, error) {
	return cgroupSel{}, errors.New("cgroup v2 selectors need Linux")
}

func install(io.Writer, *plan) error { return errNeedsLinux }
func remove(io.Writer, string) error { return errNeedsLinux }
func show(io.Writer, string) error   { return errNeedsLinux }

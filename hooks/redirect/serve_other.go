//go:build !linux

package redirect

import (
	"context"
	"errors"

	"github.com/funtun/funtun/internal/cli"
)

// errNeedsLinux: REDIRECT's SO_ORIGINAL_DST and TPROXY are netfilter's.
var errNeedsLinux = errors.New("needs Linux: it takes connections that netfilter (nftables, iptables) redirected; elsewhere use `funtun socks5d` with a SOCKS-aware program")

func checkPrivilege(bool, int) error { return errNeedsLinux }

func (rd *Redirector) serveCommand(context.Context, *cli.Env, []string, bool) int { return 1 }

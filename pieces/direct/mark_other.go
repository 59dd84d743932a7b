//go:build !linux

package direct

import "syscall"

// SO_MARK is Linux's; New refuses mark= elsewhere, so markControl is
// never reached.
const markSupported = false

func markControl(int) func(network, address string, c syscall.RawConn) error { return nil }

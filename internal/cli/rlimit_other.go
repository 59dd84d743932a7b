//go:build !unix

package cli

import "log/slog"

// raiseFileLimit: systems without RLIMIT_NOFILE have nothing to raise.
func raiseFileLimit(*slog.Logger) {}

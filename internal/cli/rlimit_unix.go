//go:build unix

package cli

import (
	"log/slog"
	"sync"
	"syscall"
)

// lowFileLimit is where a daemon's file limit is worth a line at info: a
// few hundred clients (each a socket, a CONNECT two) would reach it.
const lowFileLimit = 4096

var raiseOnce sync.Once

// raiseFileLimit lifts the soft limit on open files to the hard limit,
// once, and logs where it stands: a daemon's clients and flows are files,
// and the soft limit (often 1024) is a compatibility default for programs
// that use select(2), which funtun does not. Go's runtime has usually done
// this already at start; then this only logs, and Setrlimit is not called,
// so programs that funtun starts still get the original soft limit back
// (os/exec restores it for them unless the program sets it itself).
func raiseFileLimit(log *slog.Logger) {
	raiseOnce.Do(func() {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Debug("cannot read the file limit", "err", err)
			return
		}
		if lim.Cur < lim.Max {
			want := lim
			want.Cur = want.Max
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
				log.Debug("cannot raise the file limit to the hard limit", "soft", lim.Cur, "hard", lim.Max, "err", err)
			} else {
				lim = want
			}
		}
		if lim.Cur < lowFileLimit {
			log.Info("open file limit is low: every client and flow takes files (raise the hard limit: ulimit -Hn, LimitNOFILE=)", "limit", lim.Cur)
			return
		}
		log.Debug("open file limit", "limit", lim.Cur)
	})
}

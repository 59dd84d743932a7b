package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/sdactivate"
)

// ReloadStep is a hook's own part of a reload: its files that name
// profiles or change with them (a users file, a map). Given the new set of
// profiles, compiled but not yet in force, it reads and checks its files
// against that set and returns what puts them in force, or an error that
// refuses the whole reload.
type ReloadStep func(set *funnel.Set) (commit func(), err error)

// commandSelectors: the profile=/chain= each engine's command was started
// with (ParseFlags, then Engine), which every reload must still resolve.
var commandSelectors sync.Map // *funnel.Engine -> funnel.Selector

// Reload recompiles all profiles and redoes each step, as one: the new
// set must compile, the command's own selector must still resolve in it
// (a profile= whose file went, a chain= whose route names a profile that
// went), and every step must accept it. On any error nothing changes —
// the old profiles and the hook's old files stay — and the error, logged
// and returned, names every problem. Otherwise the new set goes live and
// the steps' commits run, in order, right after it.
func Reload(e *funnel.Engine, steps ...ReloadStep) error {
	var commits []func()
	err := e.Catalog.LoadChecked(func(set *funnel.Set) error {
		commits = commits[:0]
		var errs []error
		if v, ok := commandSelectors.Load(e); ok {
			sel := v.(funnel.Selector)
			if _, err := e.Catalog.ResolveIn(set, sel); err != nil {
				errs = append(errs, fmt.Errorf("the command's %s: %w", sel, err))
			}
		}
		for _, step := range steps {
			commit, err := step(set)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if commit != nil {
				commits = append(commits, commit)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		e.Log.Error("reload failed; keeping the profiles and files in force", "err", err)
		return err
	}
	e.Log.Info("profiles reloaded", "profiles", len(e.Catalog.Current().Names()))
	for _, commit := range commits {
		commit()
	}
	return nil
}

// ReloadOnHUP runs Reload on every SIGHUP until ctx ends.
//
// It also tells the service manager (sd_notify, when NOTIFY_SOCKET is set)
// about both: RELOADING=1 then READY=1 around each reload — READY=1 also
// when the reload was refused, since the old profiles still serve — and
// STOPPING=1 once ctx ends, the daemon's shutdown. The daemon itself sends
// the first READY=1 (sdactivate.Ready) once it serves, and calls
// sdactivate.Stopping before it returns too, since the process may exit
// before this goroutine runs.
func ReloadOnHUP(ctx context.Context, e *funnel.Engine, steps ...ReloadStep) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	notify := func(send func() error) {
		if err := send(); err != nil {
			e.Log.Warn("cannot notify the service manager", "err", err)
		}
	}
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				notify(sdactivate.Stopping)
				return
			case <-ch:
				notify(sdactivate.Reloading)
				// One message, so that the status and the readiness
				// arrive together; an empty STATUS= clears an old refusal.
				status := ""
				if err := Reload(e, steps...); err != nil {
					status = "reload refused: " + oneLine(err.Error())
				}
				notify(func() error { return sdactivate.Notify("READY=1\nSTATUS=" + status) })
			}
		}
	}()
}

// oneLine keeps a joined error to one STATUS= line, which is what
// systemctl status shows.
func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", "; ")
}

package cli

import (
	"context"
	"flag"
	"fmt"
	"github.com/funtun/funtun/internal/netx"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// pprofFlag is the option every daemon command gets (Command.Daemon).
const pprofFlag = "pprof"

// checkLoopback refuses a --pprof address that is not HOST:PORT with a
// loopback HOST: the profiles and the goroutine dump show flows'
// addresses and can stall the process, so they are for this machine only.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %s: want a loopback HOST:PORT such as 127.0.0.1:6060 (%v)", pprofFlag, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() && ip.Zone() == "" {
		return nil
	}
	return fmt.Errorf("--%s %s: serves on loopback addresses only (127.0.0.1:PORT, [::1]:PORT or localhost:PORT): "+
		"its profiles and goroutine dumps are not for other machines", pprofFlag, addr)
}

// startPprof checks the --pprof value of a parsed flag set and serves
// net/http/pprof there until StopPprof (called when the command's Run
// returns). A flag set without --pprof, or an empty value, does nothing.
func (env *Env) startPprof(fs *flag.FlagSet) error {
	f := fs.Lookup(pprofFlag)
	if f == nil || f.Value.String() == "" {
		return nil
	}
	return env.ServePprof(f.Value.String())
}

// ServePprof serves net/http/pprof on addr, a loopback address, until the
// command's Run returns (or StopPprof): for the global --pprof, which the
// launcher's funnel uses.
func (env *Env) ServePprof(addr string) error {
	if err := checkLoopback(addr); err != nil {
		return err
	}
	if env.pprof != nil {
		return nil // parsed twice in one run: the first server stays
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--%s %s: cannot listen: %v", pprofFlag, addr, netx.OpCause(err))
	}
	// A mux of its own: net/http/pprof also registers on
	// http.DefaultServeMux, which nothing in funtun serves.
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	env.pprof = srv
	go srv.Serve(l)
	if env.Log != nil {
		env.Log.Info("pprof serving", "addr", l.Addr().String(), "url", "http://"+l.Addr().String()+"/debug/pprof/")
	}
	return nil
}

// StopPprof ends the server ServePprof started, if any; a profile being
// taken is cut short, as the daemon it profiles has ended.
func (env *Env) StopPprof() {
	if env.pprof == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if env.pprof.Shutdown(ctx) != nil {
		env.pprof.Close()
	}
	env.pprof = nil
}

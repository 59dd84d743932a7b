//go:build linux

package inetd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
)

func serve(ctx context.Context, env *cli.Env, cfg Config, opt ParseOptions) int {
	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("inetd", "%v", err)
	}
	opt.Resolve = eng.Resolve
	lines, errs := ParseFile(cfg.File, opt)
	if unreadable(errs) {
		return env.Errorf("inetd", "%v", errs[0])
	}
	for _, e := range errs {
		env.Log.Error("inetd line skipped", "err", e)
	}
	if len(lines) == 0 {
		return env.Errorf("inetd", "%s: no usable service lines", cfg.File)
	}
	passed, err := sdactivate.Take()
	if err != nil {
		return env.Errorf("inetd", "%v", err)
	}
	srv := NewServer(eng, cfg, env.Log)
	srv.Passed = passed
	if n := srv.Apply(ctx, lines); n == 0 {
		return env.Errorf("inetd", "%s: no line could listen", cfg.File)
	}
	for _, s := range passed {
		if !srv.passedInUse(s) {
			env.Log.Warn("a passed socket serves no line (name it as the line's service, or give the line its port)", "socket", s.String())
		}
	}
	// SIGHUP: the file and the profiles as one; cli tells the service
	// manager RELOADING=1 and READY=1 around it.
	cli.ReloadOnHUP(ctx, eng, srv.reloadStep(ctx, opt))
	if err := sdactivate.Ready(); err != nil {
		env.Log.Warn("cannot tell the service manager we are ready", "err", err)
	}
	<-ctx.Done()
	if err := sdactivate.Stopping(); err != nil {
		env.Log.Warn("cannot tell the service manager we stop", "err", err)
	}
	srv.Stop()
	return 0
}

// Server is a running inetd: a service per listening socket.
type Server struct {
	Engine *funnel.Engine
	Config Config
	Log    *slog.Logger
	// Passed are the sockets a service manager passed (socket
	// activation); a line takes one whose name is its service field or
	// whose port is its port, instead of listening itself.
	Passed []*sdactivate.Socket

	ctx      context.Context
	mu       sync.Mutex
	services map[string]*service
	// children are the running programs by pid, for Stop. A pid leaves
	// under kidsMu in the same step as it is reaped, so Stop never
	// signals a pid the system has given to someone else.
	kidsMu   sync.Mutex
	children map[int]struct{}
	kids     sync.WaitGroup // running programs and their relays
	baseEnv  []string
}

// NewServer makes a server; Apply gives it its lines.
func NewServer(eng *funnel.Engine, cfg Config, log *slog.Logger) *Server {
	return &Server{
		Engine: eng, Config: cfg, Log: log,
		services: map[string]*service{},
		children: map[int]struct{}{},
		baseEnv:  childBaseEnv(),
	}
}

// childBaseEnv is funtun's environment without what is funtun's alone
// (socket activation's variables) or what each child gets afresh.
func childBaseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "LISTEN_PID", k == "LISTEN_FDS", k == "LISTEN_FDNAMES", k == "NOTIFY_SOCKET", k == "PROTO":
			continue
		case strings.HasPrefix(k, "TCPLOCAL"), strings.HasPrefix(k, "TCPREMOTE"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Apply makes lines the served configuration: a line whose listener key
// is already served takes over that socket (no gap, running programs
// untouched); services of lines that went stop and close; new lines
// listen. A line that cannot listen is logged with FILE:LINE and left
// out. It returns how many lines serve.
func (srv *Server) Apply(ctx context.Context, lines []*Line) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.ctx == nil {
		srv.ctx = ctx
	}
	want := map[string]*Line{}
	for _, l := range lines {
		want[l.Key()] = l
	}
	// Close what goes first: a changed line (now wait, or another host)
	// may need the port its old socket holds.
	for key, svc := range srv.services {
		if want[key] == nil {
			svc.stop()
			delete(srv.services, key)
			srv.Log.Info("inetd service stopped", "line", svc.line.Load().Pos(), "service", svc.line.Load().Service, "listen", svc.sock.local.String())
		}
	}
	n := 0
	for _, l := range lines {
		if svc := srv.services[l.Key()]; svc != nil {
			svc.line.Store(l)
			n++
			continue
		}
		svc, err := srv.open(l)
		if err != nil {
			srv.Log.Error("inetd line skipped", "err", fmt.Errorf("%s: %w", l.Pos(), err))
			continue
		}
		srv.services[l.Key()] = svc
		n++
		srv.Log.Info("inetd serving", "line", l.Pos(), "listen", svc.sock.local.String(), "what", describe(l, srv.Config.Limits), "socket", svc.sock.origin())
	}
	return n
}

// reloadStep is inetd's part of a reload: the file must parse without a
// single bad line against the new profiles, or the reload is refused and
// everything stays as it is.
func (srv *Server) reloadStep(ctx context.Context, opt ParseOptions) cli.ReloadStep {
	return func(set *funnel.Set) (func(), error) {
		o := opt
		o.Resolve = func(sel funnel.Selector) (*funnel.Pipeline, error) { return srv.Engine.Catalog.ResolveIn(set, sel) }
		lines, errs := ParseFile(srv.Config.File, o)
		if len(errs) > 0 {
			return nil, fmt.Errorf("inetd config %s (keeping the lines in force): %w", srv.Config.File, errors.Join(errs...))
		}
		if len(lines) == 0 {
			return nil, fmt.Errorf("inetd config %s has no service lines (keeping the lines in force)", srv.Config.File)
		}
		return func() {
			n := srv.Apply(ctx, lines)
			srv.Log.Info("inetd config reloaded", "file", srv.Config.File, "serving", n)
		}, nil
	}
}

// Stop closes every service, then stops the running programs: SIGTERM to
// each one's session, SIGKILL to what is left after StopTimeout.
func (srv *Server) Stop() {
	srv.mu.Lock()
	for key, svc := range srv.services {
		svc.stop()
		delete(srv.services, key)
	}
	srv.mu.Unlock()
	srv.signalChildren(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		srv.kids.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(srv.Config.StopTimeout):
	}
	srv.signalChildren(syscall.SIGKILL)
	<-done
}

func (srv *Server) signalChildren(sig syscall.Signal) {
	srv.kidsMu.Lock()
	defer srv.kidsMu.Unlock()
	for pid := range srv.children {
		// Each child leads a session and group of its own: the
		// signal reaches what it started too.
		unix.Kill(-pid, sig)
	}
}

// Running is the number of programs running.
func (srv *Server) Running() int {
	srv.kidsMu.Lock()
	defer srv.kidsMu.Unlock()
	return len(srv.children)
}

// passedInUse reports whether a service serves passed socket s.
func (srv *Server) passedInUse(s *sdactivate.Socket) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, svc := range srv.services {
		if svc.sock.passed == s {
			return true
		}
	}
	return false
}

// service is one listening socket and the line it serves. The line may
// change on a reload; the socket and the counts of running programs stay.
type service struct {
	srv  *Server
	line atomic.Pointer[Line]
	sock *socket
	gate gate

	quit    chan struct{}
	done    chan struct{}
	stopped atomic.Bool

	warnMu   sync.Mutex
	lastWarn time.Time
	refused  int64
}

func (srv *Server) open(l *Line) (*service, error) {
	sock, err := srv.openSocket(l)
	if err != nil {
		return nil, err
	}
	svc := &service{srv: srv, sock: sock, quit: make(chan struct{}), done: make(chan struct{})}
	svc.line.Store(l)
	if l.Wait {
		// The program reads the socket itself with ordinary blocking
		// calls; funtun only polls it, so blocking mode costs it
		// nothing.
		if err := unix.SetNonblock(sock.fd, false); err != nil {
			sock.close()
			return nil, fmt.Errorf("socket %s: %v", sock.local, err)
		}
		go svc.waitLoop()
	} else {
		go svc.acceptLoop()
	}
	return svc, nil
}

func (svc *service) stop() {
	svc.stopped.Store(true)
	close(svc.quit)
	// A deadline in the past wakes the loop out of its wait. Closing
	// then closes funtun's own descriptor: a passed socket stays open
	// for a line that may want it later.
	svc.sock.setDeadline(time.Unix(1, 0))
	<-svc.done
	svc.sock.close()
}

// refuse logs why a start was refused: the first at once, then at most a
// line a second with the count, so a flood does not flood the log.
func (svc *service) refuse(why refusal, src netip.Addr) {
	svc.warnMu.Lock()
	svc.refused++
	now := time.Now()
	if now.Sub(svc.lastWarn) < time.Second {
		svc.warnMu.Unlock()
		return
	}
	n := svc.refused
	svc.refused = 0
	svc.lastWarn = now
	svc.warnMu.Unlock()
	l := svc.line.Load()
	attrs := []any{"line", l.Pos(), "service", l.Service, "limit", string(why), "refused", n}
	if src.IsValid() {
		attrs = append(attrs, "src", src.String())
	}
	switch why {
	case "max-children":
		attrs = append(attrs, "max_children", svc.srv.Config.Limits.MaxChildren)
	case "max-per-source":
		attrs = append(attrs, "max_per_source", svc.srv.Config.Limits.MaxPerSource)
	case "rate":
		attrs = append(attrs, "per_minute", l.rate(svc.srv.Config.Limits))
	}
	svc.srv.Log.Warn("inetd: connection refused by a limit, closed at once", attrs...)
}

// acceptLoop serves a nowait stream line: accept4(2) on the listener's
// own descriptor, so the accepted socket is born blocking and close-on-exec
// and can go to a program as it is, without the Go poller ever seeing it.
func (svc *service) acceptLoop() {
	defer close(svc.done)
	var pause time.Duration
	for !svc.stopped.Load() {
		var aerr error
		err := svc.sock.rc.Read(func(fd uintptr) bool {
			for !svc.stopped.Load() {
				nfd, sa, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
				switch err {
				case nil:
				case unix.EAGAIN:
					return false
				case unix.EINTR, unix.ECONNABORTED:
					continue
				default:
					aerr = err
					return true
				}
				pause = 0
				svc.handle(nfd, sockaddrPort(sa))
			}
			return true
		})
		if svc.stopped.Load() {
			return
		}
		if err == nil {
			err = aerr
		}
		if err == nil {
			continue
		}
		if !netx.Temporary(err) {
			svc.srv.Log.Error("inetd: accept failed; the line no longer serves", "line", svc.line.Load().Pos(), "err", err)
			return
		}
		// Out of descriptors and the like: pause, doubling, as
		// netx.AcceptLoop does.
		pause = min(max(2*pause, 5*time.Millisecond), time.Second)
		svc.srv.Log.Warn("inetd: accept failed; pausing", "line", svc.line.Load().Pos(), "err", err, "pause", pause)
		select {
		case <-svc.quit:
			return
		case <-time.After(pause):
		}
	}
}

// handle takes one accepted connection: admission, its flow, its program.
func (svc *service) handle(nfd int, remote netip.AddrPort) {
	srv := svc.srv
	l := svc.line.Load()
	src := remote.Addr()
	if why := svc.gate.admit(src, srv.Config.Limits, l.rate(srv.Config.Limits), time.Now()); why != "" {
		unix.Close(nfd)
		svc.refuse(why, src)
		return
	}
	pl, err := srv.Engine.Resolve(l.Selector)
	if err != nil {
		unix.Close(nfd)
		svc.gate.release(src)
		srv.Log.Error("inetd: no profile for the connection", "line", l.Pos(), "err", err)
		return
	}
	local := svc.sock.local
	if local.Addr().IsUnspecified() || local.Addr().Is4In6() {
		if sa, err := unix.Getsockname(nfd); err == nil {
			local = sockaddrPort(sa)
		}
	}
	f := srv.Engine.NewFlow("inetd", funnel.TCP, funnel.Addr{IP: local.Addr(), Port: local.Port()})
	f.Source = net.TCPAddrFromAddrPort(remote)
	r := srv.Engine.Begin(f, pl)
	if !Untouched(pl) {
		srv.kids.Add(1)
		go func() {
			defer srv.kids.Done()
			svc.serveThrough(r, l, nfd, local, remote)
		}()
		return
	}
	// Nothing acts on incoming bytes: the program gets the socket itself.
	_, err = srv.start(l, nfd, ucspiEnv(srv.baseEnv, local, remote), func(pid int, ws unix.WaitStatus) {
		svc.gate.release(src)
		svc.logExit(l, ws, pid)
		f.PID = pid
		r.EndHandedOff()
	})
	unix.Close(nfd)
	if err != nil {
		svc.gate.release(src)
		r.End(fmt.Errorf("%s: starting %s: %w", l.Pos(), l.Path, err))
	}
}

// serveThrough carries a connection through pieces that act on incoming
// bytes (tls, rewrite…): they run as a server on the socket, and the
// program gets the other end of a stream socketpair, so it may half-close
// its output as it would a TCP connection.
func (svc *service) serveThrough(r *funnel.Run, l *Line, nfd int, local, remote netip.AddrPort) {
	srv := svc.srv
	src := remote.Addr()
	conn, err := fdConn(nfd)
	if err != nil {
		svc.gate.release(src)
		r.End(err)
		return
	}
	app, err := r.AcceptStream(srv.ctx, conn)
	if err != nil {
		conn.Close()
		svc.gate.release(src)
		r.End(err)
		return
	}
	// An incoming piece may have learnt the real client (PROXY
	// protocol): the program is told that one.
	if ap := netx.AddrPortOf(r.Flow.Source); ap.IsValid() {
		remote = ap
	}
	if err := srv.ctx.Err(); err != nil {
		// funtun is stopping: Stop has signalled the programs already.
		app.Close()
		svc.gate.release(src)
		r.End(err)
		return
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		app.Close()
		svc.gate.release(src)
		r.End(fmt.Errorf("socketpair: %w", err))
		return
	}
	pid, err := srv.start(l, pair[1], ucspiEnv(srv.baseEnv, local, remote), func(pid int, ws unix.WaitStatus) {
		svc.gate.release(src)
		svc.logExit(l, ws, pid)
	})
	unix.Close(pair[1])
	if err != nil {
		unix.Close(pair[0])
		app.Close()
		svc.gate.release(src)
		r.End(fmt.Errorf("%s: starting %s: %w", l.Pos(), l.Path, err))
		return
	}
	r.Flow.PID = pid
	prog, err := fdConn(pair[0])
	if err != nil {
		app.Close()
		r.End(err)
		return
	}
	srv.kids.Add(1)
	r.Relay(srv.ctx, prog, app, funnel.RelayOptions{Done: func(error) { srv.kids.Done() }})
}

// logExit notes a program that failed; a clean exit says nothing beyond
// the flow's own line.
func (svc *service) logExit(l *Line, ws unix.WaitStatus, pid int) {
	switch {
	case ws.Signaled():
		svc.srv.Log.Warn("inetd: program killed by a signal", "line", l.Pos(), "service", l.Service, "pid", pid, "signal", ws.Signal().String())
	case ws.Exited() && ws.ExitStatus() != 0:
		svc.srv.Log.Info("inetd: program exited with an error", "line", l.Pos(), "service", l.Service, "pid", pid, "status", ws.ExitStatus())
	}
}

// waitLoop serves a wait line: when the socket has something (a datagram,
// a connection to accept), the program gets the socket itself, and funtun
// looks at it again only once the program has exited.
func (svc *service) waitLoop() {
	defer close(svc.done)
	srv := svc.srv
	for !svc.stopped.Load() {
		err := svc.sock.rc.Read(func(fd uintptr) bool { return readable(int(fd)) })
		if svc.stopped.Load() {
			return
		}
		if err != nil {
			srv.Log.Error("inetd: watching the socket failed; the line no longer serves", "line", svc.line.Load().Pos(), "err", err)
			return
		}
		l := svc.line.Load()
		if why := svc.gate.admit(netip.Addr{}, srv.Config.Limits, l.rate(srv.Config.Limits), time.Now()); why != "" {
			svc.refuse(why, netip.Addr{})
			// What made it readable must go, or the loop would spin.
			svc.sock.drop(l.Stream)
			continue
		}
		network := funnel.UDP
		if l.Stream {
			network = funnel.TCP
		}
		f := srv.Engine.NewFlow("inetd", network, funnel.Addr{IP: svc.sock.local.Addr(), Port: svc.sock.local.Port()})
		pl, err := srv.Engine.Resolve(l.Selector)
		if err != nil {
			svc.gate.release(netip.Addr{})
			srv.Log.Error("inetd: no profile for the line", "line", l.Pos(), "err", err)
			svc.sock.drop(l.Stream)
			continue
		}
		r := srv.Engine.Begin(f, pl)
		exited := make(chan struct{})
		_, err = srv.start(l, svc.sock.fd, srv.baseEnv, func(pid int, ws unix.WaitStatus) {
			svc.gate.release(netip.Addr{})
			svc.logExit(l, ws, pid)
			f.PID = pid
			r.EndHandedOff()
			close(exited)
		})
		if err != nil {
			svc.gate.release(netip.Addr{})
			r.End(fmt.Errorf("%s: starting %s: %w", l.Pos(), l.Path, err))
			svc.sock.drop(l.Stream)
			continue
		}
		select {
		case <-exited:
		case <-svc.quit:
			return
		}
	}
}

// readable polls fd without waiting.
func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&(unix.POLLIN|unix.POLLERR|unix.POLLHUP) != 0
}

// ucspiEnv is a child's environment: funtun's, and the UCSPI-TCP
// variables of its connection.
func ucspiEnv(base []string, local, remote netip.AddrPort) []string {
	env := make([]string, len(base), len(base)+5)
	copy(env, base)
	return append(env,
		"PROTO=TCP",
		"TCPLOCALIP="+local.Addr().Unmap().String(),
		"TCPLOCALPORT="+itoa(local.Port()),
		"TCPREMOTEIP="+remote.Addr().Unmap().String(),
		"TCPREMOTEPORT="+itoa(remote.Port()),
	)
}

func itoa(p uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			return string(b[i:])
		}
	}
}

func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// fdConn makes a net.Conn of a socket descriptor the caller gives up.
func fdConn(fd int) (net.Conn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}

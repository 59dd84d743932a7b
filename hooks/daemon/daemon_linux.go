//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/hooks/preload"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
)

// helloWait bounds how long a new connection may take to say HELLO: the
// library sends it at once, so a slower peer is not the library.
const helloWait = 10 * time.Second

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("daemon")
	fs := env.FlagSet(c)
	socket := fs.String("socket", "", "the control socket's `PATH` (default $XDG_RUNTIME_DIR/funtun/daemon.sock); programs find another one through FUNTUN_DAEMON=PATH")
	progFile := fs.String("programs", "", "the programs `FILE` that says which programs go through which profile (default $XDG_CONFIG_HOME/funtun/programs)")
	check := fs.Bool("check", false, "read the profiles and the programs file, report problems and exit (binds and writes nothing)")
	maxProfiles := fs.Int("max-profiles", 256, "how many different profiles and templates the daemon serves at once")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("daemon", "%v", err)
	}
	if sel.Profile != "" || sel.Chain != "" {
		return env.Usagef("daemon", "the daemon takes no %s: the programs file, and the templates programs ask for, choose the profile", sel)
	}
	if len(rest) > 0 {
		return env.Usagef("daemon", "unexpected argument %q", rest[0])
	}
	if *maxProfiles < 1 {
		return env.Usagef("daemon", "--max-profiles must be at least 1")
	}
	file, missingOK := *progFile, false
	if file == "" {
		file, missingOK = defaultProgramsFile(), true
	}

	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("daemon", "%v", err)
	}
	progs, err := loadPrograms(file, missingOK)
	if err == nil {
		err = checkPrograms(eng.Catalog, eng.Catalog.Current(), progs)
	}
	if err != nil {
		return env.Errorf("daemon", "%v", err)
	}
	if *check {
		fmt.Fprintf(env.Stdout, "%s: %d programs; profiles: %s\n", file, len(progs.Entries), strings.Join(eng.Catalog.Current().Names(), " "))
		return 0
	}

	page, err := newGenPage()
	if err != nil {
		return env.Errorf("daemon", "cannot make the reload page: %v", err)
	}
	l, where, err := listener(*socket, env.Log)
	if err != nil {
		return env.Errorf("daemon", "%v", err)
	}
	d := &daemon{
		eng: eng, log: env.Log, uid: uint32(os.Geteuid()), page: page,
		servers: map[funnel.Selector]*preload.Server{}, max: *maxProfiles,
		where: absSocket(l.Addr().String()), progFile: file, progMissingOK: missingOK,
		stamp: profilesStamp(eng.Catalog.Dirs),
	}
	d.progs.Store(progs)
	cli.ReloadOnHUP(ctx, eng, d.reloadStep(file, missingOK))
	env.Log.Info("daemon serving", "socket", where, "programs", file, "entries", len(progs.Entries))
	if err := sdactivate.Ready(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	if err := d.serve(ctx, l); err != nil && ctx.Err() == nil {
		return env.Errorf("daemon", "%v", err)
	}
	return 0
}

// checkPrograms: every profile the programs file names must resolve in set.
func checkPrograms(cat *funnel.Catalog, set *funnel.Set, ps *programs) error {
	var errs []error
	for _, e := range ps.Entries {
		if e.Untouched {
			continue
		}
		if _, err := cat.ResolveIn(set, e.Sel); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %s %s: %v", ps.File, e.Line, e.Pattern, e.Sel, err))
		}
	}
	return errors.Join(errs...)
}

// socketPath is --socket, or the user's own runtime directory's.
func socketPath(flag string) (path string, ownDir bool, err error) {
	if flag != "" {
		return flag, false, nil
	}
	x := os.Getenv("XDG_RUNTIME_DIR")
	if x == "" || !filepath.IsAbs(x) {
		return "", false, errors.New("XDG_RUNTIME_DIR is not set, so there is no per-user directory for the socket " +
			"(a login session sets it, to /run/user/UID): give --socket PATH, and FUNTUN_DAEMON=PATH to the programs")
	}
	return filepath.Join(x, "funtun", "daemon.sock"), true, nil
}

// listener is the socket systemd passed (funtun-daemon.socket), or one of
// our own at the path.
func listener(flag string, log *slog.Logger) (*net.UnixListener, string, error) {
	if l, err := activated(log); l != nil || err != nil {
		if err != nil {
			return nil, "", err
		}
		where := l.Addr().String()
		if fi, err := os.Stat(where); err == nil && fi.Mode().Perm()&0o022 != 0 {
			log.Warn("the socket systemd passed is open to other users (set SocketMode=0600); they are refused all the same", "socket", where, "mode", fi.Mode().Perm().String())
		}
		return l, where + " (from systemd)", nil
	}
	path, ownDir, err := socketPath(flag)
	if err != nil {
		return nil, "", err
	}
	if err := privateDir(filepath.Dir(path), ownDir); err != nil {
		return nil, "", err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, "", fmt.Errorf("%s exists and is not a socket; remove it or give another --socket", path)
		}
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil, "", fmt.Errorf("another funtun daemon already serves %s", path)
		}
		os.Remove(path) // a daemon that died left it
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, "", fmt.Errorf("cannot listen on %s: %v", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, "", fmt.Errorf("cannot make %s private: %v", path, err)
	}
	return l, path, nil
}

// privateDir makes the socket's directory, 0700 — or, for the runtime
// directory's funtun/, makes sure it is ours and private.
func privateDir(dir string, own bool) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if own {
			err = os.Mkdir(dir, 0o700)
		} else {
			err = os.MkdirAll(dir, 0o700)
		}
		if err != nil {
			return fmt.Errorf("cannot make the socket's directory: %v", err)
		}
		return os.Chmod(dir, 0o700) // whatever the umask
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d): it cannot hold your daemon's socket", dir, st.Uid, os.Geteuid())
	}
	if own && fi.Mode().Perm() != 0o700 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// activated takes the control socket from systemd (ListenSequentialPacket=
// in funtun-daemon.socket). The shared sdactivate package serves stream
// and datagram sockets only, and the control protocol is a sequenced
// packet one, so the descriptors are taken here with go-systemd.
func activated(log *slog.Logger) (*net.UnixListener, error) {
	files := activation.Files(true)
	var found *net.UnixListener
	for _, f := range files {
		fd := int(f.Fd())
		typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		listening, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if typ != unix.SOCK_SEQPACKET || listening == 0 || found != nil {
			log.Warn("a socket systemd passed is not served: the daemon takes one listening ListenSequentialPacket= socket", "fd", fd, "name", f.Name())
			f.Close()
			continue
		}
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("the socket systemd passed: %v", err)
		}
		ul, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, fmt.Errorf("the socket systemd passed is not a Unix socket (%s)", l.Addr())
		}
		found = ul
	}
	return found, nil
}

// daemon routes each control connection to the Server of its profile.
type daemon struct {
	eng   *funnel.Engine
	log   *slog.Logger
	uid   uint32
	page  *genPage
	progs atomic.Pointer[programs]

	mu      sync.Mutex
	servers map[funnel.Selector]*preload.Server
	max     int

	// For the launcher front-end (launch_linux.go): the socket the
	// library of a launched program asks, the programs file a reload
	// reads, and what the profiles' files looked like at the last load.
	where         string
	progFile      string
	progMissingOK bool
	stampMu       sync.Mutex
	stamp         string
}

func (d *daemon) reloadStep(file string, missingOK bool) cli.ReloadStep {
	return func(set *funnel.Set) (func(), error) {
		ps, err := loadPrograms(file, missingOK)
		if err != nil {
			return nil, err
		}
		if err := checkPrograms(d.eng.Catalog, set, ps); err != nil {
			return nil, err
		}
		return func() {
			d.progs.Store(ps)
			// The new profiles are in force: what the old ones allowed
			// the library to do on its own ends now.
			d.page.bump()
		}, nil
	}
}

// server is the Server of the profile sel names, made on first use. They
// live as long as the daemon: a program's synthetic addresses are known
// only to the Server that gave them, and its relay listeners stay open.
func (d *daemon) server(sel funnel.Selector) (*preload.Server, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.servers[sel]; ok {
		if _, err := d.eng.Resolve(sel); err != nil {
			return nil, err
		}
		return s, nil
	}
	if len(d.servers) >= d.max {
		return nil, fmt.Errorf("the daemon serves %d profiles and templates already (--max-profiles)", d.max)
	}
	if _, err := d.eng.Resolve(sel); err != nil {
		return nil, err
	}
	s := preload.NewServer(d.eng, sel)
	d.servers[sel] = s
	return s, nil
}

func (d *daemon) serve(ctx context.Context, l *net.UnixListener) error {
	var wg sync.WaitGroup
	err := netx.AcceptLoop(ctx, l, func(c net.Conn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.serveConn(ctx, c.(*net.UnixConn))
		}()
	}, d.log)
	wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (d *daemon) serveConn(ctx context.Context, c *net.UnixConn) {
	cred, err := peerCred(c)
	if err != nil {
		c.Close()
		return
	}
	if cred.Uid != d.uid {
		// The socket is private already; a process that reached it anyway
		// (a loosened mode, a passed descriptor) is still not served.
		d.log.Warn("daemon: refused a connection from another user's process", "pid", cred.Pid, "uid", cred.Uid, "program", programOf(int(cred.Pid)).String())
		c.Close()
		return
	}
	if launch, err := isLaunch(c, helloWait); err == nil && launch {
		d.serveLaunch(ctx, c, cred)
		return
	}
	h, err := preload.ReadHello(c, helloWait)
	var verr preload.WireVersionError
	switch {
	case errors.Is(err, preload.ErrNotHello):
		// A library that knows no HELLO: chosen by the program alone.
		e, ok := d.progs.Load().match(programOf(int(cred.Pid)))
		if !ok || e.Untouched {
			c.Close()
			return
		}
		srv, err := d.server(e.Sel)
		if err != nil {
			d.log.Error("daemon: cannot serve a program", "pid", cred.Pid, "profile", e.Sel.String(), "err", err)
			c.Close()
			return
		}
		srv.ServeConn(ctx, c)
		return
	case errors.As(err, &verr):
		d.log.Warn("daemon: "+verr.Error(), "pid", cred.Pid, "program", programOf(int(cred.Pid)).String())
		preload.AnswerHello(c, preload.HelloAnswer{Errno: unix.EPROTO, Message: verr.Error()})
		c.Close()
		return
	case err != nil:
		d.log.Debug("daemon: dropped a connection that said no HELLO", "pid", cred.Pid, "err", err)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			preload.AnswerHello(c, preload.HelloAnswer{Errno: unix.EPROTO, Message: err.Error()})
		}
		c.Close()
		return
	}

	var sel funnel.Selector
	chosen := ""
	if h.HasTemplate {
		if sel, err = templateSelector(h.Template); err != nil {
			d.refuse(c, cred, unix.EINVAL, err.Error())
			return
		}
	} else {
		id := programOf(int(cred.Pid))
		e, ok := d.progs.Load().match(id)
		if !ok || e.Untouched {
			d.log.Debug("daemon: leaving a program alone", "pid", cred.Pid, "program", id.String())
			preload.AnswerHello(c, preload.HelloAnswer{Untouched: true})
			c.Close()
			return
		}
		sel = e.Sel
		chosen = preload.Template(sel)
		d.log.Debug("daemon: funnelling a program", "pid", cred.Pid, "program", id.String(), "profile", sel.String())
	}
	srv, err := d.server(sel)
	if err != nil {
		msg := err.Error()
		if h.HasTemplate {
			msg = fmt.Sprintf("unknown template %q: %v", h.Template, err)
		}
		d.refuse(c, cred, unix.ENOENT, msg)
		return
	}
	if err := preload.AnswerHello(c, preload.HelloAnswer{Page: d.page.ro, Chosen: chosen}); err != nil {
		c.Close()
		return
	}
	srv.ServeConn(ctx, c)
}

func (d *daemon) refuse(c *net.UnixConn, cred *unix.Ucred, errno unix.Errno, msg string) {
	d.log.Info("daemon: refused a template", "pid", cred.Pid, "program", programOf(int(cred.Pid)).String(), "err", msg)
	preload.AnswerHello(c, preload.HelloAnswer{Errno: errno, Message: msg})
	c.Close()
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// programOf says which program a process runs: its executable and argv[0].
func programOf(pid int) programID {
	var id programID
	dir := "/proc/" + strconv.Itoa(pid)
	if exe, err := os.Readlink(dir + "/exe"); err == nil {
		id.Exe = strings.TrimSuffix(exe, " (deleted)")
	}
	if cmd, err := os.ReadFile(dir + "/cmdline"); err == nil {
		if i := strings.IndexByte(string(cmd), 0); i >= 0 {
			cmd = cmd[:i]
		}
		id.Argv0 = string(cmd)
	}
	return id
}

func (p programID) String() string {
	if p.Argv0 != "" && filepath.Base(p.Argv0) != filepath.Base(p.Exe) {
		return p.Exe + " (" + p.Argv0 + ")"
	}
	if p.Exe == "" {
		return p.Argv0
	}
	return p.Exe
}

// absSocket is the socket's path as a program elsewhere names it.
func absSocket(p string) string {
	if strings.HasPrefix(p, "@") || filepath.IsAbs(p) {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

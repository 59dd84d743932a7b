//go:build linux

package activate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/sdactivate"
	"golang.org/x/sys/unix"
)

func init() {
	cli.Register(&cli.Command{
		Name:    "activate",
		Summary: "keep a service's listening sockets and feed the program its own, through a profile",
		Usage:   usage,
		Run:     run,
		Daemon:  true,
	})
}

// listenSpec is one --listen and the --fdname after it.
type listenSpec struct {
	addr, name string
}

type listenFlags struct{ specs []listenSpec }

func (l *listenFlags) String() string { return "" }
func (l *listenFlags) Set(v string) error {
	if v == "" {
		return errors.New("empty address")
	}
	l.specs = append(l.specs, listenSpec{addr: v})
	return nil
}

type fdnameFlag struct{ l *listenFlags }

func (n fdnameFlag) String() string { return "" }
func (n fdnameFlag) Set(v string) error {
	if len(n.l.specs) == 0 {
		return errors.New("--fdname names the --listen before it: give --listen first")
	}
	if err := checkFDName(v); err != nil {
		return err
	}
	last := &n.l.specs[len(n.l.specs)-1]
	if last.name != "" {
		return fmt.Errorf("--listen %s has a name already (%s): one --fdname after each --listen", last.addr, last.name)
	}
	last.name = v
	return nil
}

// checkFDName applies systemd's rule for FileDescriptorName=: up to 255
// printable ASCII characters, no colon (LISTEN_FDNAMES separates with it).
func checkFDName(v string) error {
	if v == "" || len(v) > 255 {
		return fmt.Errorf("name %q: want 1 to 255 characters", v)
	}
	for _, r := range v {
		if r <= ' ' || r > '~' || r == ':' {
			return fmt.Errorf("name %q: only printable ASCII without spaces and colons (LISTEN_FDNAMES separates names with colons)", v)
		}
	}
	return nil
}

type activateArgs struct {
	sel     funnel.Selector
	listens []listenSpec
	// proxyHeader is the PROXY protocol version sent to the program, 0
	// for none.
	proxyHeader byte
	program     string
	args        []string
}

// parse reads `activate`'s arguments. done is true when --help was shown.
func parse(env *cli.Env, args []string) (aa activateArgs, done bool, err error) {
	c, _ := cli.Lookup("activate")
	fs := env.FlagSet(c)
	var lf listenFlags
	fs.Var(&lf, "listen", "listen on `ADDR` (HOST:PORT, tcp:HOST:PORT, unix:PATH, udp:HOST:PORT) or take the passed socket fd:NAME / fd:N; repeatable; default: every passed socket")
	proxy := fs.String("proxy-protocol", "", "send the program a PROXY protocol header (`1` text, 2 binary) with the real client's address before each relayed connection")
	fs.Var(fdnameFlag{&lf}, "fdname", "the program's LISTEN_FDNAMES `NAME` for the --listen before it (default: the passed socket's name, else \"unknown\")")

	// The program's words are not funtun's: cut them off before the flag
	// package, which would read an option of the program as ours.
	var head []string
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if i+1 >= len(args) {
				return aa, false, errors.New("name a program after --")
			}
			aa.program, aa.args = args[i+1], args[i+2:]
			break
		}
		if strings.HasPrefix(a, "profile=") || strings.HasPrefix(a, "chain=") {
			head = append(head, a)
			continue
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			head = append(head, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			if f := fs.Lookup(name); f != nil && !isBoolFlag(f.Value) && i+1 < len(args) {
				i++
				head = append(head, args[i])
			}
			continue
		}
		aa.program, aa.args = a, args[i+1:]
		break
	}
	sel, rest, done, err := env.ParseFlags(fs, head)
	if done || err != nil {
		return aa, done, err
	}
	if len(rest) > 0 {
		return aa, false, fmt.Errorf("unexpected %q", rest[0])
	}
	if aa.program == "" {
		return aa, false, errors.New("name a program to start, e.g. funtun activate chain='tls cert=c.pem key=k.pem' python3 server.py")
	}
	switch *proxy {
	case "":
	case "1", "v1":
		aa.proxyHeader = 1
	case "2", "v2":
		aa.proxyHeader = 2
	default:
		return aa, false, fmt.Errorf("--proxy-protocol %q: want 1 (text) or 2 (binary)", *proxy)
	}
	aa.sel, aa.listens = sel, lf.specs
	return aa, false, nil
}

func isBoolFlag(v any) bool {
	b, ok := v.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	aa, done, err := parse(env, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("activate", "%v", err)
	}
	path, err := exec.LookPath(aa.program)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fail(env, 126, "%s: permission denied", aa.program)
		}
		return fail(env, 127, "%s: command not found", aa.program)
	}
	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("activate", "%v", err)
	}
	pl, err := eng.Resolve(aa.sel)
	if err != nil {
		return env.Errorf("activate", "%v", err)
	}
	socks, err := gatherSockets(aa.listens)
	if err != nil {
		return env.Errorf("activate", "%v", err)
	}
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	for _, l := range aa.listens {
		if path, ok := strings.CutPrefix(l.addr, "unix:"); ok {
			// Ours: gone when we are, so that the next start can bind
			// it again (see listenOwn).
			defer os.Remove(path)
		}
	}
	feeder := &Feeder{Engine: eng, Selector: aa.sel, Hook: "activate", Log: env.Log, ProxyHeader: aa.proxyHeader}
	plan, err := feeder.Prepare(socks, pl)
	if err != nil {
		return env.Errorf("activate", "%v", err)
	}
	if aa.proxyHeader != 0 && plan.HandsOver() {
		return env.Errorf("activate", "--proxy-protocol: profile %s leaves incoming flows alone, so the program gets the real sockets and sees its clients itself: no header to send (drop the option, or use a profile that acts on incoming streams)", pl.Name)
	}
	defer plan.Close()
	for i, s := range socks {
		if plan.HandsOver() {
			env.Log.Info("activate: handing the socket to the program (the profile leaves incoming flows alone)", "socket", s.String(), "profile", pl.Name)
		} else {
			env.Log.Info("activate: feeding the program", "socket", s.String(), "program_side", plan.ProgramSide(i).String(), "profile", pl.Name)
		}
	}
	return supervise(ctx, env, eng, plan, path, append([]string{aa.program}, aa.args...), func() {
		if plan.HandsOver() {
			socks = nil // Started closed them: they are the program's
		}
	})
}

func fail(env *cli.Env, code int, format string, a ...any) int {
	fmt.Fprintf(env.Stderr, "funtun activate: %s\n", fmt.Sprintf(format, a...))
	return code
}

// gatherSockets opens or picks each --listen; without any, it takes every
// socket the service manager passed. On error nothing is left open.
func gatherSockets(listens []listenSpec) (socks []*sdactivate.Socket, err error) {
	passed, takeErr := sdactivate.Take()
	defer func() {
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			socks = nil
		}
		// Passed sockets no --listen chose would sit unused: close them
		// (the service manager keeps its own).
		for _, p := range passed {
			used := false
			for _, s := range socks {
				used = used || s == p
			}
			if !used {
				p.Close()
			}
		}
	}()
	if takeErr != nil {
		return nil, takeErr
	}
	if len(listens) == 0 {
		if len(passed) == 0 {
			return nil, errors.New("no sockets: none were passed (LISTEN_FDS is unset or meant for another process) and no --listen was given; start funtun from a .socket unit or systemd-socket-activate, or give --listen ADDR")
		}
		return append([]*sdactivate.Socket(nil), passed...), nil
	}
	seen := map[*sdactivate.Socket]bool{}
	for _, l := range listens {
		picked, ok, err := sdactivate.PickAll(l.addr)
		if err != nil {
			return socks, err
		}
		if ok {
			for _, s := range picked {
				if seen[s] {
					return socks, fmt.Errorf("--listen %s: %s is chosen twice", l.addr, s)
				}
				seen[s] = true
				if l.name != "" {
					s.Name = l.name
				}
				socks = append(socks, s)
			}
			continue
		}
		s, err := listenOwn(l)
		if err != nil {
			return socks, err
		}
		socks = append(socks, s)
	}
	return socks, nil
}

// listenOwn opens a --listen address of funtun's own.
func listenOwn(l listenSpec) (*sdactivate.Socket, error) {
	network, addr := "tcp", l.addr
	for _, p := range []string{"tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "unix"} {
		if rest, ok := strings.CutPrefix(l.addr, p+":"); ok {
			network, addr = p, rest
			break
		}
	}
	name := l.name
	if name == "" {
		name = "unknown" // what sd_listen_fds_with_names() reports for an unnamed socket
	}
	s := &sdactivate.Socket{Name: name}
	var err error
	if strings.HasPrefix(network, "udp") {
		s.Packet, err = net.ListenPacket(network, addr)
	} else {
		s.Listener, err = net.Listen(network, addr)
	}
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			err = op.Err
		}
		return nil, fmt.Errorf("--listen %s: cannot listen: %v", l.addr, err)
	}
	if s.Listener != nil {
		if ul, ok := s.Listener.(*net.UnixListener); ok {
			// A handed-over socket is closed here as soon as the
			// program has it, and must keep its path: run removes it
			// when the program has exited.
			ul.SetUnlinkOnClose(false)
		}
		s.File, err = dupFile(s.Listener.(syscall.Conn))
	} else {
		s.File, err = dupFile(s.Packet.(syscall.Conn))
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("--listen %s: %v", l.addr, err)
	}
	s.FD = int(s.File.Fd())
	return s, nil
}

// dupFile is a descriptor for the program that shares the socket with c.
// Not File(): it puts the socket into blocking mode, and our accept loop
// would then block in the kernel where closing the listener cannot end it.
func dupFile(c syscall.Conn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	return os.NewFile(uintptr(fd), "listen"), nil
}

// forwarded are the signals the program gets from us. SIGINT and SIGQUIT
// typed at a terminal reach the program (our process group) by
// themselves; they are passed on only when they cannot have.
var forwarded = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// supervise starts the program with the plan's sockets, feeds them until
// it exits, passes signals on, and returns its exit status (128+N for a
// signal N).
func supervise(ctx context.Context, env *cli.Env, eng *funnel.Engine, plan *Plan, path string, argv []string, started func()) int {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)

	exe, stepArgs := StepArgs(path, argv)
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       stepArgs,
		Env:        append(os.Environ(), plan.Env()...),
		ExtraFiles: plan.Files(),
		Stdin:      os.Stdin,
		Stdout:     env.Stdout,
		Stderr:     env.Stderr,
		// Output the program's own children keep open after it exits
		// must not hold us.
		WaitDelay: time.Second,
		// A funtun that is killed outright (SIGKILL, the OOM killer)
		// cannot pass a signal on: the kernel does, so that the program
		// does not serve on without its funnel.
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM},
	}
	if err := cmd.Start(); err != nil {
		return fail(env, 126, "cannot start %s: %v", path, err)
	}
	plan.Started()
	started()

	// The feeding lives as long as the program, whatever signals we get:
	// they are the program's to act on.
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan struct{})
	go func() {
		plan.Serve(fctx)
		close(served)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var werr error
wait:
	for {
		select {
		case sig := <-sigs:
			s := sig.(syscall.Signal)
			if (s == syscall.SIGINT || s == syscall.SIGQUIT) && terminalForeground() {
				continue
			}
			if s == syscall.SIGHUP && !plan.HandsOver() {
				// Relayed flows pick the profile up anew: a reload
				// applies to the next connection. (Not cli.ReloadOnHUP:
				// its sd_notify messages would speak for the program.)
				cli.Reload(eng)
			}
			cmd.Process.Signal(s)
		case werr = <-exited:
			break wait
		}
	}
	cancel()
	<-served
	st := cmd.ProcessState
	if st == nil {
		return fail(env, 1, "lost track of %s: %v", path, werr)
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// terminalForeground: our process group is the foreground job of our
// terminal, so a key typed there signals the program too.
func terminalForeground() bool {
	pgrp, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

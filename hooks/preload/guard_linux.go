//go:build linux

package preload

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"github.com/funtun/funtun/funnel"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// guard=netns runs the program in a network namespace of its own that has
// only loopback, so that a call the library does not hook (a raw
// syscall(SYS_connect), a static helper, a runtime of its own) has nowhere
// to go. The funnel stays in the host's namespace and carries every flow
// out by relay: the program's sockets are connected to loopback sockets
// that live in the program's namespace (the only ones it can reach) but
// are read and written by the funnel.
//
// Those sockets must be made inside the namespace, and a process can make
// a socket only in the namespace of the thread that calls socket(2). The
// funnel cannot move a thread there: joining a network namespace needs
// CAP_SYS_ADMIN over the namespace *and* in the joiner's own user
// namespace, which an ordinary user lacks, and a multithreaded process
// cannot join the user namespace that would grant it. So a small socket
// maker (funtun again) lives in the program's namespaces and hands
// sockets back over a socketpair: the funnel asks for a socket, binds and
// listens on it itself.
//
// The program starts through a stage (funtun again, like the activate
// step): started in the new namespaces, it brings loopback up, starts the
// socket maker, and execs the program, which keeps the stage's pid, so the
// launcher supervises the program as without the guard.

const (
	guardStageArg = "__funtun-guard-stage"
	guardMakerArg = "__funtun-guard-sockets"
)

func init() {
	// Before main and every command: these steps do nothing else.
	if len(os.Args) >= 2 {
		switch os.Args[1] {
		case guardStageArg:
			os.Exit(guardStage(os.Args[2:]))
		case guardMakerArg:
			os.Exit(serveSockets(os.NewFile(3, "funtun-guard")))
		}
	}
}

// netnsGuard is the launcher's side: the socketpair to the socket maker.
type netnsGuard struct {
	mu     sync.Mutex
	conn   *net.UnixConn
	theirs *os.File // the maker's end, until the stage has it
	err    error    // set once the maker is gone
}

func newNetnsGuard() (*netnsGuard, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("guard=netns: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "funtun-guard")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, fmt.Errorf("guard=netns: %w", err)
	}
	return &netnsGuard{conn: c.(*net.UnixConn), theirs: os.NewFile(uintptr(fds[1]), "funtun-guard")}, nil
}

// wrap makes attr start the program through the stage, in new network
// (and, for an ordinary user, user) namespaces; the returned exe and args
// replace the program's.
func (g *netnsGuard) wrap(exe string, args []string, attr *os.ProcAttr) (string, []string) {
	fd := len(attr.Files)
	attr.Files = append(attr.Files, g.theirs)
	sys := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if uid, gid := os.Getuid(), os.Getgid(); uid != 0 {
		// The program keeps its own uid and gid inside (mapped to
		// themselves) and gains no privilege over the host. The stage
		// needs CAP_NET_ADMIN in the new namespace to bring loopback up:
		// an exec as non-root keeps only ambient capabilities, and the
		// stage drops them before it starts anything.
		sys.Cloneflags |= syscall.CLONE_NEWUSER
		sys.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		sys.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		sys.GidMappingsEnableSetgroups = false
		sys.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN}
	}
	attr.Sys = sys
	return "/proc/self/exe", append([]string{"funtun", guardStageArg, strconv.Itoa(fd), exe}, args...)
}

// started is called once the stage runs (or failed to start): the
// maker's end is the stage's now.
func (g *netnsGuard) started() {
	if g.theirs != nil {
		g.theirs.Close()
		g.theirs = nil
	}
}

// startError explains why the program's namespaces could not be made.
func (g *netnsGuard) startError(err error) error {
	hint := ""
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) {
		hint = " (this system does not let an ordinary user make user namespaces: see sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns)"
	}
	return fmt.Errorf("guard=netns: cannot make the program's network namespace: %v%s", errors.Unwrap(err), hint)
}

func (g *netnsGuard) close() {
	g.started()
	g.conn.Close()
}

// socket asks the maker for a socket in the program's namespace.
func (g *netnsGuard) socket(family, sotype int) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return -1, g.err
	}
	var req [8]byte
	binary.LittleEndian.PutUint32(req[0:], uint32(family))
	binary.LittleEndian.PutUint32(req[4:], uint32(sotype))
	fail := func(err error) (int, error) {
		g.err = fmt.Errorf("guard=netns: the socket maker in the program's namespace is gone: %w", err)
		return -1, g.err
	}
	if _, err := g.conn.Write(req[:]); err != nil {
		return fail(err)
	}
	var resp [4]byte
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := g.conn.ReadMsgUnix(resp[:], oob)
	if err != nil {
		return fail(err)
	}
	if n == 0 {
		return fail(errors.New("end of file"))
	}
	fd := -1
	if oobn > 0 {
		fd = takeFD(oob[:oobn])
	}
	if errno := unix.Errno(binary.LittleEndian.Uint32(resp[:])); errno != 0 || fd < 0 {
		if fd >= 0 {
			unix.Close(fd)
		}
		if errno == 0 {
			errno = unix.EIO
		}
		return -1, fmt.Errorf("guard=netns: socket in the program's namespace: %w", errno)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// bound is a socket of the program's namespace bound to ip and a free port.
func (g *netnsGuard) bound(sotype int, ip net.IP) (*os.File, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{})
	if ip4 := ip.To4(); ip4 != nil {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte(ip4)}
	} else {
		sa.(*unix.SockaddrInet6).Addr = [16]byte(ip.To16())
	}
	fd, err := g.socket(family, sotype)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if sotype == unix.SOCK_STREAM {
		if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	return os.NewFile(uintptr(fd), "guarded"), nil
}

func (g *netnsGuard) listenTCP(network string, ip net.IP) (*net.TCPListener, error) {
	f, err := g.bound(unix.SOCK_STREAM, ip)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

func (g *netnsGuard) listenUDP(network string, ip net.IP) (*net.UDPConn, error) {
	f, err := g.bound(unix.SOCK_DGRAM, ip)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// listenLoopbackTCP is a listener the program's sockets can reach: in its
// namespace under the guard, else on the host's loopback.
func (s *Server) listenLoopbackTCP(network string, ip net.IP) (*net.TCPListener, error) {
	if s.guard != nil {
		return s.guard.listenTCP(network, ip)
	}
	return net.ListenTCP(network, &net.TCPAddr{IP: ip})
}

// listenLoopbackUDP is listenLoopbackTCP for datagrams.
func (s *Server) listenLoopbackUDP(network string, ip net.IP) (*net.UDPConn, error) {
	if s.guard != nil {
		return s.guard.listenUDP(network, ip)
	}
	return net.ListenUDP(network, &net.UDPAddr{IP: ip})
}

// guardStage runs in the program's new namespaces: loopback up, the
// socket maker started, then exec the program (args: the maker's end of
// the socketpair, the program's path, its argv). Anything that fails
// stops the program from starting: it must never run unguarded.
func guardStage(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "funtun: guard=netns: "+format+"\nfuntun: refusing to run the program without the guard\n", a...)
		return 126
	}
	if len(args) < 3 {
		return fail("the stage needs its socket, the program and its argv")
	}
	makerFD, err := strconv.Atoi(args[0])
	if err != nil {
		return fail("bad descriptor %q", args[0])
	}
	path, argv := args[1], args[2:]
	// Capabilities belong to a thread: the one that drops them must be
	// the one that starts the maker and execs the program.
	runtime.LockOSThread()
	if err := setUpNamespace(); err != nil {
		hint := ""
		if errors.Is(err, unix.EPERM) {
			hint = " (a security policy, e.g. kernel.apparmor_restrict_unprivileged_userns, denies capabilities in unprivileged user namespaces)"
		}
		return fail("cannot bring up loopback in the program's network namespace: %v%s", err, hint)
	}
	if err := dropInheritedCaps(); err != nil {
		return fail("cannot drop the stage's capabilities: %v", err)
	}
	maker := os.NewFile(uintptr(makerFD), "funtun-guard")
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("%v", err)
	}
	// The maker belongs to the launcher, not to the program: CLONE_PARENT
	// makes it the launcher's child, so the program never sees a child it
	// did not start; its own process group keeps the terminal's Ctrl-C
	// and Ctrl-Z, meant for the program, away from it.
	proc, err := os.StartProcess("/proc/self/exe", []string{"funtun", guardMakerArg}, &os.ProcAttr{
		// Not the program's environment: no LD_PRELOAD in the maker.
		Env:   []string{},
		Files: []*os.File{devnull, devnull, os.Stderr, maker},
		Sys:   &syscall.SysProcAttr{Cloneflags: syscall.CLONE_PARENT, Setpgid: true},
	})
	if err != nil {
		return fail("cannot start the socket maker: %v", err)
	}
	proc.Release()
	devnull.Close()
	maker.Close()
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "funtun: cannot start %s: %v\n", path, err)
	if errors.Is(err, os.ErrNotExist) {
		return 127
	}
	return 126
}

// dropInheritedCaps clears what the launcher raised for the stage (the
// ambient and inheritable CAP_NET_ADMIN), so that neither the maker nor
// the program keeps it across exec.
func dropInheritedCaps() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	if data[0].Inheritable == 0 && data[1].Inheritable == 0 {
		return nil
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	return unix.Capset(&hdr, &data[0])
}

// The guard's one address besides loopback: link-local, on one end of a
// veth pair that stays inside the namespace, with no route to anywhere.
// Some programs look for a configured address that is not loopback
// before they resolve a name at all (aria2c, like AI_ADDRCONFIG) and
// would give up in a namespace with loopback alone.
const (
	guardLink = "funtun0"
	guardAddr = "169.254.0.1/32"
)

// setUpNamespace brings loopback up, as `ip link set lo up` does, and
// adds the guard's address where the kernel has veth (best effort: the
// guard holds without it).
func setUpNamespace() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: guardLink}, PeerName: guardLink + "-peer"}
	if netlink.LinkAdd(veth) != nil {
		return nil
	}
	addr, err := netlink.ParseAddr(guardAddr)
	if err == nil && netlink.AddrAdd(veth, addr) == nil {
		if peer, err := netlink.LinkByName(veth.PeerName); err == nil {
			netlink.LinkSetUp(peer)
		}
		netlink.LinkSetUp(veth)
	}
	return nil
}

// serveSockets is the socket maker: it answers each request (family and
// type) with a new socket of the namespace it lives in, until the
// launcher hangs up.
func serveSockets(conn *os.File) int {
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU)
	fd := int(conn.Fd())
	var req [8]byte
	for {
		n, err := unix.Read(fd, req[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0
		}
		var resp [4]byte
		if n != len(req) {
			binary.LittleEndian.PutUint32(resp[:], uint32(unix.EPROTO))
			unix.Write(fd, resp[:])
			continue
		}
		family := int(binary.LittleEndian.Uint32(req[0:]))
		sotype := int(binary.LittleEndian.Uint32(req[4:]))
		var sock int
		switch {
		case family != unix.AF_INET && family != unix.AF_INET6:
			err = unix.EAFNOSUPPORT
		case sotype != unix.SOCK_STREAM && sotype != unix.SOCK_DGRAM:
			err = unix.EPROTOTYPE
		default:
			sock, err = unix.Socket(family, sotype|unix.SOCK_CLOEXEC, 0)
		}
		if err != nil {
			errno, _ := err.(unix.Errno)
			if errno == 0 {
				errno = unix.EIO
			}
			binary.LittleEndian.PutUint32(resp[:], uint32(errno))
			unix.Write(fd, resp[:])
			continue
		}
		err = unix.Sendmsg(fd, resp[:], unix.UnixRights(sock), nil, 0)
		unix.Close(sock)
		if err != nil {
			return 0
		}
	}
}

// takeProfileOptions fills in what the command line left to the profile:
// only the profile the launcher runs counts, not those it routes to.
func (la *launchArgs) takeProfileOptions(pl *funnel.Pipeline) {
	if la.guard == "" {
		la.guard, _ = pl.Option(optionGuard)
	}
	if la.ioUring == "" {
		la.ioUring, _ = pl.Option(optionIOUring)
	}
}

//go:build linux

// Package preload is the funnel's side of libfuntun.so, the LD_PRELOAD
// library, and the launcher `funtun [profile=NAME] PROGRAM [ARGS…]` that
// starts a program with the library and a private control socket.
//
// The library passes the program's own sockets here (SCM_RIGHTS). For an
// outgoing stream the profile decides: when no piece touches the bytes the
// terminal piece hands the destination back (funnel.Handoff) and the
// program's socket is connected straight to it — no relay at all;
// otherwise the socket is connected to a loopback listener of ours and the
// flow is relayed through the pieces. Names resolve here too: the program
// gets synthetic addresses that map back to names (see synth.go).
package preload

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Server answers the library's requests on the control socket.
type Server struct {
	Engine   *funnel.Engine
	Selector funnel.Selector
	Log      *slog.Logger

	names   *synthTable
	inbound inboundTable
	udp     udpTable
	udpIn   udpInTable // sockets the profile receives datagrams for (inbound_udp.go)
	hubs    relayHubs
	// guard, under guard=netns, makes the loopback sockets that the
	// program's sockets reach inside its own network namespace.
	guard *netnsGuard
	uid   int
	pid   int

	usersMu sync.Mutex
	users   map[uint32]string

	connsMu sync.Mutex
	conns   map[*net.UnixConn]bool
	// drained, while waitIdle waits, is closed when the last control
	// connection ends.
	drained chan struct{}

	// connectRequests counts CONNECT round trips: the plain-direct fast
	// path in the library shows as connections that never add to it.
	connectRequests atomic.Int64
}

// NewServer makes a server whose flows go through the profile sel names.
func NewServer(e *funnel.Engine, sel funnel.Selector) *Server {
	s := &Server{
		Engine:   e,
		Selector: sel,
		Log:      e.Log,
		names:    newSynthTable(),
		uid:      os.Geteuid(),
		pid:      os.Getpid(),
		users:    map[uint32]string{},
		conns:    map[*net.UnixConn]bool{},
		hubs:     relayHubs{log: e.Log},
		inbound: inboundTable{
			pending:   map[netip.AddrPort]acceptedInfo{},
			listeners: map[netip.AddrPort]*publicListener{},
		},
	}
	s.hubs.listen = s.listenLoopbackTCP
	return s
}

// Listen makes the control socket at path. The socket itself is open to
// all (0666) so that a program that drops privileges keeps its funnel;
// the directory it lives in is the launcher's private one, and every
// connection is checked (see authorized).
func (s *Server) Listen(path string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve answers on l until ctx ends; then the control connections close
// too, and hooked programs fail closed from then on. A listener closed by
// the caller ends it without an error.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	context.AfterFunc(ctx, s.closeConns)
	err := netx.AcceptLoop(ctx, l, func(c net.Conn) {
		uc := c.(*net.UnixConn)
		s.connsMu.Lock()
		if ctx.Err() != nil {
			s.connsMu.Unlock()
			uc.Close()
			return
		}
		s.conns[uc] = true
		s.connsMu.Unlock()
		go func() {
			s.serveConn(ctx, uc)
			s.dropConn(uc)
		}()
	}, s.Log)
	if ctx.Err() != nil {
		// Once Serve returns, no request is answered.
		s.closeConns()
		return nil
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	s.Log.Warn("preload: control socket", "err", err)
	return err
}

// ServeConn answers the requests of one control connection that the caller
// accepted and handed over (the per-user daemon, which chooses the Server
// by the program), until the program hangs up or ctx ends. It checks the
// peer as Serve does.
func (s *Server) ServeConn(ctx context.Context, c *net.UnixConn) {
	s.connsMu.Lock()
	s.conns[c] = true
	s.connsMu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	s.serveConn(ctx, c)
	s.dropConn(c)
}

func (s *Server) dropConn(c *net.UnixConn) {
	s.connsMu.Lock()
	delete(s.conns, c)
	if len(s.conns) == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.connsMu.Unlock()
}

// waitIdle waits, up to d, until no control connection is open: reports a
// program sent just before it exited (a failed fast-path connect) are
// read and logged before the launcher exits. A process the program left
// running keeps its connection, and the wait its bound.
//
// It wakes when the last connection ends rather than polling: the
// launcher exits with the program, and a poll's period would be added to
// every run of a program that used the network.
func (s *Server) waitIdle(d time.Duration) {
	s.connsMu.Lock()
	if len(s.conns) == 0 {
		s.connsMu.Unlock()
		return
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	drained := s.drained
	s.connsMu.Unlock()
	bound := time.NewTimer(d)
	defer bound.Stop()
	select {
	case <-drained:
	case <-bound.C:
	}
}

func (s *Server) closeConns() {
	s.connsMu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.connsMu.Unlock()
}

// peer is the process on the other end of a control connection.
type peer struct {
	pid  int
	uid  uint32
	user string
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	err = rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = cerr
	}
	return cred, err
}

// authorized: the same user as the funnel, or a process the funnel's own
// program started (a server that dropped privileges). Others are refused
// even if they found the socket.
func (s *Server) authorized(cred *unix.Ucred) bool {
	if int(cred.Uid) == s.uid {
		return true
	}
	return isDescendant(int(cred.Pid), s.pid)
}

func isDescendant(pid, ancestor int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		// The command name may hold spaces and parentheses: skip past its ')'.
		s := string(data)
		j := strings.LastIndexByte(s, ')')
		if j < 0 {
			return false
		}
		f := strings.Fields(s[j+1:])
		if len(f) < 2 {
			return false
		}
		ppid, err := strconv.Atoi(f[1])
		if err != nil {
			return false
		}
		if ppid == ancestor {
			return true
		}
		pid = ppid
	}
	return false
}

func (s *Server) userName(uid uint32) string {
	s.usersMu.Lock()
	defer s.usersMu.Unlock()
	if n, ok := s.users[uid]; ok {
		return n
	}
	n := strconv.Itoa(int(uid))
	if u, err := user.LookupId(n); err == nil {
		n = u.Username
	}
	s.users[uid] = n
	return n
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	cred, err := peerCred(c)
	if err != nil || !s.authorized(cred) {
		if err == nil {
			s.Log.Warn("preload: refused a control connection from another user", "pid", cred.Pid, "uid", cred.Uid)
		}
		return
	}
	p := &peer{pid: int(cred.Pid), uid: cred.Uid, user: s.userName(cred.Uid)}
	buf := make([]byte, reqSize+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		fd := -1
		if oobn > 0 {
			fd = takeFD(oob[:oobn])
		}
		var resp response
		req, ok := decodeRequest(buf[:n])
		if ok && oneWay(req.Op) {
			// One-way: the library does not wait for an answer, and one
			// written now would be read as the answer to its next request.
			if fd >= 0 {
				unix.Close(fd)
			}
			if req.Version == wireVersion {
				s.report(p, req)
			}
			continue
		}
		switch {
		case !ok || flags&unix.MSG_TRUNC != 0:
			resp.setErr(int32(unix.EPROTO))
		case req.Version != wireVersion:
			s.Log.Warn("preload: the library speaks another protocol version; rebuild libfuntun.so with this funtun", "library", req.Version, "funnel", wireVersion)
			resp.setErr(int32(unix.EPROTO))
		default:
			s.handle(ctx, p, req, fd, &resp)
			fd = -1 // handle owns it
		}
		if fd >= 0 {
			unix.Close(fd)
		}
		if _, err := c.Write(resp[:]); err != nil {
			return
		}
	}
}

// takeFD returns the first descriptor passed and closes any others.
func takeFD(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	fd := -1
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, x := range fds {
			if fd < 0 {
				fd = x
			} else {
				unix.Close(x)
			}
		}
	}
	return fd
}

func (s *Server) handle(ctx context.Context, p *peer, req request, fd int, resp *response) {
	needFD := req.Op == opConnect || req.Op == opListen || req.Op == opUDPAssoc || req.Op == opUDPBind
	if needFD && fd < 0 {
		resp.setErr(int32(unix.EBADF))
		return
	}
	if !needFD && fd >= 0 {
		unix.Close(fd)
	}
	switch req.Op {
	case opConnect:
		s.connectRequests.Add(1)
		errno, plain := s.connect(ctx, p, req, fd)
		resp.setErr(int32(errno))
		// Under the guard the library cannot connect anything itself:
		// its namespace has loopback only.
		if plain && s.guard == nil {
			var fl uint32 = connectPlainDirect
			if s.Log.Enabled(ctx, slog.LevelInfo) {
				// Successful flows are logged (--debug): the library is to
				// report those it connects itself.
				fl |= connectLogFast
			}
			resp.setFlags(fl)
		}
	case opResolve:
		s.resolve(req, resp)
	case opReverse:
		s.reverse(req, resp)
	case opListen:
		s.listen(ctx, p, req, fd, resp)
	case opUnlisten:
		s.unlisten(req, resp)
	case opAccepted:
		s.accepted(req, resp)
	case opFed:
		s.fed(req, resp)
	case opUDPAssoc:
		s.udpAssoc(ctx, p, req, fd, resp)
	case opUDPBind:
		s.udpBind(ctx, p, req, fd, resp)
	case opUDPPeer:
		s.udpPeer(req, resp)
	default:
		resp.setErr(int32(unix.ENOSYS))
	}
}

// report takes a one-way report of the library's.
func (s *Server) report(p *peer, req request) {
	switch req.Op {
	case opConnectFailed:
		s.connectFailed(p, req)
	case opConnectedFast:
		s.connectedFast(p, req)
	case opRefusedUncarried:
		s.refusedUncarried(p, req)
	}
}

// refusedUncarried logs a socket the library refused because nothing in
// the funnel carries it (raw, packet, ICMP echo): a program that says only
// "Permission denied" leaves its user guessing.
func (s *Server) refusedUncarried(p *peer, req request) {
	sotype, proto := int(req.Flags&0xffff), int(req.Flags>>16)
	attrs := []any{"pid", p.pid, "call", req.Name, "socket", socketKind(int(req.Arg), sotype, proto)}
	if ap, _, ok := parseSockaddr(req.Addr); ok {
		attrs = append(attrs, "dst", ap.String())
	}
	s.Log.Warn("preload: refused a socket that would bypass the funnel (raw, packet or ICMP echo: no piece of the profile sees its packets; funtun --allow-raw allows them)", attrs...)
}

var (
	familyNames = map[int]string{unix.AF_INET: "inet", unix.AF_INET6: "inet6", unix.AF_PACKET: "packet", unix.AF_XDP: "xdp"}
	typeNames   = map[int]string{unix.SOCK_RAW: "raw", unix.SOCK_DGRAM: "dgram", unix.SOCK_STREAM: "stream", unix.SOCK_PACKET: "packet", unix.SOCK_SEQPACKET: "seqpacket"}
)

// socketKind names a socket the way socket(2) is called: "inet/raw/icmp".
func socketKind(family, sotype, proto int) string {
	fam := familyNames[family]
	if fam == "" {
		fam = strconv.Itoa(family)
	}
	typ := typeNames[sotype]
	if typ == "" {
		typ = strconv.Itoa(sotype)
	}
	var pr string
	switch {
	case family == unix.AF_PACKET:
		// The protocol of a packet socket is an EtherType in network order.
		pr = "0x" + strconv.FormatUint(uint64(uint16(proto)>>8|uint16(proto)<<8), 16)
	case proto == unix.IPPROTO_ICMP && family == unix.AF_INET:
		pr = "icmp"
	case proto == unix.IPPROTO_ICMPV6:
		pr = "icmpv6"
	case proto == unix.IPPROTO_UDP:
		pr = "udp"
	case proto == unix.IPPROTO_TCP:
		pr = "tcp"
	default:
		pr = strconv.Itoa(proto)
	}
	return fam + "/" + typ + "/" + pr
}

func (s *Server) resolve(req request, resp *response) {
	name, ok := normalizeName(req.Name)
	if !ok {
		resp.setErr(eaiNoName)
		return
	}
	six := req.Arg == unix.AF_INET6
	family := unix.AF_INET
	if six {
		family = unix.AF_INET6
	}
	ip := s.names.addr(name, six)
	resp.setAddr(rawSockaddr(netip.AddrPortFrom(ip, 0), family))
	resp.setName(name)
}

func (s *Server) reverse(req request, resp *response) {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(eaiFail)
		return
	}
	name, ok := s.names.name(ap.Addr())
	if !ok {
		resp.setErr(eaiNoName)
		return
	}
	resp.setName(name)
}

// newFlow starts a flow of this hook with the program's identity.
func (s *Server) newFlow(p *peer, network funnel.Network, dest funnel.Addr) *funnel.Flow {
	f := s.Engine.NewFlow("preload", network, dest)
	f.PID = p.pid
	f.User = p.user
	return f
}

// destination turns what the program connected to into a flow destination:
// a synthetic address becomes the name it stands for.
func (s *Server) destination(ap netip.AddrPort) (funnel.Addr, error) {
	a := ap.Addr().Unmap()
	if isSynthetic(a) {
		name, ok := s.names.name(a)
		if !ok {
			return funnel.Addr{}, funnel.Errorf(funnel.KindHostUnreachable, "%s is a synthetic address no name was given for (a lookup from before funtun started?)", a)
		}
		return funnel.Addr{Name: name, Port: ap.Port()}, nil
	}
	return funnel.Addr{IP: a, Port: ap.Port()}, nil
}

// errnoOf says a flow's failure the way connect() does.
func errnoOf(err error) unix.Errno {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return funnel.Classify(err).Errno()
}

func sockInfo(fd int) (family, sotype, proto int, err error) {
	if family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return
	}
	if sotype, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return
	}
	proto, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return
}

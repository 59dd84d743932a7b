package redirect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h):
// the same number as SO_ORIGINAL_DST, asked at the IPv6 level.
const ip6tSoOriginalDst = 80

// errNotRedirected: the connection came to the listener without a rule.
var errNotRedirected = errors.New("not redirected: its destination is funtun's own listener (someone connected to it directly, or no rule applied); refused")

func (rd *Redirector) serveCommand(ctx context.Context, env *cli.Env, listens []string, takeUDP bool) int {
	ls, pcs, err := rd.open(ctx, env, listens, takeUDP)
	if err != nil {
		return env.Errorf("redirect", "%v", err)
	}
	var where []string
	for _, l := range ls {
		where = append(where, "tcp "+l.Addr().String())
	}
	for _, pc := range pcs {
		where = append(where, "udp "+pc.LocalAddr().String())
	}
	mode := "redirect"
	if rd.TProxy {
		mode = "tproxy"
	}
	env.Log.Info("redirect serving", "listen", strings.Join(where, ","), "mode", mode, "mark", fmt.Sprintf("%#x", rd.Mark), "profile", rd.Selector.String())
	cli.ReloadOnHUP(ctx, rd.Engine)
	var serve []func() error
	for _, l := range ls {
		serve = append(serve, func() error { return rd.ServeTCP(ctx, l) })
	}
	for _, pc := range pcs {
		serve = append(serve, func() error { return rd.ServeUDP(ctx, pc) })
	}
	// Bound and about to accept: what arrives from now on waits in the
	// backlog, so the service manager may let the rules send traffic.
	if err := sdactivate.Ready(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	if err := serveAll(ctx, serve); err != nil && ctx.Err() == nil {
		return env.Errorf("redirect", "%v", err)
	}
	return 0
}

// serveAll runs every server until ctx ends or one fails, which ends
// them all.
func serveAll(ctx context.Context, serve []func() error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(serve))
	for _, s := range serve {
		go func() { errc <- s() }()
	}
	var first error
	for range serve {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// checkPrivilege finds out before anything binds whether the kernel lets
// this process do what it was asked: a missing capability would otherwise
// show up as every flow failing.
func checkPrivilege(tproxy bool, mark int) error {
	if mark == 0 && !tproxy {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %v", err)
	}
	defer unix.Close(fd)
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
			return fmt.Errorf("cannot mark sockets (--mark %#x: setsockopt SO_MARK: %v): run as root or with CAP_NET_ADMIN, or give --mark 0 and have the rules skip funtun's user instead", mark, err)
		}
	}
	if tproxy {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("--tproxy needs transparent sockets (setsockopt IP_TRANSPARENT: %v): run as root or with CAP_NET_ADMIN", err)
		}
	}
	return nil
}

// open binds (or takes from the service manager) every --listen.
func (rd *Redirector) open(ctx context.Context, env *cli.Env, listens []string, takeUDP bool) (ls []net.Listener, pcs []*net.UDPConn, err error) {
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
	}
	defaults := len(listens) == 0
	if defaults {
		listens = []string{fmt.Sprintf("127.0.0.1:%d", DefaultPort), fmt.Sprintf("[::1]:%d", DefaultPort)}
	}
	for i, spec := range listens {
		sockets, passed, err := sdactivate.PickAll(spec)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		if passed {
			for _, s := range sockets {
				l, pc, err := rd.adopt(spec, s)
				if err != nil {
					closeAll()
					return nil, nil, err
				}
				if l != nil {
					ls = append(ls, l)
				}
				if pc != nil {
					pcs = append(pcs, pc)
				}
			}
			continue
		}
		l, err := rd.listenTCP(ctx, spec)
		if err != nil {
			if defaults && i > 0 {
				// IPv6 may be off on this host: the IPv4 default
				// still serves.
				env.Log.Warn("not listening on the IPv6 default", "listen", spec, "err", err)
				continue
			}
			closeAll()
			return nil, nil, err
		}
		ls = append(ls, l)
		if takeUDP {
			// The same port as TCP, also when the user asked for port 0.
			ap := netx.AddrPortOf(l.Addr())
			host, _, _ := net.SplitHostPort(spec)
			pc, err := rd.listenUDP(ctx, net.JoinHostPort(host, fmt.Sprint(ap.Port())))
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			pcs = append(pcs, pc)
		}
	}
	for _, l := range ls {
		rd.own = append(rd.own, netx.AddrPortOf(l.Addr()))
	}
	for _, pc := range pcs {
		rd.own = append(rd.own, netx.AddrPortOf(pc.LocalAddr()))
	}
	return ls, pcs, nil
}

// listenNetwork keeps an IPv4 address to IPv4 and an IPv6 one to IPv6, so
// that 0.0.0.0:P and [::]:P can both be given; ":P" is both families.
func listenNetwork(proto, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return proto
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() {
			return proto + "4"
		}
		return proto + "6"
	}
	return proto
}

func (rd *Redirector) listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: rd.control(false)}
	l, err := lc.Listen(ctx, listenNetwork("tcp", addr), addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on tcp %s: %v", addr, netx.OpCause(err))
	}
	return l, nil
}

func (rd *Redirector) listenUDP(ctx context.Context, addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: rd.control(true)}
	pc, err := lc.ListenPacket(ctx, listenNetwork("udp", addr), addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on udp %s: %v", addr, netx.OpCause(err))
	}
	return pc.(*net.UDPConn), nil
}

// control sets, before bind, what a TPROXY listener needs.
func (rd *Redirector) control(udp bool) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		if !rd.TProxy {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = tproxyOptions(int(fd), network, udp) }); err != nil {
			return err
		}
		return serr
	}
}

// tproxyOptions makes fd a transparent listener: TPROXY hands it
// connections and datagrams for addresses that are not this host's, and,
// for UDP, each datagram comes with the address it was sent to. A socket
// of both families gets the options of both.
func tproxyOptions(fd int, network string, udp bool) error {
	v4 := !strings.HasSuffix(network, "6")
	v6 := !strings.HasSuffix(network, "4")
	var errs []error
	set := func(level, opt int, name string) {
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			errs = append(errs, fmt.Errorf("setsockopt %s: %w", name, err))
		}
	}
	if v6 {
		set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT")
		if udp {
			set(unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR")
		}
	}
	if v4 {
		set(unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT")
		if udp {
			set(unix.SOL_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR")
		}
	}
	return errors.Join(errs...)
}

// adopt takes a socket the service manager passed.
func (rd *Redirector) adopt(spec string, s *sdactivate.Socket) (net.Listener, *net.UDPConn, error) {
	if s.Listener != nil {
		if _, ok := s.Listener.(*net.TCPListener); !ok {
			return nil, nil, fmt.Errorf("--listen %s: passed %s is not a TCP socket; redirect needs ListenStream= with an IP address and port", spec, s)
		}
		if rd.TProxy {
			// systemd's Transparent=yes sets it already; set it again
			// in case the unit did not (it needs the capability).
			if err := tproxyOptions(s.FD, s.Addr().Network(), false); err != nil {
				return nil, nil, fmt.Errorf("--listen %s: passed %s: %v (set Transparent=yes in the .socket unit)", spec, s, err)
			}
		}
		return s.Listener, nil, nil
	}
	uc, ok := s.Packet.(*net.UDPConn)
	if !ok || !rd.TProxy {
		return nil, nil, fmt.Errorf("--listen %s: passed %s is a datagram socket; redirect takes UDP only with --tproxy", spec, s)
	}
	if err := tproxyOptions(s.FD, s.Addr().Network(), true); err != nil {
		return nil, nil, fmt.Errorf("--listen %s: passed %s: %v (set Transparent=yes in the .socket unit)", spec, s, err)
	}
	return nil, uc, nil
}

// ServeTCP accepts redirected connections until ctx ends or l fails. With
// a plain-direct profile the engine's event loops serve them, dialing
// each connection's original destination (DestOf); anything else takes
// serveConn.
func (rd *Redirector) ServeTCP(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	return rd.Engine.ServeListener(ctx, l, funnel.FastListener{
		Hook:    "redirect",
		Resolve: func() (*funnel.Pipeline, error) { return rd.Engine.Resolve(rd.Selector) },
		Admit: func(netip.AddrPort) funnel.Admission {
			if !rd.admit() {
				return funnel.AdmitRefuse
			}
			wg.Add(1)
			return funnel.AdmitLoop
		},
		Finished: func() {
			rd.finished()
			wg.Done()
		},
		DestOf: func(fd int, local, remote netip.AddrPort) (netip.AddrPort, error) {
			dst, err := rd.origDst(fd, local)
			if err != nil {
				rd.refuse(remote, local, err)
			}
			return dst, err
		},
		GeneralOnly: rd.GeneralOnly,
		General: func(ctx context.Context, h funnel.Handover) {
			rd.serveConn(ctx, h, func() {
				rd.finished()
				wg.Done()
			})
		},
		Idle: rd.Idle,
		Log:  rd.Log,
	})
}

// origDst is where a connection accepted on fd was going before the rules
// sent it here: its own local address under TPROXY, else what conntrack
// recorded before the NAT (SO_ORIGINAL_DST).
func (rd *Redirector) origDst(fd int, local netip.AddrPort) (netip.AddrPort, error) {
	local = netx.Unmap(local)
	var dst netip.AddrPort
	switch {
	case rd.TProxy:
		dst = local
	case local.Addr().Is4():
		// A sockaddr_in fits the 20 bytes of an IPv6Mreq, which is how
		// x/sys/unix lets us read a sockaddr back.
		m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			return netip.AddrPort{}, origDstErr(err)
		}
		b := m.Multiaddr
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), uint16(b[2])<<8|uint16(b[3]))
	default:
		// A sockaddr_in6 (28 bytes) fits an IPv6MTUInfo.
		info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
		if err != nil {
			return netip.AddrPort{}, origDstErr(err)
		}
		// Port holds the bytes in network order, read as a native number.
		var p [2]byte
		binary.NativeEndian.PutUint16(p[:], info.Addr.Port)
		dst = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr).Unmap(), binary.BigEndian.Uint16(p[:]))
	}
	if !dst.IsValid() || dst.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("no original destination (%v)", dst)
	}
	if rd.ownListener(dst, isLocalAddr) {
		return netip.AddrPort{}, errNotRedirected
	}
	return dst, nil
}

func origDstErr(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("not redirected: conntrack has no record of it (no rule sent it here; TPROXY'd traffic needs --tproxy)")
	}
	return fmt.Errorf("reading its original destination (SO_ORIGINAL_DST): %w", err)
}

// refuse logs a connection turned away before it became a flow.
func (rd *Redirector) refuse(remote, local netip.AddrPort, err error) {
	rd.Log.Warn("refused a connection", "hook", "redirect", "src", remote.String(), "local", netx.Unmap(local).String(), "err", err)
}

// isLocalAddr: a an address of this host (network namespace)?
func isLocalAddr(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if p, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// serveConn carries one redirected connection the event loops did not
// take, and calls finished when its flow has ended.
func (rd *Redirector) serveConn(ctx context.Context, h funnel.Handover, finished func()) {
	c := h.Conn
	dst, err := rd.connDest(c)
	if err != nil {
		rd.refuse(h.Remote, netx.AddrPortOf(c.LocalAddr()), err)
		resetClose(c)
		finished()
		return
	}
	// Each flow resolves the profile afresh, so a reload applies to new
	// flows while running ones keep their pipeline.
	pl, err := rd.Engine.Resolve(rd.Selector)
	if err != nil {
		rd.Log.Error("no profile for flow", "err", err)
		resetClose(c)
		finished()
		return
	}
	f := rd.Engine.NewFlow("redirect", funnel.TCP, funnel.Addr{IP: dst.Addr(), Port: dst.Port()})
	f.Source = c.RemoteAddr()
	r := rd.Engine.Begin(f, pl)
	up, err := r.DialStream(ctx)
	if err == nil && up.Conn == nil {
		err = funnel.Errorf(funnel.KindGeneral, "profile %s answered a handoff nobody asked for", pl.Name)
	}
	if err != nil {
		// The program asked for a connection and got one from the
		// kernel before funtun knew the answer: a reset is the nearest
		// thing to the refusal it would have met.
		resetClose(c)
		r.End(err)
		finished()
		return
	}
	r.Relay(ctx, c, up.Conn, funnel.RelayOptions{Idle: rd.Idle, Prefix: h.Read, Done: func(error) { finished() }})
}

// connDest is origDst for a connection of the general path.
func (rd *Redirector) connDest(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a socket (%T)", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var derr error
	if err := rc.Control(func(fd uintptr) {
		dst, derr = rd.origDst(int(fd), netx.AddrPortOf(c.LocalAddr()))
	}); err != nil {
		return netip.AddrPort{}, err
	}
	return dst, derr
}

// resetClose closes c with a reset rather than an orderly end, so the
// client sees a refusal, not an empty answer.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// The UDP side of --tproxy: one flow per (client, original destination).

type udpKey struct{ src, dst netip.AddrPort }

type udpSession struct {
	run   *funnel.Run
	conn  funnel.DgramConn
	flow  *funnel.Flow
	reply *net.UDPConn // bound to the original destination
}

// ServeUDP reads TPROXY'd datagrams until ctx ends. Each new (client,
// destination) pair becomes a flow; replies go back from a transparent
// socket bound to the destination the client sent to, so the client sees
// its answer come from where it asked.
func (rd *Redirector) ServeUDP(ctx context.Context, pc *net.UDPConn) error {
	go func() {
		<-ctx.Done()
		pc.Close()
	}()
	var mu sync.Mutex
	sessions := map[udpKey]*udpSession{}
	var wg sync.WaitGroup
	defer func() {
		mu.Lock()
		for _, s := range sessions {
			s.conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	oob := make([]byte, 256)
	var lastWarn time.Time
	for {
		fr := funnel.NewFrame()
		n, oobn, _, src, err := pc.ReadMsgUDPAddrPort(fr.Room(), oob)
		if err != nil {
			fr.Release()
			if ctx.Err() != nil {
				return nil
			}
			if netx.Temporary(err) {
				continue
			}
			return err
		}
		fr.SetLen(n)
		src = netx.Unmap(src)
		fr.Src = src
		dst, ok := origDstOf(oob[:oobn])
		if !ok || rd.ownListener(dst, isLocalAddr) {
			fr.Release()
			if now := time.Now(); now.Sub(lastWarn) > time.Second {
				lastWarn = now
				rd.Log.Warn("dropped a datagram that no TPROXY rule sent here (it was addressed to funtun's own listener)", "hook", "redirect", "src", src.String(), "dst", dst.String())
			}
			continue
		}
		key := udpKey{src, dst}
		mu.Lock()
		s := sessions[key]
		if s == nil {
			s = rd.openUDP(ctx, src, dst)
			if s == nil {
				mu.Unlock()
				fr.Release()
				continue
			}
			sessions[key] = s
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Replies leave from the original destination until the
				// session idles.
				s.run.ReturnDgrams(s.conn, rd.UDPIdle, func(b []byte) error {
					_, err := s.reply.WriteToUDPAddrPort(b, src)
					return err
				})
				s.reply.Close()
				mu.Lock()
				delete(sessions, key)
				mu.Unlock()
				rd.finished()
			}()
		}
		mu.Unlock()
		s.flow.Up.Add(int64(n))
		if err := s.conn.WriteFrame(fr); err != nil {
			s.flow.Log.Debug("udp write", "err", err)
		}
	}
}

// origDstOf finds IP_ORIGDSTADDR or IPV6_ORIGDSTADDR among a datagram's
// control messages.
func origDstOf(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			// struct sockaddr_in: family, port (network order), address.
			d := m.Data
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(d[4:8])), uint16(d[2])<<8|uint16(d[3])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			// struct sockaddr_in6: family, port, flowinfo, address.
			d := m.Data
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(d[8:24])).Unmap(), uint16(d[2])<<8|uint16(d[3])), true
		}
	}
	return netip.AddrPort{}, false
}

func (rd *Redirector) openUDP(ctx context.Context, src, dst netip.AddrPort) *udpSession {
	if !rd.admit() {
		return nil
	}
	pl, err := rd.Engine.Resolve(rd.Selector)
	if err != nil {
		rd.Log.Error("no profile for flow", "err", err)
		rd.finished()
		return nil
	}
	f := rd.Engine.NewFlow("redirect", funnel.UDP, funnel.Addr{IP: dst.Addr(), Port: dst.Port()})
	f.Source = net.UDPAddrFromAddrPort(src)
	r := rd.Engine.Begin(f, pl)
	reply, err := rd.replySocket(ctx, dst)
	if err != nil {
		r.End(err)
		rd.finished()
		return nil
	}
	c, err := r.DialDgram(ctx)
	if err != nil {
		reply.Close()
		r.End(err)
		rd.finished()
		return nil
	}
	return &udpSession{run: r, conn: c, flow: f, reply: reply}
}

// replySocket is a transparent UDP socket bound to dst, an address that
// need not be this host's: what it sends leaves from dst. It is not
// connected, so TPROXY keeps sending the client's datagrams to the
// listener; SO_REUSEADDR lets several clients' sessions share dst.
func (rd *Redirector) replySocket(ctx context.Context, dst netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			s := int(fd)
			level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
			if strings.HasSuffix(network, "6") {
				level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
			}
			serr = errors.Join(
				unix.SetsockoptInt(s, level, opt, 1),
				unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
			)
			if rd.Mark != 0 {
				serr = errors.Join(serr, unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK, rd.Mark))
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(ctx, network, dst.String())
	if err != nil {
		return nil, fmt.Errorf("cannot send replies from %s (a transparent socket bound there): %v", dst, netx.OpCause(err))
	}
	return pc.(*net.UDPConn), nil
}

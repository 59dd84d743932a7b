package socks5d

import (
	"context"
	"errors"
	"fmt"
	"github.com/funtun/funtun/internal/logx"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/socks5wire"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
)

// Server is one running SOCKS5 daemon: it speaks RFC 1928/1929 with clients
// and hands every CONNECT, BIND and UDP ASSOCIATE to the engine as flows.
type Server struct {
	Engine   *funnel.Engine
	Selector funnel.Selector
	// Allow lists the client networks served; empty serves everyone.
	Allow []netip.Prefix
	// HandshakeTimeout bounds the greeting, authentication and request.
	HandshakeTimeout time.Duration
	// IdleTimeout ends a TCP flow after this long without a byte either
	// way (checked every IdleTimeout, so it ends between one and two
	// periods after the last byte); 0 never does.
	IdleTimeout time.Duration
	// UDPIdle ends one destination of a UDP association after this long
	// without a datagram.
	UDPIdle time.Duration
	// BindTimeout is how long BIND waits for the incoming connection.
	BindTimeout time.Duration
	// MaxConns bounds the client connections served at once; one more is
	// accepted and closed at once rather than queued.
	MaxConns int
	// MaxBinds bounds the BIND listeners and UDP associations open at
	// once (0: defaultMaxBinds): each holds files for as long as its
	// client likes, so past the bound a request gets general failure
	// instead of the next client getting nothing (takeBindSlot).
	MaxBinds int
	// UDPBroadcast lets UDP ASSOCIATE clients send to broadcast and
	// multicast destinations, which are refused otherwise (udp.go).
	UDPBroadcast bool
	// GeneralOnly serves every client on the general path, one goroutine
	// per client; otherwise an event loop serves plain-direct CONNECTs of
	// TCP listeners itself (loop.go).
	GeneralOnly bool
	Log         *slog.Logger

	users   atomic.Pointer[Users] // nil: no authentication
	mapping atomic.Pointer[Map]   // nil: CONNECT goes out through the profile

	active  atomic.Int64
	wg      sync.WaitGroup // admitted clients not yet finished
	refused atomic.Int64
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	lastMax time.Time

	binds        atomic.Int64 // BIND listeners and UDP relays open
	bindsRefused atomic.Int64
	lastBindMax  time.Time                // guarded by mu
	udpRefused   atomic.Int64             // datagrams to broadcast or multicast destinations dropped
	lastUDPWarn  time.Time                // guarded by mu
	broadcasts   atomic.Pointer[bcastSet] // this host's subnet broadcast addresses
	claimWindow  time.Duration            // udpClaimWindow unless set (tests)

	// logins bounds the work of password checks: a few bcrypts at a
	// time, backoff per source (users.go, loginGuard). It outlives
	// reloads of the users file.
	logins loginGuard
	// warns keeps floods of bad clients out of the log: a few warnings
	// per client address and period, then a summary (internal/logx).
	warns logx.Limiter
}

// SetUsers switches the users file in force; nil turns authentication off.
func (s *Server) SetUsers(u *Users) { s.users.Store(u) }

// SetMap switches the server-side map in force; nil turns it off.
func (s *Server) SetMap(m *Map) { s.mapping.Store(m) }

func (s *Server) defaults() {
	if s.HandshakeTimeout <= 0 {
		s.HandshakeTimeout = 10 * time.Second
	}
	if s.UDPIdle <= 0 {
		s.UDPIdle = 2 * time.Minute
	}
	if s.BindTimeout <= 0 {
		s.BindTimeout = 2 * time.Minute
	}
	if s.MaxConns <= 0 {
		s.MaxConns = 10000
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
}

// Serve accepts on every listener until ctx ends or one fails; then it
// closes the listeners and every client connection, and waits for them.
func (s *Server) Serve(ctx context.Context, ls ...net.Listener) error {
	s.defaults()
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() {
			errc <- s.Engine.ServeListener(ctx, l, funnel.FastListener{
				Hook:              "socks5d",
				Resolve:           func() (*funnel.Pipeline, error) { return s.Engine.Resolve(s.Selector) },
				Admit:             s.admit,
				Finished:          s.finished,
				Handshake:         loopHandshake{},
				ClientSpeaksFirst: true,
				General:           s.serveHandover,
				GeneralOnly:       s.GeneralOnly,
				HandshakeTimeout:  s.HandshakeTimeout,
				Idle:              s.IdleTimeout,
				Log:               s.Log,
			})
		}()
	}
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.conns = nil
		s.mu.Unlock()
	}()
	var first error
	for range ls {
		if err := <-errc; err != nil && first == nil {
			first = fmt.Errorf("serving SOCKS5: %w", err)
			cancel()
		}
	}
	cancel()
	s.wg.Wait()
	// The last period's summary of suppressed warnings.
	s.warns.Flush()
	return first
}

// track registers a client connection so that shutdown can close it; it
// refuses new ones once ctx is done (the map is gone then).
func (s *Server) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.conns == nil {
			return false
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	return true
}

func (s *Server) noteRefused() {
	n := s.refused.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.lastMax) >= 10*time.Second {
		s.lastMax = time.Now()
		s.Log.Warn("too many connections: refusing new ones (raise --max-conns?)", "max_conns", s.MaxConns, "refused_total", n)
	}
}

// Active is the number of client connections being served.
func (s *Server) Active() int { return int(s.active.Load()) }

func (s *Server) allowed(remote net.Addr) bool {
	if len(s.Allow) == 0 {
		return true
	}
	ap := netx.AddrPortOf(remote)
	if !ap.IsValid() {
		// A Unix socket from systemd: only local processes reach it.
		return true
	}
	ip := ap.Addr().Unmap()
	for _, p := range s.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

var readerPool = sync.Pool{New: func() any { return new(wireReader) }}

// session is one client connection's state during the handshake.
type session struct {
	s      *Server
	c      net.Conn
	remote net.Addr
	w      *wireReader
	user   string
	entry  userEntry
	// greeted: method selection is done (by the event loop).
	greeted bool
	reply   [4 + 16 + 2]byte // room for the longest reply we send
}

// serveConn serves one client. A CONNECT hands its relay to goroutines of
// its own and returns true: finish then runs when the relay ends, not now.
func (s *Server) serveConn(ctx context.Context, c net.Conn, finish func()) (handedOff bool) {
	return s.serveConnFrom(ctx, c, c.RemoteAddr(), finish, nil, false)
}

// serveConnFrom serves a client whose first bytes were read already (by
// the event loop, which hands over what it does not serve itself): prefill
// is what it read and did not answer, and greeted says that it answered
// the greeting already. remote is the client's address, which a socket
// that the client has reset no longer reports.
func (s *Server) serveConnFrom(ctx context.Context, c net.Conn, remote net.Addr, finish func(), prefill []byte, greeted bool) (handedOff bool) {
	ss := &session{s: s, c: c, remote: remote, w: readerPool.Get().(*wireReader), greeted: greeted}
	ss.w.r, ss.w.start, ss.w.end = c, 0, copy(ss.w.buf[:], prefill)
	defer func() {
		if handedOff {
			return
		}
		if ss.w != nil {
			ss.releaseReader()
		}
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(s.HandshakeTimeout))
	req, ok := ss.handshake()
	if !ok {
		return false
	}
	// From here on the flow's own timeouts apply (the dial's, --idle);
	// our replies are a few bytes that the socket buffer always takes.
	c.SetDeadline(time.Time{})
	sel := s.Selector
	if ss.entry.profile != "" {
		sel = funnel.Selector{Profile: ss.entry.profile}
	}
	pl, err := s.Engine.Resolve(sel)
	if err != nil {
		s.Log.Error("no profile for flow", "src", ss.remote.String(), "user", ss.user, "err", err)
		ss.sendReply(socks5wire.ReplyGeneral, netip.AddrPort{})
		return false
	}
	switch req.cmd {
	case socks5wire.CmdConnect:
		if m := s.mapping.Load(); m != nil {
			ss.serveMapped(ctx, pl, m, req)
			return false
		}
		return ss.serveConnect(ctx, pl, req, finish)
	case socks5wire.CmdBind:
		ss.serveBind(ctx, pl, req)
	case socks5wire.CmdUDPAssociate:
		ss.serveUDP(ctx, pl, req)
	}
	return false
}

func (ss *session) releaseReader() {
	ss.w.r = nil
	readerPool.Put(ss.w)
	ss.w = nil
}

// handshake runs method selection, authentication and the request. It
// answers every failure the way the protocol says and reports whether
// serving may go on.
func (ss *session) handshake() (request, bool) {
	if !ss.greeted && !ss.greet() {
		return request{}, false
	}
	w := ss.w
	req, err := readRequest(w)
	if err != nil {
		ss.logProto("request", err)
		var pe *protoError
		if errors.As(err, &pe) && pe.reply != 0 {
			ss.sendReply(pe.reply, netip.AddrPort{})
		}
		return request{}, false
	}
	return req, true
}

// greet runs method selection and authentication.
func (ss *session) greet() bool {
	s, c, w := ss.s, ss.c, ss.w
	// serveConnFrom set the connection's deadline just before.
	deadline := time.Now().Add(s.HandshakeTimeout)
	methods, err := readGreeting(w)
	if err != nil {
		ss.logProto("greeting", err)
		return false
	}
	if !s.allowed(ss.remote) {
		// Tell the client why where the protocol has a way to: reply 2
		// (not allowed by ruleset) to its request.
		ss.warn("client not in --allow: refused")
		if !offers(methods, socks5wire.MethodNone) {
			c.Write([]byte{socks5wire.Version, socks5wire.MethodNoAcceptable})
			return false
		}
		if _, err := c.Write([]byte{socks5wire.Version, socks5wire.MethodNone}); err != nil {
			return false
		}
		if _, err := readRequest(w); err != nil {
			var pe *protoError
			if !errors.As(err, &pe) {
				return false
			}
		}
		ss.sendReply(socks5wire.ReplyNotAllowed, netip.AddrPort{})
		return false
	}
	if users := s.users.Load(); users != nil {
		if !offers(methods, socks5wire.MethodPassword) {
			ss.warn("client offers no username/password method, and --users requires one: refused")
			c.Write([]byte{socks5wire.Version, socks5wire.MethodNoAcceptable})
			return false
		}
		if _, err := c.Write([]byte{socks5wire.Version, socks5wire.MethodPassword}); err != nil {
			return false
		}
		user, pass, err := readPassword(w)
		if err != nil {
			ss.logProto("username/password request", err)
			var pe *protoError
			if errors.As(err, &pe) {
				c.Write([]byte{socks5wire.AuthVersion, 1})
			}
			return false
		}
		// The check is bounded (users.go, login): a flood of wrong
		// passwords gets status 1 at once rather than a bcrypt each.
		pause := func(d time.Duration) bool { return ss.tarpit(d, deadline) }
		e, res, retry := users.login(&s.logins, netx.AddrPortOf(ss.remote).Addr(), user, pass, deadline, pause)
		if res != loginOK {
			switch res {
			case loginBackoff:
				ss.warn("login refused unchecked: too many failed logins from this address lately", "user", user, "retry_in", retry.Round(time.Second).String())
			case loginBusy:
				ss.warn("login refused unchecked: too many password checks at once", "user", user)
			default:
				if retry > 0 {
					ss.warn("authentication failed", "user", user, "backoff", retry.String())
				} else {
					ss.warn("authentication failed", "user", user)
				}
			}
			c.Write([]byte{socks5wire.AuthVersion, 1})
			return false
		}
		if _, err := c.Write([]byte{socks5wire.AuthVersion, 0}); err != nil {
			return false
		}
		ss.user, ss.entry = user, e
	} else {
		if !offers(methods, socks5wire.MethodNone) {
			ss.warn("client offers only methods that need --users (e.g. username/password): refused", "methods", fmt.Sprint(methods))
			c.Write([]byte{socks5wire.Version, socks5wire.MethodNoAcceptable})
			return false
		}
		if _, err := c.Write([]byte{socks5wire.Version, socks5wire.MethodNone}); err != nil {
			return false
		}
	}
	return true
}

func offers(methods []byte, m byte) bool {
	for _, x := range methods {
		if x == m {
			return true
		}
	}
	return false
}

func (ss *session) logProto(what string, err error) {
	var pe *protoError
	switch {
	case errors.As(err, &pe):
		ss.warn("malformed SOCKS5 "+what, "err", err)
	case errors.Is(err, io.EOF):
		// A port scan or a health check: not worth a warning.
		ss.s.Log.Debug("client closed during the handshake", "src", ss.remote.String())
	default:
		ss.s.Log.Debug("SOCKS5 "+what, "src", ss.remote.String(), "err", err)
	}
}

// warn logs a warning about the client, a few per client address and
// period (s.warns): 2,000 garbage connections cost the log a few lines
// and a summary that counts the rest.
func (ss *session) warn(msg string, args ...any) {
	src := ss.remote.String()
	key := src
	if ap := netx.AddrPortOf(ss.remote); ap.IsValid() {
		key = ap.Addr().Unmap().String()
	}
	if ss.s.warns.Allow(ss.s.Log, slog.LevelWarn, key, msg) {
		ss.s.Log.Warn(msg, append([]any{"src", src}, args...)...)
	}
}

// tarpit waits d on the client's connection, for a login from a source in
// backoff. The wait ends early, with false, when the client goes away or
// the server stops (which closes the connection), so that nothing waits
// for nobody. Bytes the client sends meanwhile (a request sent ahead)
// stay in the reader.
func (ss *session) tarpit(d time.Duration, deadline time.Time) bool {
	defer ss.c.SetReadDeadline(deadline)
	ss.c.SetReadDeadline(time.Now().Add(d))
	for {
		_, err := ss.w.peek(ss.w.end - ss.w.start + 1)
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			return true
		default:
			return false
		}
	}
}

func (ss *session) sendReply(code byte, bound netip.AddrPort) error {
	_, err := ss.c.Write(socks5wire.AppendReply(ss.reply[:0], code, bound))
	return err
}

// newFlow makes the flow for a request, with the client's identity.
func (ss *session) newFlow(network funnel.Network, dest funnel.Addr) *funnel.Flow {
	f := ss.s.Engine.NewFlow("socks5d", network, dest)
	f.Source = ss.remote
	f.User = ss.user
	return f
}

// boundAddr is what BND.ADDR/BND.PORT report for a connection we made: its
// real local address when the chain's connection knows one, else the
// address the client reached us on.
func (ss *session) boundAddr(up net.Conn) netip.AddrPort {
	if up != nil {
		if ap := netx.AddrPortOf(up.LocalAddr()); ap.IsValid() && ap.Port() != 0 {
			return ap
		}
	}
	return netx.AddrPortOf(ss.c.LocalAddr())
}

func (ss *session) serveConnect(ctx context.Context, pl *funnel.Pipeline, req request, finish func()) (handedOff bool) {
	s := ss.s
	r := s.Engine.Begin(ss.newFlow(funnel.TCP, req.dest), pl)
	up, err := r.DialStream(ctx)
	if err != nil {
		ss.sendReply(funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
		r.End(err)
		return false
	}
	if err := ss.sendReply(socks5wire.ReplySucceeded, ss.boundAddr(up.Conn)); err != nil {
		up.Conn.Close()
		r.End(fmt.Errorf("sending the reply to the client: %w", err))
		return false
	}
	// Bytes the client sent before our reply (optimistic data) go first.
	early := append([]byte(nil), ss.w.leftover()...)
	ss.releaseReader()
	// The relay runs without this goroutine, whose stack grew through the
	// handshake and the dial; two kernel sockets go to the engine's event
	// loops, and an idle session then costs a table entry.
	r.Relay(ctx, ss.c, up.Conn, funnel.RelayOptions{Idle: s.IdleTimeout, Prefix: early, Done: func(error) { finish() }})
	return true
}

// serveMapped is the server-side variant: the requested destination maps
// to a local service, and the client's connection travels up through the
// profile's pieces (a tls piece terminates TLS) as an incoming flow.
func (ss *session) serveMapped(ctx context.Context, pl *funnel.Pipeline, m *Map, req request) {
	s := ss.s
	r := s.Engine.Begin(ss.newFlow(funnel.TCP, req.dest), pl)
	f := r.Flow
	rule, ok := m.Lookup(req.dest)
	if !ok {
		ss.sendReply(socks5wire.ReplyNotAllowed, netip.AddrPort{})
		r.End(funnel.Errorf(funnel.KindDenied, "%s is not in the map %s", req.dest, m.Path))
		return
	}
	f.Log = f.Log.With("map", fmt.Sprintf("%s:%d", m.Path, rule.line), "target", rule.target.String())
	dctx, cancel := context.WithTimeout(ctx, s.HandshakeTimeout)
	app, wait, err := dialTarget(dctx, rule.target, f, ss.c)
	cancel()
	if err != nil {
		ss.sendReply(funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
		r.End(fmt.Errorf("local service %s: %w", rule.target, err))
		return
	}
	defer wait()
	if err := ss.sendReply(socks5wire.ReplySucceeded, netx.AddrPortOf(ss.c.LocalAddr())); err != nil {
		app.Close()
		r.End(err)
		return
	}
	ss.c.SetDeadline(time.Time{})
	// The pieces (TLS first) must see what the client sent early.
	netSide := netx.WithPrefix(ss.c, append([]byte(nil), ss.w.leftover()...))
	ss.releaseReader()
	// The pieces' own handshakes (TLS) get the same bound as ours.
	ss.c.SetDeadline(time.Now().Add(s.HandshakeTimeout))
	appSide, err := r.AcceptStream(ctx, netSide)
	ss.c.SetDeadline(time.Time{})
	if err != nil {
		app.Close()
		r.End(err)
		return
	}
	// Up is app toward network: here the application is the local service.
	r.RelayWait(ctx, app, appSide, funnel.RelayOptions{Idle: s.IdleTimeout})
}

// serveBind is RFC 1928's BIND: listen for one connection from the host
// the client names, report the listening address, then the connecting
// peer's, and join the two. The incoming connection travels up through
// the profile's pieces as an incoming flow.
func (ss *session) serveBind(ctx context.Context, pl *funnel.Pipeline, req request) {
	s := ss.s
	release, ok := s.takeBindSlot("a BIND")
	if !ok {
		// No flow and no line per refusal (takeBindSlot warns): a flood
		// of BINDs must not become a flood of log lines.
		ss.sendReply(socks5wire.ReplyGeneral, netip.AddrPort{})
		return
	}
	defer release()
	r := s.Engine.Begin(ss.newFlow(funnel.TCP, req.dest), pl)
	f := r.Flow
	local := netx.AddrPortOf(ss.c.LocalAddr()).Addr().Unmap()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: local.AsSlice(), Zone: local.Zone()})
	if err != nil {
		ss.sendReply(funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
		r.End(fmt.Errorf("bind: %w", err))
		return
	}
	defer l.Close()
	if err := ss.sendReply(socks5wire.ReplySucceeded, l.Addr().(*net.TCPAddr).AddrPort()); err != nil {
		r.End(err)
		return
	}
	ss.c.SetDeadline(time.Time{})
	// The client sends nothing until the second reply; a read that
	// returns means it gave up (or broke the protocol): stop waiting.
	gone := make(chan struct{})
	var early []byte
	go func() {
		defer close(gone)
		var b [512]byte
		n, _ := ss.c.Read(b[:])
		early = append(early, b[:n]...)
		l.Close()
	}()
	expect := req.dest.IP
	var peer *net.TCPConn
	l.SetDeadline(time.Now().Add(s.BindTimeout))
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			ss.c.SetReadDeadline(time.Now())
			<-gone
			ss.c.SetReadDeadline(time.Time{})
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				err = funnel.Errorf(funnel.KindTimeout, "bind: no connection within %v", s.BindTimeout)
				ss.sendReply(funnel.KindTimeout.SOCKSReply(), netip.AddrPort{})
			case errors.Is(err, net.ErrClosed):
				err = errors.New("bind: the client closed its connection before a peer connected")
			default:
				ss.sendReply(funnel.Classify(err).SOCKSReply(), netip.AddrPort{})
			}
			r.End(err)
			return
		}
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if expect.IsValid() && !expect.IsUnspecified() && from.Addr().Unmap() != expect {
			// Someone else found the port: not the host the client
			// announced, so not its connection.
			f.Log.Warn("bind: connection from an unexpected address refused", "from", from.String(), "want", expect.String())
			c.Close()
			continue
		}
		peer = c
		break
	}
	l.Close()
	// From here on it is a connection like a CONNECT's, which --max-conns
	// counts: the slot was for the listener.
	release()
	// Stop the watcher without losing a byte it may have read.
	ss.c.SetReadDeadline(time.Now())
	<-gone
	ss.c.SetReadDeadline(time.Time{})
	if err := ss.sendReply(socks5wire.ReplySucceeded, peer.RemoteAddr().(*net.TCPAddr).AddrPort()); err != nil {
		peer.Close()
		r.End(err)
		return
	}
	left := append(append([]byte(nil), ss.w.leftover()...), early...)
	ss.releaseReader()
	appSide, err := r.AcceptStream(ctx, peer)
	if err != nil {
		r.End(err)
		return
	}
	if len(left) > 0 {
		n, err := appSide.Write(left)
		f.Up.Add(int64(n))
		if err != nil {
			appSide.Close()
			r.End(err)
			return
		}
	}
	r.RelayWait(ctx, ss.c, appSide, funnel.RelayOptions{Idle: s.IdleTimeout})
}

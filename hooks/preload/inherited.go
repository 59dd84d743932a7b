//go:build linux

package preload

import (
	"context"
	"net"
	"net/netip"
	"os"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/hooks/activate"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
	"golang.org/x/sys/unix"
)

// Inherited sockets. When the launcher itself is socket-activated
// (`systemd-socket-activate -l 8080 funtun profile=X server`), the sockets
// in its LISTEN_FDS are the program's listening sockets, opened for it
// before it started. They are served the way the program's own listen()
// is (inbound.go): the funnel keeps the real socket and the program gets a
// hidden loopback listener in LISTEN_FDS — the feeding of `funtun
// activate`, the same code — with LISTEN_PID its own pid. The library
// learns at its start which of its descriptors are such listeners
// (opFed), so accept() reports the real client there as well. With a
// profile that leaves incoming flows alone the program gets the real
// sockets, as its own listen() would stay native.
type inheritedSockets struct {
	plan   *activate.Plan
	socks  []*sdactivate.Socket
	cancel context.CancelFunc
	served chan struct{}
}

// fedEnv tells the library that its LISTEN_FDS are fed by the funnel and
// worth an opFed each.
const fedEnv = "FUNTUN_LISTEN_FED=1"

// opFed is the library's question for each of its LISTEN_FDS (see
// preload/funtun_wire.h, FT_OP_FED).
const opFed = 13

// takeInherited takes the sockets passed to the launcher, if any, and
// plans the program's side of them. nil, nil: there are none.
func (s *Server) takeInherited() (*inheritedSockets, error) {
	socks, err := sdactivate.Take()
	if err != nil || len(socks) == 0 {
		return nil, err
	}
	in := &inheritedSockets{socks: socks}
	pl, err := s.Engine.Resolve(s.Selector)
	if err == nil {
		feeder := &activate.Feeder{
			Engine: s.Engine, Selector: s.Selector, Hook: "preload", Log: s.Log,
			DialProgram: s.dialFed,
			OnListen:    s.registerFed,
		}
		in.plan, err = feeder.Prepare(socks, pl)
	}
	if err != nil {
		in.close()
		return nil, err
	}
	for i, sock := range socks {
		if in.plan.HandsOver() {
			s.Log.Debug("preload: the program gets its inherited socket itself", "socket", sock.String())
		} else {
			s.Log.Debug("preload: feeding the program's inherited socket", "socket", sock.String(), "hidden", in.plan.ProgramSide(i).String())
		}
	}
	return in, nil
}

// files are the program's descriptors from fd 3 on.
func (in *inheritedSockets) files() []*os.File {
	if in == nil {
		return nil
	}
	return in.plan.Files()
}

func (in *inheritedSockets) env() []string {
	if in == nil {
		return nil
	}
	if in.plan.HandsOver() {
		return in.plan.Env()
	}
	return append(in.plan.Env(), fedEnv)
}

// started feeds the sockets once the program has its side of them.
func (in *inheritedSockets) started() {
	if in == nil {
		return
	}
	in.plan.Started()
	if in.plan.HandsOver() {
		in.socks = nil // closed by Started: the program's alone now
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel, in.served = cancel, make(chan struct{})
	go func() {
		in.plan.Serve(ctx)
		close(in.served)
	}()
}

// close stops the feeding, waits for its flows, and closes every socket.
func (in *inheritedSockets) close() {
	if in == nil {
		return
	}
	if in.cancel != nil {
		in.cancel()
		<-in.served
	}
	if in.plan != nil {
		in.plan.Close()
	}
	for _, sock := range in.socks {
		sock.Close()
	}
}

// registerFed makes a fed socket one of the program's listeners as
// listen() would have: opFed finds it by its hidden address, and the
// program closing its side ends the feeding (opUnlisten).
func (s *Server) registerFed(real *sdactivate.Socket, hidden net.Addr) {
	pub, hid := netx.AddrPortOf(real.Listener.Addr()), netx.AddrPortOf(hidden)
	if !pub.IsValid() || !hid.IsValid() {
		return // a Unix socket: no library bookkeeping to do
	}
	family := unix.AF_INET6
	if hid.Addr().Is4() {
		family = unix.AF_INET
	}
	publ := &publicListener{ln: real.Listener, public: pub, hidden: hid, family: family}
	s.inbound.mu.Lock()
	s.inbound.listeners[hid] = publ
	s.inbound.mu.Unlock()
}

// dialFed connects a flow to the program's hidden listener from an
// address registered beforehand, so that the program's accept() can ask
// who the client was (opAccepted).
func (s *Server) dialFed(ctx context.Context, programSide net.Addr, f *funnel.Flow) (net.Conn, func(), error) {
	hidden := netx.AddrPortOf(programSide)
	if !hidden.IsValid() {
		var d net.Dialer
		c, err := d.DialContext(ctx, programSide.Network(), programSide.String())
		return c, nil, err
	}
	family := unix.AF_INET6
	if hidden.Addr().Is4() {
		family = unix.AF_INET
	}
	client, public := netx.AddrPortOf(f.Source), netip.AddrPortFrom(f.Dest.IP, f.Dest.Port)
	var info *acceptedInfo
	if client.IsValid() && public.IsValid() && (family == unix.AF_INET6 || (client.Addr().Is4() && public.Addr().Is4())) {
		info = &acceptedInfo{client: rawSockaddr(client, family), public: rawSockaddr(public, family)}
	}
	var ours netip.AddrPort
	release := func() {
		if ours.IsValid() {
			s.inbound.mu.Lock()
			delete(s.inbound.pending, ours)
			s.inbound.mu.Unlock()
		}
	}
	c, err := dialHidden(hidden, func(local netip.AddrPort) {
		ours = local
		if info == nil {
			// A client the program's socket family cannot name (IPv6
			// on an IPv4 hidden listener): still registered, or the
			// library would turn the connection away as a stranger's;
			// the program sees the loopback addresses.
			info = &acceptedInfo{client: rawSockaddr(local, family), public: rawSockaddr(hidden, family)}
		}
		s.inbound.mu.Lock()
		s.inbound.pending[local] = *info
		s.inbound.mu.Unlock()
	})
	return c, release, err
}

// fed answers FED: is the listener the library found at one of its
// LISTEN_FDS one the funnel feeds? Then addr2 is the public address its
// getsockname() is to report.
func (s *Server) fed(req request, resp *response) {
	ap, _, ok := parseSockaddr(req.Addr)
	if !ok {
		resp.setErr(int32(unix.EINVAL))
		return
	}
	s.inbound.mu.Lock()
	publ := s.inbound.listeners[netx.Unmap(ap)]
	s.inbound.mu.Unlock()
	if publ == nil {
		resp.setErr(int32(unix.ENOENT))
		return
	}
	resp.setAddr2(rawSockaddr(publ.public, publ.family))
}

// Package forward is the simplest hook: it accepts TCP connections (or UDP
// datagrams, one flow per source) on a local address and sends each as a
// flow to a fixed destination through a profile — socat's
// TCP-LISTEN/TCP job with Puzzle Pieces in between.
package forward

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/sdactivate"
)

const usage = `funtun forward --listen ADDR --to HOST:PORT [profile=NAME | chain='…'] [options]

Accepts TCP connections (or, with --udp, UDP datagrams kept apart per
source) on ADDR and sends each as a flow to HOST:PORT through the profile.
With --inbound the accepted connections are treated as coming from the
network: they travel up through the pieces (a tls piece terminates TLS)
and reach HOST:PORT as the application.

Examples:
  funtun forward --listen 127.0.0.1:8080 --to example.org:443 chain='tls'
  funtun forward --listen :8443 --to 127.0.0.1:8000 --inbound chain='tls cert=c.pem key=k.pem'
  funtun forward --udp --listen 127.0.0.1:5353 --to 127.0.0.1:53 profile=direct
  systemd-socket-activate -l 8443 --fdname=tls funtun forward --listen fd:tls --to 127.0.0.1:8000 --inbound chain='tls cert=c.pem key=k.pem'

ADDR may be fd:NAME or fd:N: the sockets of that FileDescriptorName (or
descriptor N) that systemd passed (socket activation; docs/systemd.md).

SIGHUP recompiles every profile; on error the old ones stay in force.`

func init() {
	cli.Register(&cli.Command{
		Name:    "forward",
		Summary: "accept on a local address and forward each connection through a profile",
		Usage:   usage,
		Run:     run,
		Daemon:  true, // --pprof
	})
}

// Forwarder is one running forward hook.
type Forwarder struct {
	Engine   *funnel.Engine
	Selector funnel.Selector
	To       funnel.Addr
	Inbound  bool
	// Idle ends a UDP session without traffic (checked every Idle, so it
	// ends between one and two periods after the last datagram).
	Idle time.Duration
	Log  *slog.Logger
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("forward")
	fs := env.FlagSet(c)
	listen := fs.String("listen", "", "local address to accept on, e.g. 127.0.0.1:8080, or fd:NAME for a socket systemd passed")
	to := fs.String("to", "", "destination HOST:PORT of every flow")
	udp := fs.Bool("udp", false, "forward UDP datagrams instead of TCP connections")
	inbound := fs.Bool("inbound", false, "accepted connections come from the network: run the profile's pieces as a server")
	idle := fs.Duration("idle", 60*time.Second, "end a UDP session after this long without traffic (checked every period: it ends within twice that)")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("forward", "%v", err)
	}
	if len(rest) > 0 {
		return env.Usagef("forward", "unexpected argument %q", rest[0])
	}
	if *listen == "" || *to == "" {
		return env.Usagef("forward", "needs --listen ADDR and --to HOST:PORT")
	}
	dest, err := funnel.ParseAddr(*to)
	if err != nil {
		return env.Usagef("forward", "--to: %v", err)
	}
	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("forward", "%v", err)
	}
	pl, err := eng.Resolve(sel)
	if err != nil {
		return env.Errorf("forward", "%v", err)
	}
	shape := funnel.Stream
	if *udp {
		shape = funnel.Dgram
	}
	if !pl.Accepts(shape) {
		return env.Errorf("forward", "profile %s carries %s flows, not %s: use --udp for dgram profiles", pl.Name, pl.Shapes(), shape)
	}
	if *udp && *inbound {
		return env.Usagef("forward", "--inbound is for TCP only")
	}
	fw := &Forwarder{Engine: eng, Selector: sel, To: dest, Inbound: *inbound, Idle: *idle, Log: env.Log}
	listeners, packets, err := openListen(*listen, *udp)
	if err != nil {
		return env.Errorf("forward", "%v", err)
	}
	warnUnused(env, listeners, packets)
	cli.ReloadOnHUP(ctx, eng)
	var serve []func() error
	for _, pc := range packets {
		env.Log.Info("forwarding", "listen", pc.LocalAddr().String(), "net", "udp", "to", dest.String(), "profile", sel.String())
		serve = append(serve, func() error { return fw.ServeUDP(ctx, pc) })
	}
	for _, l := range listeners {
		env.Log.Info("forwarding", "listen", l.Addr().String(), "net", l.Addr().Network(), "to", dest.String(), "profile", sel.String(), "inbound", *inbound)
		serve = append(serve, func() error { return fw.ServeTCP(ctx, l) })
	}
	// Bound (or passed) and about to accept: connections from now on wait
	// in the backlog, so the service manager may send clients.
	if err := sdactivate.Ready(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	err = serveAll(ctx, serve)
	if err := sdactivate.Stopping(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	if err != nil && ctx.Err() == nil {
		return env.Errorf("forward", "%v", err)
	}
	return 0
}

// openListen opens --listen: an address, or fd:NAME / fd:N for the
// sockets a service manager passed (every socket of that name: a .socket
// unit listening on IPv4 and IPv6 names both alike).
func openListen(listen string, udp bool) ([]net.Listener, []*net.UDPConn, error) {
	sockets, ok, err := sdactivate.PickAll(listen)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		if udp {
			pc, err := net.ListenPacket("udp", listen)
			if err != nil {
				return nil, nil, fmt.Errorf("cannot listen on udp %s: %v", listen, netx.OpCause(err))
			}
			return nil, []*net.UDPConn{pc.(*net.UDPConn)}, nil
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, nil, fmt.Errorf("cannot listen on tcp %s: %v", listen, netx.OpCause(err))
		}
		return []net.Listener{l}, nil, nil
	}
	var listeners []net.Listener
	var packets []*net.UDPConn
	for _, s := range sockets {
		switch {
		case udp && s.Packet == nil:
			return nil, nil, fmt.Errorf("--udp --listen %s: passed %s is a stream socket; give forward --udp a ListenDatagram= socket, or drop --udp", listen, s)
		case udp:
			uc, isUDP := s.Packet.(*net.UDPConn)
			if !isUDP {
				return nil, nil, fmt.Errorf("--udp --listen %s: passed %s is not a UDP socket; forward --udp needs ListenDatagram= with an IP address and port", listen, s)
			}
			packets = append(packets, uc)
		case s.Listener == nil:
			return nil, nil, fmt.Errorf("--listen %s: passed %s is a datagram socket; use --udp for it, or give forward a ListenStream= socket", listen, s)
		default:
			listeners = append(listeners, s.Listener)
		}
	}
	return listeners, packets, nil
}

// warnUnused names the passed sockets --listen did not choose: the
// kernel still completes handshakes on them, and nobody would accept.
func warnUnused(env *cli.Env, listeners []net.Listener, packets []*net.UDPConn) {
	passed, _ := sdactivate.Take()
	for _, s := range passed {
		used := false
		for _, l := range listeners {
			used = used || l == s.Listener
		}
		for _, pc := range packets {
			used = used || net.PacketConn(pc) == s.Packet
		}
		if !used {
			env.Log.Warn("a socket systemd passed is not served: --listen does not name it", "socket", s.String())
		}
	}
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

// ServeTCP accepts until ctx ends or the listener fails. With a profile
// the engine dials itself (plain direct) and an address to go to, the
// engine's event loops serve every connection without a goroutine of its
// own; anything else takes serveConn.
func (fw *Forwarder) ServeTCP(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	return fw.Engine.ServeListener(ctx, l, funnel.FastListener{
		Hook:    "forward",
		Resolve: func() (*funnel.Pipeline, error) { return fw.Engine.Resolve(fw.Selector) },
		Admit: func(netip.AddrPort) funnel.Admission {
			wg.Add(1)
			return funnel.AdmitLoop
		},
		Finished:    wg.Done,
		Dest:        fw.To.AddrPort(),
		GeneralOnly: fw.Inbound || fw.To.IsName(),
		General: func(ctx context.Context, h funnel.Handover) {
			fw.serveConn(ctx, h.Conn, wg.Done)
		},
		Log: fw.Log,
	})
}

// serveConn carries one accepted connection and calls finished when its
// flow has ended.
func (fw *Forwarder) serveConn(ctx context.Context, c net.Conn, finished func()) {
	// Each flow resolves the profile afresh, so a reload applies to new
	// flows while running ones keep their pipeline.
	pl, err := fw.Engine.Resolve(fw.Selector)
	if err != nil {
		fw.Log.Error("no profile for flow", "err", err)
		c.Close()
		finished()
		return
	}
	f := fw.Engine.NewFlow("forward", funnel.TCP, fw.To)
	f.Source = c.RemoteAddr()
	if !fw.Inbound {
		// This goroutine ends once the relay runs; an idle flow keeps only
		// the relay's two.
		fw.Engine.ServeStreamAsync(ctx, f, pl, c, func(error) { finished() })
		return
	}
	defer finished()
	fw.Engine.ServeInbound(ctx, f, pl, c, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", fw.To.String())
	})
}

// udpSession is one source's datagram flow.
type udpSession struct {
	run  *funnel.Run
	conn funnel.DgramConn
	flow *funnel.Flow
}

// ServeUDP keeps one flow per source address; replies from the chain go
// back to that source. Sessions end after fw.Idle without traffic.
func (fw *Forwarder) ServeUDP(ctx context.Context, pc *net.UDPConn) error {
	go func() {
		<-ctx.Done()
		pc.Close()
	}()
	var mu sync.Mutex
	sessions := map[netip.AddrPort]*udpSession{}
	var wg sync.WaitGroup
	defer func() {
		mu.Lock()
		for _, s := range sessions {
			s.conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		fr := funnel.NewFrame()
		n, src, err := pc.ReadFromUDPAddrPort(fr.Room())
		if err != nil {
			fr.Release()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fr.SetLen(n)
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		fr.Src = src
		mu.Lock()
		s := sessions[src]
		if s == nil {
			s, err = fw.openUDP(ctx, src)
			if err != nil {
				mu.Unlock()
				fr.Release()
				continue
			}
			sessions[src] = s
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Replies go back to the source until the session idles.
				s.run.ReturnDgrams(s.conn, fw.Idle, func(b []byte) error {
					_, err := pc.WriteToUDPAddrPort(b, src)
					return err
				})
				mu.Lock()
				delete(sessions, src)
				mu.Unlock()
			}()
		}
		mu.Unlock()
		s.flow.Up.Add(int64(n))
		if err := s.conn.WriteFrame(fr); err != nil {
			s.flow.Log.Debug("udp write", "err", err)
		}
	}
}

func (fw *Forwarder) openUDP(ctx context.Context, src netip.AddrPort) (*udpSession, error) {
	pl, err := fw.Engine.Resolve(fw.Selector)
	if err != nil {
		fw.Log.Error("no profile for flow", "err", err)
		return nil, err
	}
	f := fw.Engine.NewFlow("forward", funnel.UDP, fw.To)
	f.Source = net.UDPAddrFromAddrPort(src)
	r := fw.Engine.Begin(f, pl)
	c, err := r.DialDgram(ctx)
	if err != nil {
		r.End(err)
		return nil, err
	}
	return &udpSession{run: r, conn: c, flow: f}, nil
}

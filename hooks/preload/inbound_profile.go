//go:build linux

package preload

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"golang.org/x/sys/unix"
)

// Listeners of the profile. Some profiles reach the program from where
// no kernel socket of it can be reached: profile 6bed4's user-space stack
// has a tunnel address of its own. When such a profile (see
// funnel.StreamListener) listens for a program's socket, the funnel takes
// the socket as it does for pieces that act on incoming streams, and the
// profile's connections reach the program's hidden listener the same way
// as the socket's own: as incoming flows, logged and counted, through the
// profile's pieces, with the real client for accept().

// listenThroughProfile asks the profile to listen for a program listening
// at public; nil when it does not (or cannot: the program keeps its own
// socket, and the log says why).
func (s *Server) listenThroughProfile(ctx context.Context, p *peer, pl *funnel.Pipeline, public netip.AddrPort) net.Listener {
	f := s.newFlow(p, funnel.TCP, funnel.Addr{IP: public.Addr(), Port: public.Port()})
	ln, err := pl.ListenStream(ctx, f)
	if errors.Is(err, funnel.ErrNoListener) {
		return nil
	}
	if err != nil {
		s.Log.Warn("preload: the profile cannot listen for the program; only its own socket takes connections", "pid", p.pid, "addr", public.String(), "err", err)
		return nil
	}
	s.Log.Debug("preload: the profile listens for the program too", "pid", p.pid, "addr", public.String(), "profile", pl.Name)
	return ln
}

// acceptThrough takes the profile's connections for the program until the
// program's listener is given up (which closes publ.through) or ctx ends.
// The profile's listener failing leaves the program's own socket alone.
func (s *Server) acceptThrough(ctx context.Context, publ *publicListener) {
	err := netx.AcceptLoop(ctx, publ.through, func(c net.Conn) { go s.serveIncoming(ctx, publ, c) }, s.Log)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.Log.Warn("preload: the profile no longer listens for the program", "pid", publ.peer.pid, "addr", publ.public.String(), "err", err)
	}
}

// acceptedFor is what the program's accept() reports for a connection
// from client that reached public. A client of the profile's listener may
// be of the other family: an IPv6 tunnel peer cannot be said in an IPv4
// socket's terms. The program is then told 0.0.0.0 with the client's port
// — an unknown client, never a loopback address that a program might trust
// as a local user's — and its own listening address as where it was
// reached. (An IPv6 socket says an IPv4 client as a mapped address.)
func acceptedFor(publ *publicListener, client, public netip.AddrPort) acceptedInfo {
	if publ.family == unix.AF_INET {
		if !client.Addr().Is4() {
			client = netip.AddrPortFrom(netip.IPv4Unspecified(), client.Port())
		}
		if !public.Addr().Is4() {
			public = publ.public
		}
	}
	return acceptedInfo{client: rawSockaddr(client, publ.family), public: rawSockaddr(public, publ.family)}
}

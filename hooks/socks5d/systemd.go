package socks5d

import (
	"fmt"
	"net"

	"github.com/funtun/funtun/internal/sdactivate"
)

// activatedListeners splits --listen into the sockets a service manager
// passed (fd:NAME, fd:N; see internal/sdactivate) and addresses to listen
// on. With no fd: value, every passed socket is served besides the
// addresses, as before names existed; with one, only the named sockets are.
// The sockets come back with what names them in messages, and the passed
// sockets that no fd: value chose, for a warning.
func activatedListeners(listens []string) (ls []net.Listener, named, addrs []string, unused []*sdactivate.Socket, err error) {
	passed, err := sdactivate.Take()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var picked []*sdactivate.Socket
	anyPicked := false
	for _, spec := range listens {
		sockets, ok, err := sdactivate.PickAll(spec)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		if !ok {
			addrs = append(addrs, spec)
			continue
		}
		anyPicked = true
		picked = append(picked, sockets...)
	}
	if !anyPicked {
		picked = passed
	}
	seen := map[int]bool{}
	for _, s := range picked {
		if seen[s.FD] {
			continue
		}
		seen[s.FD] = true
		if s.Listener == nil {
			return nil, nil, nil, nil, fmt.Errorf("passed %s is a datagram socket; socks5d serves SOCKS5 over streams (ListenStream= in the .socket unit), and its UDP ASSOCIATE relays open their own sockets", s)
		}
		ls = append(ls, s.Listener)
		named = append(named, s.Addr().String())
	}
	for _, s := range passed {
		if !seen[s.FD] {
			unused = append(unused, s)
		}
	}
	return ls, named, addrs, unused, nil
}

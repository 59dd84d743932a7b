// Package sdactivate is the one socket-activation mechanism of every funtun
// daemon mode: the sockets a service manager (systemd, systemd-socket-activate,
// or any sd_listen_fds-compatible launcher) passed in LISTEN_FDS, chosen by
// their LISTEN_FDNAMES names with "--listen fd:NAME", and sd_notify
// readiness so that Type=notify units work.
package sdactivate

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// Socket is one socket the service manager passed (LISTEN_FDS from fd 3).
type Socket struct {
	Name     string         // its LISTEN_FDNAMES entry, else "LISTEN_FD_<fd>"
	FD       int            // 3, 4, …
	Listener net.Listener   // set for a listening stream socket (TCP or Unix)
	Packet   net.PacketConn // set for a datagram socket
	File     *os.File       // the descriptor, for handing it on to a child process
}

// Addr is the socket's local address, whichever kind it is.
func (s *Socket) Addr() net.Addr {
	if s.Listener != nil {
		return s.Listener.Addr()
	}
	return s.Packet.LocalAddr()
}

// String names the socket as a user sees it in logs and errors.
func (s *Socket) String() string {
	return fmt.Sprintf("fd %d (%s, %s %s)", s.FD, s.Name, s.Addr().Network(), s.Addr())
}

// Close closes the socket and the descriptor kept for children.
func (s *Socket) Close() error {
	var err error
	if s.Listener != nil {
		err = s.Listener.Close()
	}
	if s.Packet != nil {
		err = errors.Join(err, s.Packet.Close())
	}
	return errors.Join(err, s.File.Close())
}

var (
	takeOnce  sync.Once
	taken     []*Socket
	takeError error
)

// Take returns the sockets passed to this process (LISTEN_PID must be ours),
// via github.com/coreos/go-systemd/v22/activation. It runs once; later calls return
// the same sockets. It unsets LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES so children do not see them.
//
// Every passed socket must be a listening stream socket or a datagram
// socket; anything else (a connected socket from Accept=yes, a FIFO, a
// netlink socket) is an error naming it, and then no socket is returned.
func Take() ([]*Socket, error) {
	takeOnce.Do(func() {
		taken, takeError = fromFiles(activation.Files(true))
	})
	return taken, takeError
}

// fromFiles wraps each descriptor. The *os.File stays open: a child such
// as `funtun activate`'s program gets the very socket, not a copy of a copy.
func fromFiles(files []*os.File) ([]*Socket, error) {
	sockets := make([]*Socket, 0, len(files))
	var errs []error
	for _, f := range files {
		s, err := wrap(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sockets = append(sockets, s)
	}
	if len(errs) > 0 {
		for _, s := range sockets {
			s.Close()
		}
		for _, f := range files {
			f.Close()
		}
		return nil, errors.Join(errs...)
	}
	return sockets, nil
}

func wrap(f *os.File) (*Socket, error) {
	fd := int(f.Fd())
	s := &Socket{Name: f.Name(), FD: fd, File: f}
	kind, err := socketKind(fd)
	if err != nil {
		return nil, fmt.Errorf("passed fd %d (%s): %v; the .socket unit should use ListenStream= or ListenDatagram=", fd, s.Name, err)
	}
	switch kind {
	case kindListening:
		if s.Listener, err = net.FileListener(f); err != nil {
			return nil, fmt.Errorf("passed fd %d (%s) is a listening socket funtun cannot use: %v; the .socket unit should use ListenStream= with an IP or Unix address", fd, s.Name, err)
		}
	case kindDatagram:
		if s.Packet, err = net.FilePacketConn(f); err != nil {
			return nil, fmt.Errorf("passed fd %d (%s) is a datagram socket funtun cannot use: %v; the .socket unit should use ListenDatagram= with an IP or Unix address", fd, s.Name, err)
		}
	case kindConnected:
		return nil, fmt.Errorf("passed fd %d (%s) is a connected stream socket, not a listening one; funtun accepts connections itself: set Accept=no (the default) in the .socket unit", fd, s.Name)
	default:
		return nil, fmt.Errorf("passed fd %d (%s) is neither a listening stream socket nor a datagram socket; the .socket unit should use ListenStream= or ListenDatagram= (not ListenFIFO=, ListenNetlink=, ListenSequentialPacket=, …)", fd, s.Name)
	}
	return s, nil
}

type socketKindT int

const (
	kindOther socketKindT = iota
	kindListening
	kindConnected
	kindDatagram
)

// Pick resolves a --listen value of the form "fd:NAME" or "fd:N" (N a descriptor
// number) against Take's sockets; ok is false when spec is an ordinary address.
//
// A name that several passed sockets share (a .socket unit with two
// ListenStream= lines has one FileDescriptorName for both) is an error
// here; PickAll takes them all.
func Pick(spec string) (s *Socket, ok bool, err error) {
	all, ok, err := PickAll(spec)
	if !ok || err != nil {
		return nil, ok, err
	}
	if len(all) > 1 {
		fds := make([]string, len(all))
		for i, s := range all {
			fds[i] = strconv.Itoa(s.FD)
		}
		return nil, true, fmt.Errorf("--listen %s: %d passed sockets are named %q (fd %s); this option takes one: give them different FileDescriptorName= or use fd:N", spec, len(all), all[0].Name, strings.Join(fds, ", "))
	}
	return all[0], true, nil
}

// PickAll is Pick for options that serve every socket of a name: all the
// passed sockets named NAME (at least one), or the one descriptor N.
func PickAll(spec string) (sockets []*Socket, ok bool, err error) {
	ref, ok := strings.CutPrefix(spec, "fd:")
	if !ok {
		return nil, false, nil
	}
	if ref == "" {
		return nil, true, fmt.Errorf("--listen %s: a passed socket's name or descriptor number must follow fd:", spec)
	}
	passed, err := Take()
	if err != nil {
		return nil, true, err
	}
	for _, s := range passed {
		if s.Name == ref {
			sockets = append(sockets, s)
		}
	}
	if len(sockets) > 0 {
		return sockets, true, nil
	}
	if n, err := strconv.Atoi(ref); err == nil {
		for _, s := range passed {
			if s.FD == n {
				return []*Socket{s}, true, nil
			}
		}
	}
	return nil, true, fmt.Errorf("--listen %s: %s", spec, describePassed(passed))
}

// describePassed says what a user could have named instead.
func describePassed(passed []*Socket) string {
	if len(passed) == 0 {
		return "no sockets were passed to funtun (LISTEN_FDS is unset or meant for another process); start it from a .socket unit or systemd-socket-activate"
	}
	fds := map[string][]string{}
	var names []string
	for _, s := range passed {
		if fds[s.Name] == nil {
			names = append(names, s.Name)
		}
		fds[s.Name] = append(fds[s.Name], strconv.Itoa(s.FD))
	}
	list := make([]string, len(names))
	for i, name := range names {
		list[i] = fmt.Sprintf("%s (fd %s)", name, strings.Join(fds[name], ", "))
	}
	return "no passed socket has that name or descriptor; passed: " + strings.Join(list, ", ")
}

// Notify sends an sd_notify state ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=…");
// a no-op without NOTIFY_SOCKET.
//
// NOTIFY_SOCKET stays in the environment: a daemon notifies more than once
// (each reload), and the service manager ignores messages from other
// processes unless the unit sets NotifyAccess=all.
func Notify(state string) error {
	_, err := daemon.SdNotify(false, state)
	if err != nil {
		return fmt.Errorf("sd_notify %q to NOTIFY_SOCKET=%s: %w", state, os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}

// Ready tells the service manager that funtun serves (startup or a reload is done).
func Ready() error { return Notify(daemon.SdNotifyReady) }

// Reloading tells the service manager a reload began. MONOTONIC_USEC is
// what Type=notify-reload units require with it.
func Reloading() error {
	return Notify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

var (
	stoppingOnce  sync.Once
	stoppingError error
)

// Stopping tells the service manager that funtun is shutting down, once:
// a daemon may say so both where shutdown begins (cli.ReloadOnHUP, on
// its own goroutine, which the exit may overtake) and, to be sure it was
// said, before it returns; a later call waits for the first to be sent.
func Stopping() error {
	stoppingOnce.Do(func() { stoppingError = Notify(daemon.SdNotifyStopping) })
	return stoppingError
}

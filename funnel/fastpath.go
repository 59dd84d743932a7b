package funnel

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/funtun/funtun/internal/netx"
)

// The kernel fast path: a flow whose profile is one KernelDialer piece
// (plain direct) is two kernel sockets and a splice between them, so the
// engine serves it on event loops (epoll parked in the Go poller, a table
// of descriptors, splice through pooled pipes) with no goroutine per flow.
// A hook gets it in two ways, and needs no code of its own for either:
//
//   - ServeListener: the loops accept the hook's clients, run the hook's
//     handshake (Handshake; SOCKS5's greeting and request) and dial the
//     destination themselves. What they do not serve goes to the hook's
//     general path with the bytes read so far.
//   - Run.Relay: any flow whose two ends are kernel TCP sockets once the
//     pieces have done their part (a socks5 upstream after its handshake,
//     a preload relay) moves to the loops for its relay.
//
// On systems without epoll and splice both fall back to goroutines.

// Admission is what a hook says of a client the loop has just accepted.
type Admission uint8

const (
	// AdmitLoop: the loop may serve it (if the profile allows).
	AdmitLoop Admission = iota
	// AdmitGeneral: hand it to the general path before reading a byte.
	AdmitGeneral
	// AdmitRefuse: close it at once (the hook has logged why).
	AdmitRefuse
)

// StepKind is what a handshake step asks the loop to do next.
type StepKind uint8

const (
	// StepMore: wait for more bytes.
	StepMore StepKind = iota
	// StepDial: dial Step.Dest; the hook's Answer then tells the client.
	StepDial
	// StepGeneral: hand the client to the general path with the bytes
	// not consumed.
	StepGeneral
	// StepClose: close the client (the hook has answered it).
	StepClose
)

// Step is a handshake's answer to the bytes a client sent.
type Step struct {
	Kind StepKind
	// Consumed bytes at the start of the input are done with (answered);
	// the rest stay for the next call, or go to the general path.
	Consumed int
	Dest     netip.AddrPort // for StepDial
}

// Handshake is a hook's protocol before the dial, run on the loop: it must
// not block. Phase is the hook's own per-client state (0 at first) that the
// loop keeps for it and hands to the general path.
type Handshake interface {
	// Input sees every byte the client sent and nobody consumed yet; write
	// sends a short reply (it fits the socket's buffer). At most
	// MaxHandshake bytes are kept.
	Input(phase *uint8, in []byte, write func([]byte) error) Step
	// Answer appends to buf what the client is told once the dial ended:
	// bound is the upstream socket's local address, err the dial's error.
	Answer(buf []byte, bound netip.AddrPort, err error) []byte
}

// MaxHandshake is the most a Handshake is shown at once; a client that
// sends more without a decision goes to the general path.
const MaxHandshake = 600

// Handover is a client the loop gives to the hook's general path.
type Handover struct {
	Conn   net.Conn
	Remote netip.AddrPort // the client's address (a reset socket forgets it)
	Read   []byte         // bytes read and not consumed
	Phase  uint8          // the handshake's phase when handed over
}

// FastListener is a hook's listener served by the engine.
type FastListener struct {
	Hook string
	// Resolve gives the pipeline for a new flow (the hook's selector;
	// asked at every accept and dial, so a reload applies to new flows).
	Resolve func() (*Pipeline, error)
	// Admit decides on each accepted client before a byte is read; nil
	// admits all. A client admitted (AdmitLoop or AdmitGeneral) is the
	// hook's to count: Finished runs when the loop is done with it, and
	// the general path's own ending when it was handed over.
	Admit    func(remote netip.AddrPort) Admission
	Finished func()
	// Handshake is the protocol before the dial; nil dials Dest at once
	// (a forwarder).
	Handshake Handshake
	Dest      netip.AddrPort
	// DestOf, when set, gives each client its own destination in place of
	// Dest (a firewall redirection: the connection's original
	// destination). It sees the accepted socket and both its addresses;
	// an error closes the client (the hook has logged why).
	DestOf func(fd int, local, remote netip.AddrPort) (netip.AddrPort, error)
	// ClientSpeaksFirst lets the kernel hold a client until its first
	// bytes arrive (TCP_DEFER_ACCEPT): no wake-up for a silent client.
	ClientSpeaksFirst bool
	// General serves what the loop does not, on a goroutine of its own.
	General func(ctx context.Context, h Handover)
	// GeneralOnly sends every client to General (a switch for users and
	// tests; systems without the loop do so anyway).
	GeneralOnly      bool
	HandshakeTimeout time.Duration
	Idle             time.Duration // ends a relaying flow idle this long; 0 never
	Log              *slog.Logger
}

func (fl *FastListener) defaults() {
	if fl.HandshakeTimeout <= 0 {
		fl.HandshakeTimeout = 10 * time.Second
	}
	if fl.Log == nil {
		fl.Log = slog.Default()
	}
	if fl.Admit == nil {
		fl.Admit = func(netip.AddrPort) Admission { return AdmitLoop }
	}
	if fl.Finished == nil {
		fl.Finished = func() {}
	}
}

// ServeListener serves l until ctx ends or l fails; it closes l. Clients
// the loop serves end with it; General must end its own when ctx ends.
// It returns once every client the loop served has ended.
func (e *Engine) ServeListener(ctx context.Context, l net.Listener, fl FastListener) error {
	fl.defaults()
	if !fl.GeneralOnly {
		if tl, ok := l.(*net.TCPListener); ok {
			if served, err := e.serveLoop(ctx, tl, &fl); served {
				return err
			}
		}
	}
	return serveGeneral(ctx, l, &fl)
}

// serveGeneral accepts with a goroutine per client, for listeners the
// loop cannot take.
func serveGeneral(ctx context.Context, l net.Listener, fl *FastListener) error {
	return netx.AcceptLoop(ctx, l, func(c net.Conn) {
		remote := netx.AddrPortOf(c.RemoteAddr())
		if fl.Admit(remote) == AdmitRefuse {
			c.Close()
			return
		}
		go fl.General(ctx, Handover{Conn: c, Remote: remote})
	}, fl.Log)
}

// dialErr is the error of a fast-path dial, worded as the piece's own.
func dialErr(prefix string, dest netip.AddrPort, err error) error {
	err = &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dest), Err: err}
	if prefix == "" {
		return err
	}
	return &prefixedErr{prefix: prefix, err: err}
}

type prefixedErr struct {
	prefix string
	err    error
}

func (p *prefixedErr) Error() string { return p.prefix + ": " + p.err.Error() }
func (p *prefixedErr) Unwrap() error { return p.err }

// Package api lets a Go program ask for a connection, a listener or a
// datagram socket of a named template — a funtun profile — and get back a
// plain net.Conn, net.Listener or net.PacketConn whose traffic has passed
// through that profile's Puzzle Pieces: TLS wrapped or terminated, chained
// through SOCKS5, rewritten, captured, denied.
//
// The funnel runs inside the calling process, with the same profiles and
// the same search path as the funtun command:
// $XDG_CONFIG_HOME/funtun/profiles/NAME.profile, then
// /etc/funtun/profiles, then the built-ins. A template is a profile's
// name; "" means the default profile, direct. An inline chain is written
// as on the command line: "chain=tls sni=example.org | socks5 server=…".
//
// Names are resolved inside the funnel: Dial("web", "tcp",
// "example.org:443") hands the name to the pieces, so a hosts piece or a
// SOCKS5 server decides what it means.
//
// Every connection is one flow: it is logged once when it ends (at level
// Info on the Funnel's logger, which by default shows only warnings), and
// a reload (Funnel.Reload) applies to new connections while those already
// open keep the pieces they began with.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	_ "github.com/funtun/funtun/pieces/all" // every piece, so any profile compiles
	"github.com/funtun/funtun/profiles"
)

// Options tune a Funnel. The zero value gives the funtun command's
// profiles and a logger that shows warnings only.
type Options struct {
	// Dirs are the profile directories, first wins; nil means funtun's
	// search path. Built-in profiles come after them either way.
	Dirs []string
	// Logger receives one line per flow (level Info) and the warnings of
	// pieces; nil logs warnings and errors through slog.Default.
	Logger *slog.Logger
	// HandshakeTimeout bounds the incoming pieces' work on an accepted
	// connection (a TLS handshake, say) before Accept returns it; 0 means
	// 10 seconds.
	HandshakeTimeout time.Duration
	// DatagramIdle ends a datagram session of ListenPacket that carried
	// nothing for this long (checked every period); 0 means 2 minutes.
	DatagramIdle time.Duration
}

// Funnel is an in-process funnel: a compiled set of profiles and the engine
// that carries flows through them. It is safe for concurrent use.
type Funnel struct {
	engine *funnel.Engine
	opts   Options
}

// New loads the profiles and returns a Funnel. Profiles that do not
// compile are left out with a warning, as the command does; asking for one
// by name then returns its error.
func New(opts Options) (*Funnel, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(atLeast{slog.Default().Handler(), slog.LevelWarn})
	}
	if opts.Dirs == nil {
		opts.Dirs = funnel.DefaultDirs()
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	if opts.DatagramIdle <= 0 {
		opts.DatagramIdle = 2 * time.Minute
	}
	cat := &funnel.Catalog{Dirs: opts.Dirs, Builtins: profiles.Builtin}
	e, err := funnel.NewEngine(cat, opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("funtun api: %w", err)
	}
	return &Funnel{engine: e, opts: opts}, nil
}

var (
	defaultOnce   sync.Once
	defaultFunnel *Funnel
	defaultErr    error
)

// Default is the Funnel the package-level functions use, made on first use
// with the zero Options.
func Default() (*Funnel, error) {
	defaultOnce.Do(func() { defaultFunnel, defaultErr = New(Options{}) })
	return defaultFunnel, defaultErr
}

// Reload recompiles every profile. On error the profiles in force stay, and
// the error names the file and line.
func (fn *Funnel) Reload() error { return fn.engine.Reload() }

// Templates lists the names of the profiles that compiled.
func (fn *Funnel) Templates() []string { return fn.engine.Catalog.Current().Names() }

// Dial connects to address through the pieces of template, using the
// default Funnel. network is "tcp", "tcp4" or "tcp6" for a stream, "udp",
// "udp4" or "udp6" for a connected datagram socket.
func Dial(ctx context.Context, template, network, address string) (net.Conn, error) {
	fn, err := Default()
	if err != nil {
		return nil, err
	}
	return fn.Dial(ctx, template, network, address)
}

// Listen accepts connections on address, each carried up through the
// pieces of template, using the default Funnel.
func Listen(ctx context.Context, template, network, address string) (net.Listener, error) {
	fn, err := Default()
	if err != nil {
		return nil, err
	}
	return fn.Listen(ctx, template, network, address)
}

// ListenPacket returns a datagram socket whose datagrams pass through the
// pieces of template, using the default Funnel.
func ListenPacket(ctx context.Context, template, network, address string) (net.PacketConn, error) {
	fn, err := Default()
	if err != nil {
		return nil, err
	}
	return fn.ListenPacket(ctx, template, network, address)
}

// selector turns a template into what the engine resolves.
func selector(template string) (funnel.Selector, error) {
	t := strings.TrimSpace(template)
	switch {
	case t == "":
		return funnel.Selector{}, nil
	case strings.HasPrefix(t, "chain="):
		chain := strings.TrimPrefix(t, "chain=")
		if strings.TrimSpace(chain) == "" {
			return funnel.Selector{}, errors.New("chain= needs pieces, e.g. chain=tls sni=example.org")
		}
		return funnel.Selector{Chain: chain}, nil
	case strings.HasPrefix(t, "profile="):
		t = strings.TrimPrefix(t, "profile=")
	}
	if strings.ContainsAny(t, " \t|/") {
		return funnel.Selector{}, fmt.Errorf("%q is not a profile name (an inline chain is written chain=PIECE k=v | …)", template)
	}
	return funnel.Selector{Profile: t}, nil
}

func (fn *Funnel) resolve(template string) (*funnel.Pipeline, error) {
	sel, err := selector(template)
	if err != nil {
		return nil, err
	}
	return fn.engine.Resolve(sel)
}

// newFlow is a flow of this process: the API has no client address, so the
// flow names the program instead.
func (fn *Funnel) newFlow(network funnel.Network, dest funnel.Addr) *funnel.Flow {
	f := fn.engine.NewFlow("api", network, dest)
	f.PID = os.Getpid()
	return f
}

// atLeast drops records below a level: a library's flows should not fill
// its program's log unless the program asks for them.
type atLeast struct {
	slog.Handler
	min slog.Level
}

func (h atLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h atLeast) WithAttrs(as []slog.Attr) slog.Handler {
	return atLeast{h.Handler.WithAttrs(as), h.min}
}

func (h atLeast) WithGroup(name string) slog.Handler {
	return atLeast{h.Handler.WithGroup(name), h.min}
}

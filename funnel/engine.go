package funnel

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// Engine is what hooks talk to: it resolves a selector to a compiled
// pipeline, carries flows through it, and logs each flow once at its end.
type Engine struct {
	Catalog *Catalog
	Log     *slog.Logger
}

// NewEngine loads the catalog. Profiles that do not compile are logged as
// warnings and left out; using one by name repeats its error.
func NewEngine(c *Catalog, log *slog.Logger) (*Engine, error) {
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{Catalog: c, Log: log}
	if err := c.Load(); err != nil {
		if c.Current() == nil {
			return nil, err
		}
		log.Warn("some profiles do not compile or cannot open what they need, and are left out (`funtun profiles` lists them)", "err", err)
	}
	return e, nil
}

// Reload recompiles all profiles; on error the old set stays in force and
// the error is logged and returned.
func (e *Engine) Reload() error {
	if err := e.Catalog.Load(); err != nil {
		e.Log.Error("reload failed; keeping the profiles in force", "err", err)
		return err
	}
	e.Log.Info("profiles reloaded", "profiles", len(e.Catalog.Current().Names()))
	return nil
}

// Resolve finds the pipeline for a selector in the current set.
func (e *Engine) Resolve(sel Selector) (*Pipeline, error) { return e.Catalog.Resolve(sel) }

// NewFlow makes a flow whose log lines carry its id.
func (e *Engine) NewFlow(hook string, network Network, dest Addr) *Flow {
	ef := &engineFlow{Flow: Flow{
		ID:      flowIDs.Add(1),
		Hook:    hook,
		Dest:    dest,
		Network: network,
		Start:   time.Now(),
	}}
	f := &ef.Flow
	f.Up, f.Down = &ef.counts[0], &ef.counts[1]
	ef.handler = flowHandler{parent: e.Log.Handler(), id: f.ID}
	ef.log = *slog.New(&ef.handler)
	f.Log = &ef.log
	return f
}

// engineFlow is a flow with its counters and its logger in one allocation:
// 256 bytes, where apart they take 264 and four trips to the allocator, and
// an idle flow holds all of them.
type engineFlow struct {
	Flow
	counts  [2]atomic.Int64
	handler flowHandler
	log     slog.Logger
}

// flowHandler adds a flow's id to its log lines. It formats the id only
// for a line that is written: most flows write none (or one, at their
// end), and an idle flow should not hold a pre-formatted copy of the
// engine's handler (slog.Logger.With makes one).
type flowHandler struct {
	parent slog.Handler
	id     uint64
}

func (h *flowHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.parent.Enabled(ctx, l)
}

func (h *flowHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.parent.WithAttrs([]slog.Attr{slog.Uint64("flow", h.id)}).Handle(ctx, r)
}

func (h *flowHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return h.parent.WithAttrs(append([]slog.Attr{slog.Uint64("flow", h.id)}, as...))
}

func (h *flowHandler) WithGroup(name string) slog.Handler {
	return h.parent.WithAttrs([]slog.Attr{slog.Uint64("flow", h.id)}).WithGroup(name)
}

// ServeStream carries an outgoing stream flow from begin to end: it dials
// through the pipeline, then relays between client and the chain. The
// returned error is the dial error or the relay's.
func (e *Engine) ServeStream(ctx context.Context, f *Flow, pl *Pipeline, client net.Conn) error {
	done := make(chan error, 1)
	e.ServeStreamAsync(ctx, f, pl, client, func(err error) { done <- err })
	return <-done
}

// ServeStreamAsync is ServeStream that returns once the relay runs, so the
// caller's goroutine (and the stack it grew while dialing) can end. done is
// called once, when the flow has ended and been logged.
func (e *Engine) ServeStreamAsync(ctx context.Context, f *Flow, pl *Pipeline, client net.Conn, done func(error)) {
	r := e.Begin(f, pl)
	up, err := r.DialStream(ctx)
	if err == nil && up.Conn == nil {
		err = Errorf(KindGeneral, "profile %s answered a handoff nobody asked for", pl.Name)
	}
	if err != nil {
		client.Close()
		r.End(err)
		done(err)
		return
	}
	r.Relay(ctx, client, up.Conn, RelayOptions{Done: done})
}

// ServeInbound carries an incoming stream flow: netConn came from the
// network, travels up through the pieces (a TLS server, say), and is relayed
// to the application that dialApp reaches.
func (e *Engine) ServeInbound(ctx context.Context, f *Flow, pl *Pipeline, netConn net.Conn, dialApp func(context.Context) (net.Conn, error)) error {
	r := e.Begin(f, pl)
	appSide, err := r.AcceptStream(ctx, netConn)
	if err != nil {
		netConn.Close()
		r.End(err)
		return err
	}
	app, err := dialApp(ctx)
	if err != nil {
		appSide.Close()
		r.End(err)
		return err
	}
	// Up is app toward network: here the application is the local server.
	return r.RelayWait(ctx, app, appSide, RelayOptions{})
}

// End writes the one log line of a flow.
func (e *Engine) End(f *Flow, err error) {
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
	}
	log := e.flowLog(f, level)
	if log == nil {
		return
	}
	attrs := flowAttrs(f, true)
	if err != nil {
		log.Warn("flow failed", append(attrs, "kind", Classify(err).String(), "err", err)...)
		return
	}
	log.Info("flow", attrs...)
}

// EndUncounted writes the one line of a flow whose bytes never pass the
// funnel (the application's own socket carries them, after a handoff or a
// connect the preload library made itself): msg says so, and no byte
// counts are given, since up=0 down=0 would be false.
func (e *Engine) EndUncounted(f *Flow, msg string) {
	if log := e.flowLog(f, slog.LevelInfo); log != nil {
		log.Info(msg, flowAttrs(f, false)...)
	}
}

// flowLog is the flow's logger, or nil when level is not logged: on a busy
// server with --quiet the line's formatting would cost more than many a
// short flow.
func (e *Engine) flowLog(f *Flow, level slog.Level) *slog.Logger {
	log := f.Log
	if log == nil {
		log = e.Log
	}
	if !log.Enabled(context.Background(), level) {
		return nil
	}
	return log
}

func flowAttrs(f *Flow, counted bool) []any {
	attrs := []any{
		"hook", f.Hook, "profile", f.Profile, "net", string(f.Network),
		"src", addrString(f.Source), "dst", f.Dest.String(),
	}
	if counted {
		attrs = append(attrs, "up", f.Up.Load(), "down", f.Down.Load(),
			"duration", time.Since(f.Start).Round(time.Microsecond))
	}
	if f.PID != 0 {
		attrs = append(attrs, "pid", f.PID)
	}
	if f.User != "" {
		attrs = append(attrs, "user", f.User)
	}
	if f.Inbound {
		attrs = append(attrs, "inbound", true)
	}
	return attrs
}

func addrString(a net.Addr) string {
	if a == nil {
		return "-"
	}
	return a.String()
}

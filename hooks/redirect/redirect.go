// Package redirect is the firewall redirection hook: it takes the
// connections (and, with TPROXY, the datagrams) that nftables or iptables
// rules sent to a local port, recovers where each was really going, and
// makes it a flow to that destination through a profile. Programs that
// know nothing of funtun — on this host or, on a gateway, on other hosts —
// then go through its pieces.
package redirect

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
)

const usage = `funtun redirect [--listen ADDR]… [--tproxy] [--mark N] [profile=NAME | chain='…']

Accepts the TCP connections that firewall rules redirected to ADDR
(nftables "redirect to :PORT", iptables "-j REDIRECT --to-ports PORT") and
sends each as a flow to its original destination through the profile.
With --tproxy it takes transparently proxied TCP and UDP instead
(nftables "tproxy to :PORT", iptables "-j TPROXY"): the original
destination is the accepted socket's own address, and UDP replies leave
from the address the client sent to.

funtun's own outgoing sockets carry the firewall mark --mark, so that the
rules can skip them ("meta mark 0x66756e return") and a flow is never
redirected back into funtun. A connection that reached the listener
without a rule (someone connected to it directly) is refused.

Examples:
  # this host's programs run by user alice, through a rewrite profile:
  nft add table ip funtun
  nft add chain ip funtun out '{ type nat hook output priority -100; }'
  nft add rule ip funtun out meta mark 0x66756e return
  nft add rule ip funtun out meta skuid alice tcp dport 80 redirect to :7474
  funtun redirect chain='rewrite from=hello to=HOWDY'

  # a gateway: traffic from the LAN on eth1, TCP and UDP, via TPROXY:
  funtun redirect --tproxy --listen 0.0.0.0:7474 --listen [::]:7474 profile=gateway

  # socket activation (a .socket unit with Transparent=yes for --tproxy):
  funtun redirect --listen fd:redirect profile=gateway

Listens on 127.0.0.1:7474 and [::1]:7474 unless told otherwise. A
gateway's prerouting "redirect" sends to the address of the interface the
packet came in on, so listen there too (or on 0.0.0.0 and [::]).
--tproxy and --mark need CAP_NET_ADMIN (root). The mark is also what
every direct piece without mark= uses (the FUNTUN_MARK environment
variable, see docs/pieces/direct.md); --mark 0 sets none, for rules that
skip funtun's user instead.

SIGHUP recompiles every profile; on error the old ones stay in force.`

// DefaultMark is the SO_MARK of funtun redirect's own outgoing sockets
// unless --mark or FUNTUN_MARK says otherwise: "fun" in ASCII, even (bit 0
// is what TPROXY setups usually take for their own routing mark), and
// shared with `funtun firewall`, whose rules skip it.
const DefaultMark = 0x66756e

// DefaultPort is the port funtun redirect listens on unless told.
const DefaultPort = 7474

// markEnv is how the mark reaches every direct piece of the process,
// including those of profiles a reload brings (docs/pieces/direct.md).
const markEnv = "FUNTUN_MARK"

func init() {
	cli.Register(&cli.Command{
		Name:    "redirect",
		Summary: "take connections that firewall rules redirected (REDIRECT, TPROXY) through a profile",
		Usage:   usage,
		Run:     run,
		Daemon:  true, // --pprof
	})
}

// Redirector is one running redirect hook.
type Redirector struct {
	Engine   *funnel.Engine
	Selector funnel.Selector
	// TProxy: listeners are transparent, and a connection's original
	// destination is its socket's local address (else SO_ORIGINAL_DST).
	TProxy bool
	// MaxConns bounds the TCP connections and UDP sessions served at once.
	MaxConns int
	// Idle ends a TCP flow without a byte either way for this long (0:
	// never); UDPIdle ends a UDP session.
	Idle, UDPIdle time.Duration
	// Mark is the SO_MARK of the sockets that send UDP replies (the
	// profile's direct piece marks the others).
	Mark int
	// GeneralOnly keeps every connection off the engine's event loops.
	GeneralOnly bool
	Log         *slog.Logger

	// own are the addresses funtun listens on: a connection whose
	// original destination is one of them was not redirected.
	own     []netip.AddrPort
	active  atomic.Int64
	refused atomic.Int64
	// lastFull is when the log last said the limit was reached (unix
	// seconds), so a flood writes one line a second, not one per client.
	lastFull atomic.Int64
}

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("redirect")
	fs := env.FlagSet(c)
	var listens cli.StringList
	fs.Var(&listens, "listen", fmt.Sprintf("address (or fd:NAME of a passed socket) the rules redirect to; repeat for more (default 127.0.0.1:%d and [::1]:%d)", DefaultPort, DefaultPort))
	tproxy := fs.Bool("tproxy", false, "take TPROXY'd TCP and UDP (transparent listeners; needs CAP_NET_ADMIN) instead of REDIRECTed TCP")
	udp := fs.Bool("udp", true, "with --tproxy, take UDP on every --listen address too")
	markDefault := fmt.Sprintf("%#x", DefaultMark)
	if v := os.Getenv(markEnv); v != "" {
		markDefault = v
	}
	markText := fs.String("mark", markDefault, "SO_MARK of funtun's own outgoing sockets, which the rules must skip (0: none); default $FUNTUN_MARK if set")
	maxConns := fs.Int("max-conns", 10000, "TCP connections and UDP sessions served at once; more are refused")
	idle := fs.Duration("idle", time.Hour, "end a TCP flow after this long without traffic either way (0: never)")
	udpIdle := fs.Duration("udp-idle", 2*time.Minute, "end a UDP session after this long without datagrams")
	eventLoop := fs.Bool("event-loop", true, "serve plain-direct TCP flows on the engine's event loops (false: a goroutine per flow)")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("redirect", "%v", err)
	}
	if len(rest) > 0 {
		return env.Usagef("redirect", "unexpected argument %q", rest[0])
	}
	if *maxConns < 1 {
		return env.Usagef("redirect", "--max-conns must be at least 1")
	}
	if *idle < 0 || *udpIdle <= 0 {
		return env.Usagef("redirect", "--udp-idle must be positive and --idle not negative")
	}
	mark, err := parseMark(*markText)
	if err != nil {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "mark" })
		if !given {
			return env.Usagef("redirect", "%s=%q in the environment: %v", markEnv, *markText, err)
		}
		return env.Usagef("redirect", "--mark %q: %v", *markText, err)
	}
	if err := checkPrivilege(*tproxy, mark); err != nil {
		return env.Errorf("redirect", "%v", err)
	}
	// Before the profiles compile: every direct piece without mark=
	// reads it, on the fast path and the general one alike.
	os.Setenv(markEnv, strconv.Itoa(mark))
	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("redirect", "%v", err)
	}
	pl, err := eng.Resolve(sel)
	if err != nil {
		return env.Errorf("redirect", "%v", err)
	}
	if !pl.Accepts(funnel.Stream) {
		return env.Errorf("redirect", "profile %s carries %s flows; redirected connections need one that carries streams", pl.Name, pl.Shapes())
	}
	takeUDP := *tproxy && *udp
	if takeUDP && !pl.Accepts(funnel.Dgram) {
		return env.Errorf("redirect", "profile %s carries %s flows only, and --tproxy takes UDP too: give a profile that carries dgram flows, or --udp=false", pl.Name, pl.Shapes())
	}
	rd := &Redirector{
		Engine: eng, Selector: sel, TProxy: *tproxy, MaxConns: *maxConns,
		Idle: *idle, UDPIdle: *udpIdle, Mark: mark, GeneralOnly: !*eventLoop, Log: env.Log,
	}
	return rd.serveCommand(ctx, env, listens, takeUDP)
}

// parseMark reads a firewall mark as nft and ip-rule write it.
func parseMark(v string) (int, error) {
	m, err := strconv.ParseUint(strings.TrimSpace(v), 0, 32)
	if err != nil {
		return 0, fmt.Errorf("not a mark: a 32-bit number, decimal or 0x-hexadecimal")
	}
	return int(m), nil
}

// admit counts a new client against MaxConns.
func (rd *Redirector) admit() bool {
	if rd.active.Add(1) > int64(rd.MaxConns) {
		rd.active.Add(-1)
		n := rd.refused.Add(1)
		now := time.Now().Unix()
		if last := rd.lastFull.Load(); now != last && rd.lastFull.CompareAndSwap(last, now) {
			rd.Log.Warn("too many connections: refusing new ones (raise --max-conns?)", "max_conns", rd.MaxConns, "refused_total", n)
		}
		return false
	}
	return true
}

func (rd *Redirector) finished() { rd.active.Add(-1) }

// Active is the number of TCP connections and UDP sessions being served.
func (rd *Redirector) Active() int { return int(rd.active.Load()) }

// ownListener reports whether dst is one of the addresses funtun itself
// listens on: then no rule redirected the connection (the client came
// straight to the listener), and serving it would dial funtun again.
func (rd *Redirector) ownListener(dst netip.AddrPort, isLocal func(netip.Addr) bool) bool {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	for _, l := range rd.own {
		if l.Port() != dst.Port() {
			continue
		}
		if l.Addr().Unmap() == dst.Addr() {
			return true
		}
		if l.Addr().IsUnspecified() && isLocal(dst.Addr()) {
			return true
		}
	}
	return false
}

// Package socks5d is the SOCKS5 hook: a SOCKS5 daemon (RFC 1928, RFC 1929)
// that is really the Funnel Tunnel. Programs that speak SOCKS5 natively, or
// are made to with proxychains, socksify or tsocks, reach the network
// through a funtun profile: every CONNECT, BIND and UDP ASSOCIATE becomes a
// flow that the engine carries through the profile's pieces. With --map it
// is the server-side variant: requested destinations land on local
// services.
package socks5d

import (
	"context"
	"errors"
	"fmt"
	"github.com/funtun/funtun/internal/netx"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/cli"
	"github.com/funtun/funtun/internal/sdactivate"
)

const usage = `funtun socks5d [--listen ADDR]… [profile=NAME | chain='…'] [--users FILE] [--allow CIDR]… [--map FILE]
funtun socks5d adduser FILE USER [PROFILE]

A SOCKS5 server (RFC 1928, with RFC 1929 username/password) whose CONNECT,
BIND and UDP ASSOCIATE requests become flows through the profile. Host
names stay unresolved until the profile resolves them. With --users, every
client must log in, and a user's line may name the profile its flows take.
With --map, requested destinations map to local services instead
(the server-side variant). Listens on 127.0.0.1:1080 unless told otherwise,
or on the sockets systemd passes (socket activation: all of them, or
those --listen fd:NAME names; see docs/systemd.md).

adduser reads the password from the terminal (or the first line of stdin)
and adds USER to FILE as a bcrypt hash, replacing the user's old line.

Examples:
  funtun socks5d chain='rewrite from=hello to=HOWDY'
  curl --socks5-hostname 127.0.0.1:1080 http://example.org/
  funtun socks5d adduser ~/.config/funtun/socks-users alice direct
  funtun socks5d --listen 0.0.0.0:1080 --listen [::]:1080 --users ~/.config/funtun/socks-users
  funtun socks5d --listen 192.168.1.2:1080 --allow 192.168.1.0/24 chain='socks5 server=127.0.0.1:9050'
  funtun socks5d --map services.map chain='tls cert=c.pem key=k.pem'
  systemd-socket-activate -l 127.0.0.1:1080 --fdname=socks funtun socks5d --listen fd:socks

When the profile is plain ` + "`direct`" + ` and there is no --users or --map, CONNECTs
to addresses are served by one event loop per CPU, which costs about a
third less CPU per connection; everything else takes the general path.
--event-loop=false sends every client the general way.

SIGHUP recompiles every profile and rereads --users and --map, as one:
when a profile does not compile, a file is broken, or a profile still in
use (the command's, a user's) is gone, nothing changes and the error says
what is missing.

UDP ASSOCIATE serves only the client's address, and of it the port the
request names, or, when it names 0, the port of the first datagram within
10s. Datagrams to broadcast and multicast addresses are dropped unless
--udp-broadcast is given.`

func init() {
	cli.Register(&cli.Command{
		Name:    "socks5d",
		Summary: "a SOCKS5 server whose connections go through a profile",
		Usage:   usage,
		Run:     run,
		Daemon:  true, // --pprof
	})
}

const defaultListen = "127.0.0.1:1080"

func run(ctx context.Context, env *cli.Env, args []string) int {
	if len(args) > 0 && args[0] == "adduser" {
		return runAddUser(env, args[1:])
	}
	c, _ := cli.Lookup("socks5d")
	fs := env.FlagSet(c)
	var listens, allows cli.StringList
	fs.Var(&listens, "listen", "address to accept SOCKS5 clients on, or fd:NAME / fd:N for a socket systemd passed; repeat for more (default "+defaultListen+")")
	fs.Var(&allows, "allow", "serve only clients from this network (CIDR or address); repeat or give a comma list")
	usersFile := fs.String("users", "", "require username/password logins checked against this file (user:bcrypt-hash[:profile] lines)")
	mapFile := fs.String("map", "", "server-side variant: map requested destinations to local services (PATTERN:PORT -> TARGET lines)")
	maxConns := fs.Int("max-conns", 10000, "client connections served at once; more are closed at once")
	maxBinds := fs.Int("max-binds", defaultMaxBinds, "BIND listeners and UDP associations open at once; more requests get general failure")
	udpBroadcast := fs.Bool("udp-broadcast", false, "let UDP ASSOCIATE clients send to broadcast and multicast addresses (refused by default)")
	handshake := fs.Duration("handshake-timeout", 10*time.Second, "time a client has for greeting, login and request")
	idle := fs.Duration("idle", time.Hour, "end a TCP flow after this long without traffic either way (0: never)")
	udpIdle := fs.Duration("udp-idle", 2*time.Minute, "end a UDP ASSOCIATE destination after this long without datagrams")
	bindTimeout := fs.Duration("bind-timeout", 2*time.Minute, "how long BIND waits for the incoming connection")
	eventLoop := fs.Bool("event-loop", true, "serve plain-direct CONNECTs on event loops, without a goroutine per client (false: every client takes the general path)")
	sel, rest, done, err := env.ParseFlags(fs, args)
	if done {
		return 0
	}
	if err != nil {
		return env.Usagef("socks5d", "%v", err)
	}
	if len(rest) > 0 {
		return env.Usagef("socks5d", "unexpected argument %q", rest[0])
	}
	if *maxConns < 1 {
		return env.Usagef("socks5d", "--max-conns must be at least 1")
	}
	if *maxBinds < 1 {
		return env.Usagef("socks5d", "--max-binds must be at least 1")
	}
	if *handshake <= 0 || *udpIdle <= 0 || *bindTimeout <= 0 || *idle < 0 {
		return env.Usagef("socks5d", "timeouts must be positive (--idle may be 0 for none)")
	}
	allow, err := parseAllow(allows)
	if err != nil {
		return env.Usagef("socks5d", "--allow: %v", err)
	}
	eng, err := env.Engine()
	if err != nil {
		return env.Errorf("socks5d", "%v", err)
	}
	pl, err := eng.Resolve(sel)
	if err != nil {
		return env.Errorf("socks5d", "%v", err)
	}
	if !pl.Accepts(funnel.Stream) {
		return env.Errorf("socks5d", "profile %s carries %s flows; SOCKS5 needs one that carries streams", pl.Name, pl.Shapes())
	}
	srv := &Server{
		Engine: eng, Selector: sel, Allow: allow,
		HandshakeTimeout: *handshake, IdleTimeout: *idle, UDPIdle: *udpIdle,
		BindTimeout: *bindTimeout, MaxConns: *maxConns, MaxBinds: *maxBinds,
		UDPBroadcast: *udpBroadcast, GeneralOnly: !*eventLoop, Log: env.Log,
	}
	if *usersFile != "" {
		u, err := loadUsersChecked(eng, *usersFile)
		if err != nil {
			return env.Errorf("socks5d", "%v", err)
		}
		srv.SetUsers(u)
	}
	if *mapFile != "" {
		m, err := LoadMap(*mapFile)
		if err != nil {
			return env.Errorf("socks5d", "%v", err)
		}
		srv.SetMap(m)
	}

	// What the user wrote names each listener in messages; systemd's
	// sockets go by their address.
	ls, named, addrs, unused, err := activatedListeners(listens)
	if err != nil {
		return env.Errorf("socks5d", "%v", err)
	}
	for _, s := range unused {
		env.Log.Warn("a socket systemd passed is not served: no --listen fd: names it", "socket", s.String())
	}
	if len(listens) == 0 && len(ls) == 0 {
		addrs = append(addrs, defaultListen)
	}
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	for _, addr := range addrs {
		lc := net.ListenConfig{}
		if loopbackAddr(addr) {
			// Clients on this machine cannot vanish behind a
			// middlebox: keepalive probes would find nothing.
			lc.KeepAlive = -1
		}
		l, err := lc.Listen(ctx, listenNetwork(addr), addr)
		if err != nil {
			closeAll()
			return env.Errorf("socks5d", "cannot listen on %s: %v", addr, netx.OpCause(err))
		}
		ls = append(ls, l)
		named = append(named, addr)
	}
	if *usersFile == "" && len(allow) == 0 {
		for i, l := range ls {
			if open := openToNetwork(l.Addr()); open != "" {
				closeAll()
				return env.Errorf("socks5d", "refusing to listen on %s without --users or --allow: %s, and anyone who reaches it could use your network through it.\n"+
					"Require logins with --users FILE (add users with `funtun socks5d adduser FILE USER`), or name the clients you trust with --allow CIDR (e.g. --allow 192.168.1.0/24).", named[i], open)
			}
		}
	}
	var where []string
	for _, l := range ls {
		where = append(where, l.Addr().String())
	}
	auth := "none"
	if *usersFile != "" {
		auth = "username/password (" + *usersFile + ")"
	}
	attrs := []any{"listen", strings.Join(where, ","), "profile", sel.String(), "auth", auth}
	if len(allow) > 0 {
		attrs = append(attrs, "allow", allows.String())
	}
	if *mapFile != "" {
		attrs = append(attrs, "map", *mapFile)
	}
	env.Log.Info("socks5d serving", attrs...)

	cli.ReloadOnHUP(ctx, eng, reloadFiles(env, eng.Catalog, srv, *usersFile, *mapFile))
	// The sockets are bound: connections from now on wait in their
	// backlogs, so the service manager may send clients.
	if err := sdactivate.Ready(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	err = srv.Serve(ctx, ls...)
	if err := sdactivate.Stopping(); err != nil {
		env.Log.Warn("cannot notify the service manager", "err", err)
	}
	if err != nil && ctx.Err() == nil {
		return env.Errorf("socks5d", "%v", err)
	}
	return 0
}

// loopbackAddr: addr is HOST:PORT with a loopback HOST.
func loopbackAddr(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// listenNetwork keeps an IPv4 address to IPv4: Go would listen on both
// families for 0.0.0.0, which is more than the user asked for.
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() {
			return "tcp4"
		}
		return "tcp6"
	}
	return "tcp"
}

// openToNetwork says why an address is reachable from other machines, or
// "" when it is not (loopback, a Unix socket).
func openToNetwork(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return ""
	case ip.IsUnspecified():
		return "that is every address of this machine"
	}
	return "that address is not loopback"
}

func parseAllow(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range list {
		for _, s := range strings.Split(item, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p.Masked())
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR (192.168.1.0/24, fd00::/8) or an address", s)
			}
			ip = ip.Unmap()
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return out, nil
}

// loadUsersChecked loads a users file and makes sure that every profile
// it names is among the profiles in force.
func loadUsersChecked(eng *funnel.Engine, path string) (*Users, error) {
	return loadUsersIn(eng.Catalog, eng.Catalog.Current(), path)
}

// loadUsersIn loads a users file and makes sure that every profile it
// names is in set: the profiles in force, or those a reload would bring.
// The error names the line, the user and the profile.
func loadUsersIn(c *funnel.Catalog, set *funnel.Set, path string) (*Users, error) {
	u, err := LoadUsers(path)
	if err != nil {
		return nil, err
	}
	if set == nil {
		return nil, fmt.Errorf("users file %s: no profiles loaded", path)
	}
	type use struct {
		user string
		e    userEntry
	}
	var uses []use
	for user, e := range u.entries {
		if e.profile != "" {
			uses = append(uses, use{user, e})
		}
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].e.line < uses[j].e.line })
	dir := "~/.config/funtun/profiles"
	if len(c.Dirs) > 0 {
		dir = c.Dirs[0]
	}
	var errs []error
	for _, x := range uses {
		name := x.e.profile
		if _, ok := set.Profile(name); ok {
			continue
		}
		if cause := set.Broken(name); cause != nil {
			errs = append(errs, fmt.Errorf("users file %s:%d: profile %q, which user %s takes, does not compile: %w", path, x.e.line, name, x.user, cause))
			continue
		}
		errs = append(errs, fmt.Errorf("users file %s:%d: no profile named %q, which user %s takes: put it in %s", path, x.e.line, name, x.user, filepath.Join(dir, name+funnel.ProfileExt)))
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return u, nil
}

// reloadFiles is socks5d's part of a reload (cli.Reload): the users and
// map files are read again and checked against the new profiles, and go
// in force with them, or the whole reload is refused and the old
// profiles, users and map all stay.
func reloadFiles(env *cli.Env, c *funnel.Catalog, srv *Server, usersFile, mapFile string) cli.ReloadStep {
	return func(set *funnel.Set) (func(), error) {
		var errs []error
		var u *Users
		var m *Map
		var err error
		if usersFile != "" {
			if u, err = loadUsersIn(c, set, usersFile); err != nil {
				errs = append(errs, err)
			}
		}
		if mapFile != "" {
			if m, err = LoadMap(mapFile); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		return func() {
			if u != nil {
				srv.SetUsers(u)
				env.Log.Info("users file reloaded", "file", usersFile)
			}
			if m != nil {
				srv.SetMap(m)
				env.Log.Info("map file reloaded", "file", mapFile)
			}
			// Interfaces may have changed too: a reload is the
			// administrator's way to say so.
			srv.refreshBroadcasts()
		}, nil
	}
}

func runAddUser(env *cli.Env, args []string) int {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fmt.Fprintln(env.Stdout, "funtun socks5d adduser FILE USER [PROFILE]\n\n"+
				"Adds USER to the users file FILE (created with mode 0600 if missing) with a bcrypt\n"+
				"hash of the password read from the terminal, or from the first line of stdin.\n"+
				"PROFILE makes that user's flows take that profile. An existing line for USER is replaced.")
			return 0
		}
	}
	if len(args) < 2 || len(args) > 3 {
		return env.Usagef("socks5d", "adduser needs FILE USER [PROFILE]")
	}
	file, user, profile := args[0], args[1], ""
	if len(args) == 3 {
		profile = args[2]
	}
	if err := checkUserName(user); err != nil {
		return env.Usagef("socks5d", "adduser: %v", err)
	}
	pass, err := readPasswordInput(os.Stdin, env.Stderr, user)
	if err != nil {
		return env.Errorf("socks5d", "adduser: %v", err)
	}
	if pass == "" {
		return env.Errorf("socks5d", "adduser: empty password refused")
	}
	replaced, err := AddUser(file, user, pass, profile)
	if err != nil {
		return env.Errorf("socks5d", "adduser: %s: %v", file, err)
	}
	verb := "added"
	if replaced {
		verb = "replaced"
	}
	if profile != "" {
		fmt.Fprintf(env.Stderr, "%s user %s (profile %s) in %s\n", verb, user, profile, file)
	} else {
		fmt.Fprintf(env.Stderr, "%s user %s in %s\n", verb, user, file)
	}
	return 0
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// joinErrors joins a file's errors, the first few of them: a file that is
// wholly of the wrong kind would otherwise print one line per line.
func joinErrors(errs []error) error {
	const most = 5
	if len(errs) > most {
		errs = append(errs[:most:most], fmt.Errorf("... and %d more errors", len(errs)-most))
	}
	return errors.Join(errs...)
}

// defaultMaxBinds is --max-binds: BIND listeners and UDP associations open
// at once. Each holds two or three files (the client's connection, a
// listener or relay socket, a datagram flow's socket per destination) for
// as long as its client likes; 256 of them stay well inside the usual
// 1,024-file soft limit with room for ordinary clients.
const defaultMaxBinds = 256

// takeBindSlot counts a BIND listener or UDP association against
// MaxBinds; release gives the slot back. When none is left it reports
// false (and warns at most every 10s): the request is refused with a
// SOCKS reply, while ordinary clients, whose CONNECTs need files too, go
// on being served.
func (s *Server) takeBindSlot(what string) (release func(), ok bool) {
	max := int64(s.MaxBinds)
	if max <= 0 {
		max = defaultMaxBinds
	}
	if s.binds.Add(1) > max {
		s.binds.Add(-1)
		n := s.bindsRefused.Add(1)
		s.mu.Lock()
		warn := time.Since(s.lastBindMax) >= 10*time.Second
		if warn {
			s.lastBindMax = time.Now()
		}
		s.mu.Unlock()
		if warn {
			s.Log.Warn("too many BINDs and UDP associations: refusing "+what+" (raise --max-binds?)", "max_binds", max, "refused_total", n)
		}
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { s.binds.Add(-1) }) }, true
}

// BindsRefused counts the BIND and UDP ASSOCIATE requests refused for
// want of a slot (MaxBinds).
func (s *Server) BindsRefused() int64 { return s.bindsRefused.Load() }

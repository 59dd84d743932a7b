// Package firewall is `funtun firewall`: it installs, lists and removes the
// nftables rules (and, for tproxy, the fwmark routing) that send chosen
// traffic to `funtun redirect`. Everything it installs lives in one table
// of its own, so it never edits an administrator's rules, and `remove`
// takes away exactly what `apply` added.
package firewall

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os/user"
	"path"
	"strconv"
	"strings"

	"github.com/funtun/funtun/internal/cli"
)

// DefaultSkipMark and DefaultPort are shared knowledge with `funtun
// redirect` (hooks/redirect's DefaultMark and DefaultPort): its own
// outgoing sockets carry the mark (SO_MARK), which the rules let pass, so
// redirected traffic is never redirected again.
const (
	DefaultTable      = "funtun"
	DefaultPort       = 7474
	DefaultSkipMark   = 0x66756e // "fun"
	DefaultMark       = 0x6675   // tproxy's fwmark, routed to the local table
	DefaultRouteTable = 26228    // 0x6674
)

const usage = `funtun firewall apply [--port PORT] [selectors…] [options]
funtun firewall remove [--table NAME]
funtun firewall show [--table NAME]

Installs nftables rules, in a table of their own (inet funtun), that send
the chosen traffic to a local port where ` + "`funtun redirect`" + ` handles it. TCP
goes by REDIRECT (nat) unless --tproxy is given; UDP always by TPROXY,
which also needs an fwmark routing rule and a local route: apply adds
them, and records them in the table, so that remove takes away exactly
what apply added and nothing else. Applying again replaces the table.

Whose traffic (at least one):
  --in IFACE       packets arriving on IFACE (a gateway's clients; "eth*" works)
  --local          every program on this host
  --user NAME|UID  this host's programs running as this user
  --cgroup PATH    this host's programs in this cgroup v2 (path under the
                   cgroup2 mount, e.g. system.slice/app.service)
Which of it (optional; each kind is a list, the kinds combine):
  --dst CIDR       destination network or address, IPv4 or IPv6
  --dport PORTS    destination ports: 80, 80,443 or 8000-8100

funtun's own connections carry SO_MARK --skip-mark (funtun redirect sets
it), and the rules let them pass first; --exempt-user lets a user's
programs pass too. Needs root or CAP_NET_ADMIN, except --dry-run, which
prints the equivalent nft script and ip commands and changes nothing.

Examples:
  funtun firewall apply --user alice --dport 80,443
  funtun firewall apply --tproxy --proto tcp,udp --in eth1
  funtun firewall apply --local --dst 10.0.0.0/8 --dry-run > funtun.nft && nft -c -f funtun.nft
  funtun firewall show
  funtun firewall remove

docs/hooks/firewall.md has the same rules written by hand, for nft and
iptables-nft.`

func init() {
	cli.Register(&cli.Command{
		Name:    "firewall",
		Summary: "install, show or remove nftables rules that send traffic to funtun redirect",
		Usage:   usage,
		Run:     run,
	})
}

// Options is what `apply` installs.
type Options struct {
	Table  string
	Port   uint16
	TCP    bool
	UDP    bool
	TProxy bool // TCP by tproxy rather than redirect

	Dst     []netip.Prefix
	Dports  []portRange
	Users   []account
	Cgroups []cgroupSel
	In      []string
	Local   bool

	SkipMark    uint32
	ExemptUsers []account
	Mark        uint32
	RouteTable  uint32
}

type account struct {
	uid  uint32
	name string
}

type portRange struct{ lo, hi uint16 }

func (p portRange) String() string {
	if p.lo == p.hi {
		return strconv.Itoa(int(p.lo))
	}
	return fmt.Sprintf("%d-%d", p.lo, p.hi)
}

// cgroupSel matches sockets of one cgroup v2 and its descendants: the
// kernel compares the socket's ancestor at level with id.
type cgroupSel struct {
	path    string // as the user gave it, cleaned
	level   uint32
	id      uint64
	nftPath string // the path as nft resolves it (under /sys/fs/cgroup), "" if it cannot
}

func (c cgroupSel) term() term {
	return term{kind: matchCgroup, num: c.level, id: c.id, str: c.nftPath}
}

func (o *Options) families() (v4, v6 bool) {
	if len(o.Dst) == 0 {
		return true, true
	}
	for _, d := range o.Dst {
		if d.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	return v4, v6
}

// errNeedsPrivilege is how every netlink EPERM reaches the user.
var errNeedsPrivilege = errors.New("needs root or CAP_NET_ADMIN (operation not permitted)")

func run(ctx context.Context, env *cli.Env, args []string) int {
	c, _ := cli.Lookup("firewall")
	if len(args) == 0 {
		return env.Usagef("firewall", "needs apply, remove or show")
	}
	verb := args[0]
	switch verb {
	case "-h", "-help", "--help", "help":
		// apply's options are the ones worth listing.
		return runApply(env, c, []string{"--help"})
	case "apply":
		return runApply(env, c, args[1:])
	case "remove", "show":
		fs := env.FlagSet(c)
		table := fs.String("table", DefaultTable, "name of funtun's table (family inet)")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return env.Usagef("firewall", "%v", err)
		}
		if fs.NArg() > 0 {
			return env.Usagef("firewall", "%s takes no argument %q", verb, fs.Arg(0))
		}
		if err := checkTableName(*table); err != nil {
			return env.Usagef("firewall", "--table: %v", err)
		}
		var err error
		if verb == "remove" {
			err = remove(env.Stdout, *table)
		} else {
			err = show(env.Stdout, *table)
		}
		if err != nil {
			return env.Errorf("firewall "+verb, "%v", err)
		}
		return 0
	default:
		return env.Usagef("firewall", "unknown action %q: use apply, remove or show", verb)
	}
}

func runApply(env *cli.Env, c *cli.Command, args []string) int {
	fs := env.FlagSet(c)
	var dsts, dports, users, cgroups, ins, exempt cli.StringList
	table := fs.String("table", DefaultTable, "name of funtun's table (family inet)")
	port := fs.Int("port", DefaultPort, "the local `PORT` funtun redirect listens on")
	proto := fs.String("proto", "tcp", "which protocols: tcp, udp or tcp,udp (UDP always goes by tproxy)")
	tproxy := fs.Bool("tproxy", false, "send TCP by tproxy (mangle prerouting) instead of redirect (nat)")
	fs.Var(&dsts, "dst", "destination `CIDR` or address to send (repeatable, or comma-separated)")
	fs.Var(&dports, "dport", "destination `PORTS` to send: 80, 80,443, 8000-8100 (repeatable)")
	fs.Var(&users, "user", "send this host's programs running as this `USER` (name or uid; repeatable)")
	fs.Var(&cgroups, "cgroup", "send this host's programs in this cgroup v2 `PATH` (repeatable)")
	fs.Var(&ins, "in", "send packets arriving on this `IFACE`, as a gateway (repeatable; a trailing * matches a prefix)")
	local := fs.Bool("local", false, "send every program on this host (narrow it with --dst/--dport)")
	skipMark := fs.String("skip-mark", fmt.Sprintf("0x%x", DefaultSkipMark), "packets with this SO_MARK pass untouched (funtun redirect's own connections)")
	fs.Var(&exempt, "exempt-user", "this `USER`'s programs pass untouched (run funtun as it; repeatable)")
	mark := fs.String("mark", fmt.Sprintf("0x%x", DefaultMark), "the fwmark tproxy packets get, routed to --route-table")
	routeTable := fs.Int("route-table", DefaultRouteTable, "routing table that holds tproxy's local route")
	dryRun := fs.Bool("dry-run", false, "print the nft script and ip commands apply would run, and change nothing")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return env.Usagef("firewall", "%v", err)
	}
	if fs.NArg() > 0 {
		return env.Usagef("firewall", "unexpected argument %q (selectors are options: --dst, --dport, --user, --cgroup, --in, --local)", fs.Arg(0))
	}
	o := &Options{Table: *table, TProxy: *tproxy, Local: *local, In: ins}
	fail := func(format string, a ...any) int { return env.Usagef("firewall", format, a...) }
	if err := checkTableName(*table); err != nil {
		return fail("--table: %v", err)
	}
	if *port < 1 || *port > 65535 {
		return fail("--port %d: use 1-65535, where funtun redirect listens", *port)
	}
	o.Port = uint16(*port)
	for _, p := range strings.Split(*proto, ",") {
		switch strings.TrimSpace(p) {
		case "tcp":
			o.TCP = true
		case "udp":
			o.UDP = true
		default:
			return fail("--proto %q: use tcp, udp or tcp,udp", *proto)
		}
	}
	if *tproxy && !o.TCP {
		return fail("--tproxy is about TCP; UDP always goes by tproxy")
	}
	var err error
	if o.Dst, err = parseDsts(dsts); err != nil {
		return fail("--dst %v", err)
	}
	if o.Dports, err = parseDports(dports); err != nil {
		return fail("--dport %v", err)
	}
	if o.Users, err = lookupUsers(users); err != nil {
		return fail("--user %v", err)
	}
	if o.ExemptUsers, err = lookupUsers(exempt); err != nil {
		return fail("--exempt-user %v", err)
	}
	for _, i := range ins {
		if err := checkIfname(i); err != nil {
			return fail("--in %q: %v", i, err)
		}
	}
	if o.SkipMark, err = parseMark(*skipMark); err != nil {
		return fail("--skip-mark %v", err)
	}
	if o.Mark, err = parseMark(*mark); err != nil {
		return fail("--mark %v", err)
	}
	if o.Mark == o.SkipMark {
		return fail("--mark and --skip-mark are both 0x%x: tproxied packets would pass as funtun's own", o.Mark)
	}
	switch *routeTable {
	case 0, 253, 254, 255: // unspec, default, main, local
		return fail("--route-table %d is a table the system uses: pick another", *routeTable)
	}
	if *routeTable < 0 || int64(*routeTable) > 0xffffffff {
		return fail("--route-table %d: not a table number", *routeTable)
	}
	o.RouteTable = uint32(*routeTable)
	for _, cg := range cgroups {
		sel, err := resolveCgroup(cg)
		if err != nil {
			return env.Errorf("firewall apply", "--cgroup %s: %v", cg, err)
		}
		o.Cgroups = append(o.Cgroups, sel)
	}
	p, err := o.plan()
	if err != nil {
		return fail("%v", err)
	}
	if *dryRun {
		fmt.Fprint(env.Stdout, p.script("funtun firewall apply "+strings.Join(args, " ")+"\n(dry run: nothing was changed; load it with `nft -f FILE`)"))
		return 0
	}
	if err := install(env.Stdout, p); err != nil {
		return env.Errorf("firewall apply", "%v", err)
	}
	return 0
}

func checkTableName(s string) error {
	if s == "" || len(s) > 255 {
		return errors.New("needs a name of 1 to 255 characters")
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("%q: use letters, digits, - and _", s)
		}
	}
	return nil
}

// ifnameSize is IFNAMSIZ: the kernel's interface names are shorter.
const ifnameSize = 16

func checkIfname(s string) error {
	name := strings.TrimSuffix(s, "*")
	switch {
	case name == "":
		return errors.New("needs an interface name")
	case len(name) >= ifnameSize:
		return fmt.Errorf("interface names have at most %d characters", ifnameSize-1)
	case strings.ContainsAny(name, "*/ \t\"\\"):
		return errors.New("not an interface name")
	}
	return nil
}

func splitList(list []string) []string {
	var out []string
	for _, l := range list {
		for _, v := range strings.Split(l, ",") {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}

func parseDsts(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range splitList(list) {
		var p netip.Prefix
		if strings.Contains(v, "/") {
			var err error
			if p, err = netip.ParsePrefix(v); err != nil {
				return nil, fmt.Errorf("%q: not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)", v)
			}
		} else {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return nil, fmt.Errorf("%q: not an address or CIDR", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("%q: zones do not belong in a firewall rule", v)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmappedBits(p.Addr()))
		if p.Bits() < 0 {
			return nil, fmt.Errorf("%q: an IPv4-mapped prefix shorter than ::ffff:0:0/96", v)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func unmappedBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

func parseDports(list []string) ([]portRange, error) {
	var out []portRange
	for _, v := range splitList(list) {
		lo, hi, isRange := strings.Cut(v, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || a == 0 || b < a {
			return nil, fmt.Errorf("%q: use a port (1-65535) or a range LOW-HIGH", v)
		}
		out = append(out, portRange{uint16(a), uint16(b)})
	}
	return out, nil
}

func lookupUsers(list []string) ([]account, error) {
	var out []account
	for _, v := range splitList(list) {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			name := v
			if u, err := user.LookupId(v); err == nil {
				name = u.Username
			}
			out = append(out, account{uid: uint32(n), name: name})
			continue
		}
		u, err := user.Lookup(v)
		if err != nil {
			return nil, fmt.Errorf("%q: no such user", v)
		}
		n, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q: uid %q is not a number", v, u.Uid)
		}
		out = append(out, account{uid: uint32(n), name: v})
	}
	return out, nil
}

func parseMark(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q: use a non-zero 32-bit number (0x66756e or 6714734)", s)
	}
	return uint32(n), nil
}

// cgroupLevel is the depth the kernel compares at: the root is level 0,
// system.slice 1, system.slice/app.service 2.
func cgroupLevel(p string) (clean string, level uint32, err error) {
	clean = strings.Trim(path.Clean("/"+p), "/")
	if clean == "" {
		return "", 0, errors.New("the root cgroup holds every program: use --local")
	}
	return clean, uint32(strings.Count(clean, "/") + 1), nil
}

package inetd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
)

// Line is one usable line of an inetd.conf.
type Line struct {
	File string
	Num  int

	Service string         // the first field as written ("echo", "127.0.0.1:7")
	Name    string         // its service part, without the host ("echo", "7")
	Addr    netip.AddrPort // where to listen; an unspecified address is every one
	Stream  bool           // socket type stream (else dgram)
	Proto   string         // the protocol field as written
	Network string         // Go's: tcp4, tcp6, tcp (both), udp4, udp6, udp
	Wait    bool
	// Rate is the most starts a minute (nowait.N, wait.N); 0 when the line
	// gives none.
	Rate int

	User, Group string
	// Cred is who the child runs as; nil runs it as funtun itself.
	Cred *Cred

	// Selector is the line's profile=/chain= (HasSelector), else the
	// command's.
	Selector    funnel.Selector
	HasSelector bool

	Path string   // the server program, absolute
	Args []string // argv, from argv[0]
}

// Cred is a child's user, group and supplementary groups.
type Cred struct {
	UID, GID uint32
	Groups   []uint32
}

// Pos is FILE:LINE, how every message names the line.
func (l *Line) Pos() string { return l.File + ":" + strconv.Itoa(l.Num) }

// Key is what makes two lines the same listener: a reload keeps the socket
// open when a line with the same key is still there, whatever else changed
// (program, user, profile, rate).
func (l *Line) Key() string {
	kind := "dgram"
	if l.Stream {
		kind = "stream"
	}
	mode := "nowait"
	if l.Wait {
		mode = "wait"
	}
	return kind + "/" + l.Network + "/" + l.Addr.String() + "/" + mode
}

// What describes the line for logs: "echo stream tcp nowait /bin/cat".
func (l *Line) What() string {
	kind := "dgram"
	if l.Stream {
		kind = "stream"
	}
	mode := "nowait"
	if l.Wait {
		mode = "wait"
	}
	return fmt.Sprintf("%s %s %s %s %s", l.Service, kind, l.Proto, mode, l.Path)
}

// ParseOptions says what parsing checks lines against.
type ParseOptions struct {
	// Root: funtun runs as root and may start children as anyone; else
	// only lines for its own user are usable.
	Root bool
	// Self is the user funtun runs as (its name, for lines and messages).
	Self *user.User
	// Default is the command's selector, for lines without their own.
	Default funnel.Selector
	// Resolve finds a selector's pipeline in the set the lines are for
	// (the live one, or the one a reload is about to bring); nil skips
	// profile checks.
	Resolve func(funnel.Selector) (*funnel.Pipeline, error)
}

// LineError is a line funtun cannot use.
type LineError struct {
	File string
	Num  int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Num, e.Msg) }

// FileError is a config file that cannot be read at all.
type FileError struct{ Err error }

func (e *FileError) Error() string { return "inetd config: " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// ParseFile reads an inetd.conf. It returns the usable lines and one error
// per line it cannot use (a *LineError naming FILE:LINE), or, when the
// file cannot be read at all, no lines and that error.
func ParseFile(path string, opt ParseOptions) ([]*Line, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{&FileError{err}}
	}
	return Parse(path, string(data), opt)
}

// Parse reads the text of an inetd.conf named file.
func Parse(file, text string, opt ParseOptions) ([]*Line, []error) {
	var lines []*Line
	var errs []error
	defaultHost := ""
	for i, raw := range strings.Split(text, "\n") {
		num := i + 1
		s := strings.TrimSpace(raw)
		if s == "" || s[0] == '#' {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, &LineError{File: file, Num: num, Msg: fmt.Sprintf(format, args...)})
		}
		// BSD inetd: a line of just "HOST:" makes HOST the listen
		// address of the lines after it that name none ("*:" resets).
		if h, ok := strings.CutSuffix(s, ":"); ok && !strings.ContainsAny(s, " \t") {
			defaultHost = h
			if h == "*" {
				defaultHost = ""
			}
			continue
		}
		l, err := parseLine(file, num, s, defaultHost, opt)
		if err != nil {
			bad("%v", err)
			continue
		}
		if other := clash(lines, l); other != nil {
			bad("%s %s port %d is already served by line %d (%s); one listener per address and port", l.Proto, kindName(l.Stream), l.Addr.Port(), other.Num, other.Service)
			continue
		}
		lines = append(lines, l)
	}
	return lines, errs
}

func kindName(stream bool) string {
	if stream {
		return "stream"
	}
	return "dgram"
}

// clash finds an earlier line whose socket would take the same port as l's.
func clash(lines []*Line, l *Line) *Line {
	for _, o := range lines {
		if o.Stream != l.Stream || o.Addr.Port() != l.Addr.Port() {
			continue
		}
		if !familiesMeet(o.Network, l.Network) {
			continue
		}
		if o.Addr.Addr() == l.Addr.Addr() || o.Addr.Addr().IsUnspecified() || l.Addr.Addr().IsUnspecified() {
			return o
		}
	}
	return nil
}

// familiesMeet: two sockets of these networks can collide on one port. A
// dual-stack socket (tcp, udp) meets both families.
func familiesMeet(a, b string) bool {
	fa, fb := a[len(a)-1], b[len(b)-1]
	if fa == '4' && fb == '6' || fa == '6' && fb == '4' {
		return false
	}
	return true
}

// protocols maps the protocol field to Go's network and whether it is for
// stream sockets. tcp and udp are IPv4 as in every BSD and Linux inetd;
// tcp46/udp46 are one dual-stack socket.
var protocols = map[string]struct {
	network string
	stream  bool
}{
	"tcp": {"tcp4", true}, "tcp4": {"tcp4", true}, "tcp6": {"tcp6", true}, "tcp46": {"tcp", true},
	"udp": {"udp4", false}, "udp4": {"udp4", false}, "udp6": {"udp6", false}, "udp46": {"udp", false},
}

func parseLine(file string, num int, s, defaultHost string, opt ParseOptions) (*Line, error) {
	fields, err := splitFields(s)
	if err != nil {
		return nil, err
	}
	if len(fields) < 6 {
		return nil, fmt.Errorf("%d fields, need at least 6: service socket-type protocol wait|nowait user[.group] server-path [args…]", len(fields))
	}
	l := &Line{File: file, Num: num, Service: fields[0], Proto: fields[2]}

	switch fields[1] {
	case "stream":
		l.Stream = true
	case "dgram":
	case "raw", "rdm", "seqpacket":
		return nil, fmt.Errorf("socket type %q is not supported (stream and dgram are)", fields[1])
	default:
		return nil, fmt.Errorf("unknown socket type %q (stream or dgram)", fields[1])
	}
	p, ok := protocols[l.Proto]
	switch {
	case !ok && strings.HasPrefix(l.Proto, "rpc/"):
		return nil, fmt.Errorf("RPC services (%s) are not supported", l.Proto)
	case !ok && strings.HasPrefix(l.Proto, "unix"):
		return nil, fmt.Errorf("Unix-domain services (%s) are not supported", l.Proto)
	case !ok:
		return nil, fmt.Errorf("unknown protocol %q (tcp, tcp6, tcp46, udp, udp6, udp46)", l.Proto)
	case p.stream != l.Stream:
		return nil, fmt.Errorf("protocol %s does not go with socket type %s (stream is tcp…, dgram is udp…)", l.Proto, fields[1])
	}
	l.Network = p.network

	if err := l.parseService(defaultHost); err != nil {
		return nil, err
	}
	if err := l.parseWait(fields[3]); err != nil {
		return nil, err
	}
	if !l.Stream && !l.Wait {
		return nil, fmt.Errorf("dgram nowait (a child per datagram) is not supported: use wait, so the child gets the socket and reads the datagrams itself")
	}
	if err := l.parseUser(fields[4], opt); err != nil {
		return nil, err
	}

	rest := fields[5:]
	if sel, ok := selectorWord(rest[0]); ok {
		s, _, err := funnel.TakeSelector([]string{sel})
		if err != nil {
			return nil, err
		}
		l.Selector, l.HasSelector = s, true
		rest = rest[1:]
		if len(rest) == 0 {
			return nil, fmt.Errorf("no server program after %s", sel)
		}
	} else {
		l.Selector = opt.Default
	}
	if err := l.parseProgram(rest); err != nil {
		return nil, err
	}
	if err := l.CheckProfile(opt.Resolve); err != nil {
		return nil, err
	}
	return l, nil
}

// selectorWord: the funtun word before server-path. A classic server-path
// is absolute or "internal", so a word with "=" cannot be one.
func selectorWord(w string) (string, bool) {
	if strings.HasPrefix(w, "profile=") || strings.HasPrefix(w, "chain=") {
		return w, true
	}
	return "", false
}

// splitFields splits on blanks, except that the value of a chain= word may
// be quoted ('…' or "…") to hold blanks. Nothing else is unquoted: classic
// inetd passes quotes in arguments through as they are.
func splitFields(s string) ([]string, error) {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, nil
		}
		if v, ok := strings.CutPrefix(s, "chain="); ok && v != "" && (v[0] == '\'' || v[0] == '"') {
			end := strings.IndexByte(v[1:], v[0])
			if end < 0 {
				return nil, fmt.Errorf("chain= value has no closing %c", v[0])
			}
			out = append(out, "chain="+v[1:1+end])
			s = v[2+end:]
			if s != "" && s[0] != ' ' && s[0] != '\t' {
				return nil, fmt.Errorf("a blank must follow the quoted chain= value")
			}
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		out = append(out, s[:end])
		s = s[end:]
	}
}

func (l *Line) parseService(defaultHost string) error {
	host, name := defaultHost, l.Service
	if strings.HasPrefix(name, "[") {
		end := strings.Index(name, "]:")
		if end < 0 {
			return fmt.Errorf("service %q: write an IPv6 host as [ADDR]:SERVICE", l.Service)
		}
		host, name = name[1:end], name[end+2:]
	} else if i := strings.LastIndexByte(name, ':'); i >= 0 {
		host, name = name[:i], name[i+1:]
	}
	if name == "" {
		return fmt.Errorf("service %q names no service", l.Service)
	}
	l.Name = name
	netw := "tcp"
	if !l.Stream {
		netw = "udp"
	}
	port, err := lookupPort(netw, name)
	if err != nil {
		return err
	}
	ip, err := listenIP(host, l.Network)
	if err != nil {
		return fmt.Errorf("service %q: %v", l.Service, err)
	}
	l.Addr = netip.AddrPortFrom(ip, port)
	return nil
}

func lookupPort(netw, name string) (uint16, error) {
	if n, err := strconv.Atoi(name); err == nil {
		if n < 1 || n > 65535 {
			return 0, fmt.Errorf("port %d is out of range (1-65535)", n)
		}
		return uint16(n), nil
	}
	// Go reads /etc/services itself; no query leaves the machine.
	n, err := net.LookupPort(netw, name)
	if err != nil {
		return 0, fmt.Errorf("unknown service name %q for %s (not in /etc/services): give a port number", name, netw)
	}
	return uint16(n), nil
}

// listenIP is the address a line listens on: the unspecified address of
// its family when it names no host (or "*"), else the host's.
func listenIP(host, network string) (netip.Addr, error) {
	family := network[len(network)-1]
	if host == "" || host == "*" {
		if family == '4' {
			return netip.IPv4Unspecified(), nil
		}
		return netip.IPv6Unspecified(), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		kind := "ip"
		switch family {
		case '4':
			kind = "ip4"
		case '6':
			kind = "ip6"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ips, lerr := net.DefaultResolver.LookupNetIP(ctx, kind, host)
		if lerr != nil || len(ips) == 0 {
			return netip.Addr{}, fmt.Errorf("host %q is neither an address nor a name with an %s address", host, kind)
		}
		ip = ips[0]
	}
	ip = ip.Unmap()
	switch {
	case family == '4' && !ip.Is4():
		return netip.Addr{}, fmt.Errorf("host %s is not IPv4, which protocol %s4 listens on (use …6)", ip, network[:3])
	case family == '6' && !ip.Is6():
		return netip.Addr{}, fmt.Errorf("host %s is not IPv6, which protocol %s6 listens on", ip, network[:3])
	}
	return ip, nil
}

func (l *Line) parseWait(f string) error {
	mode, max, hasMax := strings.Cut(f, ".")
	switch mode {
	case "wait":
		l.Wait = true
	case "nowait":
	default:
		if strings.Contains(f, "/") {
			return fmt.Errorf("%q: the FreeBSD form wait|nowait/max-child/… is not supported; write nowait.N (N starts a minute) and use --max-children, --max-per-source", f)
		}
		return fmt.Errorf("fourth field %q: wait or nowait, optionally .N (at most N starts a minute)", f)
	}
	if hasMax {
		n, err := strconv.Atoi(max)
		if err != nil || n < 1 {
			return fmt.Errorf("%q: .N must be a whole number of starts a minute, at least 1", f)
		}
		l.Rate = n
	}
	return nil
}

func (l *Line) parseUser(f string, opt ParseOptions) error {
	name, group, hasGroup := strings.Cut(f, ":")
	if !hasGroup {
		name, group, hasGroup = strings.Cut(f, ".")
	}
	if i := strings.IndexByte(group, '/'); i >= 0 {
		group = group[:i] // FreeBSD's login class: there is no such thing here
	}
	if i := strings.IndexByte(name, '/'); i >= 0 {
		name = name[:i]
	}
	l.User, l.Group = name, group
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("unknown user %q", name)
	}
	if !opt.Root {
		if opt.Self == nil || u.Uid != opt.Self.Uid {
			self := "this user"
			if opt.Self != nil {
				self = opt.Self.Username
			}
			return fmt.Errorf("runs as %s, but funtun runs as %s, not root, and cannot switch users", name, self)
		}
		if hasGroup && group != "" {
			g, err := user.LookupGroup(group)
			if err != nil {
				return fmt.Errorf("unknown group %q", group)
			}
			if g.Gid != u.Gid {
				return fmt.Errorf("group %s is not %s's primary group, and funtun, not root, cannot switch groups", group, name)
			}
		}
		return nil
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("user %q has no numeric uid/gid (%s/%s)", name, u.Uid, u.Gid)
	}
	c := &Cred{UID: uint32(uid), GID: uint32(gid)}
	if hasGroup && group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("unknown group %q", group)
		}
		n, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return fmt.Errorf("group %q has no numeric gid (%s)", group, g.Gid)
		}
		c.GID = uint32(n)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return fmt.Errorf("user %s: cannot list supplementary groups: %v", name, err)
	}
	for _, id := range ids {
		if n, err := strconv.ParseUint(id, 10, 32); err == nil {
			c.Groups = append(c.Groups, uint32(n))
		}
	}
	l.Cred = c
	return nil
}

func (l *Line) parseProgram(rest []string) error {
	path := rest[0]
	switch {
	case path == "internal":
		return fmt.Errorf("internal services are not supported: give a program (e.g. /bin/cat for echo, /bin/date for daytime)")
	case !filepath.IsAbs(path):
		return fmt.Errorf("server program %q must be an absolute path", path)
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("server program %s does not exist", path)
	case err != nil:
		return fmt.Errorf("server program %s: %v", path, err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("server program %s is not a regular file", path)
	case st.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("server program %s is not executable", path)
	}
	l.Path = path
	l.Args = rest[1:]
	if len(l.Args) == 0 {
		// Classic lines always give argv[0]; some omit it.
		l.Args = []string{filepath.Base(path)}
	}
	return nil
}

// CheckProfile makes sure the line's profile exists and fits the line:
// stream lines need a profile that carries streams; a wait line's child
// owns the socket, so nothing can stand between it and the network.
func (l *Line) CheckProfile(resolve func(funnel.Selector) (*funnel.Pipeline, error)) error {
	if resolve == nil {
		return nil
	}
	pl, err := resolve(l.Selector)
	if err != nil {
		return fmt.Errorf("%s: %v", l.Selector, err)
	}
	if l.Stream && !pl.Accepts(funnel.Stream) {
		return fmt.Errorf("%s carries %s flows, not streams", l.Selector, pl.Shapes())
	}
	if l.Wait {
		if _, plain := pl.KernelDial(); !plain {
			return fmt.Errorf("%s is not plain direct: a wait line's program gets the socket itself, so no piece can act on its traffic (use nowait for a stream service with pieces)", l.Selector)
		}
	}
	return nil
}

// Untouched reports whether a pipeline leaves an incoming stream as it is
// (no piece acts on incoming flows), so the child can have the socket.
func Untouched(pl *funnel.Pipeline) bool {
	for _, p := range pl.Pieces() {
		if _, ok := p.(funnel.StreamAcceptor); ok {
			return false
		}
	}
	return true
}

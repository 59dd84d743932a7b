package socks5d

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

// Map is the server-side variant's table: requested destinations (name or
// address patterns with a port) mapped to local services. The first
// matching line wins.
type Map struct {
	Path  string
	rules []mapRule
}

type mapRule struct {
	line   int
	text   string // the pattern as written, for logs
	any    bool   // "*": every host
	suffix string // "*.example.org" keeps ".example.org"
	name   string // an exact host name, lower case
	ip     netip.Addr
	port   int // -1: any port
	target mapTarget
}

type targetKind int

const (
	targetTCP targetKind = iota
	targetUnix
	targetExec
)

type mapTarget struct {
	kind targetKind
	addr string   // HOST:PORT or a socket path
	argv []string // for exec
}

func (t mapTarget) String() string {
	switch t.kind {
	case targetUnix:
		return "unix:" + t.addr
	case targetExec:
		return "exec:" + strings.Join(t.argv, " ")
	}
	return t.addr
}

// LoadMap reads a map file: `PATTERN:PORT -> TARGET` a line, # comments.
func LoadMap(path string) (*Map, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("map file %s: %v", path, unwrapPath(err))
	}
	m := &Map{Path: path}
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := parseMapLine(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", path, i+1, err))
			continue
		}
		r.line = i + 1
		m.rules = append(m.rules, r)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	if len(m.rules) == 0 {
		return nil, fmt.Errorf("%s: no mappings (want lines like `mail.example.org:25 -> 127.0.0.1:2525`)", path)
	}
	return m, nil
}

const mapLineHelp = "want PATTERN:PORT -> TARGET, e.g. `mail.example.org:25 -> 127.0.0.1:2525`, `*.example.org:80 -> unix:/run/web.sock`, `echo.test:7 -> exec:/bin/cat`"

func parseMapLine(line string) (mapRule, error) {
	pat, target, ok := strings.Cut(line, "->")
	if !ok {
		return mapRule{}, errors.New(mapLineHelp)
	}
	pat, target = strings.TrimSpace(pat), strings.TrimSpace(target)
	r := mapRule{text: pat}
	host, port, err := net.SplitHostPort(pat)
	if err != nil {
		return mapRule{}, fmt.Errorf("pattern %q: %v (%s)", pat, err, mapLineHelp)
	}
	if port == "*" {
		r.port = -1
	} else {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return mapRule{}, fmt.Errorf("pattern %q: port %q is not a number from 0 to 65535 or *", pat, port)
		}
		r.port = int(p)
	}
	switch {
	case host == "*":
		r.any = true
	case strings.HasPrefix(host, "*."):
		r.suffix = strings.ToLower(host[1:])
	case strings.Contains(host, "*"):
		return mapRule{}, fmt.Errorf("pattern %q: a * stands only for a whole host (*) or its first labels (*.example.org)", pat)
	default:
		if ip, err := netip.ParseAddr(host); err == nil {
			r.ip = ip.Unmap()
		} else if host == "" {
			return mapRule{}, fmt.Errorf("pattern %q has no host (use * for every host)", pat)
		} else {
			r.name = strings.ToLower(strings.TrimSuffix(host, "."))
		}
	}
	if r.target, err = parseTarget(target); err != nil {
		return mapRule{}, err
	}
	return r, nil
}

func parseTarget(s string) (mapTarget, error) {
	switch {
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "@") {
			return mapTarget{}, fmt.Errorf("target %q: a Unix socket needs an absolute path (or @name for the abstract namespace)", s)
		}
		return mapTarget{kind: targetUnix, addr: p}, nil
	case strings.HasPrefix(s, "exec:"):
		argv := strings.Fields(strings.TrimPrefix(s, "exec:"))
		if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
			return mapTarget{}, fmt.Errorf("target %q: exec: needs a program's absolute path, e.g. exec:/bin/cat", s)
		}
		if st, err := os.Stat(argv[0]); err != nil {
			return mapTarget{}, fmt.Errorf("target %q: %v", s, err)
		} else if st.IsDir() || st.Mode()&0o111 == 0 {
			return mapTarget{}, fmt.Errorf("target %q: %s is not an executable file", s, argv[0])
		}
		return mapTarget{kind: targetExec, argv: argv}, nil
	}
	if _, err := funnel.ParseAddr(s); err != nil {
		return mapTarget{}, fmt.Errorf("target %q: %v; or unix:/PATH or exec:/PROGRAM [ARGS]", s, err)
	}
	return mapTarget{kind: targetTCP, addr: s}, nil
}

// Lookup finds the rule for a destination.
func (m *Map) Lookup(d funnel.Addr) (*mapRule, bool) {
	var lname string
	if d.IsName() {
		lname = strings.ToLower(strings.TrimSuffix(d.Name, "."))
	}
	for i := range m.rules {
		r := &m.rules[i]
		if r.port >= 0 && r.port != int(d.Port) {
			continue
		}
		switch {
		case r.any:
		case r.suffix != "":
			if lname == "" || !strings.HasSuffix(lname, r.suffix) {
				continue
			}
		case r.name != "":
			if lname != r.name {
				continue
			}
		default:
			if d.IsName() || d.IP != r.ip {
				continue
			}
		}
		return r, true
	}
	return nil, false
}

// dialTarget reaches the local service. For exec it starts the program
// with one end of a socket pair as its stdin and stdout (inetd's way) and
// returns the other end; wait reaps the program once the flow is over.
func dialTarget(ctx context.Context, t mapTarget, f *funnel.Flow, client net.Conn) (conn net.Conn, wait func(), err error) {
	var d net.Dialer
	switch t.kind {
	case targetTCP:
		c, err := d.DialContext(ctx, "tcp", t.addr)
		return c, func() {}, err
	case targetUnix:
		c, err := d.DialContext(ctx, "unix", t.addr)
		return c, func() {}, err
	}
	fds, err := streamSocketpair()
	if err != nil {
		return nil, nil, err
	}
	ours := os.NewFile(uintptr(fds[0]), "socks5d-exec")
	theirs := os.NewFile(uintptr(fds[1]), "socks5d-exec-child")
	defer theirs.Close()
	defer ours.Close()
	cmd := exec.Command(t.argv[0], t.argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = theirs, theirs, os.Stderr
	cmd.Env = append(os.Environ(), execEnv(f, client)...)
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	c, err := net.FileConn(ours)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, nil, err
	}
	return c, func() {
		if err := cmd.Wait(); err != nil {
			f.Log.Debug("mapped program ended", "program", t.argv[0], "err", err)
		}
	}, nil
}

// execEnv tells the program who connected and what they asked for, with
// the variable names of UCSPI-TCP (tcpserver) that inetd-style programs
// know, plus the SOCKS view.
func execEnv(f *funnel.Flow, client net.Conn) []string {
	env := []string{"PROTO=TCP", "FUNTUN_HOOK=socks5d", "FUNTUN_DEST=" + f.Dest.String()}
	if r := netx.AddrPortOf(client.RemoteAddr()); r.IsValid() {
		env = append(env, "TCPREMOTEIP="+r.Addr().String(), "TCPREMOTEPORT="+strconv.Itoa(int(r.Port())))
	}
	if l := netx.AddrPortOf(client.LocalAddr()); l.IsValid() {
		env = append(env, "TCPLOCALIP="+l.Addr().String(), "TCPLOCALPORT="+strconv.Itoa(int(l.Port())))
	}
	if f.User != "" {
		env = append(env, "FUNTUN_USER="+f.User)
	}
	return env
}

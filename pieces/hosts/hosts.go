// Package hosts is the piece that gives names addresses inside the funnel:
// names that exist for the profile only (a test host, a service reached
// through a tunnel), written in the profile or in an /etc/hosts-style file.
// Names it does not know travel on unresolved, so that a SOCKS5 upstream
// further down can still resolve them on the far side.
package hosts

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/internal/match"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "hosts",
		Example: `demo.test=127.0.0.1 other.test=::1`,
		Summary: "resolve names known only inside the funnel (NAME=IP, *.DOMAIN=IP, an /etc/hosts-style file)",
		Params: `NAME=IP         give NAME this address, e.g. demo.test=127.0.0.1 or other.test=::1
*.DOMAIN=IP     give every name under DOMAIN (not DOMAIN itself) this address
file=PATH       read more names from a file in /etc/hosts format (names given as NAME=IP win)
strict=BOOL     refuse names that are not listed (host unreachable) instead of passing
                them on unresolved, default false`,
		Curves: curves,
		New:    New,
	})
}

// Hosts is a configured hosts piece.
type Hosts struct {
	table
	strict bool
}

var (
	_ funnel.StreamDialer = (*Hosts)(nil)
	_ funnel.DgramDialer  = (*Hosts)(nil)
	_ funnel.Transparent  = (*Hosts)(nil)
)

type table struct {
	exact map[string]netip.Addr
	under map[string]netip.Addr // "corp.test" for the entry *.corp.test
}

// add keeps the first address given for a name, as the C library does with
// /etc/hosts; it reports whether the name was new.
func (t *table) add(name string, ip netip.Addr) (bool, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	m := t.exact
	if d, ok := strings.CutPrefix(name, "*."); ok {
		m, name = t.under, d
	}
	if err := match.CheckDomain(name); err != nil {
		return false, err
	}
	if _, dup := m[name]; dup {
		return false, nil
	}
	m[name] = ip.Unmap()
	return true, nil
}

// New builds a hosts piece. Its keys are the names themselves, so it reads
// every parameter and reports positions itself.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	h := &Hosts{table: table{exact: map[string]netip.Addr{}, under: map[string]netip.Addr{}}}
	inline := &h.table
	var files []*funnel.Param
	for _, x := range p.All() {
		switch x.Key {
		case "file":
			files = append(files, x)
		case "strict":
			switch strings.ToLower(x.Value) {
			case "true", "yes", "on", "1":
				h.strict = true
			case "false", "no", "off", "0":
				h.strict = false
			default:
				return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: strict: %q is not true or false", p.Piece, x.Value)}
			}
		default:
			ip, err := netip.ParseAddr(x.Value)
			if err != nil {
				return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: %s: %q is not an IP address (names are given as NAME=IP; the other parameters are file= and strict=)", p.Piece, x.Key, x.Value)}
			}
			isNew, err := inline.add(x.Key, ip)
			if err != nil {
				return nil, &funnel.PosError{Pos: x.Pos, Msg: fmt.Sprintf("piece %q: %q is not a host name (nor file= or strict=): %v", p.Piece, x.Key, err)}
			}
			if !isNew {
				return nil, &funnel.PosError{Pos: x.Pos, Msg: fmt.Sprintf("piece %q: %s is given an address twice", p.Piece, x.Key)}
			}
		}
	}
	// Files come after the inline names so that a name written in the
	// profile overrides the file's entry for it.
	for _, x := range files {
		if err := readFile(hostsPath(x.Value, p.Pos.File), inline); err != nil {
			return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: file: %v", p.Piece, err)}
		}
	}
	if len(h.exact)+len(h.under) == 0 && !h.strict {
		return nil, p.Fail("knows no names: give NAME=IP (e.g. demo.test=127.0.0.1) or file=PATH")
	}
	return h, nil
}

// hostsPath expands a leading ~/ and reads a relative path from the
// profile file's directory, so a profile and its hosts file can travel
// together; in an inline chain it is relative to the working directory.
func hostsPath(path, profileFile string) string {
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if !filepath.IsAbs(path) && filepath.IsAbs(profileFile) {
		return filepath.Join(filepath.Dir(profileFile), path)
	}
	return path
}

// readFile reads /etc/hosts format: an address, then its names, # comments.
func readFile(path string, t *table) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		ip, err := netip.ParseAddr(fields[0])
		if err != nil {
			return fmt.Errorf("%s:%d: %q is not an IP address", path, line, fields[0])
		}
		if len(fields) == 1 {
			return fmt.Errorf("%s:%d: address %s has no names after it", path, line, fields[0])
		}
		for _, name := range fields[1:] {
			if _, err := t.add(name, ip); err != nil {
				return fmt.Errorf("%s:%d: %q: %v", path, line, name, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// Lookup finds the address for a name: an exact entry first, then the
// wildcard entry of the closest enclosing domain.
func (h *Hosts) Lookup(name string) (netip.Addr, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if ip, ok := h.exact[name]; ok {
		return ip, true
	}
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		if ip, ok := h.under[name[i+1:]]; ok {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Curves: hosts changes where a flow goes, never its bytes.
func (h *Hosts) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}

func (h *Hosts) resolve(ctx context.Context, f *funnel.Flow) (*funnel.Flow, error) {
	if !f.Dest.IsName() {
		return f, nil
	}
	ip, ok := h.Lookup(f.Dest.Name)
	if !ok {
		if h.strict {
			return nil, funnel.Errorf(funnel.KindHostUnreachable, "hosts: %s is not a known name (strict=true)", f.Dest.Name)
		}
		return f, nil
	}
	g := f.WithDest(f.Dest.WithIP(ip))
	if f.Log != nil && f.Log.Enabled(ctx, slog.LevelDebug) {
		f.Log.Debug("hosts", "name", f.Dest.Name, "addr", ip.String())
	}
	return g, nil
}

// Transparent: hosts only changes where the flow goes, never its bytes.
func (h *Hosts) Transparent() bool { return true }

// DialStream returns next's connection itself: the relay can only splice
// the *net.TCPConn that direct made if nothing wraps it on the way up.
func (h *Hosts) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	g, err := h.resolve(ctx, f)
	if err != nil {
		return nil, err
	}
	return next.DialStream(ctx, g)
}

// DialDgram returns next's datagram connection itself.
func (h *Hosts) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	g, err := h.resolve(ctx, f)
	if err != nil {
		return nil, err
	}
	return next.DialDgram(ctx, g)
}

package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Paths a packet or query took, as seen outside.
const (
	viaFunnel = "funnel"
	viaDirect = "direct"
)

// observation is one thing that arrived in the outside namespace: a TCP
// connection (its SYN), a UDP datagram (once per source and destination),
// or a DNS query.
type observation struct {
	Kind  string `json:"kind"` // tcp, udp or dns
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Query string `json:"query,omitempty"` // "TYPE NAME" for dns
	Path  string `json:"path"`            // funnel or direct
	How   string `json:"how"`             // what told the path

	src, dst  netip.AddrPort
	transport string // tcp or udp: what carried it
	// ownedByFunnel: at arrival, the socket it came from was one of the
	// funnel process's own (its resolver, say, which sets no mark).
	ownedByFunnel bool
	// probe is the probe it belongs to, by port or name, else the one
	// running when it arrived.
	probe string
}

// handoff is one flow the funnel reports having connected on the
// program's own socket: its log line names the socket's address.
type handoff struct {
	network string // tcp or udp
	src     netip.AddrPort
	dstPort uint16
}

// classify decides the path of every observation: marked by the funnel
// (translated to the funnel's address), sent from the funnel process's
// own socket, or a socket of the program that the funnel connected
// (handed off) — anything else came from the program past the funnel.
func classify(obs []observation, handoffs []handoff) {
	for i := range obs {
		o := &obs[i]
		src := o.src.Addr().Unmap()
		switch {
		case src == funnel4 || src == funnel6:
			o.Path, o.How = viaFunnel, "the funnel's marked socket"
		case handedOff(handoffs, o):
			o.Path, o.How = viaFunnel, "handed off by the funnel"
		case o.ownedByFunnel:
			o.Path, o.How = viaFunnel, "the funnel's own socket"
		default:
			o.Path, o.How = viaDirect, "the program's socket, past the funnel"
		}
	}
}

func handedOff(handoffs []handoff, o *observation) bool {
	for _, h := range handoffs {
		if h.network != o.transport || h.src.Port() != o.src.Port() || h.dstPort != o.dst.Port() {
			continue
		}
		// A datagram socket's address is often the wildcard; and a
		// socket that picked the funnel's address leaves with the
		// program's (see markRules).
		a := h.src.Addr().Unmap()
		if a == funnel4 {
			a = inside4
		} else if a == funnel6 {
			a = inside6
		}
		if a.IsUnspecified() || a == o.src.Addr().Unmap() {
			return true
		}
	}
	return false
}

// attribute assigns observations to probes by their port or name; others
// keep the probe that was running when they arrived.
func attribute(obs []observation) {
	byPort := map[uint16]string{}
	byName := map[string]string{}
	for i, p := range probes {
		lp := labProbeOf(i, p, "")
		byPort[uint16(lp.port)] = p.name
		byName[lp.name] = p.name
	}
	for i := range obs {
		o := &obs[i]
		if o.Kind == "dns" {
			name := o.Query
			if _, n, ok := strings.Cut(o.Query, " "); ok {
				name = n
			}
			if p, ok := byName[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
				o.probe = p
			}
			continue
		}
		if (o.dst.Addr().Unmap() == outside4 || o.dst.Addr() == outside6) && byPort[o.dst.Port()] != "" {
			o.probe = byPort[o.dst.Port()]
		}
	}
}

// result is one probe's line in the report.
type result struct {
	Probe    string        `json:"probe"`
	Title    string        `json:"title"`
	Expected string        `json:"expected"`
	Observed string        `json:"observed"`
	Verdict  string        `json:"verdict"` // ok, LEAK or failed
	Detail   string        `json:"detail"`  // what the probe itself said
	Seen     []observation `json:"seen"`
}

// Verdicts.
const (
	verdictOK     = "ok"
	verdictLeak   = "LEAK"
	verdictFailed = "failed"
)

// judge turns what a probe said and what arrived outside into its line.
func judge(p probe, succeeded bool, detail string, seen []observation) result {
	r := result{Probe: p.name, Title: p.title, Detail: detail, Seen: seen}
	if r.Seen == nil {
		r.Seen = []observation{}
	}
	// through is what the funnel carried of the probe's own kind: a
	// connect probe's lookups (the funnel resolving its name) do not
	// show that its connection went through.
	var leaks, through []observation
	for _, o := range seen {
		switch {
		case o.Path == viaDirect:
			leaks = append(leaks, o)
		case p.kind == resolves || o.Kind != "dns":
			through = append(through, o)
		}
	}
	switch p.kind {
	case connects:
		r.Expected = "through the funnel"
	case resolves:
		r.Expected = "answered in the funnel"
	}
	switch {
	case len(leaks) > 0:
		r.Verdict = verdictLeak
		r.Observed = "direct: " + summarize(leaks)
	case !succeeded && len(through) > 0:
		r.Verdict = verdictFailed
		r.Observed = "through the funnel, but the probe failed"
	case !succeeded:
		r.Verdict = verdictFailed
		r.Observed = "nothing left"
	case p.kind == connects && len(through) == 0:
		// The responder answered, yet nothing was captured: the lab
		// cannot vouch for the path.
		r.Verdict = verdictFailed
		r.Observed = "not seen outside"
	case p.kind == connects:
		r.Verdict = verdictOK
		r.Observed = "through the funnel (" + through[0].How + ")"
	case len(through) > 0:
		r.Verdict = verdictOK
		r.Observed = "answered in the funnel (it asked the resolver itself)"
	default:
		r.Verdict = verdictOK
		r.Observed = "answered in the funnel"
	}
	return r
}

// summarize says in a few words what leaked.
func summarize(obs []observation) string {
	var parts []string
	for _, o := range obs {
		if o.Kind == "dns" {
			parts = append(parts, fmt.Sprintf("query %s to %s", o.Query, o.Dst))
		} else {
			parts = append(parts, fmt.Sprintf("%s to %s", o.Kind, o.Dst))
		}
	}
	return strings.Join(parts, ", ")
}

// probeReport is the report of a run of the built-in probes.
type probeReport struct {
	Launcher []string `json:"launcher"` // the words every launcher run got
	Results  []result `json:"results"`
	Leaks    int      `json:"leaks"`
}

func (r *probeReport) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PROBE\tEXPECTED PATH\tOBSERVED PATH\tVERDICT")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.Title, res.Expected, res.Observed, res.Verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var failed []string
	for _, res := range r.Results {
		if res.Verdict != verdictOK && res.Detail != "" {
			failed = append(failed, fmt.Sprintf("  %s: %s", res.Probe, res.Detail))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintln(w, "\nWhat the probes said:")
		fmt.Fprintln(w, strings.Join(failed, "\n"))
	}
	switch r.Leaks {
	case 0:
		fmt.Fprintln(w, "\nNo leak seen.")
	case 1:
		fmt.Fprintln(w, "\n1 probe leaked past the funnel.")
	default:
		fmt.Fprintf(w, "\n%d probes leaked past the funnel.\n", r.Leaks)
	}
	return nil
}

// programReport is the report of a run of the user's program.
type programReport struct {
	Launcher []string      `json:"launcher"`
	Program  []string      `json:"program"`
	Exit     int           `json:"exit"`
	Outside  []observation `json:"outside_funnel"`
	Through  []observation `json:"through_funnel"`
}

func newProgramReport(launcher, program []string, exit int, obs []observation) *programReport {
	r := &programReport{Launcher: launcher, Program: program, Exit: exit, Outside: []observation{}, Through: []observation{}}
	for _, o := range obs {
		if o.Path == viaDirect {
			r.Outside = append(r.Outside, o)
		} else {
			r.Through = append(r.Through, o)
		}
	}
	return r
}

func (r *programReport) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	section := func(title string, obs []observation) {
		fmt.Fprintf(w, "%s:\n", title)
		if len(obs) == 0 {
			fmt.Fprintln(w, "  (none)")
			return
		}
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, line := range listing(obs) {
			fmt.Fprintln(tw, "  "+line)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "%s exited with status %d.\n\n", strings.Join(r.Program, " "), r.Exit)
	section("Outside the funnel (leaks)", r.Outside)
	fmt.Fprintln(w)
	section("Through the funnel", r.Through)
	return nil
}

// listing is one line per destination or query, counted, in a stable
// order.
func listing(obs []observation) []string {
	counts := map[string]int{}
	for _, o := range obs {
		var line string
		if o.Kind == "dns" {
			line = fmt.Sprintf("dns\t%s\tto %s\tfrom %s\t%s", o.Query, o.Dst, o.src.Addr(), o.How)
		} else {
			line = fmt.Sprintf("%s\t%s\t\tfrom %s\t%s", o.Kind, o.Dst, o.src.Addr(), o.How)
		}
		counts[line]++
	}
	lines := make([]string, 0, len(counts))
	for line, n := range counts {
		if n > 1 {
			line += "\t(" + strconv.Itoa(n) + "×)"
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	return lines
}

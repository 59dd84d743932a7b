package inetd

import (
	"net/netip"
	"sync"
	"time"
)

// Limits bound what one service may start. Zero means no limit.
type Limits struct {
	MaxChildren  int // children running at once
	MaxPerSource int // children running at once for one client address
	// Rate is the starts a minute of lines that give no .N (nowait.N).
	Rate int
}

// gate is one service's admission: a start-rate bucket and the counts of
// running children, in all and per client address. Its state outlives
// reloads of the line, so children started before a reload still count.
type gate struct {
	mu        sync.Mutex
	running   int
	perSource map[netip.Addr]int
	// The rate is a token bucket of rate tokens refilled over a minute:
	// classic inetd's "N a minute", without its cliff at each minute's
	// turn.
	rate   int
	tokens float64
	last   time.Time
}

// refusal says why a start was refused; "" admits it.
type refusal string

// admit takes a slot for a child of src, or says why there is none. With
// an invalid src (a wait service's socket) only the total and the rate
// count.
func (g *gate) admit(src netip.Addr, lim Limits, rate int, now time.Time) refusal {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lim.MaxChildren > 0 && g.running >= lim.MaxChildren {
		return "max-children"
	}
	if src.IsValid() && lim.MaxPerSource > 0 && g.perSource[src] >= lim.MaxPerSource {
		return "max-per-source"
	}
	if rate > 0 {
		if g.rate != rate {
			g.rate, g.tokens, g.last = rate, float64(rate), now
		}
		g.tokens = min(float64(rate), g.tokens+now.Sub(g.last).Minutes()*float64(rate))
		g.last = now
		if g.tokens < 1 {
			return "rate"
		}
		g.tokens--
	}
	g.running++
	if src.IsValid() {
		if g.perSource == nil {
			g.perSource = map[netip.Addr]int{}
		}
		g.perSource[src]++
	}
	return ""
}

// release gives back the slot admit took for a child of src.
func (g *gate) release(src netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running--
	if src.IsValid() {
		if n := g.perSource[src] - 1; n > 0 {
			g.perSource[src] = n
		} else {
			delete(g.perSource, src)
		}
	}
}

// Running is the number of children the service has running.
func (g *gate) Running() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running
}

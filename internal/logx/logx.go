// Package logx keeps floods out of the log. A daemon that warns about every
// bad client writes one line per probe, and a scanner or an attacker then
// decides how big the log grows and buries what matters. A Limiter lets
// the first few warnings from each source through in every period, and a
// bounded number in total, and sums the rest up when the period ends:
//
//	level=WARN msg="suppressed 1995 similar warnings from 192.0.2.7 in the last 10s" src=192.0.2.7 suppressed=1995 warnings="malformed SOCKS5 greeting"
//
// A hook keeps one Limiter (the zero value is ready) and calls Warn where
// it would call slog's Warn, naming the source the warning is about.
package logx

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of a zero Limiter.
const (
	DefaultPeriod     = 10 * time.Second
	DefaultPerSource  = 5
	DefaultTotal      = 50
	DefaultSummaries  = 10
	DefaultMaxSources = 4096
)

// most distinct messages a summary names for one source.
const maxKinds = 4

// Limiter rate-limits warnings per source and in total, over fixed
// periods. Its zero value uses the defaults above; set fields before the
// first use. It is safe for concurrent use.
type Limiter struct {
	// Period is the window counts are kept for (DefaultPeriod).
	Period time.Duration
	// PerSource is how many warnings about one source a period shows
	// (DefaultPerSource).
	PerSource int
	// Total is how many warnings a period shows over all sources
	// (DefaultTotal).
	Total int
	// Summaries is how many per-source summary lines a period ends with;
	// the other sources share one line (DefaultSummaries).
	Summaries int
	// MaxSources bounds the sources counted apart in a period; warnings
	// about more sources are counted together (DefaultMaxSources).
	MaxSources int

	mu      sync.Mutex
	log     *slog.Logger // where summaries go: the last logger used
	start   time.Time    // of the period; zero: none yet
	shown   int
	sources map[string]*tally
	others  tally // sources beyond MaxSources, together
	nOthers int   // warnings counted in others
	timer   *time.Timer
	// now and afterFunc are the clock (tests replace them).
	now       func() time.Time
	afterFunc func(time.Duration, func()) *time.Timer
}

type tally struct {
	shown, suppressed int
	level             slog.Level
	kinds             []string // distinct suppressed messages, at most maxKinds
}

func (l *Limiter) setup() {
	if l.Period <= 0 {
		l.Period = DefaultPeriod
	}
	if l.PerSource <= 0 {
		l.PerSource = DefaultPerSource
	}
	if l.Total <= 0 {
		l.Total = DefaultTotal
	}
	if l.Summaries <= 0 {
		l.Summaries = DefaultSummaries
	}
	if l.MaxSources <= 0 {
		l.MaxSources = DefaultMaxSources
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.afterFunc == nil {
		l.afterFunc = time.AfterFunc
	}
	if l.sources == nil {
		l.sources = map[string]*tally{}
	}
}

// Warn logs msg with args at level WARN on log unless source has had its
// share of the period, or all sources together have. source names whom
// the warning is about (a client's address without its port); "" is a
// source like any other.
func (l *Limiter) Warn(log *slog.Logger, source, msg string, args ...any) {
	l.Log(log, slog.LevelWarn, source, msg, args...)
}

// Log is Warn at any level.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, source, msg string, args ...any) {
	if !l.Allow(log, level, source, msg) {
		return
	}
	log.Log(context.Background(), level, msg, args...)
}

// Allow counts a warning about source and reports whether to log it; a
// caller that builds costly attributes asks first. A warning it refuses
// is counted in the period's summary, which goes to log.
func (l *Limiter) Allow(log *slog.Logger, level slog.Level, source, msg string) bool {
	if !log.Enabled(context.Background(), level) {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setup()
	now := l.now()
	if !l.start.IsZero() && now.Sub(l.start) >= l.Period {
		l.flushLocked(now)
	}
	if l.start.IsZero() {
		l.start = now
	}
	t := l.sources[source]
	if t == nil {
		if len(l.sources) < l.MaxSources {
			t = &tally{}
			l.sources[source] = t
		} else {
			t = &l.others
			l.nOthers++
		}
	}
	if t != &l.others && t.shown < l.PerSource && l.shown < l.Total {
		t.shown++
		l.shown++
		return true
	}
	t.suppressed++
	if level > t.level || t.suppressed == 1 {
		t.level = level
	}
	if len(t.kinds) < maxKinds && !slices.Contains(t.kinds, msg) {
		t.kinds = append(t.kinds, msg)
	}
	l.log = log
	if l.timer == nil {
		// The summary must come even when the flood stops: nothing
		// else would call us then.
		l.timer = l.afterFunc(l.start.Add(l.Period).Sub(now), l.Flush)
	}
	return false
}

// Flush writes the summary of what the period suppressed now, and starts
// a new period. A daemon may call it when it stops.
func (l *Limiter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setup()
	l.flushLocked(l.now())
}

func (l *Limiter) flushLocked(now time.Time) {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.start.IsZero() {
		return
	}
	period := now.Sub(l.start).Round(time.Second)
	if period < time.Second {
		period = now.Sub(l.start).Round(time.Millisecond)
	}
	type row struct {
		src string
		t   *tally
	}
	var rows []row
	for src, t := range l.sources {
		if t.suppressed > 0 {
			rows = append(rows, row{src, t})
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		if c := cmp.Compare(b.t.suppressed, a.t.suppressed); c != 0 {
			return c
		}
		return strings.Compare(a.src, b.src)
	})
	rest := l.others
	restSources := 0
	if l.nOthers > 0 {
		restSources = 1 // at least
	}
	if len(rows) > l.Summaries {
		for _, r := range rows[l.Summaries:] {
			rest.suppressed += r.t.suppressed
			rest.level = max(rest.level, r.t.level)
			for _, k := range r.t.kinds {
				if len(rest.kinds) < maxKinds && !slices.Contains(rest.kinds, k) {
					rest.kinds = append(rest.kinds, k)
				}
			}
		}
		restSources += len(rows) - l.Summaries
		rows = rows[:l.Summaries]
	}
	if l.log != nil {
		for _, r := range rows {
			l.log.Log(context.Background(), r.t.level, fmt.Sprintf("suppressed %d similar warnings from %s in the last %v", r.t.suppressed, r.src, period),
				"src", r.src, "suppressed", r.t.suppressed, "warnings", strings.Join(r.t.kinds, "; "))
		}
		if rest.suppressed > 0 {
			// Sources beyond MaxSources were not told apart: their
			// number is a lower bound.
			sources := fmt.Sprint(restSources)
			if l.nOthers > 0 {
				sources += "+"
			}
			l.log.Log(context.Background(), rest.level, fmt.Sprintf("suppressed %d similar warnings from other sources in the last %v", rest.suppressed, period),
				"sources", sources, "suppressed", rest.suppressed, "warnings", strings.Join(rest.kinds, "; "))
		}
	}
	l.start = time.Time{}
	l.shown = 0
	clear(l.sources)
	l.others = tally{}
	l.nOthers = 0
}

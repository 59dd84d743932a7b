package logx

import (
	"bytes"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a clock the test moves, and the timers it was asked for.
type fake struct {
	mu     sync.Mutex
	t      time.Time
	timers []func()
	delays []time.Duration
}

func newLimiter(l *Limiter) (*Limiter, *fake) {
	f := &fake{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	l.now = func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
	l.afterFunc = func(d time.Duration, fn func()) *time.Timer {
		f.mu.Lock()
		f.timers = append(f.timers, fn)
		f.delays = append(f.delays, d)
		f.mu.Unlock()
		// A real timer that never fires on its own, so Stop works.
		return time.AfterFunc(time.Hour, func() {})
	}
	return l, f
}

func (f *fake) advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// fire runs the timers asked for so far, as the runtime would.
func (f *fake) fire() {
	f.mu.Lock()
	ts := f.timers
	f.timers = nil
	f.mu.Unlock()
	for _, fn := range ts {
		fn()
	}
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *logBuf) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := strings.TrimRight(w.b.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func newLog() (*slog.Logger, *logBuf) {
	w := &logBuf{}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})), w
}

var suppressedRE = regexp.MustCompile(` suppressed=(\d+)`)

// count splits lines into warnings shown and the total the summaries
// report.
func count(t *testing.T, lines []string) (shown, suppressed int) {
	t.Helper()
	for _, l := range lines {
		if m := suppressedRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			suppressed += n
			continue
		}
		shown++
	}
	return shown, suppressed
}

func TestLimiterPerSource(t *testing.T) {
	l, f := newLimiter(&Limiter{})
	log, w := newLog()
	for i := 0; i < 2000; i++ {
		l.Warn(log, "192.0.2.7", "malformed SOCKS5 greeting", "src", fmt.Sprintf("192.0.2.7:%d", 1000+i))
	}
	if got := len(w.lines()); got != DefaultPerSource {
		t.Fatalf("%d lines before the period ends, want %d:\n%s", got, DefaultPerSource, strings.Join(w.lines(), "\n"))
	}
	if len(f.delays) != 1 || f.delays[0] != DefaultPeriod {
		t.Fatalf("timers asked for: %v, want one of %v", f.delays, DefaultPeriod)
	}
	f.advance(DefaultPeriod)
	f.fire()
	lines := w.lines()
	if len(lines) != DefaultPerSource+1 {
		t.Fatalf("%d lines, want %d and a summary:\n%s", len(lines), DefaultPerSource, strings.Join(lines, "\n"))
	}
	sum := lines[len(lines)-1]
	for _, want := range []string{
		`level=WARN`,
		`msg="suppressed 1995 similar warnings from 192.0.2.7 in the last 10s"`,
		`src=192.0.2.7`, `suppressed=1995`, `warnings="malformed SOCKS5 greeting"`,
	} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary %q lacks %q", sum, want)
		}
	}
	// A new period shows warnings again.
	l.Warn(log, "192.0.2.7", "malformed SOCKS5 greeting")
	if got := len(w.lines()); got != DefaultPerSource+2 {
		t.Errorf("%d lines after the period, want one more", got)
	}
}

func TestLimiterTotalAndManySources(t *testing.T) {
	l, f := newLimiter(&Limiter{PerSource: 2, Total: 20, Summaries: 3, MaxSources: 100})
	log, w := newLog()
	const sources, each = 300, 4
	for i := 0; i < each; i++ {
		for s := 0; s < sources; s++ {
			msg := "authentication failed"
			if s%2 == 1 {
				msg = "malformed SOCKS5 greeting"
			}
			l.Warn(log, fmt.Sprintf("10.0.%d.%d", s/256, s%256), msg)
		}
	}
	if got := len(w.lines()); got != 20 {
		t.Fatalf("%d lines shown, want the total of 20", got)
	}
	f.advance(3 * time.Second)
	l.Flush()
	lines := w.lines()
	// 20 shown, 3 summaries of the sources with most, one line for the rest:
	// 97 sources counted apart and at least one of the 200 beyond MaxSources.
	if len(lines) != 20+3+1 {
		t.Fatalf("%d lines, want 24:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	shown, suppressed := count(t, lines)
	if shown != 20 || shown+suppressed != sources*each {
		t.Errorf("shown %d + suppressed %d, want 20 + %d", shown, suppressed, sources*each-20)
	}
	last := lines[len(lines)-1]
	for _, want := range []string{"from other sources in the last 3s", "sources=98+", "authentication failed", "malformed SOCKS5 greeting"} {
		if !strings.Contains(last, want) {
			t.Errorf("last summary %q lacks %q", last, want)
		}
	}
	// Flush stopped the period: nothing more comes from the old timer.
	f.fire()
	if got := len(w.lines()); got != len(lines) {
		t.Errorf("the old period's timer wrote %d more lines", got-len(lines))
	}
}

// A warning after the period, with the timer not yet run, ends the old
// period first: its summary comes before the new warning.
func TestLimiterLazyRollover(t *testing.T) {
	l, f := newLimiter(&Limiter{PerSource: 1})
	log, w := newLog()
	l.Warn(log, "a", "x")
	l.Warn(log, "a", "x")
	f.advance(11 * time.Second)
	l.Warn(log, "a", "y")
	lines := w.lines()
	if len(lines) != 3 || !strings.Contains(lines[1], "suppressed 1 similar warnings from a in the last 11s") || !strings.Contains(lines[2], "msg=y") {
		t.Fatalf("lines:\n%s", strings.Join(lines, "\n"))
	}
}

// Warnings the logger would not write are not counted.
func TestLimiterDisabledLevel(t *testing.T) {
	l, f := newLimiter(&Limiter{PerSource: 1})
	log, w := newLog()
	for i := 0; i < 10; i++ {
		l.Log(log, slog.LevelDebug, "a", "debug")
	}
	f.fire()
	l.Flush()
	if got := w.lines(); len(got) != 0 {
		t.Fatalf("lines: %q", got)
	}
}

// The real clock: the summary comes on its own when the flood stops.
func TestLimiterSummaryOnItsOwn(t *testing.T) {
	l := &Limiter{Period: 50 * time.Millisecond, PerSource: 1}
	log, w := newLog()
	for i := 0; i < 100; i++ {
		l.Warn(log, "a", "x")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(w.lines()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no summary 5s after the last warning: %q", w.lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, n := count(t, w.lines()); n != 99 {
		t.Fatalf("summary counts %d, want 99: %q", n, w.lines())
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := &Limiter{}
	log, w := newLog()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				l.Warn(log, strconv.Itoa(g), "x")
			}
		}()
	}
	wg.Wait()
	l.Flush()
	shown, suppressed := count(t, w.lines())
	if shown != 8*DefaultPerSource || shown+suppressed != 4000 {
		t.Fatalf("shown %d, suppressed %d", shown, suppressed)
	}
}

// Command authflood is the load side of bench/authflood.sh: a flood of
// wrong RFC 1929 passwords against a SOCKS5 server, and a real user's
// logins timed with the flood off and on (issue 9, item 2).
//
//	authflood --proxy 127.0.0.1:P --server-pid PID --user alice --pass secret \
//	    [--conns 700] [--seconds 10] [--logins 100] [--attack-sources 1] \
//	    [--attack-from 127.0.0.1] [--valid-from 127.0.0.2] \
//	    [--cold USER:PASS,...] [--cold-from 127.0.0.3]
//
// Three phases, one after the other:
//
//  1. flood off: --logins logins of the real user, one every
//     --seconds/--logins, each on its own connection (greeting, login,
//     status, close); the first is the user's first login.
//  2. flood on: --conns connections at a time, each sending one wrong
//     password and starting over when answered, for --seconds; meanwhile
//     the same logins at the same pace, started on schedule whether or not
//     the one before has finished, and the --cold users log in once each
//     (their first login, spread over the flood).
//  3. after: the attackers leave (every connection of theirs closes at
//     once), and the server's CPU time is sampled until it stays idle:
//     how long checking goes on after the flood.
//
// The attackers come from --attack-from, or with --attack-sources N from
// N loopback addresses 127.1.x.y (a flood from many hosts). Every address
// is loopback; counts and time are bounded. It prints a table.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	proxy                 string
	pid                   int
	user, pass            string
	conns                 int
	seconds               time.Duration
	logins                int
	attackFrom            string
	attackSources         int
	validFrom, coldFrom   string
	cold                  []string
	label                 string
	loginTimeout          time.Duration
	idleWindow, idleLimit time.Duration
	jsonOut               string
}

func main() {
	var c config
	var cold string
	flag.StringVar(&c.proxy, "proxy", "", "the SOCKS5 server, loopback HOST:PORT")
	flag.IntVar(&c.pid, "server-pid", 0, "the server's process, whose CPU time is read from /proc")
	flag.StringVar(&c.user, "user", "alice", "the real user")
	flag.StringVar(&c.pass, "pass", "", "the real user's password")
	flag.IntVar(&c.conns, "conns", 700, "attacking connections at a time")
	flag.DurationVar(&c.seconds, "seconds", 10*time.Second, "length of the flood, and of the flood-off phase")
	flag.IntVar(&c.logins, "logins", 100, "the real user's logins per phase")
	flag.StringVar(&c.attackFrom, "attack-from", "127.0.0.1", "the attackers' address (with --attack-sources 1)")
	flag.IntVar(&c.attackSources, "attack-sources", 1, "attack from this many addresses 127.1.x.y instead")
	flag.StringVar(&c.validFrom, "valid-from", "127.0.0.2", "the real user's address")
	flag.StringVar(&c.coldFrom, "cold-from", "127.0.0.3", "the address of the users who log in first during the flood")
	flag.StringVar(&cold, "cold", "", "USER:PASS,... who log in once each, for the first time, during the flood")
	flag.StringVar(&c.label, "label", "", "name of the run in the table")
	flag.DurationVar(&c.loginTimeout, "login-timeout", 30*time.Second, "a login that takes longer counts as failed")
	flag.DurationVar(&c.idleWindow, "idle-window", 500*time.Millisecond, "the server is idle after the flood once a window this long costs it under 5% of a CPU")
	flag.DurationVar(&c.idleLimit, "idle-limit", 60*time.Second, "stop waiting for the server to go idle after this long")
	flag.StringVar(&c.jsonOut, "json", "", "also write the results to this file as JSON")
	flag.Parse()
	if cold != "" {
		c.cold = strings.Split(cold, ",")
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "authflood:", err)
		os.Exit(1)
	}
}

func checkLoopback(what, s string) error {
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() {
		return fmt.Errorf("%s %q: want a loopback address", what, s)
	}
	return nil
}

type phase struct {
	Name       string    `json:"name"`
	Lat        []float64 `json:"-"` // ms, of the logins that succeeded
	OK         int       `json:"ok"`
	Failed     int       `json:"failed"`
	FailSample []string  `json:"fail_sample,omitempty"`
	P50        float64   `json:"p50_ms"`
	P90        float64   `json:"p90_ms"`
	P99        float64   `json:"p99_ms"`
	Max        float64   `json:"max_ms"`
	CPU        float64   `json:"server_cpu_s"`
	Seconds    float64   `json:"seconds"`
	Attacks    int64     `json:"attacks,omitempty"`
	Refused    int64     `json:"attacks_refused,omitempty"` // status 1
	Dropped    int64     `json:"attacks_dropped,omitempty"` // closed or timed out without a status
}

type result struct {
	Label      string    `json:"label"`
	Off        *phase    `json:"flood_off"`
	On         *phase    `json:"flood_on"`
	Cold       *phase    `json:"cold"`
	TailS      float64   `json:"cpu_busy_after_flood_s"`
	TailCPU    float64   `json:"cpu_after_flood_s"`
	TailCapped bool      `json:"idle_limit_reached"`
	ColdLat    []float64 `json:"cold_ms"`
}

func run(c config) error {
	if c.proxy == "" || c.pass == "" || c.pid <= 0 {
		return errors.New("needs --proxy, --pass and --server-pid")
	}
	for _, x := range [][2]string{{"--proxy", c.proxy}, {"--attack-from", c.attackFrom}, {"--valid-from", c.validFrom}, {"--cold-from", c.coldFrom}} {
		if err := checkLoopback(x[0], x[1]); err != nil {
			return err
		}
	}
	if c.conns < 1 || c.conns > 5000 || c.logins < 1 || c.logins > 10000 || c.seconds <= 0 || c.seconds > 5*time.Minute {
		return errors.New("--conns 1..5000, --logins 1..10000, --seconds up to 5m")
	}
	if c.attackSources < 1 || c.attackSources > 60000 {
		return errors.New("--attack-sources 1..60000")
	}
	if _, err := cpuTicks(c.pid); err != nil {
		return err
	}
	res := result{Label: c.label}

	// 1. Flood off.
	res.Off = c.loginPhase("flood off", nil)

	// 2. Flood on.
	fl := &flood{c: c, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	fl.start()
	coldDone := make(chan *phase, 1)
	go func() { coldDone <- c.coldLogins() }()
	res.On = c.loginPhase("flood on", fl)

	// 3. The attackers leave.
	fl.leave()
	res.On.Attacks, res.On.Refused, res.On.Dropped = fl.attacks.Load(), fl.refused.Load(), fl.dropped.Load()
	res.TailS, res.TailCPU, res.TailCapped = c.waitIdle()
	res.Cold = <-coldDone
	res.ColdLat = res.Cold.Lat

	printResult(c, &res)
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(c.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// login is one connection: greeting offering username/password, the
// login, the status. It returns how long that took.
func login(from, proxy, user, pass string, timeout time.Duration) (time.Duration, error) {
	t0 := time.Now()
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", proxy)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(t0.Add(timeout))
	st, err := greetLogin(c, user, pass)
	if err != nil {
		return 0, err
	}
	if st != 0 {
		return 0, fmt.Errorf("status %d", st)
	}
	return time.Since(t0), nil
}

func greetLogin(c net.Conn, user, pass string) (byte, error) {
	msg := []byte{5, 1, 2, 1, byte(len(user))}
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	var b [4]byte
	if n, err := io.ReadFull(c, b[:]); err != nil {
		if n >= 2 && b[1] == 0xff {
			return 0, errors.New("no acceptable method")
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, errors.New("closed without a status")
		}
		return 0, err
	}
	if b[0] != 5 || b[1] != 2 || b[2] != 1 {
		return 0, fmt.Errorf("unexpected answer % x", b)
	}
	return b[3], nil
}

// loginPhase times c.logins logins of the real user over c.seconds, each
// started on schedule in a goroutine of its own.
func (c config) loginPhase(name string, fl *flood) *phase {
	p := &phase{Name: name}
	every := c.seconds / time.Duration(c.logins)
	var mu sync.Mutex
	var wg sync.WaitGroup
	before, _ := cpuTicks(c.pid)
	t0 := time.Now()
	for i := 0; i < c.logins; i++ {
		time.Sleep(time.Until(t0.Add(time.Duration(i) * every)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := login(c.validFrom, c.proxy, c.user, c.pass, c.loginTimeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.Failed++
				if len(p.FailSample) < 5 {
					p.FailSample = append(p.FailSample, err.Error())
				}
				return
			}
			p.OK++
			p.Lat = append(p.Lat, float64(d.Microseconds())/1000)
		}()
	}
	if fl != nil {
		// The flood lasts its full length even if the logins end early.
		time.Sleep(time.Until(t0.Add(c.seconds)))
	}
	wg.Wait()
	after, _ := cpuTicks(c.pid)
	p.Seconds = time.Since(t0).Seconds()
	p.CPU = float64(after-before) / clkTck
	p.stats()
	return p
}

// coldLogins logs each --cold user in once, spread over the flood.
func (c config) coldLogins() *phase {
	p := &phase{Name: "first logins"}
	if len(c.cold) == 0 {
		return p
	}
	every := c.seconds / time.Duration(len(c.cold)+1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, up := range c.cold {
		user, pass, _ := strings.Cut(up, ":")
		time.Sleep(time.Until(t0.Add(time.Duration(i+1) * every)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := login(c.coldFrom, c.proxy, user, pass, c.loginTimeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.Failed++
				if len(p.FailSample) < 5 {
					p.FailSample = append(p.FailSample, user+": "+err.Error())
				}
				return
			}
			p.OK++
			p.Lat = append(p.Lat, float64(d.Microseconds())/1000)
		}()
	}
	wg.Wait()
	p.stats()
	return p
}

func (p *phase) stats() {
	if len(p.Lat) == 0 {
		return
	}
	s := slices.Clone(p.Lat)
	slices.Sort(s)
	q := func(f float64) float64 { return s[int(f*float64(len(s)-1)+0.5)] }
	p.P50, p.P90, p.P99, p.Max = q(0.5), q(0.9), q(0.99), s[len(s)-1]
}

// flood keeps c.conns connections of wrong passwords going.
type flood struct {
	c       config
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	attacks atomic.Int64
	refused atomic.Int64
	dropped atomic.Int64
}

func (f *flood) source(i int) string {
	if f.c.attackSources <= 1 {
		return f.c.attackFrom
	}
	n := i % f.c.attackSources
	return fmt.Sprintf("127.1.%d.%d", n/250, n%250+1)
}

func (f *flood) start() {
	for i := 0; i < f.c.conns; i++ {
		f.wg.Add(1)
		go f.attacker(i)
	}
}

func (f *flood) attacker(i int) {
	defer f.wg.Done()
	src := f.source(i)
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	for n := 0; ; n++ {
		select {
		case <-f.stop:
			return
		default:
		}
		c, err := d.Dial("tcp", f.c.proxy)
		if err != nil {
			f.dropped.Add(1)
			select {
			case <-f.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !f.track(c, true) {
			c.Close()
			return
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		f.attacks.Add(1)
		st, err := greetLogin(c, f.c.user, "wrong-"+strconv.Itoa(i)+"-"+strconv.Itoa(n))
		switch {
		case err == nil && st != 0:
			f.refused.Add(1)
		case err == nil:
			fmt.Fprintln(os.Stderr, "authflood: a wrong password was accepted")
		default:
			f.dropped.Add(1)
		}
		f.track(c, false)
		// No TIME_WAIT on our side: tens of thousands of them would
		// exhaust the ports of one source address.
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
}

func (f *flood) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		if f.conns == nil {
			return false
		}
		f.conns[c] = struct{}{}
	} else if f.conns != nil {
		delete(f.conns, c)
	}
	return true
}

// leave ends the flood at once: every attacking connection closes, as
// when attackers go away mid-login.
func (f *flood) leave() {
	close(f.stop)
	f.mu.Lock()
	for c := range f.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// clkTck is the unit of utime and stime in /proc/PID/stat (USER_HZ, which
// Linux fixes at 100 for user space whatever the kernel's HZ).
const clkTck = 100

// cpuTicks is the user and system time of every thread of pid.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("the server's CPU time: %v", err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/PID/stat")
	}
	f := strings.Fields(s[i+1:])
	// After ") ": state is field 3 of stat; utime and stime are 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st, nil
}

// waitIdle samples the server's CPU time every 50ms from now (the
// attackers just left) until a window of c.idleWindow costs it under 5%
// of one CPU; it returns when that window began, and the CPU time spent
// until then.
func (c config) waitIdle() (busy, cpu float64, capped bool) {
	type sample struct {
		t     time.Time
		ticks int64
	}
	t0 := time.Now()
	first, _ := cpuTicks(c.pid)
	samples := []sample{{t0, first}}
	limit := float64(c.idleWindow.Seconds()) * 0.05 * clkTck
	for {
		time.Sleep(50 * time.Millisecond)
		now := time.Now()
		ticks, err := cpuTicks(c.pid)
		if err != nil {
			return now.Sub(t0).Seconds(), 0, true
		}
		samples = append(samples, sample{now, ticks})
		// The oldest sample at least a window back.
		for j := len(samples) - 1; j >= 0; j-- {
			if now.Sub(samples[j].t) >= c.idleWindow {
				if float64(ticks-samples[j].ticks) < limit+1 {
					return samples[j].t.Sub(t0).Seconds(), float64(samples[j].ticks-first) / clkTck, false
				}
				break
			}
		}
		if now.Sub(t0) > c.idleLimit {
			return now.Sub(t0).Seconds(), float64(ticks-first) / clkTck, true
		}
	}
}

func printResult(c config, r *result) {
	ms := func(v float64, ok bool) string {
		if !ok {
			return "-"
		}
		if v >= 1000 {
			return fmt.Sprintf("%.2fs", v/1000)
		}
		return fmt.Sprintf("%.1fms", v)
	}
	src := c.attackFrom
	if c.attackSources > 1 {
		src = fmt.Sprintf("%d addresses 127.1.x.y", c.attackSources)
	}
	fmt.Printf("%s: %d attacking connections from %s for %v; %s logs in from %s\n", r.Label, c.conns, src, c.seconds, c.user, c.validFrom)
	fmt.Printf("  %-10s %6s %6s %9s %9s %9s %9s %8s %9s %10s\n", "phase", "logins", "failed", "p50", "p90", "p99", "max", "CPU s", "attacks", "attacks/s")
	for _, p := range []*phase{r.Off, r.On} {
		ok := p.OK > 0
		att, rate := "-", "-"
		if p.Attacks > 0 {
			att = strconv.FormatInt(p.Attacks, 10)
			rate = fmt.Sprintf("%.0f", float64(p.Attacks)/p.Seconds)
		}
		fmt.Printf("  %-10s %6d %6d %9s %9s %9s %9s %8.2f %9s %10s\n", p.Name, p.OK+p.Failed, p.Failed,
			ms(p.P50, ok), ms(p.P90, ok), ms(p.P99, ok), ms(p.Max, ok), p.CPU, att, rate)
		for _, s := range p.FailSample {
			fmt.Printf("  %-10s   failed: %s\n", "", s)
		}
	}
	on := r.On
	fmt.Printf("  attackers: %d logins, %d refused with status 1, %d closed or timed out without a status\n", on.Attacks, on.Refused, on.Dropped)
	if n := r.Cold.OK + r.Cold.Failed; n > 0 {
		fmt.Printf("  first logins of %d other users during the flood (from %s): %d ok", n, c.coldFrom, r.Cold.OK)
		if r.Cold.OK > 0 {
			fmt.Printf(", max %s", ms(r.Cold.Max, true))
		}
		fmt.Println()
		for _, s := range r.Cold.FailSample {
			fmt.Printf("    failed: %s\n", s)
		}
	}
	more := ""
	if r.TailCapped {
		more = " (still busy when the bench stopped waiting)"
	}
	fmt.Printf("  after the attackers left: server busy for %.2fs more, %.2f CPU s%s\n", r.TailS, r.TailCPU, more)
}

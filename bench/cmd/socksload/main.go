// Command socksload is the load side of bench/socks5d.sh: a SOCKS5 client
// that does the handshake itself, so every server under test faces the
// same client, and the echo server those clients reach through the proxy.
// With --plain, short speaks no SOCKS5 and connects straight to --target,
// for forwarders (bench/forward-short.sh).
//
//	socksload echo  --listen 127.0.0.1:0
//	socksload short --proxy ADDR --target ADDR [--conns 20000] [--parallel 32]
//	socksload short --plain --target ADDR [--conns 20000] [--parallel 32]
//	socksload idle  --proxy ADDR --target ADDR [--sessions 5000] --ready FILE
//
// short and idle print one JSON object on stdout. Everything is bounded in
// count and in time; nothing here reaches beyond the addresses it is given.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: socksload echo|short|idle [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "echo":
		err = runEcho(os.Args[2:])
	case "short":
		err = runShort(os.Args[2:])
	case "idle":
		err = runIdle(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (echo, short, idle)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "socksload:", err)
		os.Exit(1)
	}
}

// runEcho serves TCP echo until its lifetime ends or it is signalled. It
// prints its address so the caller can use port 0.
func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to echo on")
	lifetime := fs.Duration("lifetime", 30*time.Minute, "exit after this long whatever happens")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().String())
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		select {
		case <-sig:
		case <-time.After(*lifetime):
		}
		os.Exit(0)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go func() {
			defer c.Close()
			var buf [4096]byte
			for {
				n, err := c.Read(buf[:])
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// socksConnect dials the proxy and asks it, without authentication, to
// CONNECT to target (an IP address), the way curl does: greeting, wait,
// request, wait.
func socksConnect(proxy string, target netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, timeout)
	if err != nil {
		return nil, fmt.Errorf("dial proxy: %w", err)
	}
	c.SetDeadline(time.Now().Add(timeout))
	if err := handshake(c, target); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func handshake(c net.Conn, target netip.AddrPort) error {
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	var b [4 + 16 + 2]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return fmt.Errorf("method reply: %w", err)
	}
	if b[0] != 5 || b[1] != 0 {
		return fmt.Errorf("method reply %x", b[:2])
	}
	req := []byte{5, 1, 0}
	if target.Addr().Is4() {
		req = append(req, 1)
	} else {
		req = append(req, 4)
	}
	req = append(req, target.Addr().AsSlice()...)
	req = binary.BigEndian.AppendUint16(req, target.Port())
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if _, err := io.ReadFull(c, b[:4]); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	if b[0] != 5 || b[1] != 0 {
		return fmt.Errorf("reply code %d", b[1])
	}
	var rest int
	switch b[3] {
	case 1:
		rest = 4 + 2
	case 4:
		rest = 16 + 2
	case 3:
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
		rest = int(b[0]) + 2
	default:
		return fmt.Errorf("reply address type %d", b[3])
	}
	if _, err := io.CopyN(io.Discard, c, int64(rest)); err != nil {
		return fmt.Errorf("reply address: %w", err)
	}
	return nil
}

// echoOnce sends payload and expects it back whole.
func echoOnce(c net.Conn, payload, back []byte) error {
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if _, err := io.ReadFull(c, back[:len(payload)]); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if string(back[:len(payload)]) != string(payload) {
		return errors.New("echo came back different")
	}
	return nil
}

func parseTarget(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("--target %q: want IP:PORT: %v", s, err)
	}
	return ap, nil
}

// errorSample keeps the first few distinct error messages, so a failing
// run says why without printing thousands of lines.
type errorSample struct {
	mu    sync.Mutex
	count atomic.Int64
	seen  map[string]int
}

func (e *errorSample) add(err error) {
	e.count.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.seen == nil {
		e.seen = map[string]int{}
	}
	msg := err.Error()
	if _, ok := e.seen[msg]; ok || len(e.seen) < 8 {
		e.seen[msg]++
	}
}

func (e *errorSample) messages() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for m, n := range e.seen {
		out = append(out, fmt.Sprintf("%dx %s", n, m))
	}
	sort.Strings(out)
	return out
}

type shortResult struct {
	Conns    int      `json:"conns"`
	Done     int      `json:"done"`
	OK       int      `json:"ok"`
	Errors   int64    `json:"errors"`
	Seconds  float64  `json:"seconds"`
	CPS      float64  `json:"cps"`
	P50ms    float64  `json:"p50_ms"`
	P99ms    float64  `json:"p99_ms"`
	Samples  []string `json:"error_samples,omitempty"`
	TimedOut bool     `json:"timed_out,omitempty"`
}

// runShort makes conns short connections, parallel at a time: handshake,
// CONNECT, one echo of payload bytes, close (with --plain: connect to the
// target, echo, close). Latency is from the start of the dial to the
// echo's return.
func runShort(args []string) error {
	fs := flag.NewFlagSet("short", flag.ExitOnError)
	proxy := fs.String("proxy", "", "SOCKS5 server address")
	plain := fs.Bool("plain", false, "no SOCKS5: connect straight to --target (a forwarder's listening address)")
	targetS := fs.String("target", "", "echo server IP:PORT to CONNECT to (with --plain: to connect to)")
	conns := fs.Int("conns", 20000, "connections in all")
	parallel := fs.Int("parallel", 32, "connections at a time")
	size := fs.Int("payload", 64, "bytes echoed per connection")
	timeout := fs.Duration("timeout", 10*time.Second, "limit for one connection")
	maxTime := fs.Duration("max-time", 3*time.Minute, "stop starting connections after this long")
	fs.Parse(args)
	target, err := parseTarget(*targetS)
	if err != nil {
		return err
	}
	if *plain == (*proxy != "") || *conns < 1 || *parallel < 1 || *size < 1 || *size > 4096 {
		return errors.New("short needs one of --proxy and --plain, and positive --conns, --parallel, --payload (at most 4096)")
	}
	dial := func() (net.Conn, error) { return socksConnect(*proxy, target, *timeout) }
	if *plain {
		dial = func() (net.Conn, error) {
			c, err := net.DialTimeout("tcp", target.String(), *timeout)
			if err != nil {
				return nil, fmt.Errorf("dial: %w", err)
			}
			c.SetDeadline(time.Now().Add(*timeout))
			return c, nil
		}
	}
	payload := make([]byte, *size)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	var next atomic.Int64
	var errs errorSample
	lat := make([][]time.Duration, *parallel)
	var timedOut atomic.Bool
	start := time.Now()
	stopAt := start.Add(*maxTime)
	var wg sync.WaitGroup
	for w := range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			back := make([]byte, len(payload))
			mine := make([]time.Duration, 0, *conns / *parallel + 1)
			for next.Add(1) <= int64(*conns) {
				if time.Now().After(stopAt) {
					timedOut.Store(true)
					break
				}
				t0 := time.Now()
				c, err := dial()
				if err == nil {
					err = echoOnce(c, payload, back)
					c.Close()
				}
				if err != nil {
					errs.add(err)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			lat[w] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	r := shortResult{
		Conns: *conns, OK: len(all), Errors: errs.count.Load(),
		Seconds: elapsed.Seconds(), Samples: errs.messages(), TimedOut: timedOut.Load(),
	}
	r.Done = r.OK + int(r.Errors)
	r.CPS = float64(r.OK) / elapsed.Seconds()
	if len(all) > 0 {
		r.P50ms = quantile(all, 0.50)
		r.P99ms = quantile(all, 0.99)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func quantile(sorted []time.Duration, q float64) float64 {
	i := int(q*float64(len(sorted)-1) + 0.5)
	return float64(sorted[i].Microseconds()) / 1000
}

type idleResult struct {
	Sessions  int      `json:"sessions"`
	Opened    int      `json:"opened"`
	Errors    int64    `json:"errors"`
	OpenSecs  float64  `json:"open_seconds"`
	Alive     int      `json:"alive_after_hold"`
	HeldSecs  float64  `json:"held_seconds"`
	Samples   []string `json:"error_samples,omitempty"`
	Cancelled bool     `json:"cancelled,omitempty"`
}

// runIdle opens sessions, proves each relays with one small echo, and
// holds them idle; it writes the ready file once all are open, so the
// caller can measure the server then. On SIGUSR1 it checks that every
// session still relays, reports, and closes them; SIGTERM or --hold
// closes them without the check.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	proxy := fs.String("proxy", "", "SOCKS5 server address")
	targetS := fs.String("target", "", "echo server IP:PORT to CONNECT to")
	sessions := fs.Int("sessions", 5000, "sessions to open and hold")
	parallel := fs.Int("parallel", 32, "sessions being opened at a time")
	ready := fs.String("ready", "", "file to write once every session is open")
	hold := fs.Duration("hold", 3*time.Minute, "longest time to hold the sessions")
	timeout := fs.Duration("timeout", 10*time.Second, "limit for opening one session")
	fs.Parse(args)
	target, err := parseTarget(*targetS)
	if err != nil {
		return err
	}
	if *proxy == "" || *sessions < 1 || *parallel < 1 || *ready == "" {
		return errors.New("idle needs --proxy, --ready, and positive --sessions, --parallel")
	}
	// Signals first: the caller may signal as soon as the ready file
	// appears.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)

	payload := []byte("idle-session-ok!")
	open := make([]net.Conn, *sessions)
	var next atomic.Int64
	var errs errorSample
	start := time.Now()
	var wg sync.WaitGroup
	for range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			back := make([]byte, len(payload))
			for {
				i := next.Add(1) - 1
				if i >= int64(*sessions) {
					return
				}
				c, err := socksConnect(*proxy, target, *timeout)
				if err == nil {
					if err = echoOnce(c, payload, back); err != nil {
						c.Close()
					}
				}
				if err != nil {
					errs.add(err)
					continue
				}
				c.SetDeadline(time.Time{})
				open[i] = c
			}
		}()
	}
	wg.Wait()
	r := idleResult{Sessions: *sessions, Errors: errs.count.Load(), OpenSecs: time.Since(start).Seconds()}
	for _, c := range open {
		if c != nil {
			r.Opened++
		}
	}
	tmp := *ready + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", r.Opened, r.Errors), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, *ready); err != nil {
		return err
	}
	held := time.Now()
	check := false
	select {
	case s := <-sig:
		check = s == syscall.SIGUSR1
		r.Cancelled = !check
	case <-time.After(*hold):
		r.Cancelled = true
	}
	r.HeldSecs = time.Since(held).Seconds()
	if check {
		var alive atomic.Int64
		next.Store(0)
		for range *parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				back := make([]byte, len(payload))
				for {
					i := next.Add(1) - 1
					if i >= int64(len(open)) {
						return
					}
					c := open[i]
					if c == nil {
						continue
					}
					c.SetDeadline(time.Now().Add(*timeout))
					if err := echoOnce(c, payload, back); err != nil {
						errs.add(fmt.Errorf("after holding: %w", err))
						continue
					}
					alive.Add(1)
				}
			}()
		}
		wg.Wait()
		r.Alive = int(alive.Load())
	}
	for _, c := range open {
		if c != nil {
			c.Close()
		}
	}
	r.Samples = errs.messages()
	return json.NewEncoder(os.Stdout).Encode(r)
}

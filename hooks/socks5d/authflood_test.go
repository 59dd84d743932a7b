package socks5d

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	"golang.org/x/crypto/bcrypt"
)

// The regression suite of issue 9, items 2 and 10: a flood of wrong
// passwords must not keep real users out, and floods of bad clients must
// not flood the log. Counts and time are bounded; nothing here asserts a
// timing (bench/authflood.sh measures those).

// recordLog keeps every record the server logs, for counting.
type recordLog struct {
	mu   sync.Mutex
	recs []slog.Record
	t    testing.TB
}

func (h *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recordLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordLog) WithGroup(string) slog.Handler      { return h }

// warnings counts the WARN lines whose message has one of the prefixes,
// and what the summaries among them say they suppressed.
func (h *recordLog) warnings(prefixes ...string) (lines, shown, suppressed int, text []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Level != slog.LevelWarn {
			continue
		}
		var n int64 = -1
		line := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				n = a.Value.Int64()
			}
			line += " " + a.String()
			return true
		})
		if n >= 0 {
			lines++
			suppressed += int(n)
			text = append(text, line)
			continue
		}
		for _, p := range prefixes {
			if strings.HasPrefix(r.Message, p) {
				lines++
				shown++
				text = append(text, line)
				break
			}
		}
	}
	return
}

// dialFrom connects to addr from a given loopback address.
func dialFrom(t testing.TB, from, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, nil
}

// tryLogin runs greeting and RFC 1929 login on c and returns the status
// (0 success), or an error when the server closed or said something else.
func tryLogin(c net.Conn, user, pass string) (byte, error) {
	msg := []byte{5, 1, 2, 1, byte(len(user))}
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	if b[0] != 5 || b[1] != 2 || b[2] != 1 {
		return 0, fmt.Errorf("server answered % x", b)
	}
	return b[3], nil
}

// usersAtCost writes a users file with hashes of the given cost: a cost
// above the tests' minimum, so that a flood has real work to queue.
func usersAtCost(t *testing.T, cost int, pairs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range pairs {
		user, pass, _ := strings.Cut(p, ":")
		h, err := bcrypt.GenerateFromPassword([]byte(pass), cost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", user, h)
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// 200 wrong logins at once (from 127.0.0.1) while two real users log in
// ten times each: carol, who logged in before the flood, from the
// attackers' own address; alice, whose first login comes in the middle
// of the flood, from 127.0.0.2. Every one of the real logins succeeds,
// and the log holds a few lines about the flood and a count of the rest.
func TestAuthFloodValidLoginsSucceed(t *testing.T) {
	const attackers, logins = 200, 10
	eng := testEngine(t, nil)
	rec := &recordLog{t: t}
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: actingChain}, Log: slog.New(rec)}
	users := mustLoadUsers(t, usersAtCost(t, 8, "alice:secret", "carol:pw2"))
	s.SetUsers(users)
	addr := startServer(t, s, "tcp")
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()

	login := func(from, user, pass string) error {
		c, err := dialFrom(t, from, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		st, err := tryLogin(c, user, pass)
		if err != nil {
			return err
		}
		if st != 0 {
			return fmt.Errorf("status %d", st)
		}
		// The login is good for a flow.
		if _, err := c.Write(connectReq(echo)); err != nil {
			return err
		}
		var rep [10]byte
		if _, err := io.ReadFull(c, rep[:]); err != nil || rep[1] != 0 {
			return fmt.Errorf("CONNECT after the login: reply % x, %v", rep, err)
		}
		return nil
	}
	if err := login("127.0.0.1", "carol", "pw2"); err != nil {
		t.Fatalf("carol before the flood: %v", err)
	}

	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]int{}
	for i := 0; i < attackers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := dialFrom(t, "127.0.0.1", addr)
			if err != nil {
				t.Errorf("attacker %d: %v", i, err)
				return
			}
			defer c.Close()
			user := "alice"
			if i%4 == 0 {
				user = "nosuch" + strconv.Itoa(i)
			}
			st, err := tryLogin(c, user, "guess"+strconv.Itoa(i))
			key := fmt.Sprint("status ", st)
			if err != nil {
				key = "error"
			}
			mu.Lock()
			statuses[key]++
			mu.Unlock()
		}()
	}
	close(start)
	errs := make(chan error, 2*logins)
	var real sync.WaitGroup
	for _, u := range []struct{ from, user, pass string }{{"127.0.0.2", "alice", "secret"}, {"127.0.0.1", "carol", "pw2"}} {
		real.Add(1)
		go func() {
			defer real.Done()
			for i := 0; i < logins; i++ {
				if err := login(u.from, u.user, u.pass); err != nil {
					errs <- fmt.Errorf("%s from %s, login %d of %d during the flood: %v", u.user, u.from, i+1, logins, err)
				}
			}
		}()
	}
	real.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("attackers: %v; bcrypt checks: %d", statuses, users.bcrypts.Load())
	if statuses["status 1"] != attackers {
		t.Errorf("the attackers got %v; want status 1 for all %d", statuses, attackers)
	}
	// The work is bounded: one source gets a few checks before its
	// backoff, and a share of the queue (without the bounds, 200 wrong
	// passwords are 200 bcrypts). alice's first login is one more.
	if n := users.bcrypts.Load(); n > 20 {
		t.Errorf("%d bcrypt checks for %d wrong logins from one address and 2 users' %d logins; want at most 20", n, attackers, 2*logins+1)
	}
	s.warns.Flush()
	lines, shown, suppressed, text := rec.warnings("authentication failed", "login refused")
	t.Logf("log:\n%s", strings.Join(text, "\n"))
	if shown+suppressed != attackers || lines > 30 {
		t.Errorf("%d warning lines, %d shown and %d counted as suppressed; want at most 30 lines and %d in all:\n%s",
			lines, shown, suppressed, attackers, strings.Join(text, "\n"))
	}
}

// A source in backoff waits it out on its connection and then gets its
// check: a user who mistyped gets in with the right password, with a
// request sent ahead of the answers (pipelined) intact.
func TestLoginTarpit(t *testing.T) {
	eng := testEngine(t, nil)
	s := &Server{Engine: eng, Selector: funnel.Selector{Chain: "direct"}}
	s.logins.Free = 1
	s.logins.BackoffBase = 300 * time.Millisecond
	s.SetUsers(mustLoadUsers(t, writeUsers(t, "alice:secret")))
	addr := startServer(t, s, "tcp")
	echo := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	for _, p := range []string{"typo", "typo2"} {
		r := dialRaw(t, addr)
		r.send(5, 1, 2)
		r.expect(5, 2)
		r.send(append([]byte{1, 5, 'a', 'l', 'i', 'c', 'e', byte(len(p))}, p...)...)
		r.expect(1, 1)
	}
	// In backoff now (300ms): greeting, login and CONNECT in one write.
	r := dialRaw(t, addr)
	msg := []byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', 'e', 'c', 'r', 'e', 't'}
	r.send(append(append(msg, connectReq(echo)...), "ping\n"...)...)
	r.expect(5, 2, 1, 0)
	if code, _ := r.readReply(); code != 0 {
		t.Fatalf("CONNECT after a tarpitted login: reply %d", code)
	}
	r.expect([]byte("ping\n")...)
	if n := s.users.Load().bcrypts.Load(); n != 3 {
		t.Errorf("%d bcrypts, want 3", n)
	}
}

// Floods of bad clients cost the log a few lines each, and a summary
// counts the rest: 2,000 connections that speak HTTP to the SOCKS port,
// clients outside --allow, clients that will not log in.
func TestLogFloodsAreSummed(t *testing.T) {
	eng := testEngine(t, nil)
	usersFile := writeUsers(t, "alice:secret")
	for _, c := range []struct {
		name   string
		conns  int
		server func(*Server)
		send   []byte
		warn   string
	}{
		{"garbage", 2000, func(*Server) {}, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "malformed SOCKS5 greeting"},
		{"outside --allow", 300, func(s *Server) { s.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }, []byte{5, 1, 2}, "client not in --allow"},
		{"no login", 300, func(s *Server) { s.SetUsers(mustLoadUsers(t, usersFile)) }, []byte{5, 1, 0}, "client offers no username/password method"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &recordLog{t: t}
			s := &Server{Engine: eng, Selector: funnel.Selector{Chain: "direct"}, Log: slog.New(rec)}
			c.server(s)
			addr := startServer(t, s, "tcp")
			const workers = 32
			var wg sync.WaitGroup
			var failed sync.Once
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < c.conns; i += workers {
						conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
						if err != nil {
							failed.Do(func() { t.Errorf("connection %d: %v", i, err) })
							return
						}
						// No TIME_WAIT on our side: 2,000 of them
						// are not what the test is about.
						conn.(*net.TCPConn).SetLinger(0)
						conn.SetDeadline(time.Now().Add(15 * time.Second))
						conn.Write(c.send)
						// The server answers (or not) and closes.
						io.Copy(io.Discard, conn)
						conn.Close()
					}
				}()
			}
			wg.Wait()
			// The server logs before it closes: every warning is in.
			s.warns.Flush()
			lines, shown, suppressed, text := rec.warnings(c.warn)
			if shown+suppressed != c.conns || lines > 30 || suppressed == 0 {
				t.Errorf("%d connections: %d lines, %d warnings shown and %d suppressed; want at most 30 lines, a summary, and %d in all:\n%s",
					c.conns, lines, shown, suppressed, c.conns, strings.Join(text, "\n"))
			}
		})
	}
}

// The binary warns about a users file that others can read, at start and
// at every reload, naming the file and the fix.
func TestBinaryWarnsAboutUsersFileMode(t *testing.T) {
	bin := funtunBin(t)
	users := writeUsers(t, "alice:secret")
	if err := os.Chmod(users, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	daemon, out := startFuntun(t, []string{"FUNTUN_PROFILE_PATH=" + profileDir(t, nil)}, bin, "socks5d", "--listen", addr, "--users", users, "profile=direct")
	testutil.WaitListen(t, addr)
	want := "chmod 600 " + users
	waitLog := func(n int, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(out.String(), want) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the log has %d warnings with %q, want %d:\n%s", what, strings.Count(out.String(), want), want, n, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog(1, "at start")
	if !strings.Contains(out.String(), "users file "+users+" is readable by other users") {
		t.Errorf("the warning does not say what is wrong:\n%s", out.String())
	}
	daemon.Process.Signal(syscall.SIGHUP)
	waitLog(2, "after SIGHUP")
	// Fixed: the next reload says nothing.
	os.Chmod(users, 0o600)
	daemon.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "users file reloaded") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(out.String(), want); n != 2 {
		t.Errorf("after chmod 600 and SIGHUP: %d warnings, want still 2:\n%s", n, out.String())
	}
}

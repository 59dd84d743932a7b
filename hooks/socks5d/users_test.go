package socks5d

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestUsersFileErrors(t *testing.T) {
	const hash = "$2a$04$Q6ZdBXQEb7a0QXWnJ0i2eOYdD2h1mjN1f4W8pH3wq6ZbKj5Hc1B2e"
	for _, c := range []struct{ line, want string }{
		{"alice", "want user:bcrypt-hash or user:bcrypt-hash:profile"},
		{"alice:secret", `user "alice": the password is not a bcrypt hash`},
		{":" + hash, "empty user name"},
		{"alice:" + hash + ":no/profile", `user "alice": "no/profile" is not a profile name`},
		{"alice:" + hash + "\nalice:" + hash, `user "alice" is already on line 2`},
	} {
		path := filepath.Join(t.TempDir(), "users")
		os.WriteFile(path, []byte("# users\n"+c.line+"\n"), 0o600)
		_, err := LoadUsers(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path+":") {
			t.Errorf("%q: %v; want %s:LINE: ... %s", c.line, err, path, c.want)
		}
	}
}

// A users file naming a profile that does not exist is refused at start,
// with the file and line.
func TestUsersFileUnknownProfile(t *testing.T) {
	eng := testEngine(t, map[string]string{"work": "hosts demo.test=127.0.0.1"})
	path := writeUsers(t, "alice:secret:work", "bob:pw:play")
	_, err := loadUsersChecked(eng, path)
	if err == nil || !strings.Contains(err.Error(), path+":2: no profile named \"play\"") {
		t.Fatalf("loadUsersChecked: %v; want %s:2: no profile named \"play\"", err, path)
	}
}

// A password that passed bcrypt is remembered as an HMAC under a key of
// the load, for cacheTTL; another password, another user or a later
// clock miss.
func TestUsersCache(t *testing.T) {
	u := mustLoadUsers(t, writeUsers(t, "alice:secret", "bob:pw"))
	now := time.Now()
	u.now = func() time.Time { return now }
	if _, ok := u.cached("alice", u.keyedSum("alice", "secret")); ok {
		t.Fatal("cache hit before any login")
	}
	if _, ok := u.Check("alice", "secret"); !ok {
		t.Fatal("alice/secret refused")
	}
	if _, ok := u.cached("alice", u.keyedSum("alice", "secret")); !ok {
		t.Fatal("no cache hit after a login")
	}
	for _, c := range [][2]string{{"alice", "Secret"}, {"alice", "secret "}, {"bob", "secret"}, {"alicesecret", ""}} {
		if _, ok := u.cached(c[0], u.keyedSum(c[0], c[1])); ok {
			t.Errorf("cache hit for %q/%q", c[0], c[1])
		}
	}
	// The sum binds user and password apart: "a"+"bc" is not "ab"+"c".
	if u.keyedSum("a", "bc") == u.keyedSum("ab", "c") {
		t.Error("keyedSum(a, bc) == keyedSum(ab, c)")
	}
	// Nothing of the password is kept in the clear.
	for _, e := range u.cache {
		if strings.Contains(string(e.sum[:]), "secret") {
			t.Error("the cache holds the password")
		}
	}
	now = now.Add(cacheTTL - time.Second)
	if _, ok := u.cached("alice", u.keyedSum("alice", "secret")); !ok {
		t.Error("cache entry gone before cacheTTL")
	}
	now = now.Add(time.Second)
	if _, ok := u.cached("alice", u.keyedSum("alice", "secret")); ok {
		t.Error("cache entry still there after cacheTTL")
	}
	if len(u.cache) != 0 {
		t.Errorf("expired entries kept: %d", len(u.cache))
	}
}

// A reload makes a new Users with an empty cache and a new key: a user
// whose line changed must log in with the new password only, even right
// after logging in with the old one.
func TestUsersCacheDroppedOnReload(t *testing.T) {
	path := writeUsers(t, "alice:old", "bob:pw")
	old := mustLoadUsers(t, path)
	var g loginGuard
	lo := netip.MustParseAddr("127.0.0.1")
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range [][2]string{{"alice", "old"}, {"bob", "pw"}} {
		if _, res, _ := old.login(&g, lo, c[0], c[1], deadline, sleep); res != loginOK {
			t.Fatalf("%s before the reload: %v", c[0], res)
		}
	}
	if _, err := AddUser(path, "alice", "new", ""); err != nil {
		t.Fatal(err)
	}
	u := mustLoadUsers(t, path)
	if len(u.cache) != 0 || u.cacheKey == old.cacheKey {
		t.Fatal("the reloaded file kept the old cache or key")
	}
	if _, res, _ := u.login(&g, lo, "alice", "old", deadline, sleep); res != loginWrong {
		t.Errorf("alice's old password after the reload: %v, want loginWrong", res)
	}
	if _, res, _ := u.login(&g, lo, "alice", "new", deadline, sleep); res != loginOK {
		t.Errorf("alice's new password after the reload: %v, want loginOK", res)
	}
	if _, res, _ := u.login(&g, lo, "bob", "pw", deadline, sleep); res != loginOK {
		t.Errorf("bob after the reload: %v", res)
	}
}

// Identical checks that overlap share one bcrypt, and count as one
// failure against their source.
func TestLoginCoalesces(t *testing.T) {
	u := mustLoadUsers(t, writeUsers(t, "alice:secret"))
	g := loginGuard{Workers: 1, Queue: 1, PerSource: 1}
	src := netip.MustParseAddr("192.0.2.1")
	deadline := time.Now().Add(10 * time.Second)
	// Hold the only slot, so that the first check waits in the queue
	// and the others join it.
	g.setup()
	other := netip.MustParseAddr("192.0.2.99")
	if !g.pool.acquire(other, 1, deadline) {
		t.Fatal("acquire")
	}
	const n = 20
	res := make(chan loginResult, n)
	for i := 0; i < n; i++ {
		go func() {
			_, r, _ := u.login(&g, src, "alice", "wrong", deadline, sleep)
			res <- r
		}()
	}
	waitFor(t, func() bool {
		g.pool.mu.Lock()
		defer g.pool.mu.Unlock()
		return g.pool.queued == 1
	})
	time.Sleep(50 * time.Millisecond) // let the rest join the flight
	g.pool.release(other)
	for i := 0; i < n; i++ {
		if r := <-res; r != loginWrong {
			t.Errorf("login %d: %v, want loginWrong", i, r)
		}
	}
	g.backoff.mu.Lock()
	fails := g.backoff.m[src].n
	g.backoff.mu.Unlock()
	if fails != 1 {
		t.Errorf("%d failures counted for %d identical overlapping logins, want 1", fails, n)
	}
}

// sleep is login's pause in tests: the client is always still there.
func sleep(d time.Duration) bool {
	time.Sleep(d)
	return true
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCheckPool(t *testing.T) {
	g := loginGuard{Workers: 2, Queue: 2}
	g.setup()
	p := &g.pool
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	far := time.Now().Add(10 * time.Second)
	// Two slots at once.
	const share = 3
	if !p.acquire(a, share, far) || !p.acquire(b, share, far) {
		t.Fatal("the two slots")
	}
	// The queue: two places, in order.
	got := make(chan netip.Addr, 2)
	for _, src := range []netip.Addr{a, b} {
		go func() {
			if p.acquire(src, share, far) {
				got <- src
			}
		}()
		waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.bySource[src] == 2 })
	}
	// Full: refused at once, whatever the deadline.
	start := time.Now()
	if p.acquire(c, share, far) {
		t.Fatal("a fifth check got in with 2 slots and 2 queue places")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v", d)
	}
	p.release(a)
	if first := <-got; first != a {
		t.Errorf("the queue woke %v first, want %v", first, a)
	}
	p.release(b)
	if second := <-got; second != b {
		t.Errorf("then %v, want %v", second, b)
	}
	// A queued check gives up at its deadline and leaves no trace.
	if p.acquire(c, share, time.Now().Add(50*time.Millisecond)) {
		t.Fatal("acquired with every slot busy")
	}
	p.mu.Lock()
	if p.queued != 0 || p.bySource[c] != 0 {
		t.Errorf("after a timeout: queued %d, held by c %d", p.queued, p.bySource[c])
	}
	p.mu.Unlock()
	p.release(a)
	p.release(b)
	p.mu.Lock()
	if len(p.bySource) != 0 || len(p.sem) != 0 {
		t.Errorf("all released, yet %v held and %d slots taken", p.bySource, len(p.sem))
	}
	p.mu.Unlock()
}

// One source cannot hold more than the share it is given of slots and
// queue places.
func TestCheckPoolShare(t *testing.T) {
	g := loginGuard{Workers: 1, Queue: 8}
	g.setup()
	p := &g.pool
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	far := time.Now().Add(10 * time.Second)
	if !p.acquire(a, 2, far) {
		t.Fatal("first")
	}
	go p.acquire(a, 2, far)
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.queued == 1 })
	if p.acquire(a, 2, far) {
		t.Fatal("a third check from one source with a share of 2")
	}
	done := make(chan bool)
	go func() { done <- p.acquire(b, 2, far) }()
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.queued == 2 })
	p.release(a) // to the second of a
	p.release(a) // to b
	if !<-done {
		t.Fatal("b refused")
	}
	p.release(b)
}

// Through login: a source that failed lately gets PerSource checks at
// once; one that has not, half of the slots and queue places (several
// users behind one address logging in at once all get in).
func TestLoginShareAfterFailures(t *testing.T) {
	u := mustLoadUsers(t, writeUsers(t, "alice:secret", "bob:pw", "carol:pw3", "dave:pw4"))
	g := loginGuard{Workers: 1, Queue: 8, PerSource: 1}
	g.setup()
	src := netip.MustParseAddr("192.0.2.1")
	far := time.Now().Add(10 * time.Second)
	// Keep the only worker busy so that checks queue.
	hold := netip.MustParseAddr("192.0.2.200")
	if !g.pool.acquire(hold, 1, far) {
		t.Fatal("acquire")
	}
	res := make(chan loginResult, 3)
	for _, c := range [][2]string{{"bob", "pw"}, {"carol", "pw3"}, {"dave", "pw4"}} {
		go func() {
			_, r, _ := u.login(&g, src, c[0], c[1], far, sleep)
			res <- r
		}()
	}
	waitFor(t, func() bool { g.pool.mu.Lock(); defer g.pool.mu.Unlock(); return g.pool.queued == 3 })
	g.pool.release(hold)
	for i := 0; i < 3; i++ {
		if r := <-res; r != loginOK {
			t.Errorf("a user behind a source without failures: %v, want loginOK", r)
		}
	}
	// One failure: now the source has a share of 1.
	if _, r, _ := u.login(&g, src, "alice", "wrong", far, sleep); r != loginWrong {
		t.Fatalf("wrong password: %v", r)
	}
	if !g.pool.acquire(hold, 1, far) {
		t.Fatal("acquire")
	}
	go func() {
		_, r, _ := u.login(&g, src, "alice", "wrong2", far, sleep)
		res <- r
	}()
	waitFor(t, func() bool { g.pool.mu.Lock(); defer g.pool.mu.Unlock(); return g.pool.queued == 1 })
	if _, r, _ := u.login(&g, src, "alice", "wrong3", far, sleep); r != loginBusy {
		t.Errorf("a second check from a source with failures and a share of 1: %v, want loginBusy", r)
	}
	g.pool.release(hold)
	if r := <-res; r != loginWrong {
		t.Errorf("the queued check: %v", r)
	}
}

func TestSourceBackoff(t *testing.T) {
	g := loginGuard{Free: 2, BackoffBase: time.Second, BackoffMax: 8 * time.Second, Forget: time.Minute, MaxSources: 3}
	g.setup()
	b := &g.backoff
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("10.0.0.1")
	var waits []time.Duration
	for i := 0; i < 7; i++ {
		waits = append(waits, b.failed(a, now))
	}
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	if !slices.Equal(waits, want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	if d, failed := b.delay(a, now.Add(3*time.Second)); d != 5*time.Second || !failed {
		t.Errorf("delay 3s into an 8s backoff: %v %v", d, failed)
	}
	if d, failed := b.delay(a, now.Add(8*time.Second)); d != 0 || !failed {
		t.Errorf("delay after the backoff: %v %v", d, failed)
	}
	// Forgotten a minute after the last failure: a fresh count.
	later := now.Add(time.Minute)
	if d, failed := b.delay(a, later); d != 0 || failed {
		t.Errorf("delay a minute later: %v %v", d, failed)
	}
	if w := b.failed(a, later); w != 0 {
		t.Errorf("first failure after forgetting: wait %v", w)
	}
	// Bounded: a fourth source pushes out the one quiet the longest.
	for i, s := range []string{"10.0.0.2", "10.0.0.3"} {
		b.failed(netip.MustParseAddr(s), later.Add(time.Duration(i+1)*time.Second))
	}
	b.failed(netip.MustParseAddr("10.0.0.4"), later.Add(3*time.Second))
	b.mu.Lock()
	_, kept := b.m[a]
	n := len(b.m)
	b.mu.Unlock()
	if n != 3 || kept {
		t.Errorf("%d sources remembered (want 3), the oldest kept: %v", n, kept)
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"::ffff:192.0.2.1":     "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::",
		"fe80::1%eth0":         "fe80::",
		"2001:db8:1:3::1":      "2001:db8:1:3::",
	} {
		if got := sourceKey(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("sourceKey(%s) = %v, want %s", in, got, want)
		}
	}
	if got := sourceKey(netip.Addr{}); got.IsValid() {
		t.Errorf("sourceKey(no address) = %v", got)
	}
}

// A source in backoff waits it out when it ends before the deadline (a
// user who mistyped gets in), and is refused at once otherwise.
func TestLoginBackoffWaitsOrRefuses(t *testing.T) {
	u := mustLoadUsers(t, writeUsers(t, "alice:secret"))
	g := loginGuard{Free: 1, BackoffBase: 300 * time.Millisecond, BackoffMax: time.Hour}
	src := netip.MustParseAddr("192.0.2.1")
	deadline := func() time.Time { return time.Now().Add(5 * time.Second) }
	for _, p := range []string{"one", "two"} {
		if _, res, _ := u.login(&g, src, "alice", p, deadline(), sleep); res != loginWrong {
			t.Fatalf("wrong password %q: %v", p, res)
		}
	}
	// 300ms of backoff: waited out.
	start := time.Now()
	if _, res, _ := u.login(&g, src, "alice", "secret", deadline(), sleep); res != loginOK {
		t.Fatalf("the right password after two failures: %v", res)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the login took %v: it did not wait out its backoff", d)
	}
	// Now cached: no backoff for the right password.
	u.login(&g, src, "alice", "three", deadline(), sleep) // 600ms
	u.login(&g, src, "alice", "four", deadline(), sleep)  // 1.2s
	if _, res, _ := u.login(&g, src, "alice", "secret", deadline(), sleep); res != loginOK {
		t.Errorf("a cached password in backoff: %v", res)
	}
	// A backoff longer than the time left: refused before any bcrypt.
	start = time.Now()
	_, res, retry := u.login(&g, src, "alice", "five", time.Now().Add(500*time.Millisecond), sleep)
	if res != loginBackoff || retry <= 0 {
		t.Errorf("wrong password in a long backoff: %v retry %v, want loginBackoff", res, retry)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("the refusal took %v", d)
	}
	// A client that goes away during the wait (pause says so), or no
	// pause at all: refused without a check.
	g2 := loginGuard{Free: 1, BackoffBase: 300 * time.Millisecond}
	other := netip.MustParseAddr("192.0.2.3")
	u.login(&g2, other, "alice", "one", deadline(), sleep)
	u.login(&g2, other, "alice", "two", deadline(), sleep)
	before := u.bcrypts.Load()
	gone := func(time.Duration) bool { return false }
	if _, res, _ := u.login(&g2, other, "alice", "three", deadline(), gone); res != loginBackoff {
		t.Errorf("the client left during its backoff: %v, want loginBackoff", res)
	}
	if _, res, _ := u.login(&g2, other, "alice", "four", deadline(), nil); res != loginBackoff {
		t.Errorf("no pause: %v, want loginBackoff", res)
	}
	if n := u.bcrypts.Load() - before; n != 0 {
		t.Errorf("%d bcrypts for logins refused in backoff", n)
	}
	// Another source is not held off.
	if _, res, _ := u.login(&g, netip.MustParseAddr("192.0.2.2"), "alice", "wrong", deadline(), sleep); res != loginWrong {
		t.Errorf("another source: %v", res)
	}
}

// A users file that others may read or write is named in a warning with
// the fix, at every load; a private one is not.
func TestUsersFileModeWarning(t *testing.T) {
	path := writeUsers(t, "alice:secret")
	for _, c := range []struct {
		mode os.FileMode
		want string
	}{
		{0o600, ""},
		{0o400, ""},
		{0o640, "readable by other users"},
		{0o604, "readable by other users"},
		{0o620, "writable by other users"},
		{0o666, "readable by other users"},
	} {
		if err := os.Chmod(path, c.mode); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		if _, err := loadUsers(path, log); err != nil {
			t.Fatal(err)
		}
		got := buf.String()
		if c.want == "" {
			if got != "" {
				t.Errorf("mode %04o: %s", c.mode, got)
			}
			continue
		}
		for _, w := range []string{"level=WARN", c.want, "chmod 600 " + path, "file=" + path, fmt.Sprintf("mode=%04o", c.mode)} {
			if !strings.Contains(got, w) {
				t.Errorf("mode %04o: warning %q lacks %q", c.mode, got, w)
			}
		}
	}
}

// adduser makes a new file 0600 whatever the umask; an existing file
// keeps its mode, with the same warning when it is open to others.
func TestAddUserFileMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "users")
	if _, err := AddUser(path, "alice", "secret", ""); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("new users file has mode %04o, want 0600", st.Mode().Perm())
	}
	os.Chmod(path, 0o644)
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	_, err = AddUser(path, "bob", "pw", "")
	slog.SetDefault(prev)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("existing file's mode changed to %04o", st.Mode().Perm())
	}
	if !strings.Contains(buf.String(), "chmod 600 "+path) {
		t.Errorf("adduser on a 0644 file said %q; want the chmod advice", buf.String())
	}
}

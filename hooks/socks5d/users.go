package socks5d

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/funtun/funtun/funnel"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// Users is a loaded users file: one `user:bcrypt-hash[:profile]` a line,
// # comments and blank lines allowed. A reload makes a new Users, so what
// it remembers (the cache below) goes with the file it was loaded from.
type Users struct {
	Path    string
	entries map[string]userEntry

	// bcrypt costs tens of milliseconds of CPU by design; a client that
	// opens a connection per request (proxychains does, browsers open
	// several at once) would pay it every time. The last password that
	// passed bcrypt is remembered per user for cacheTTL as an HMAC-SHA256
	// of user and password under a key made at load that never leaves
	// the process; the password itself is never kept. Identical checks
	// that overlap share one bcrypt (flights).
	cacheKey [32]byte
	mu       sync.Mutex
	cache    map[string]cacheEntry
	flights  map[[32]byte]*flight

	// dummy keeps the time of a login with an unknown user close to that
	// of a known user with a wrong password, so that timing does not tell
	// which users exist; it has the cost of the file's hashes. It is made
	// on first use, not at every start.
	dummy func() []byte

	now     func() time.Time // the clock (tests move it)
	bcrypts atomic.Int64     // bcrypt comparisons made, for tests
}

type userEntry struct {
	hash    []byte
	profile string // empty: the command's profile
	line    int
}

// cacheTTL is how long a verified password spares bcrypt.
const cacheTTL = 10 * time.Minute

type cacheEntry struct {
	sum   [32]byte
	until time.Time
}

// flight is one bcrypt check that identical logins arriving meanwhile wait
// for instead of running their own.
type flight struct {
	done  chan struct{}
	entry userEntry
	res   loginResult
}

// hashCost is the bcrypt cost adduser uses (tests lower it: the race
// detector makes bcrypt slow).
var hashCost = bcrypt.DefaultCost

// LoadUsers reads and checks a users file; errors name FILE:LINE. A file
// that other users may read (or write) gets a warning in the log, at
// start and at every reload: the hashes in it are open to offline
// guessing.
func LoadUsers(path string) (*Users, error) {
	return loadUsers(path, slog.Default())
}

func loadUsers(path string, log *slog.Logger) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %v", path, unwrapPath(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("users file %s: %v", path, unwrapPath(err))
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %v", path, unwrapPath(err))
	}
	warnFileMode(log, path, st.Mode())
	u := &Users{Path: path, entries: map[string]userEntry{}, cache: map[string]cacheEntry{}, flights: map[[32]byte]*flight{}, now: time.Now}
	if _, err := rand.Read(u.cacheKey[:]); err != nil {
		return nil, err
	}
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, e, err := parseUserLine(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", path, n, err))
			continue
		}
		if prev, dup := u.entries[user]; dup {
			errs = append(errs, fmt.Errorf("%s:%d: user %q is already on line %d", path, n, user, prev.line))
			continue
		}
		e.line = n
		u.entries[user] = e
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	cost := bcrypt.DefaultCost
	for _, e := range u.entries {
		if c, err := bcrypt.Cost(e.hash); err == nil {
			cost = c
			break
		}
	}
	u.dummy = sync.OnceValue(func() []byte {
		h, _ := bcrypt.GenerateFromPassword([]byte("funtun: no such user"), cost)
		return h
	})
	return u, nil
}

// warnFileMode logs a warning when a users file is open to other users.
func warnFileMode(log *slog.Logger, path string, mode os.FileMode) {
	var why string
	switch perm := mode.Perm(); {
	case perm&0o044 != 0:
		why = "readable by other users, who could guess its passwords offline"
	case perm&0o022 != 0:
		why = "writable by other users, who could add themselves"
	default:
		return
	}
	log.Warn(fmt.Sprintf("users file %s is %s: chmod 600 %s", path, why, path),
		"file", path, "mode", fmt.Sprintf("%04o", mode.Perm()))
}

func parseUserLine(line string) (string, userEntry, error) {
	parts := strings.Split(line, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return "", userEntry{}, fmt.Errorf("want user:bcrypt-hash or user:bcrypt-hash:profile (make lines with `funtun socks5d adduser FILE USER [PROFILE]`)")
	}
	user, hash := parts[0], parts[1]
	if err := checkUserName(user); err != nil {
		return "", userEntry{}, err
	}
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		return "", userEntry{}, fmt.Errorf("user %q: the password is not a bcrypt hash ($2a$, $2b$ or $2y$...): %v", user, err)
	}
	e := userEntry{hash: []byte(hash)}
	if len(parts) == 3 {
		e.profile = parts[2]
		if !funnel.IsProfileName(e.profile) {
			return "", userEntry{}, fmt.Errorf("user %q: %q is not a profile name", user, e.profile)
		}
	}
	return user, e, nil
}

func checkUserName(user string) error {
	if user == "" {
		return errors.New("empty user name")
	}
	if len(user) > 255 {
		return errors.New("user name longer than 255 bytes (RFC 1929 cannot carry it)")
	}
	if strings.ContainsAny(user, ": \t\r\n") {
		return fmt.Errorf("user name %q has a colon or white space", user)
	}
	return nil
}

// Check verifies a password; it returns the user's entry when it matches.
// It has no bound on its work: the server logs clients in with login.
func (u *Users) Check(user, pass string) (userEntry, bool) {
	sum := u.keyedSum(user, pass)
	if e, ok := u.cached(user, sum); ok {
		return e, true
	}
	e, ok := u.bcrypt(user, pass)
	if ok {
		u.remember(user, sum)
	}
	return e, ok
}

// bcrypt is the costly check itself.
func (u *Users) bcrypt(user, pass string) (userEntry, bool) {
	u.bcrypts.Add(1)
	e, ok := u.entries[user]
	if !ok {
		bcrypt.CompareHashAndPassword(u.dummy(), []byte(pass))
		return userEntry{}, false
	}
	if bcrypt.CompareHashAndPassword(e.hash, []byte(pass)) != nil {
		return userEntry{}, false
	}
	return e, true
}

// cached reports whether user's password, as sum, passed bcrypt lately.
func (u *Users) cached(user string, sum [32]byte) (userEntry, bool) {
	u.mu.Lock()
	c, hit := u.cache[user]
	if hit && !u.now().Before(c.until) {
		delete(u.cache, user)
		hit = false
	}
	u.mu.Unlock()
	if !hit || subtle.ConstantTimeCompare(c.sum[:], sum[:]) != 1 {
		return userEntry{}, false
	}
	return u.entries[user], true
}

// remember caches a password that passed bcrypt: one entry per user of
// the file, so the cache is as big as the file at most.
func (u *Users) remember(user string, sum [32]byte) {
	u.mu.Lock()
	u.cache[user] = cacheEntry{sum: sum, until: u.now().Add(cacheTTL)}
	u.mu.Unlock()
}

func (u *Users) keyedSum(user, pass string) [32]byte {
	m := hmac.New(sha256.New, u.cacheKey[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(pass))
	var s [32]byte
	m.Sum(s[:0])
	return s
}

// What a login came to.
type loginResult uint8

const (
	loginOK      loginResult = iota
	loginWrong               // bcrypt said no (or no such user)
	loginBackoff             // the source failed too often lately: refused before any bcrypt
	loginBusy                // every check slot and queue place taken: refused at once
)

// login checks a client's password within the bounds of g, the server's
// login guard. In order: a password verified lately costs an HMAC; a
// source that failed too often lately waits out its backoff with pause
// (when that ends before deadline, and pause says the client is still
// there; else it is refused at once); a check identical to one under way
// waits for its result; any other takes a slot of g's pool, or a place
// in its short queue, or is refused at once. A failed bcrypt counts
// against the source. retry is how long the source is still held off,
// for the log. A nil pause refuses a source in backoff at once.
func (u *Users) login(g *loginGuard, src netip.Addr, user, pass string, deadline time.Time, pause func(time.Duration) bool) (e userEntry, res loginResult, retry time.Duration) {
	g.setup()
	sum := u.keyedSum(user, pass)
	if e, ok := u.cached(user, sum); ok {
		// No backoff for a right password: a client behind the same
		// address as an attacker keeps working.
		return e, loginOK, 0
	}
	key := sourceKey(src)
	wait, failed := g.backoff.delay(key, u.now())
	if wait > 0 {
		// A tarpit: the client waits, which costs a goroutine and no
		// CPU, and a flood from one source slows to its pace. Leave
		// time to answer before the client's deadline.
		if pause == nil || wait > time.Until(deadline)-100*time.Millisecond || !pause(wait) {
			return userEntry{}, loginBackoff, wait
		}
	}

	u.mu.Lock()
	if f := u.flights[sum]; f != nil {
		u.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-f.done:
			return f.entry, f.res, 0
		case <-t.C:
			return userEntry{}, loginBusy, 0
		}
	}
	f := &flight{done: make(chan struct{}), res: loginBusy}
	u.flights[sum] = f
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.flights, sum)
		u.mu.Unlock()
		close(f.done)
	}()

	// No source may hold more than half the slots and queue places, so
	// that a flood from one address leaves room for everyone else from
	// its first moment; one that failed lately gets only PerSource. Half
	// is for the office behind one address whose users log in at once.
	share := max(g.PerSource, (g.Workers+g.Queue)/2)
	if failed {
		share = g.PerSource
	}
	if !g.pool.acquire(key, share, deadline) {
		return userEntry{}, loginBusy, 0
	}
	e, ok := u.bcrypt(user, pass)
	g.pool.release(key)
	if !ok {
		f.res = loginWrong
		return userEntry{}, loginWrong, g.backoff.failed(key, u.now())
	}
	u.remember(user, sum)
	f.entry, f.res = e, loginOK
	return e, loginOK, 0
}

// sourceKey is whom a login is counted against: the client's address, or
// its /64 for IPv6, which one host usually has whole. Clients without an
// address (a Unix socket from systemd) share the zero key.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

// loginGuard bounds the work password checks make a server do, whatever
// the clients send: a pool of a few bcrypt checks at a time with a short
// queue, and a backoff per source after failures. The zero value is ready
// with the defaults; a server keeps one across reloads of its users file.
type loginGuard struct {
	// Workers is how many bcrypt checks run at once: by default half
	// the CPUs Go uses (at least one), so that a flood of logins leaves
	// the rest to the flows.
	Workers int
	// Queue is how many checks may wait for a worker (default 8 per
	// worker: well under a second of work at bcrypt's default cost); a
	// login beyond it is refused at once.
	Queue int
	// PerSource is how many of the running and waiting checks one source
	// with recent failures may hold (default a quarter of workers plus
	// queue, at least 1); any other source may hold half.
	PerSource int
	// Free failures a source has before backoff; then it waits BackoffBase,
	// doubling with each further failure up to BackoffMax. A source is
	// forgotten Forget after its last failure; at most MaxSources are
	// remembered.
	Free                    int
	BackoffBase, BackoffMax time.Duration
	Forget                  time.Duration
	MaxSources              int

	once    sync.Once
	pool    checkPool
	backoff sourceBackoff
}

func (g *loginGuard) setup() {
	g.once.Do(func() {
		if g.Workers <= 0 {
			g.Workers = max(1, runtime.GOMAXPROCS(0)/2)
		}
		if g.Queue <= 0 {
			g.Queue = 8 * g.Workers
		}
		if g.PerSource <= 0 {
			g.PerSource = max(1, (g.Workers+g.Queue)/4)
		}
		if g.Free <= 0 {
			g.Free = 3
		}
		if g.BackoffBase <= 0 {
			g.BackoffBase = time.Second
		}
		if g.BackoffMax <= 0 {
			g.BackoffMax = time.Minute
		}
		if g.Forget <= 0 {
			g.Forget = 10 * time.Minute
		}
		if g.MaxSources <= 0 {
			g.MaxSources = 10000
		}
		g.pool = checkPool{sem: make(chan struct{}, g.Workers), queue: g.Queue, bySource: map[netip.Addr]int{}}
		g.backoff = sourceBackoff{free: g.Free, base: g.BackoffBase, max: g.BackoffMax, forget: g.Forget, size: g.MaxSources, m: map[netip.Addr]*failures{}}
	})
}

// checkPool is a counting semaphore of bcrypt slots with a bounded number
// of waiters, FIFO (a channel's senders are woken in order).
type checkPool struct {
	sem   chan struct{}
	queue int

	mu       sync.Mutex
	queued   int
	bySource map[netip.Addr]int // slots and queue places held
}

// acquire takes a slot for src, waiting in the queue until deadline if
// there is a place; false: refused (queue full, src holds share slots and
// places already, or the deadline passed).
func (p *checkPool) acquire(src netip.Addr, share int, deadline time.Time) bool {
	p.mu.Lock()
	if p.bySource[src] >= share {
		p.mu.Unlock()
		return false
	}
	select {
	case p.sem <- struct{}{}:
		p.bySource[src]++
		p.mu.Unlock()
		return true
	default:
	}
	if p.queued >= p.queue {
		p.mu.Unlock()
		return false
	}
	p.queued++
	p.bySource[src]++
	p.mu.Unlock()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case p.sem <- struct{}{}:
		p.mu.Lock()
		p.queued--
		p.mu.Unlock()
		return true
	case <-t.C:
		p.mu.Lock()
		p.queued--
		p.dropLocked(src)
		p.mu.Unlock()
		return false
	}
}

func (p *checkPool) release(src netip.Addr) {
	<-p.sem
	p.mu.Lock()
	p.dropLocked(src)
	p.mu.Unlock()
}

func (p *checkPool) dropLocked(src netip.Addr) {
	if n := p.bySource[src]; n > 1 {
		p.bySource[src] = n - 1
	} else {
		delete(p.bySource, src)
	}
}

// sourceBackoff remembers recent failures per source, bounded in size
// (the oldest goes when full) and time (forget after the last failure).
type sourceBackoff struct {
	free      int
	base, max time.Duration
	forget    time.Duration
	size      int
	mu        sync.Mutex
	m         map[netip.Addr]*failures
	lastSweep time.Time
}

type failures struct {
	n           int
	last, until time.Time
}

// delay is how long src must still wait before its next check, and
// whether it has failed lately at all.
func (b *sourceBackoff) delay(src netip.Addr, now time.Time) (wait time.Duration, failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.m[src]
	if f == nil {
		return 0, false
	}
	if now.Sub(f.last) >= b.forget {
		delete(b.m, src)
		return 0, false
	}
	if now.Before(f.until) {
		return f.until.Sub(now), true
	}
	return 0, true
}

// failed counts a failure of src and returns the wait it now has.
func (b *sourceBackoff) failed(src netip.Addr, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastSweep) >= time.Minute || len(b.m) >= b.size {
		b.lastSweep = now
		for k, f := range b.m {
			if now.Sub(f.last) >= b.forget {
				delete(b.m, k)
			}
		}
	}
	f := b.m[src]
	if f != nil && now.Sub(f.last) >= b.forget {
		f = nil
	}
	if f == nil {
		if len(b.m) >= b.size {
			// Full of recent failures: the source quiet the longest goes.
			var oldest netip.Addr
			var t time.Time
			for k, f := range b.m {
				if t.IsZero() || f.last.Before(t) {
					oldest, t = k, f.last
				}
			}
			delete(b.m, oldest)
		}
		f = &failures{}
		b.m[src] = f
	}
	f.n++
	f.last = now
	if f.n <= b.free {
		return 0
	}
	d := b.max
	if shift := f.n - b.free - 1; shift < 30 {
		d = min(b.base<<shift, b.max)
	}
	f.until = now.Add(d)
	return d
}

// Profiles lists the profiles the file names, with the line of each.
func (u *Users) Profiles() map[string]int {
	out := map[string]int{}
	for _, e := range u.entries {
		if e.profile != "" {
			if l, ok := out[e.profile]; !ok || e.line < l {
				out[e.profile] = e.line
			}
		}
	}
	return out
}

// AddUser sets USER's password (and profile) in the file: it replaces the
// user's line if there is one, else appends a line; the file is created
// with mode 0600 when missing. It reports whether a line was replaced.
func AddUser(path, user, pass, profile string) (replaced bool, err error) {
	if err := checkUserName(user); err != nil {
		return false, err
	}
	if profile != "" && !funnel.IsProfileName(profile) {
		return false, fmt.Errorf("%q is not a profile name (letters, digits, '.', '_', '-')", profile)
	}
	if len(pass) > 72 {
		return false, errors.New("password longer than 72 bytes: bcrypt would ignore the rest")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), hashCost)
	if err != nil {
		return false, err
	}
	newLine := user + ":" + string(hash)
	if profile != "" {
		newLine += ":" + profile
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(old))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		if !strings.HasPrefix(t, "#") && strings.HasPrefix(t, user+":") {
			if !replaced {
				out.WriteString(newLine + "\n")
			}
			replaced = true
			continue
		}
		out.WriteString(line + "\n")
	}
	if !replaced {
		out.WriteString(newLine + "\n")
	}
	// A new file is private to its owner (CreateTemp makes 0600, whatever
	// the umask); an existing one keeps its mode, which may be the
	// administrator's choice (a group for the daemon's account), with the
	// same warning socks5d gives when it loads it.
	mode := os.FileMode(0o600)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
		warnFileMode(slog.Default(), path, mode)
	}
	// Write beside the file and rename, so that a running socks5d that
	// reloads on SIGHUP never reads half a file.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out.Bytes()); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return replaced, os.Rename(tmp.Name(), path)
}

// readPasswordInput reads a password: from the terminal without echo,
// asked twice, when stdin is one; else the first line of stdin (for
// scripts: `echo secret | funtun socks5d adduser FILE USER`).
func readPasswordInput(stdin *os.File, prompt io.Writer, user string) (string, error) {
	fd := int(stdin.Fd())
	if !term.IsTerminal(fd) {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return "", fmt.Errorf("reading the password from stdin: %v", err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	ask := func(p string) (string, error) {
		fmt.Fprint(prompt, p)
		line, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", err
		}
		return string(line), nil
	}
	first, err := ask("Password for " + user + ": ")
	if err != nil {
		return "", err
	}
	second, err := ask("Again: ")
	if err != nil {
		return "", err
	}
	if first != second {
		return "", errors.New("the two passwords differ")
	}
	return first, nil
}

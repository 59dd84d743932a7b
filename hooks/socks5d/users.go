package socks5d

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// Users is a loaded users file: one `user:bcrypt-hash[:profile]` a line,
// # comments and blank lines allowed.
type Users struct {
	Path    string
	entries map[string]userEntry

	// bcrypt costs tens of milliseconds of CPU by design; a client that
	// opens a connection per request (proxychains does) would pay it every
	// time. The last password that passed bcrypt is remembered per user as
	// a keyed SHA-256, so the next login with the same password is cheap,
	// and the key never leaves the process.
	cacheKey [32]byte
	cacheMu  sync.Mutex
	cache    map[string][32]byte

	// dummy keeps the time of a login with an unknown user close to that
	// of a known user with a wrong password, so that timing does not tell
	// which users exist; it has the cost of the file's hashes. It is made
	// on first use, not at every start.
	dummy func() []byte
}

type userEntry struct {
	hash    []byte
	profile string // empty: the command's profile
	line    int
}

var profileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// hashCost is the bcrypt cost adduser uses (tests lower it: the race
// detector makes bcrypt slow).
var hashCost = bcrypt.DefaultCost

// LoadUsers reads and checks a users file; errors name FILE:LINE.
func LoadUsers(path string) (*Users, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %v", path, unwrapPath(err))
	}
	u := &Users{Path: path, entries: map[string]userEntry{}, cache: map[string][32]byte{}}
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
		if !profileNameRE.MatchString(e.profile) {
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
func (u *Users) Check(user, pass string) (userEntry, bool) {
	e, ok := u.entries[user]
	if !ok {
		bcrypt.CompareHashAndPassword(u.dummy(), []byte(pass))
		return userEntry{}, false
	}
	sum := u.keyedSum(user, pass)
	u.cacheMu.Lock()
	cached, hit := u.cache[user]
	u.cacheMu.Unlock()
	if hit && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return e, true
	}
	if bcrypt.CompareHashAndPassword(e.hash, []byte(pass)) != nil {
		return userEntry{}, false
	}
	u.cacheMu.Lock()
	u.cache[user] = sum
	u.cacheMu.Unlock()
	return e, true
}

func (u *Users) keyedSum(user, pass string) [32]byte {
	h := sha256.New()
	h.Write(u.cacheKey[:])
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(pass))
	var s [32]byte
	h.Sum(s[:0])
	return s
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
	if profile != "" && !profileNameRE.MatchString(profile) {
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
	mode := os.FileMode(0o600)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
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

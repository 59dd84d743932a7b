package socks5d

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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

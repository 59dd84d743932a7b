package funnel

import (
	"regexp"
	"testing"
)

// IsProfileName replaced this pattern (compiled at every start); it must
// accept exactly what the pattern accepted.
var profileNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func TestIsProfileNameMatchesPattern(t *testing.T) {
	names := []string{"", "a", "Z", "0", "direct", "my-profile.v2_x", "-a", ".hidden", "_x", "a b", "a/b",
		"a\x00", "é", "a\n", "tor", "a..b", "9-", "a-", "A.B.C", "x\u00e9", "\xff"}
	for c := 0; c < 256; c++ {
		names = append(names, string(rune(c)), "a"+string([]byte{byte(c)}), string([]byte{byte(c)})+"a")
	}
	for _, n := range names {
		if got, want := IsProfileName(n), profileNamePattern.MatchString(n); got != want {
			t.Errorf("IsProfileName(%q) = %v, the pattern says %v", n, got, want)
		}
	}
}

//go:build linux

package redirect

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// Bad input ends with a clear message and the usage exit status, before
// anything binds.
func TestRedirectCommandErrors(t *testing.T) {
	bin := testutil.Funtun(t)
	_, env := testutil.ProfileDir(t)
	type cliCase struct {
		args []string
		code int
		want string
	}
	cases := []cliCase{
		{[]string{"--help"}, 0, "funtun redirect [--listen ADDR]…"},
		{[]string{"--mark", "fun"}, 2, `--mark "fun": not a mark`},
		{[]string{"--max-conns", "0"}, 2, "--max-conns must be at least 1"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
	}
	if os.Geteuid() == 0 {
		cases = append(cases,
			cliCase{[]string{"--tproxy", "--listen", "127.0.0.1:0", "chain=rewrite from=a to=b"}, 1, "carries stream flows only, and --tproxy takes UDP too"},
			cliCase{[]string{"--listen", "127.0.0.1:99999"}, 1, "cannot listen on tcp 127.0.0.1:99999"},
			cliCase{[]string{"--listen", "fd:nothing"}, 1, "no sockets were passed"},
		)
	}
	for _, c := range cases {
		cmd := exec.Command(bin, append([]string{"redirect"}, c.args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("funtun redirect %s: exit %d, %q; want exit %d and %q", strings.Join(c.args, " "), code, out, c.code, c.want)
		}
	}
}

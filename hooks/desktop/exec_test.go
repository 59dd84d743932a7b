package desktop

import (
	"reflect"
	"strings"
	"testing"
)

func texts(t *testing.T, raw string) []string {
	t.Helper()
	args, err := ExecArgs(raw)
	if err != nil {
		t.Fatalf("ExecArgs(%q): %v", raw, err)
	}
	out := []string{}
	for _, a := range args {
		out = append(out, a.Text)
	}
	return out
}

func TestExecArgs(t *testing.T) {
	// Raw values as written in a file; the specification's examples of
	// quoting and the extra backslash of the string escapes.
	cases := map[string][]string{
		`vim %F`:                           {"vim", "%F"},
		`/usr/bin/chromium %U`:             {"/usr/bin/chromium", "%U"},
		`foo "a b" c`:                      {"foo", "a b", "c"},
		`foo "quote \"in\" it"`:            {"foo", `quote "in" it`},
		`foo "\\$HOME"`:                    {"foo", "$HOME"},      // the spec's literal dollar
		`foo "back\\\\slash"`:              {"foo", `back\slash`}, // the spec's four backslashes
		"foo \"tick \\\\` it\"":            {"foo", "tick ` it"},
		`foo "" x`:                         {"foo", "", "x"},
		`foo\sbar`:                         {"foo", "bar"}, // \s is a space, which separates
		`foo --name="a b"`:                 {"foo", "--name=a b"},
		`sh -c 'echo $1; ls' x`:            {"sh", "-c", "echo $1; ls", "x"},
		`  lead  trail  `:                  {"lead", "trail"},
		`env A=1 /snap/bin/x %u`:           {"env", "A=1", "/snap/bin/x", "%u"},
		`foo "100%% sure" %%`:              {"foo", "100%% sure", "%%"}, // field codes are the next layer
		`foo "kept\\x"`:                    {"foo", `kept\x`},
		`"/opt/My Apps/bin/app" --flag %f`: {"/opt/My Apps/bin/app", "--flag", "%f"},
	}
	for raw, want := range cases {
		if got := texts(t, raw); !reflect.DeepEqual(got, want) {
			t.Errorf("ExecArgs(%q) = %q, want %q", raw, got, want)
		}
	}
	for _, bad := range []string{`foo "open`, `foo 'open`, `foo \`} {
		if _, err := ExecArgs(bad); err == nil {
			t.Errorf("ExecArgs(%q) accepted it", bad)
		}
	}
}

func TestQuoteArgFollowsTheSpecification(t *testing.T) {
	cases := map[string]string{
		"plain":       "plain",
		"a b":         `"a b"`,
		"":            `""`,
		`$HOME`:       `"\$HOME"`,
		`back\slash`:  `"back\\slash"`,
		"tick`":       "\"tick\\`\"",
		`say "hi"`:    `"say \"hi\""`,
		"semi;colon":  `"semi;colon"`,
		"~/x":         `"~/x"`,
		"single'q":    `"single'q"`,
		"(paren)":     `"(paren)"`,
		"a#b":         `"a#b"`,
		"glob*?":      `"glob*?"`,
		"pipe|&<>":    `"pipe|&<>"`,
		"--opt=value": "--opt=value",
	}
	for in, want := range cases {
		if got := QuoteArg(in); got != want {
			t.Errorf("QuoteArg(%q) = %s, want %s", in, got, want)
		}
	}
	// In the file the quoting's backslashes are doubled once more: the
	// specification's "\\$" and four backslashes.
	if got := QuoteExec([]string{`/opt/a b/funtun`, `$x\y`}); got != `"/opt/a b/funtun" "\\$x\\\\y"` {
		t.Errorf("QuoteExec = %s", got)
	}
}

func TestWrapKeepsTheOriginalByteForByte(t *testing.T) {
	l := Launcher{Funtun: "/opt/fun tun/bin/funtun"}
	prefix := `"/opt/fun tun/bin/funtun" profile=work `
	for _, raw := range []string{
		`vim %F`,
		`foo "a b" "\\$HOME" "back\\\\slash" %u`,
		`sh -c 'echo "$@"' sh %F`,
		`foo\sbar %k %c %i`,
		`env A=1 prog --x="y z"`,
	} {
		got, err := l.Wrap(raw, "work")
		if err != nil {
			t.Fatalf("Wrap(%q): %v", raw, err)
		}
		if got != prefix+raw {
			t.Errorf("Wrap(%q) = %q, want %q", raw, got, prefix+raw)
		}
		want := append([]string{"/opt/fun tun/bin/funtun", "profile=work"}, texts(t, raw)...)
		if args := texts(t, got); !reflect.DeepEqual(args, want) {
			t.Errorf("wrapped %q reads as %q, want %q", raw, args, want)
		}
		w, err := ParseWrapped(got)
		if err != nil || !w.Yes || w.Profile != "work" || w.Program != raw {
			t.Errorf("ParseWrapped(%q) = %+v, %v", got, w, err)
		}
		// Again, or with another profile: the launcher's words are
		// replaced, never stacked.
		again, _ := l.Wrap(got, "work")
		other, _ := l.Wrap(got, "home")
		if again != got || other != `"/opt/fun tun/bin/funtun" profile=home `+raw {
			t.Errorf("rewrap: %q / %q", again, other)
		}
	}
}

func TestWrapRecognisesOtherFormsOfTheLauncher(t *testing.T) {
	l := Launcher{Funtun: "/usr/local/bin/funtun"}
	cases := []struct{ raw, program, wrapped string }{
		// central provisioning, funtun from PATH
		{`funtun profile=6bed4 twinkle`, "twinkle", "twinkle"},
		// a hand-written chain, launcher options and settings (kept), and --
		{`/usr/bin/funtun chain='socks5 server=127.0.0.1:9050' --allow-unhooked mode=x -- ssh-askpass %f`, "ssh-askpass %f", "--allow-unhooked mode=x ssh-askpass %f"},
		// a path with a percent sign, written %% in Exec
		{`"/home/u/100%%/funtun" profile=x app`, "app", "app"},
		// a program the launcher would take for an option of its own
		{`funtun profile=x -- -odd`, "-odd", "-- -odd"},
	}
	for _, c := range cases {
		w, err := ParseWrapped(c.raw)
		if err != nil || !w.Yes || w.Program != c.program {
			t.Errorf("ParseWrapped(%q) = %+v, %v; want program %q", c.raw, w, err, c.program)
		}
		got, err := l.Wrap(c.raw, "p")
		if err != nil || got != "/usr/local/bin/funtun profile=p "+c.wrapped {
			t.Errorf("Wrap(%q) = %q, %v", c.raw, got, err)
		}
	}
	if got, _ := l.Wrap("-odd %f", "p"); got != "/usr/local/bin/funtun profile=p -- -odd %f" {
		t.Errorf("a program starting with '-' wrapped as %q", got)
	}
	// funtun's own entry (no profile word) is a program like any other.
	if w, _ := ParseWrapped("funtun desktop ui"); w.Yes {
		t.Errorf("funtun desktop ui taken for a wrapper")
	}
	if _, err := ParseWrapped("funtun profile=x"); err == nil || !strings.Contains(err.Error(), "without a program") {
		t.Errorf("a wrapper without a program: %v", err)
	}
	// The specification forbids '=' in the program path; a percent
	// sign in it must not become a field code.
	if _, err := (Launcher{Funtun: "/opt/a=b/funtun"}).Wrap("x", "p"); err == nil {
		t.Error("a funtun path with '=' was written into Exec")
	}
	got, _ := Launcher{Funtun: "/opt/100%/funtun"}.Wrap("x %f", "p")
	if got != "/opt/100%%/funtun profile=p x %f" {
		t.Errorf("percent in the path: %q", got)
	}
	if _, err := l.Wrap("   ", "p"); err == nil {
		t.Error("an empty Exec was wrapped")
	}
}

package desktop

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// An Exec value goes through three layers, undone in this order by the
// programs that launch it (Desktop Entry Specification, "The Exec key"):
//
//  1. string escapes of every string value: \s \n \t \r \\ (a backslash
//     before anything else stays, as in GLib);
//  2. quoting: arguments are separated by spaces; an argument with a
//     reserved character is quoted in whole with double quotes, inside
//     which " ` $ and \ are escaped with a backslash;
//  3. field codes (%f %F %u %U %i %c %k, %% for a percent sign),
//     expanded in each unquoted argument.
//
// So a literal backslash inside a quoted argument is four backslashes in
// the file and a literal dollar sign is \\$. Wrapping never re-quotes the
// program's own arguments: the launcher's words are put in front of the
// original text, which stays byte for byte, field codes where they were.

// Arg is one argument of an Exec command line: its text after quoting
// and string escapes are undone (field codes still in it), and where it
// is in the value as written.
type Arg struct {
	Text             string
	RawStart, RawEnd int // byte offsets in the raw value
}

// reserved are the characters that the specification says make an
// argument need quotes.
const reserved = " \t\n\"'\\><~|&;$*?#()`"

// ExecArgs splits a raw Exec value (as written in the file) into its
// arguments. It reads the specification's quoting and, like GLib (which
// splits with shell rules), also single quotes, a quoted part inside a
// word and a backslash outside quotes, since real files use them.
func ExecArgs(raw string) ([]Arg, error) {
	var args []Arg
	var cur strings.Builder
	inArg := false
	start := 0
	quote := byte(0) // '"' or '\'' while inside quotes
	quoteAt := 0
	i := 0
	next := func() (byte, int) { // a string-level character and its width
		return stringChar(raw, i)
	}
	for i < len(raw) {
		c, w := next()
		at := i
		i += w
		switch quote {
		case '"':
			switch c {
			case '"':
				quote = 0
			case '\\':
				if i < len(raw) {
					d, w2 := next()
					if d == '"' || d == '`' || d == '$' || d == '\\' {
						cur.WriteByte(d)
						i += w2
						continue
					}
				}
				cur.WriteByte('\\')
			default:
				cur.WriteByte(c)
			}
			continue
		case '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n':
			if inArg {
				args = append(args, Arg{Text: cur.String(), RawStart: start, RawEnd: at})
				cur.Reset()
				inArg = false
			}
			continue
		}
		if !inArg {
			inArg, start = true, at
		}
		switch c {
		case '"', '\'':
			quote, quoteAt = c, at
		case '\\':
			if i >= len(raw) {
				return nil, errors.New("ends with a lone backslash")
			}
			d, w2 := next()
			i += w2
			if d != '\n' { // backslash-newline joins lines, as in a shell
				cur.WriteByte(d)
			}
		default:
			cur.WriteByte(c)
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("the quote (%c) at byte %d is never closed", quote, quoteAt+1)
	}
	if inArg {
		args = append(args, Arg{Text: cur.String(), RawStart: start, RawEnd: len(raw)})
	}
	return args, nil
}

// QuoteArg quotes one argument the specification's way: in double quotes
// when it is empty or has a reserved character, with " ` $ and \ escaped
// inside. The result is at the quoting layer; EscapeString makes it a
// value.
func QuoteArg(s string) string {
	if s != "" && !strings.ContainsAny(s, reserved) {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '`', '$', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// QuoteExec writes arguments as a raw Exec value: each quoted, joined by
// spaces, then string-escaped (so a backslash the quoting made is
// doubled again). Field codes are not touched: a literal percent sign in
// an argument must already be %% (LiteralArg).
func QuoteExec(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = QuoteArg(a)
	}
	return EscapeString(strings.Join(q, " "))
}

// LiteralArg protects a percent sign from field code expansion.
func LiteralArg(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// Launcher writes the launcher's words in front of a program.
type Launcher struct {
	// Funtun is the binary Exec names: a path, or "funtun" to leave the
	// lookup to the desktop session's PATH.
	Funtun string
}

// isLauncherWord: between funtun and the program stand the launcher's
// own words, options (--allow-raw) and key=value settings (profile=,
// chain=, and whatever the launcher learns later). The program cannot be
// one: the specification forbids '=' in its name, and the launcher takes
// no program that starts with '-' without a "--" before it.
func isLauncherWord(a string) bool {
	return a != "--" && (strings.HasPrefix(a, "-") || strings.Contains(a, "="))
}

func isSelector(a string) bool {
	return strings.HasPrefix(a, "profile=") || strings.HasPrefix(a, "chain=")
}

// Wrapped is what an Exec value says about funtun: whether it runs the
// launcher, with which selector, and the program's own command line.
type Wrapped struct {
	Yes bool
	// Selector is the launcher's profile=NAME or chain='…' word.
	Selector string
	Profile  string // the NAME of profile=NAME
	// Kept are the launcher's other words (options, settings) as written,
	// which a new profile keeps.
	Kept []string
	// Program is the original command line, as written, after the
	// launcher's words (the whole value when not wrapped).
	Program string
}

// IsFuntun says whether an Exec program (as written, %% undone) is funtun:
// its base name, which also recognises an entry another machine's path
// wrapped.
func IsFuntun(program string) bool {
	return filepath.Base(strings.ReplaceAll(program, "%%", "%")) == "funtun"
}

// ParseWrapped looks for `funtun profile=NAME [--] PROGRAM …` (any launcher
// words, at least one profile= or chain=) at the start of a raw Exec.
func ParseWrapped(raw string) (Wrapped, error) {
	args, err := ExecArgs(raw)
	if err != nil {
		return Wrapped{}, err
	}
	w := Wrapped{Program: raw}
	if len(args) < 2 || !IsFuntun(args[0].Text) {
		return w, nil
	}
	k := 1
	last := args[0].RawEnd
	var kept []string
	for k < len(args) && isLauncherWord(args[k].Text) {
		a := args[k].Text
		switch {
		case strings.HasPrefix(a, "profile="):
			w.Selector, w.Profile = a, strings.TrimPrefix(a, "profile=")
		case strings.HasPrefix(a, "chain="):
			w.Selector, w.Profile = a, ""
		default:
			kept = append(kept, raw[args[k].RawStart:args[k].RawEnd])
		}
		last = args[k].RawEnd
		k++
	}
	if w.Selector == "" {
		// funtun itself (funtun desktop ui), not a wrapper: a wrapper
		// names its profile.
		return Wrapped{Program: raw}, nil
	}
	w.Kept = kept
	if k < len(args) && args[k].Text == "--" {
		last = args[k].RawEnd
		k++
	}
	if k >= len(args) {
		return w, fmt.Errorf("runs funtun %s without a program", w.Selector)
	}
	// What follows the one space the wrapper put after its last word is
	// the original value, byte for byte.
	rest := raw[last:]
	if strings.HasPrefix(rest, " ") {
		rest = rest[1:]
	}
	w.Yes, w.Program = true, rest
	return w, nil
}

// Wrap makes the raw Exec value that runs the same command line under
// funtun with the profile: `funtun profile=NAME ORIGINAL`. A value that
// already runs funtun gets the new profile in place of its profile= or
// chain= (its other launcher words stay), so wrapping twice is wrapping
// once.
func (l Launcher) Wrap(raw, profile string) (string, error) {
	if strings.Contains(l.Funtun, "=") {
		// The specification: the program's name or path may not
		// contain '='.
		return "", fmt.Errorf("the funtun path %q contains '=', which an Exec program may not", l.Funtun)
	}
	if l.Funtun == "" {
		return "", errors.New("no funtun path to put in Exec")
	}
	w, err := ParseWrapped(raw)
	if err != nil {
		return "", err
	}
	args, _ := ExecArgs(w.Program)
	if len(args) == 0 {
		return "", errors.New("Exec is empty")
	}
	out := QuoteExec([]string{LiteralArg(l.Funtun), "profile=" + LiteralArg(profile)})
	for _, k := range w.Kept {
		out += " " + k
	}
	if isLauncherWord(args[0].Text) || args[0].Text == "--" {
		// A program the launcher would take for one of its words.
		out += " --"
	}
	return out + " " + w.Program, nil
}

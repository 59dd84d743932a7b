package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/funtun/funtun/funnel"
)

// The programs file says which programs the daemon funnels, and through
// which profile: one program a line, first match wins.
//
//	# PROGRAM              WHAT
//	curl                   profile=work
//	/usr/bin/ssh           chain='socks5 server=127.0.0.1:9050'
//	/opt/*/bin/*           profile=lab
//	ping                   untouched
//
// PROGRAM without a slash matches the base name of the program's
// executable (/proc/PID/exe) or of its argv[0]; with a slash, the whole
// path of either. Shell patterns (*, ?, [...]) work in both. A program
// that matches no line, or a line that says untouched, is left alone.

// programEntry is one line of the programs file.
type programEntry struct {
	Pattern   string
	Sel       funnel.Selector
	Untouched bool
	Line      int
}

// programs is a parsed programs file.
type programs struct {
	File    string
	Entries []programEntry
}

// programID is what the daemon knows of a program on the other end of a
// control connection.
type programID struct {
	Exe   string // the executable's path, "" if unknown
	Argv0 string // its argv[0], "" if unknown
}

// match returns the entry for p, if any.
func (ps *programs) match(p programID) (programEntry, bool) {
	if ps == nil {
		return programEntry{}, false
	}
	for _, e := range ps.Entries {
		if e.matches(p) {
			return e, true
		}
	}
	return programEntry{}, false
}

func (e programEntry) matches(p programID) bool {
	for _, name := range []string{p.Exe, p.Argv0} {
		if name == "" {
			continue
		}
		target := name
		if !strings.Contains(e.Pattern, "/") {
			target = path.Base(name)
		}
		if ok, _ := path.Match(e.Pattern, target); ok {
			return true
		}
	}
	return false
}

// defaultProgramsFile is $XDG_CONFIG_HOME/funtun/programs, or
// ~/.config/funtun/programs.
func defaultProgramsFile() string {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "funtun", "programs")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "funtun", "programs")
	}
	return ""
}

// loadPrograms reads and parses file. A missing file is an empty list
// when it is the default one (missingOK), an error otherwise.
func loadPrograms(file string, missingOK bool) (*programs, error) {
	f, err := os.Open(file)
	if err != nil {
		if missingOK && errors.Is(err, os.ErrNotExist) {
			return &programs{File: file}, nil
		}
		return nil, err
	}
	defer f.Close()
	return parsePrograms(file, bufio.NewScanner(f))
}

func parsePrograms(file string, sc *bufio.Scanner) (*programs, error) {
	ps := &programs{File: file}
	var errs []error
	line := 0
	for sc.Scan() {
		line++
		e, ok, err := parseProgramLine(sc.Text())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", file, line, err))
			continue
		}
		if ok {
			e.Line = line
			ps.Entries = append(ps.Entries, e)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", file, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return ps, nil
}

// parseProgramLine reads "PROGRAM profile=NAME", "PROGRAM chain='…'" or
// "PROGRAM untouched"; ok is false for blank lines and comments.
func parseProgramLine(text string) (programEntry, bool, error) {
	words, err := splitWords(text)
	if err != nil {
		return programEntry{}, false, err
	}
	if len(words) == 0 {
		return programEntry{}, false, nil
	}
	e := programEntry{Pattern: words[0]}
	if strings.HasPrefix(e.Pattern, "profile=") || strings.HasPrefix(e.Pattern, "chain=") {
		return e, false, fmt.Errorf("a line starts with the program, then says what: PROGRAM profile=NAME")
	}
	if _, err := path.Match(e.Pattern, ""); err != nil {
		return e, false, fmt.Errorf("program pattern %q: %v", e.Pattern, err)
	}
	rest := words[1:]
	if len(rest) == 1 && rest[0] == "untouched" {
		e.Untouched = true
		return e, true, nil
	}
	sel, left, err := funnel.TakeSelector(rest)
	if err != nil {
		return e, false, err
	}
	if len(left) > 0 {
		return e, false, fmt.Errorf("unexpected %q after the program (want profile=NAME, chain='…' or untouched)", left[0])
	}
	if sel.Profile == "" && sel.Chain == "" {
		return e, false, fmt.Errorf("%s: say what it goes through: profile=NAME, chain='…' or untouched", e.Pattern)
	}
	e.Sel = sel
	return e, true, nil
}

// splitWords splits a line at blanks, with '…' and "…" quoting as in a
// shell (no escapes inside single quotes; \" and \\ inside double ones),
// and drops a # comment that begins a word.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("a ' is not closed")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New(`a " is not closed`)
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// templateSelector reads a template as the C API and FUNTUN_TEMPLATE give
// it: a profile's name, "profile=NAME" or "chain=…"; "" is the default
// profile.
func templateSelector(t string) (funnel.Selector, error) {
	t = strings.TrimSpace(t)
	switch {
	case t == "":
		return funnel.Selector{}, nil
	case strings.HasPrefix(t, "profile=") || strings.HasPrefix(t, "chain="):
		sel, _, err := funnel.TakeSelector([]string{t})
		return sel, err
	case strings.ContainsAny(t, " \t|='\""):
		return funnel.Selector{}, fmt.Errorf("template %q is neither a profile's name nor chain='…'", t)
	}
	return funnel.Selector{Profile: t}, nil
}

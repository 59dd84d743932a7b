package funnel

import (
	"fmt"
	"strings"
)

// Pos is a place in a profile's text, for error messages.
type Pos struct {
	File string // a file path, or "chain" for an inline chain
	Line int
	Col  int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

// PosError is a compile error at a place in a profile.
type PosError struct {
	Pos Pos
	Msg string
}

func (e *PosError) Error() string { return e.Pos.String() + ": " + e.Msg }

// Param is one key=value word of a piece.
type Param struct {
	Key, Value string
	Pos        Pos // of the key
	ValuePos   Pos
	used       bool
}

// PieceSpec is one piece as written: its name and parameters.
type PieceSpec struct {
	Name   string
	Pos    Pos
	Params []*Param
}

// String writes the piece back in chain syntax, quoting where needed and
// hiding passwords, since it ends up in logs and on screens.
func (s PieceSpec) String() string {
	var b strings.Builder
	b.WriteString(s.Name)
	for _, p := range s.Params {
		b.WriteByte(' ')
		b.WriteString(p.Key)
		b.WriteByte('=')
		if isSecret(p.Key) {
			b.WriteString("***")
			continue
		}
		b.WriteString(quote(p.Value))
	}
	return b.String()
}

func isSecret(key string) bool {
	return key == "pass" || key == "password" || key == "secret"
}

// RedactChain hides secret values in chain text for logs; text that does
// not parse is replaced whole, since we cannot tell where secrets are.
func RedactChain(text string) string {
	_, chain, err := SplitOptions("chain", text)
	if err != nil {
		return "(unparsable chain)"
	}
	specs, err := ParseChain("chain", chain)
	if err != nil {
		return "(unparsable chain)"
	}
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = s.String()
	}
	return strings.Join(parts, " | ")
}

func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n|'\"#") {
		return v
	}
	if !strings.Contains(v, "'") {
		return "'" + v + "'"
	}
	return `"` + v + `"`
}

// ParseChain reads the chain syntax: `PIECE key=value … | PIECE …`, values
// quoted with '…' or "…" when they hold spaces or `|`. A `#` outside quotes
// starts a comment to the end of the line, and newlines are plain spaces, so
// a profile file is the same syntax spread over lines.
func ParseChain(file, text string) ([]PieceSpec, error) {
	type word struct {
		text    string
		pos     Pos
		eqAt    int // byte offset of the first unquoted '=' in text, -1 if none
		valPos  Pos
		isPipe  bool
		started bool
	}
	var words []word
	line, col := 1, 1
	var cur word
	inQuote := rune(0)
	quoteStart := Pos{}
	flush := func() {
		if cur.started {
			words = append(words, cur)
		}
		cur = word{eqAt: -1}
	}
	cur.eqAt = -1
	rs := []rune(text)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		here := Pos{file, line, col}
		if r == '\n' {
			line++
			col = 1
		} else {
			col++
		}
		if inQuote != 0 {
			if r == inQuote {
				inQuote = 0
				continue
			}
			cur.text += string(r)
			continue
		}
		switch {
		case r == '#':
			for i+1 < len(rs) && rs[i+1] != '\n' {
				i++
			}
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			flush()
		case r == '|':
			flush()
			words = append(words, word{isPipe: true, pos: here})
		case r == '\'' || r == '"':
			if !cur.started {
				cur.started, cur.pos = true, here
			}
			if cur.eqAt >= 0 && len(cur.text) == cur.eqAt+1 {
				cur.valPos = here
			}
			inQuote, quoteStart = r, here
		default:
			if !cur.started {
				cur.started, cur.pos = true, here
			}
			if r == '=' && cur.eqAt < 0 {
				cur.eqAt = len(cur.text)
				cur.valPos = Pos{file, line, col}
			}
			cur.text += string(r)
		}
	}
	if inQuote != 0 {
		return nil, &PosError{quoteStart, fmt.Sprintf("quote %c is never closed", inQuote)}
	}
	flush()

	var specs []PieceSpec
	var spec *PieceSpec
	for _, w := range words {
		if w.isPipe {
			if spec == nil {
				return nil, &PosError{w.pos, "`|` with no piece before it"}
			}
			specs = append(specs, *spec)
			spec = nil
			continue
		}
		if spec == nil {
			if w.eqAt >= 0 {
				return nil, &PosError{w.pos, fmt.Sprintf("expected a piece name, found parameter %q (a chain is `PIECE key=value … | PIECE …`)", w.text)}
			}
			spec = &PieceSpec{Name: w.text, Pos: w.pos}
			continue
		}
		if w.eqAt < 0 {
			return nil, &PosError{w.pos, fmt.Sprintf("piece %q: %q is not key=value (missing `|` before a new piece?)", spec.Name, w.text)}
		}
		if w.eqAt == 0 {
			return nil, &PosError{w.pos, fmt.Sprintf("piece %q: parameter %q has no key", spec.Name, w.text)}
		}
		spec.Params = append(spec.Params, &Param{Key: w.text[:w.eqAt], Value: w.text[w.eqAt+1:], Pos: w.pos, ValuePos: w.valPos})
	}
	if spec != nil {
		specs = append(specs, *spec)
	} else if len(words) > 0 {
		return nil, &PosError{words[len(words)-1].pos, "`|` with no piece after it"}
	}
	if len(specs) == 0 {
		return nil, &PosError{Pos{file, 1, 1}, "empty chain: name at least one piece, e.g. `direct`"}
	}
	return specs, nil
}

// optionWord starts an option line: `option KEY=VALUE …`.
const optionWord = "option"

// SplitOptions takes the `option KEY=VALUE …` lines off the top of a
// profile's text (blank lines and comments may come between them) and
// returns them with the rest, in which those lines are left empty so that
// the chain's positions stay as written. An option line after the chain
// has started is an error: options are read before the chain, at a glance.
func SplitOptions(file, text string) ([]Option, string, error) {
	lines := strings.SplitAfter(text, "\n")
	var opts []Option
	chainStarted := false
	for i, line := range lines {
		words := lineWords(line)
		if len(words) == 0 {
			continue
		}
		isOption := words[0].text == optionWord
		if isOption && chainStarted {
			if len(words) > 1 && strings.Contains(words[1].text, "=") {
				return nil, "", &PosError{Pos{file, i + 1, words[0].col}, "option lines come before the chain"}
			}
			continue
		}
		if !isOption {
			chainStarted = true
			continue
		}
		if len(words) == 1 {
			return nil, "", &PosError{Pos{file, i + 1, words[0].col}, "option needs KEY=VALUE, e.g. `option guard=netns`"}
		}
		for _, w := range words[1:] {
			key, value, ok := strings.Cut(w.text, "=")
			if !ok || key == "" {
				return nil, "", &PosError{Pos{file, i + 1, w.col}, fmt.Sprintf("option: %q is not KEY=VALUE (the chain goes on a line of its own, after the options)", w.text)}
			}
			opts = append(opts, Option{
				Key:      key,
				Value:    value,
				Pos:      Pos{file, i + 1, w.col},
				ValuePos: Pos{file, i + 1, w.col + len([]rune(key)) + 1},
			})
		}
		lines[i] = ""
		if strings.HasSuffix(line, "\n") {
			lines[i] = "\n"
		}
	}
	return opts, strings.Join(lines, ""), nil
}

type lineWord struct {
	text string
	col  int
}

// lineWords splits one line into words at blanks, up to a comment. Option
// values are plain words: no quoting, which only the chain needs.
func lineWords(line string) []lineWord {
	var words []lineWord
	var cur []rune
	start := 0
	col := 0
	for _, r := range line {
		col++
		if r == '#' {
			break
		}
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			if len(cur) > 0 {
				words = append(words, lineWord{string(cur), start})
				cur = cur[:0]
			}
			continue
		}
		if len(cur) == 0 {
			start = col
		}
		cur = append(cur, r)
	}
	if len(cur) > 0 {
		words = append(words, lineWord{string(cur), start})
	}
	return words
}

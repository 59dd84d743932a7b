// Package desktop gives GUI applications a profile through their desktop
// entries (the freedesktop.org Desktop Entry Specification): `funtun
// desktop apply vim.desktop profile=NAME` writes a user-level copy of the
// entry whose every Exec runs `funtun profile=NAME …`, `remove` puts back
// what was there, and `funtun desktop ui` does the same from a local web
// page.
package desktop

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// File is a parsed desktop entry file that writes back byte for byte:
// comments, blank lines, unknown keys, localized keys, spacing around '='
// and a missing final newline all stay as they were, and only the values
// that are set change.
type File struct {
	Path  string // for error messages
	lines []line
	// finalNewline is false when the last line has no '\n' after it.
	finalNewline bool
	// index finds an entry's line by group and key; lookups stay cheap
	// on a file with many groups.
	index map[entryKey]int
}

type entryKey struct{ group, key string }

type lineKind uint8

const (
	blankLine lineKind = iota // empty or only white space
	commentLine
	groupLine
	entryLine
)

type line struct {
	raw   string // without its '\n'
	kind  lineKind
	group string // the group an entry belongs to; a header's own name
	key   string // entries: the key with its locale, e.g. Name[de]
	// valueAt is where the value starts in raw: after '=' and the white
	// space that follows it, which the specification says to ignore.
	valueAt int
}

// ParseError is a malformed line: FILE:LINE: message.
type ParseError struct {
	Path string
	Line int
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
}

// Parse reads a desktop entry file. It accepts what GLib's key file
// parser accepts for desktop files (white space before a line, around '='
// and after a group header) and refuses, with FILE:LINE, what would make
// the entry mean something else to different readers: text that is no
// group, entry or comment, keys before the first group, a group or a key
// given twice, bytes that are not UTF-8, and Windows line ends.
func Parse(path string, data []byte) (*File, error) {
	f := &File{Path: path, finalNewline: true}
	text := string(data)
	if text == "" {
		return f, nil
	}
	parts := strings.Split(text, "\n")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	} else {
		f.finalNewline = false
	}
	group := ""
	groupAt := map[string]int{}
	keyAt := map[entryKey]int{}
	for i, raw := range parts {
		n := i + 1
		fail := func(format string, args ...any) (*File, error) {
			return nil, &ParseError{Path: path, Line: n, Msg: fmt.Sprintf(format, args...)}
		}
		if !utf8.ValidString(raw) {
			return fail("not UTF-8 text (desktop entry files are UTF-8)")
		}
		if strings.IndexByte(raw, 0) >= 0 {
			return fail("contains a NUL byte")
		}
		if strings.HasSuffix(raw, "\r") {
			return fail("ends with a carriage return (a Windows line end); desktop entry files end lines with \\n alone")
		}
		l := line{raw: raw, group: group}
		body := strings.TrimLeft(raw, " \t")
		switch {
		case body == "":
			l.kind = blankLine
		case body[0] == '#':
			l.kind = commentLine
		case body[0] == '[':
			end := strings.IndexByte(body, ']')
			if end < 0 || strings.TrimRight(body[end+1:], " \t") != "" {
				return fail("malformed group header %q: want [Group Name] alone on the line", raw)
			}
			name := body[1:end]
			if name == "" || strings.ContainsAny(name, "[") || strings.ContainsFunc(name, isControl) {
				return fail("group name %q: it must not be empty or contain '[', ']' or control characters", name)
			}
			if first, dup := groupAt[name]; dup {
				return fail("group [%s] appears twice (first at line %d)", name, first)
			}
			groupAt[name] = n
			group = name
			l.kind, l.group = groupLine, name
		default:
			eq := strings.IndexByte(body, '=')
			if eq < 0 {
				return fail("%q is no group header, Key=Value or comment", raw)
			}
			key := strings.TrimRight(body[:eq], " \t")
			if msg := checkKey(key); msg != "" {
				return fail("%s", msg)
			}
			if group == "" {
				return fail("%s= comes before the first group header ([Desktop Entry])", key)
			}
			if first, dup := keyAt[entryKey{group, key}]; dup {
				return fail("%s= appears twice in [%s] (first at line %d)", key, group, first)
			}
			keyAt[entryKey{group, key}] = n
			at := len(raw) - len(body) + eq + 1
			for at < len(raw) && (raw[at] == ' ' || raw[at] == '\t') {
				at++
			}
			l.kind, l.key, l.valueAt = entryLine, key, at
		}
		f.lines = append(f.lines, l)
	}
	f.reindex()
	return f, nil
}

func (f *File) reindex() {
	f.index = make(map[entryKey]int, len(f.lines))
	for i, l := range f.lines {
		if l.kind == entryLine {
			f.index[entryKey{l.group, l.key}] = i
		}
	}
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// checkKey accepts the specification's keys (A-Za-z0-9 and '-', with an
// optional [locale]) and the wider set GLib reads (X-KDE-Foo_Bar, dots),
// but not what would make the line ambiguous.
func checkKey(key string) string {
	if key == "" {
		return "an entry without a key (the line starts with '=')"
	}
	name := key
	if i := strings.IndexByte(key, '['); i >= 0 {
		locale := key[i+1:]
		if i == 0 || len(locale) < 2 || !strings.HasSuffix(locale, "]") || strings.ContainsAny(locale[:len(locale)-1], "[] \t") {
			return fmt.Sprintf("key %q: a localized key is Key[locale]", key)
		}
		name = key[:i]
	}
	// GLib tolerates spaces inside a key (old files have them); brackets
	// and control characters would change where the key ends.
	if strings.ContainsAny(name, "[]") || strings.ContainsFunc(name, isControl) {
		return fmt.Sprintf("key %q: keys are letters, digits and '-'", key)
	}
	return ""
}

// Bytes is the file as it would be written: the input itself when
// nothing was set.
func (f *File) Bytes() []byte {
	var b bytes.Buffer
	for i, l := range f.lines {
		b.WriteString(l.raw)
		if i < len(f.lines)-1 || f.finalNewline {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// Groups lists the group names in file order.
func (f *File) Groups() []string {
	var out []string
	for _, l := range f.lines {
		if l.kind == groupLine {
			out = append(out, l.group)
		}
	}
	return out
}

// Keys lists a group's keys in file order.
func (f *File) Keys(group string) []string {
	var out []string
	for _, l := range f.lines {
		if l.kind == entryLine && l.group == group {
			out = append(out, l.key)
		}
	}
	return out
}

func (f *File) find(group, key string) int {
	if i, ok := f.index[entryKey{group, key}]; ok {
		return i
	}
	return -1
}

// Raw is a value as written in the file, escapes and all.
func (f *File) Raw(group, key string) (string, bool) {
	i := f.find(group, key)
	if i < 0 {
		return "", false
	}
	l := f.lines[i]
	return l.raw[l.valueAt:], true
}

// String is a value of type string with the specification's escapes
// (\s \n \t \r \\) undone.
func (f *File) String(group, key string) string {
	v, _ := f.Raw(group, key)
	return UnescapeString(v)
}

// Bool is a value of type boolean; only "true" is true.
func (f *File) Bool(group, key string) bool {
	v, _ := f.Raw(group, key)
	return strings.TrimRight(v, " \t") == "true"
}

// Line is the 1-based line number of a key, 0 when it is absent.
func (f *File) Line(group, key string) int {
	return f.find(group, key) + 1
}

// SetRaw sets a value as written (the caller escapes it). An existing key
// keeps its line, its spacing around '=' and its place; a new one goes
// after the last entry of its group (so that a comment heading the next
// group stays with that group). The group must exist.
func (f *File) SetRaw(group, key, value string) error {
	if msg := checkKey(key); msg != "" {
		return fmt.Errorf("%s", msg)
	}
	if strings.ContainsAny(value, "\n\r\x00") {
		return fmt.Errorf("value for %s= contains a line break or NUL: escape it", key)
	}
	if i := f.find(group, key); i >= 0 {
		l := &f.lines[i]
		l.raw = l.raw[:l.valueAt] + value
		return nil
	}
	at := -1
	for i, l := range f.lines {
		if l.group == group && (l.kind == groupLine || l.kind == entryLine) {
			at = i
		}
	}
	if at < 0 {
		return fmt.Errorf("no group [%s]", group)
	}
	raw := key + "=" + value
	nl := line{raw: raw, kind: entryLine, group: group, key: key, valueAt: len(key) + 1}
	f.lines = append(f.lines[:at+1], append([]line{nl}, f.lines[at+1:]...)...)
	f.reindex()
	return nil
}

// InsertAfter adds key=value right after an existing key of the group.
func (f *File) InsertAfter(group, after, key, value string) error {
	if f.find(group, key) >= 0 {
		return f.SetRaw(group, key, value)
	}
	i := f.find(group, after)
	if i < 0 {
		return f.SetRaw(group, key, value)
	}
	if msg := checkKey(key); msg != "" {
		return fmt.Errorf("%s", msg)
	}
	nl := line{raw: key + "=" + value, kind: entryLine, group: group, key: key, valueAt: len(key) + 1}
	f.lines = append(f.lines[:i+1], append([]line{nl}, f.lines[i+1:]...)...)
	f.reindex()
	return nil
}

// Delete removes a key's line; it reports whether there was one.
func (f *File) Delete(group, key string) bool {
	i := f.find(group, key)
	if i < 0 {
		return false
	}
	f.lines = append(f.lines[:i], f.lines[i+1:]...)
	f.reindex()
	return true
}

// Clone is an independent copy.
func (f *File) Clone() *File {
	c := *f
	c.lines = append([]line(nil), f.lines...)
	c.reindex()
	return &c
}

// UnescapeString undoes the escapes of a value of type string: \s \n \t
// \r and \\. Any other backslash is kept with the character after it, as
// GLib does: Exec values rely on that ("\$" reaches the quoting rules).
func UnescapeString(v string) string {
	if !strings.Contains(v, `\`) {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c, n := stringChar(v, i)
		b.WriteByte(c)
		i += n - 1
	}
	return b.String()
}

// stringChar decodes the string-level character at v[i]: the byte it
// stands for and how many bytes of v it takes.
func stringChar(v string, i int) (byte, int) {
	if v[i] != '\\' || i+1 >= len(v) {
		return v[i], 1
	}
	switch v[i+1] {
	case 's':
		return ' ', 2
	case 'n':
		return '\n', 2
	case 't':
		return '\t', 2
	case 'r':
		return '\r', 2
	case '\\':
		return '\\', 2
	}
	return '\\', 1
}

// EscapeString is the inverse of UnescapeString for any text: backslash,
// line breaks and tab escaped, and a leading space as \s (readers drop
// white space after '=').
func EscapeString(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case ' ':
			if i == 0 {
				b.WriteString(`\s`)
			} else {
				b.WriteByte(' ')
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

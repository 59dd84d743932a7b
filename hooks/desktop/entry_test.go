package desktop

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// realEntries are the desktop files installed on this machine by Debian
// packages (chromium is one of the test tools; others may be there).
func realEntries(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob("/usr/share/applications/*.desktop")
	if len(files) == 0 {
		testutil.NeedTool(t, "chromium") // installs /usr/share/applications/chromium.desktop
		t.Fatal("no desktop files in /usr/share/applications although chromium is installed")
	}
	return files
}

func TestParseRealFilesRoundTrip(t *testing.T) {
	for _, path := range realEntries(t) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := Parse(path, data)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if got := f.Bytes(); string(got) != string(data) {
			t.Errorf("%s: written back differently", path)
		}
		if f.String(mainGroup, "Name") == "" {
			t.Errorf("%s: no Name read", path)
		}
	}
}

func TestParseKeepsEverything(t *testing.T) {
	in := "# leading comment\n\n[Desktop Entry]\nType=Application\nName = Demo\nName[de]=Vorführung\nName[sr@latin]=Demo\n  # indented comment\nX-Unknown-Key=kept;as;is;\nExec=demo %U\n\n[Desktop Action new]\nName=New\nExec=demo --new\n[X-Vendor Group]\nWhatever=1"
	f, err := Parse("t.desktop", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(f.Bytes()) != in {
		t.Fatalf("round trip changed the file:\n%s", f.Bytes())
	}
	if got := f.String(mainGroup, "Name"); got != "Demo" {
		t.Errorf("Name = %q (spaces around = are not part of key or value)", got)
	}
	if got := f.String(mainGroup, "Name[de]"); got != "Vorführung" {
		t.Errorf("Name[de] = %q", got)
	}
	if got := f.Groups(); !reflect.DeepEqual(got, []string{"Desktop Entry", "Desktop Action new", "X-Vendor Group"}) {
		t.Errorf("groups %q", got)
	}
	// A set value keeps the line and its spacing; a new key goes after
	// the group's last entry, before the blank line.
	if err := f.SetRaw(mainGroup, "Name", "Other"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetRaw(mainGroup, "X-New", "1"); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(in, "Name = Demo", "Name = Other", 1)
	want = strings.Replace(want, "Exec=demo %U\n", "Exec=demo %U\nX-New=1\n", 1)
	if string(f.Bytes()) != want {
		t.Fatalf("after SetRaw:\n%s\nwant:\n%s", f.Bytes(), want)
	}
	// A key added to the last group of a file without a final newline.
	if err := f.SetRaw("X-Vendor Group", "More", "2"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(f.Bytes()), "Whatever=1\nMore=2") {
		t.Fatalf("end of file: %q", f.Bytes())
	}
	if !f.Delete("X-Vendor Group", "More") || !strings.HasSuffix(string(f.Bytes()), "Whatever=1") {
		t.Fatalf("after Delete: %q", f.Bytes())
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		in   string
		line int
		msg  string
	}{
		{"Name=x\n[Desktop Entry]\n", 1, "before the first group"},
		{"[Desktop Entry]\nType=Application\njust words\n", 3, "no group header"},
		{"[Desktop Entry]\n[Desktop Entry]\n", 2, "appears twice (first at line 1)"},
		{"[Desktop Entry]\nName=a\nName=b\n", 3, "Name= appears twice"},
		{"[Desktop Entry\n", 1, "malformed group header"},
		{"[Desktop Entry] x\n", 1, "malformed group header"},
		{"[]\n", 1, "group name"},
		{"[Desktop Entry]\n=value\n", 2, "without a key"},
		{"[Desktop Entry]\nName[=x\n", 2, "localized key"},
		{"[Desktop Entry]\nName=\xff\n", 2, "not UTF-8"},
		{"[Desktop Entry]\r\nName=x\r\n", 1, "carriage return"},
		{"[Desktop Entry]\nName=a\x00b\n", 2, "NUL"},
	}
	for _, c := range cases {
		_, err := Parse("/some/app.desktop", []byte(c.in))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%q: error %v, want a ParseError", c.in, err)
			continue
		}
		if pe.Line != c.line || !strings.Contains(err.Error(), c.msg) || !strings.HasPrefix(err.Error(), "/some/app.desktop:") {
			t.Errorf("%q: %v; want line %d and %q", c.in, err, c.line, c.msg)
		}
	}
}

func TestStringEscapes(t *testing.T) {
	for raw, want := range map[string]string{
		`a\sb`:      "a b",
		`\n\t\r`:    "\n\t\r",
		`c:\\x`:     `c:\x`,
		`keep\$it`:  `keep\$it`, // unknown escapes stay, as GLib keeps them
		`trailing\`: `trailing\`,
	} {
		if got := UnescapeString(raw); got != want {
			t.Errorf("UnescapeString(%q) = %q, want %q", raw, got, want)
		}
	}
	for _, s := range []string{" lead", "a\\b", "tab\there", "nl\nx", `\s`, ""} {
		if got := UnescapeString(EscapeString(s)); got != s {
			t.Errorf("round trip of %q gave %q (escaped %q)", s, got, EscapeString(s))
		}
	}
}

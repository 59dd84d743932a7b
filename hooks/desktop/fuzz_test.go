package desktop

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: whatever parses is written back byte for byte and parses to
// the same groups, keys and values; an error is a FILE:LINE ParseError
// inside the file. Wrapping every Exec gives a file that parses, whose
// launcher words read back, and whose unwrapping is the input again.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("/usr/share/applications/*.desktop")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		"[Desktop Entry]\nType=Application\nName=x\nExec=x \"a b\" \"\\\\$v\" %f\n[Desktop Action a]\nExec=y\\sz",
		"# c\n\n[Desktop Entry]\nName [de] = y\nExec = funtun profile=a -- b",
		"[Desktop Entry]\nExec=sh -c 'x' \"q\\\\\\\\\"",
		"[A]\n[B]\nk=v\n",
		"",
		"\n",
	} {
		f.Add([]byte(s))
	}
	m := &Manager{Launcher: Launcher{Funtun: "/opt/fun tun/$bin/funtun"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.desktop", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Line > strings.Count(string(data), "\n")+1 || !strings.HasPrefix(err.Error(), "fuzz.desktop:") {
				t.Fatalf("error without a usable FILE:LINE: %v", err)
			}
			return
		}
		out := file.Bytes()
		if string(out) != string(data) {
			t.Fatalf("written back differently:\n%q\n%q", data, out)
		}
		again, err := Parse("fuzz.desktop", out)
		if err != nil {
			t.Fatalf("written file does not parse: %v", err)
		}
		if !reflect.DeepEqual(contents(file), contents(again)) {
			t.Fatal("reparsed contents differ")
		}
		for _, g := range execGroups(file) {
			raw, _ := file.Raw(g, "Exec")
			orig, err := ParseWrapped(raw)
			if err != nil {
				continue
			}
			wrapped, err := m.Launcher.Wrap(raw, "p")
			if err != nil {
				continue // empty Exec
			}
			w, err := ParseWrapped(wrapped)
			if err != nil || !w.Yes || w.Profile != "p" || w.Program != orig.Program {
				t.Fatalf("Wrap(%q) = %q reads back as %+v, %v", raw, wrapped, w, err)
			}
			inner, _ := ExecArgs(orig.Program)
			all, err := ExecArgs(wrapped)
			skip := len(all) - len(inner)
			if err != nil || skip < 2 || all[0].Text != m.Launcher.Funtun || all[1].Text != "profile=p" {
				t.Fatalf("wrapped %q splits as %+v, %v", wrapped, all, err)
			}
			for i := range inner {
				if all[i+skip].Text != inner[i].Text {
					t.Fatalf("argument %d changed: %q -> %q", i, inner[i].Text, all[i+2].Text)
				}
			}
		}
		if _, marked := file.Raw(mainGroup, MarkerKey); marked || len(execGroups(file)) == 0 {
			return
		}
		for _, g := range execGroups(file) {
			if raw, _ := file.Raw(g, "Exec"); func() bool { w, err := ParseWrapped(raw); return err != nil || w.Yes }() {
				return // already wrapped: unwrapping gives the inner command
			}
		}
		next, err := m.wrapped(file, "p")
		if err != nil {
			return
		}
		back, err := Parse("fuzz.desktop", next.Bytes())
		if err != nil {
			t.Fatalf("wrapped file does not parse: %v\n%s", err, next.Bytes())
		}
		orig, err := unwrapped(back)
		if err != nil || string(orig.Bytes()) != string(data) {
			t.Fatalf("unwrap(wrap(file)) differs: %v\n%q\n%q", err, data, orig.Bytes())
		}
	})
}

type kv struct{ group, key, value string }

func contents(f *File) []kv {
	var out []kv
	for _, l := range f.lines {
		switch l.kind {
		case groupLine:
			out = append(out, kv{l.group, "", ""})
		case entryLine:
			out = append(out, kv{l.group, l.key, l.raw[l.valueAt:]})
		}
	}
	return out
}

// FuzzExec: quoting undoes splitting and splitting undoes quoting, for any
// arguments (NUL-separated in the input) and for any Exec that splits.
func FuzzExec(f *testing.F) {
	for _, s := range []string{
		"vim %F", `foo "a b" "\\$HOME" "back\\\\slash"`, `sh -c 'echo $1' x`, `a\sb`,
		"/opt/a b/funtun\x00profile=x\x00$HOME\x00", "\x00", "tab\there\x00nl\nx\x00`tick`\x00\\",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list := strings.Split(s, "\x00")
		got, err := ExecArgs(QuoteExec(list))
		if err != nil {
			t.Fatalf("QuoteExec(%q) = %q does not split: %v", list, QuoteExec(list), err)
		}
		if len(got) != len(list) {
			t.Fatalf("QuoteExec(%q) = %q splits into %d arguments", list, QuoteExec(list), len(got))
		}
		for i := range list {
			if got[i].Text != list[i] {
				t.Fatalf("argument %d: %q came back as %q (Exec %q)", i, list[i], got[i].Text, QuoteExec(list))
			}
		}
		args, err := ExecArgs(s)
		if err != nil {
			return
		}
		var in []string
		for _, a := range args {
			in = append(in, a.Text)
		}
		back, err := ExecArgs(QuoteExec(in))
		if err != nil || len(back) != len(in) {
			t.Fatalf("requoted %q: %v", QuoteExec(in), err)
		}
		for i := range in {
			if back[i].Text != in[i] {
				t.Fatalf("requoting %q changed argument %d: %q -> %q", s, i, in[i], back[i].Text)
			}
		}
	})
}

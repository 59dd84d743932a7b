package daemon

import (
	"bufio"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
)

func TestProgramsFileParses(t *testing.T) {
	src := `# which programs go through which profile
curl            profile=work
/usr/bin/ssh    chain='socks5 server=127.0.0.1:9050'   # tor
"/opt/my app/bin/*"  profile=lab
ping            untouched
*               chain="hosts demo.test=127.0.0.1 | rewrite from=\"a b\" to=c"
`
	ps, err := parsePrograms("programs", bufio.NewScanner(strings.NewReader(src)))
	if err != nil {
		t.Fatal(err)
	}
	want := []programEntry{
		{Pattern: "curl", Sel: funnel.Selector{Profile: "work"}, Line: 2},
		{Pattern: "/usr/bin/ssh", Sel: funnel.Selector{Chain: "socks5 server=127.0.0.1:9050"}, Line: 3},
		{Pattern: "/opt/my app/bin/*", Sel: funnel.Selector{Profile: "lab"}, Line: 4},
		{Pattern: "ping", Untouched: true, Line: 5},
		{Pattern: "*", Sel: funnel.Selector{Chain: `hosts demo.test=127.0.0.1 | rewrite from="a b" to=c`}, Line: 6},
	}
	if len(ps.Entries) != len(want) {
		t.Fatalf("entries %+v", ps.Entries)
	}
	for i := range want {
		if ps.Entries[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", want[i].Line, ps.Entries[i], want[i])
		}
	}

	for _, c := range []struct {
		id   programID
		want string // the pattern that matches
	}{
		{programID{Exe: "/usr/bin/curl", Argv0: "curl"}, "curl"},
		{programID{Exe: "/usr/local/bin/curl"}, "curl"},
		{programID{Exe: "/usr/bin/ssh", Argv0: "ssh"}, "/usr/bin/ssh"},
		{programID{Exe: "/home/u/bin/ssh", Argv0: "ssh"}, "*"}, // a path pattern needs the path
		{programID{Exe: "/opt/my app/bin/tool"}, "/opt/my app/bin/*"},
		{programID{Exe: "/usr/bin/busybox", Argv0: "ping"}, "ping"}, // argv[0] counts too
		{programID{Exe: "/usr/bin/wget"}, "*"},
	} {
		e, ok := ps.match(c.id)
		if !ok || e.Pattern != c.want {
			t.Errorf("%+v matched %q (%v), want %q", c.id, e.Pattern, ok, c.want)
		}
	}
	if _, ok := (&programs{}).match(programID{Exe: "/usr/bin/curl"}); ok {
		t.Error("an empty programs file matched a program")
	}
}

func TestProgramsFileErrorsNameTheLine(t *testing.T) {
	src := `curl profile=work
wget
ssh profile=
firefox chain='tls
[x profile=a
profile=work curl
git profile=a profile=b extra
`
	_, err := parsePrograms("/home/u/.config/funtun/programs", bufio.NewScanner(strings.NewReader(src)))
	if err == nil {
		t.Fatal("a broken programs file was accepted")
	}
	for _, want := range []string{
		"programs:2: wget: say what it goes through",
		"programs:3: profile= needs a name",
		"programs:4: a ' is not closed",
		"programs:5: program pattern \"[x\"",
		"programs:6: a line starts with the program",
		"programs:7: unexpected \"extra\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "programs:1:") {
		t.Errorf("the good line 1 was reported: %v", err)
	}
}

func TestTemplateSelector(t *testing.T) {
	for in, want := range map[string]funnel.Selector{
		"":                          {},
		"shout":                     {Profile: "shout"},
		"profile=shout":             {Profile: "shout"},
		"chain=rewrite from=a to=b": {Chain: "rewrite from=a to=b"},
	} {
		got, err := templateSelector(in)
		if err != nil || got != want {
			t.Errorf("templateSelector(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"rewrite from=a to=b", "a b", "chain=", "profile="} {
		if _, err := templateSelector(bad); err == nil {
			t.Errorf("templateSelector(%q) accepted", bad)
		}
	}
}

package funnel

import (
	"strings"
	"testing"
)

func TestParseChain(t *testing.T) {
	specs, err := ParseChain("chain", `tls sni=example.org alpn="h2,http/1.1" | rewrite from='a | b' to="it's" | socks5 server=127.0.0.1:1080`)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 3 {
		t.Fatalf("got %d pieces, want 3: %+v", len(specs), specs)
	}
	if specs[1].Name != "rewrite" || specs[1].Params[0].Value != "a | b" || specs[1].Params[1].Value != "it's" {
		t.Errorf("quoted values parsed wrong: %+v %+v", specs[1].Params[0], specs[1].Params[1])
	}
	if specs[0].Params[1].Value != "h2,http/1.1" {
		t.Errorf("alpn = %q", specs[0].Params[1].Value)
	}
	if got := specs[2].Pos; got.Line != 1 || got.Col != 75 {
		t.Errorf("socks5 at %v, want 1:75", got)
	}
	// Writing it back and parsing again gives the same chain.
	var parts []string
	for _, s := range specs {
		parts = append(parts, s.String())
	}
	again, err := ParseChain("chain", strings.Join(parts, " | "))
	if err != nil {
		t.Fatal(err)
	}
	for i := range specs {
		if specs[i].String() != again[i].String() {
			t.Errorf("round trip: %q != %q", specs[i].String(), again[i].String())
		}
	}
}

func TestParseChainFile(t *testing.T) {
	text := "# a comment\ntls sni=x   # trailing comment\n  | socks5\n      server=proxy:1080\n"
	specs, err := ParseChain("my.profile", text)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 {
		t.Fatalf("got %d pieces", len(specs))
	}
	if p := specs[1].Params[0]; p.Pos.Line != 4 || p.Pos.Col != 7 || p.ValuePos.Col != 14 {
		t.Errorf("server= at %v value at %v, want 4:7 and 4:14", p.Pos, p.ValuePos)
	}
}

func TestParseChainErrors(t *testing.T) {
	cases := []struct{ text, want string }{
		{"", "chain:1:1: empty chain"},
		{"# only a comment", "empty chain"},
		{"tls sni='open", "chain:1:9: quote ' is never closed"},
		{"| tls", "chain:1:1: `|` with no piece before it"},
		{"tls |", "`|` with no piece after it"},
		{"tls | | direct", "chain:1:7: `|` with no piece before it"},
		{"sni=x", "expected a piece name"},
		{"tls sni=x direct", `chain:1:11: piece "tls": "direct" is not key=value`},
		{"tls =x", "has no key"},
	}
	for _, c := range cases {
		_, err := ParseChain("chain", c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseChain(%q) = %v, want error containing %q", c.text, err, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"1500": 1500, "64k": 64 << 10, "10M": 10 << 20, "1G": 1 << 30, "2M/s": 2 << 20, "1.5k": 1536, "8MiB": 8 << 20}
	for in, want := range cases {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "10Q"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

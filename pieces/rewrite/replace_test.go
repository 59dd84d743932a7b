package rewrite

import (
	"bytes"
	"math/rand/v2"
	"regexp"
	"regexp/syntax"
	"strings"
	"testing"
	"unicode/utf8"
)

// feed pushes input cut at the given offsets (ascending) and ends the stream.
func feed(r replacer, input []byte, cuts []int) []byte {
	var out []byte
	last := 0
	for _, c := range cuts {
		out = r.push(out, input[last:c])
		last = c
	}
	out = r.push(out, input[last:])
	return r.end(out)
}

// randomCuts cuts input into pieces of random sizes, many of them one byte.
func randomCuts(n int, rng *rand.Rand) []int {
	var cuts []int
	for at := 0; at < n; {
		step := 1 + rng.IntN(4)
		if rng.IntN(4) == 0 {
			step = 1 + rng.IntN(n+1)
		}
		at += step
		if at < n {
			cuts = append(cuts, at)
		}
	}
	return cuts
}

// eachSplit runs check with no cut, every single cut, every pair of cuts
// (for short inputs) and byte by byte.
func eachSplit(t *testing.T, input []byte, check func(cuts []int)) {
	t.Helper()
	check(nil)
	for i := 0; i <= len(input); i++ {
		check([]int{i})
		if len(input) <= 40 {
			for j := i; j <= len(input); j++ {
				check([]int{i, j})
			}
		}
	}
	var all []int
	for i := 1; i < len(input); i++ {
		all = append(all, i)
	}
	check(all)
}

func TestLiteralEverySplit(t *testing.T) {
	cases := []struct{ input, from, to string }{
		{"hello world", "world", "there"},
		{"aaaaaaa", "aa", "b"},
		{"abababab", "abab", "X"},
		{"aabaabaaab", "aab", ""},
		{"no match here", "xyz", "!"},
		{"abcabcabd", "abcabd", "<>"},
		{"GET / HTTP/1.1\r\nHost: old.test\r\n\r\n", "old.test", "new.test"},
		{"x", "x", "yy"},
		{"ab", "abc", "Z"},
		{"ababa", "aba", "-"},
		{"\x00\xff\x00\xff\xfe", "\xff\x00", "\x01"},
	}
	for _, tc := range cases {
		want := strings.ReplaceAll(tc.input, tc.from, tc.to)
		eachSplit(t, []byte(tc.input), func(cuts []int) {
			got := feed(newLiteral([]byte(tc.from), []byte(tc.to)), []byte(tc.input), cuts)
			if string(got) != want {
				t.Fatalf("ReplaceAll(%q, %q, %q) cut at %v: got %q, want %q", tc.input, tc.from, tc.to, cuts, got, want)
			}
		})
	}
}

// TestLiteralHoldsOnlyOpenPrefix: bytes that cannot begin a match are sent
// at once, so a request/response protocol is not stalled by the piece.
func TestLiteralHoldsOnlyOpenPrefix(t *testing.T) {
	l := newLiteral([]byte("secret"), []byte("******"))
	out := l.push(nil, []byte("ping\n"))
	if string(out) != "ping\n" || l.held() != 0 {
		t.Fatalf("push(ping) sent %q and held %d bytes; want all sent", out, l.held())
	}
	out = l.push(nil, []byte("my sec"))
	if string(out) != "my " || l.held() != 3 {
		t.Fatalf("push(my sec) sent %q and held %d; want %q sent and 3 held", out, l.held(), "my ")
	}
	out = l.push(nil, []byte("ret!"))
	if string(out) != "******!" {
		t.Fatalf("push(ret!) sent %q, want %q", out, "******!")
	}
}

var regexCases = []struct{ pattern, to, input string }{
	{`wor(ld)`, `[$1]`, "hello world, worldly world"},
	{`(\w+)@(\w+)\.test`, `$2 at $1`, "mail alice@example.test and bob@corp.test now"},
	{`a+`, `A`, "caaat aa a baaaaaaaab"},
	{`a+?`, `A`, "caaat"},
	{`\bcat\b`, `dog`, "cat concat cat. scat cat"},
	{`^GET`, `PUT`, "GET /GET HTTP/1.1\r\nGET"},
	{`(?m)^Host: .*$`, `Host: new.test`, "GET / HTTP/1.1\r\nHost: old.test\nAccept: */*\nHost: x\n"},
	{`(?i)héllo`, `bye`, "HÉLLO héllo Hello"},
	{`é+`, `e`, "café ééé caféé"},
	{`x|xy|xyz`, `_`, "xyzxyxx"},
	{`(a|ab)(c|bcd)(d*)`, `<$1|$2|$3>`, "abcd abcdd acd"},
	{`[0-9]{3}-[0-9]{4}`, `XXX-XXXX`, "call 555-1234 or 555-12345"},
	{`foo$`, `bar`, "foo\nfoo"},
	{`(?s)<!--.*?-->`, ``, "a<!-- x\ny -->b<!---->c<!-- open"},
	{`(x)?y`, `[$1]`, "y xy"},
	{`\d+`, `#`, "a1b22c333\xffd4444\xe2\x82"},
	{`.`, `.`, "ab\xe2\x82\xacc\xe2\x82"},
}

func TestRegexEverySplit(t *testing.T) {
	for _, tc := range regexCases {
		re, prog, err := compileRegex(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		want := re.ReplaceAllString(tc.input, tc.to)
		eachSplit(t, []byte(tc.input), func(cuts []int) {
			got := feed(newRegex(re, prog, tc.to, 1<<16), []byte(tc.input), cuts)
			if string(got) != want {
				t.Fatalf("%q → %q on %q cut at %v: got %q, want %q", tc.pattern, tc.to, tc.input, cuts, got, want)
			}
		})
	}
}

func TestRegexGroups(t *testing.T) {
	re, prog, err := compileRegex(`(?P<user>[a-z]+)@(?P<host>[a-z.]+)`)
	if err != nil {
		t.Fatal(err)
	}
	x := newRegex(re, prog, `${host}!${user} ($$)`, 1024)
	got := feed(x, []byte("to: alice@example.test, bob@corp.test\n"), []int{7, 12, 30})
	want := "to: example.test!alice ($), corp.test!bob ($)\n"
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestRegexMatchAtEndOfWriteIsSent: a match that no further byte can
// change goes out at once, without waiting for the next write.
func TestRegexMatchAtEndOfWriteIsSent(t *testing.T) {
	re, prog, _ := compileRegex(`tok[0-9]{3}`)
	x := newRegex(re, prog, "tok***", 1024)
	if out := x.push(nil, []byte("send tok123")); string(out) != "send tok***" {
		t.Fatalf("sent %q, want %q", out, "send tok***")
	}
	// A greedy match must wait: more digits could follow.
	re, prog, _ = compileRegex(`tok[0-9]+`)
	x = newRegex(re, prog, "tok*", 1024)
	if out := x.push(nil, []byte("send tok123")); string(out) != "send " {
		t.Fatalf("sent %q, want %q held back", out, "send ")
	}
	if out := x.push(nil, []byte("4 ok")); string(out) != "tok* ok" {
		t.Fatalf("sent %q, want %q", out, "tok* ok")
	}
}

func TestRegexRefusesEmptyMatch(t *testing.T) {
	for _, p := range []string{`a*`, `x?`, `^`, `\b`, `(?m)$`, `a|`, `()`} {
		if _, _, err := compileRegex(p); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("%q: got %v, want an error about the empty string", p, err)
		}
	}
}

// TestBoundedMemory streams 1 MB through patterns that keep a match open
// for ever; what is held back must stay within max, and bytes must keep
// flowing before the end of the stream.
func TestBoundedMemory(t *testing.T) {
	const limit = 4096
	const total = 1 << 20
	re, prog, _ := compileRegex(`(?s)BEGIN.*END`)
	for name, r := range map[string]replacer{
		"regex":   newRegex(re, prog, "", limit),
		"literal": newLiteral([]byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"), nil),
	} {
		piece := bytes.Repeat([]byte("a"), 1000)
		copy(piece, "BEGIN")
		sent, fed := 0, 0
		for ; fed < total; fed += len(piece) {
			out := r.push(nil, piece)
			sent += len(out)
			if r.held() > limit+8 {
				t.Fatalf("%s: holds %d bytes after %d in, want at most max=%d", name, r.held(), fed, limit)
			}
		}
		if sent < total-limit-8 {
			t.Fatalf("%s: only %d of %d bytes came out before the end of the stream", name, sent, total)
		}
		sent += len(r.end(nil))
		if sent != fed {
			t.Fatalf("%s: %d bytes out, want every byte of %d", name, sent, fed)
		}
	}
	// A match longer than max is not found; shorter ones still are.
	x := newRegex(re, prog, "<>", 16)
	in := "BEGIN" + strings.Repeat(".", 20) + "END BEGIN..END"
	got := feed(x, []byte(in), nil)
	want := "BEGIN" + strings.Repeat(".", 20) + "END <>"
	if string(got) != want {
		t.Fatalf("max=16: got %q, want %q", got, want)
	}
}

// TestRegexCutsDoNotMatterPastMax: with matches longer than max, output is
// no longer ReplaceAll's, but it still does not depend on how the stream
// was cut.
func TestRegexCutsDoNotMatterPastMax(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range regexCases {
		re, prog, _ := compileRegex(tc.pattern)
		input := []byte(strings.Repeat(tc.input, 3))
		for _, limit := range []int{1, 2, 3, 5, 8} {
			want := feed(newRegex(re, prog, tc.to, limit), input, nil)
			for range 50 {
				cuts := randomCuts(len(input), rng)
				got := feed(newRegex(re, prog, tc.to, limit), input, cuts)
				if !bytes.Equal(got, want) {
					t.Fatalf("%q max=%d cut at %v: got %q, uncut %q", tc.pattern, limit, cuts, got, want)
				}
			}
		}
	}
}

func FuzzLiteral(f *testing.F) {
	f.Add([]byte("hello world"), "world", "there", uint64(1))
	f.Add([]byte("aaaaaaaaaa"), "aaa", "b", uint64(2))
	f.Add([]byte("abcabcabdabcabd"), "abcabd", "", uint64(3))
	f.Add([]byte("\x00\x01\x00\x01\x00"), "\x00\x01\x00", "\xff", uint64(4))
	f.Fuzz(func(t *testing.T, input []byte, from, to string, seed uint64) {
		if from == "" {
			return
		}
		want := strings.ReplaceAll(string(input), from, to)
		rng := rand.New(rand.NewPCG(seed, 0))
		for range 8 {
			cuts := randomCuts(len(input), rng)
			got := feed(newLiteral([]byte(from), []byte(to)), input, cuts)
			if string(got) != want {
				t.Fatalf("ReplaceAll(%q, %q, %q) cut at %v: got %q, want %q", input, from, to, cuts, got, want)
			}
		}
		// A flush (hold= ran out) ends a search: the output is each
		// flushed segment replaced on its own, however it was cut.
		flushes := randomCuts(len(input), rng)
		var wantF []byte
		for _, seg := range segments(input, flushes) {
			wantF = append(wantF, strings.ReplaceAll(string(seg), from, to)...)
		}
		cuts := randomCuts(len(input), rng)
		if got := feedFlushing(newLiteral([]byte(from), []byte(to)), input, cuts, flushes); !bytes.Equal(got, wantF) {
			t.Fatalf("ReplaceAll(%q, %q, %q) cut at %v, flushed at %v: got %q, want %q", input, from, to, cuts, flushes, got, wantF)
		}
	})
}

func FuzzRegex(f *testing.F) {
	for i, tc := range regexCases {
		f.Add([]byte(tc.input), tc.pattern, tc.to, uint64(i))
	}
	f.Fuzz(func(t *testing.T, input []byte, pattern, to string, seed uint64) {
		if len(pattern) > 64 || len(input) > 4096 {
			return // keep each run fast; length adds nothing here
		}
		re, prog, err := compileRegex(pattern)
		if err != nil {
			return
		}
		if re.Match(nil) {
			t.Fatalf("%q matches the empty string but was accepted", pattern)
		}
		if !utf8.ValidString(to) {
			to = strings.ToValidUTF8(to, "?")
		}
		want := regexp.MustCompile(pattern).ReplaceAll(input, []byte(to))
		rng := rand.New(rand.NewPCG(seed, 0))
		for range 4 {
			cuts := randomCuts(len(input), rng)
			got := feed(newRegex(re, prog, to, len(input)+1), input, cuts)
			if !bytes.Equal(got, want) {
				t.Fatalf("%q → %q on %q cut at %v: got %q, want %q", pattern, to, input, cuts, got, want)
			}
		}
		// A flush (hold= ran out) ends a search: without ^ $ \b, which
		// see the bytes around a flush, the output is each flushed
		// segment replaced on its own, however it was cut.
		flushes := randomCuts(len(input), rng)
		got := feedFlushing(newRegex(re, prog, to, len(input)+1), input, randomCuts(len(input), rng), flushes)
		if !hasEmptyWidth(prog) {
			var wantF []byte
			for _, seg := range segments(input, flushes) {
				wantF = append(wantF, re.ReplaceAll(seg, []byte(to))...)
			}
			if !bytes.Equal(got, wantF) {
				t.Fatalf("%q → %q on %q flushed at %v: got %q, want %q", pattern, to, input, flushes, got, wantF)
			}
		}
		// Past max the output is the piece's own, but cuts still must not
		// change it.
		limit := 1 + int(seed%8)
		uncut := feed(newRegex(re, prog, to, limit), input, nil)
		cuts := randomCuts(len(input), rng)
		if got := feed(newRegex(re, prog, to, limit), input, cuts); !bytes.Equal(got, uncut) {
			t.Fatalf("%q → %q on %q max=%d cut at %v: got %q, uncut %q", pattern, to, input, limit, cuts, got, uncut)
		}
	})
}

func hasEmptyWidth(prog *syntax.Prog) bool {
	for _, i := range prog.Inst {
		if i.Op == syntax.InstEmptyWidth {
			return true
		}
	}
	return false
}

func BenchmarkReplacers(b *testing.B) {
	text := bytes.Repeat([]byte("GET /index.html HTTP/1.1\r\nHost: old.test\r\nUser-Agent: bench 555-1234\r\n\r\n"), 400)
	re1, p1, _ := compileRegex(`Host: [a-z.]+`)
	re2, p2, _ := compileRegex(`[0-9]{3}-[0-9]{4}`)
	for name, mk := range map[string]func() replacer{
		"literal":        func() replacer { return newLiteral([]byte("old.test"), []byte("new.test")) },
		"regex-prefix":   func() replacer { return newRegex(re1, p1, "Host: new.test", 64<<10) },
		"regex-noprefix": func() replacer { return newRegex(re2, p2, "XXX-XXXX", 64<<10) },
	} {
		b.Run(name, func(b *testing.B) {
			r := mk()
			b.SetBytes(int64(len(text)))
			var out []byte
			for b.Loop() {
				out = r.push(out[:0], text)
			}
		})
	}
}

// TestFlush: what is held goes out as it is, a match already found is
// replaced, and the stream goes on with a fresh search.
func TestFlush(t *testing.T) {
	l := newLiteral([]byte("hello"), []byte("HELLO"))
	if out := l.push(nil, []byte("say hel")); string(out) != "say " {
		t.Fatalf("push sent %q", out)
	}
	if out := l.flush(nil); string(out) != "hel" || l.held() != 0 {
		t.Fatalf("flush sent %q, holds %d", out, l.held())
	}
	// The released "hel" is no match's beginning any more.
	if out := string(l.end(l.push(nil, []byte("lo, hello")))); out != "lo, HELLO" {
		t.Fatalf("after the flush: %q", out)
	}

	for _, tc := range []struct {
		pattern, to string
		pushes      []string // a flush after each
		want        string
	}{
		{`hello`, `HELLO`, []string{"say hel", "lo hello"}, "say hello HELLO"},
		{`tok[0-9]+`, `tok*`, []string{"send tok123", "4 ok"}, "send tok*4 ok"}, // the greedy match found so far wins
		{`a+`, `A`, []string{"caa", "aat"}, "cAAt"},
		{`a+`, ``, []string{"aa", "a"}, ""},
		{`x|xy|xyz`, `_`, []string{"xy", "z"}, "_yz"},                // leftmost-first: x wins at once, as in ReplaceAll("xy")
		{`\bcat\b`, `dog`, []string{"a cat", " cat "}, "a cat dog "}, // \b after it is not known yet: no match
		{`foo$`, `bar`, []string{"foo", "\nfoo"}, "foo\nfoo"},        // $ is the end of the stream, which came after the flush
		{`^GET`, `PUT`, []string{"GE", "T GET"}, "GET GET"},          // the start of the stream is past
		{`(?s)<!--.*?-->`, ``, []string{"a<!-- x", " -->b<!---->c"}, "a<!-- x -->bc"},
		{`é+`, `e`, []string{"caf\xc3", "\xa9 é"}, "caf\xc3\xa9 e"}, // a rune cut by the flush is two invalid bytes
		{`.`, `-`, []string{"a\xe2\x82", "\xacb"}, "-----"},         // each byte of the cut rune is one invalid rune
	} {
		re, prog, err := compileRegex(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		x := newRegex(re, prog, tc.to, 1024)
		var out []byte
		for _, p := range tc.pushes {
			out = x.flush(x.push(out, []byte(p)))
			if x.held() != 0 {
				t.Fatalf("%q: holds %d bytes after a flush", tc.pattern, x.held())
			}
		}
		out = x.end(out)
		if string(out) != tc.want {
			t.Errorf("%q → %q on %q, flushed after each: got %q, want %q", tc.pattern, tc.to, tc.pushes, out, tc.want)
		}
	}
}

// feedFlushing is feed with a flush at the given offsets too.
func feedFlushing(r replacer, input []byte, cuts, flushes []int) []byte {
	var out []byte
	last := 0
	for _, c := range mergeCuts(cuts, flushes) {
		out = r.push(out, input[last:c])
		last = c
		if containsInt(flushes, c) {
			out = r.flush(out)
		}
	}
	out = r.push(out, input[last:])
	return r.end(out)
}

func mergeCuts(a, b []int) []int {
	var m []int
	for i, j := 0, 0; i < len(a) || j < len(b); {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			m = append(m, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			m = append(m, b[j])
			j++
		default:
			m = append(m, a[i])
			i, j = i+1, j+1
		}
	}
	return m
}

func containsInt(l []int, v int) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// segments cuts input at the flush offsets.
func segments(input []byte, flushes []int) [][]byte {
	var segs [][]byte
	last := 0
	for _, f := range flushes {
		segs = append(segs, input[last:f])
		last = f
	}
	return append(segs, input[last:])
}

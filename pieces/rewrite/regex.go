package rewrite

import (
	"bytes"
	"fmt"
	"regexp"
	"regexp/syntax"
	"unicode/utf8"
)

// regex rewrites a stream with a Go regular expression. Go's regexp wants
// the whole text at once, so this is the same Pike VM (leftmost-first, the
// same compiled program, the same match and capture rules) run as a
// streaming machine: its threads survive from one push to the next, and it
// holds back only the bytes that an unfinished match may still claim. On a
// stream with no match longer than limit, the output equals
// regexp.ReplaceAll on the whole stream, however the stream was cut.
//
// A thread that has consumed limit bytes without matching is dropped: that
// is what bounds memory, at the price that matches longer than limit are not
// found.
type regex struct {
	re           *regexp.Regexp // for Expand and the capture names
	template     []byte
	prog         *syntax.Prog
	limit        int
	prefix       []byte // every match starts with it; lets idle stretches be skipped with bytes.Index
	prefixSearch *literal
	anchored     bool // the program only matches at the start of the stream
	context      bool // the program has ^ $ \b \B: stepping a rune needs the one after it

	buf  []byte // bytes not yet forgotten; buf[0] is at stream offset base
	base int
	sent int  // stream offset up to which output has been produced
	pos  int  // stream offset of the next rune to step
	prev rune // rune before pos, endOfText at the start of the stream
	eof  bool
	cut  bool // flushing: the bytes so far are all there is for now (a rune cut short is invalid bytes)
	done bool // stepped past the end of the stream with no match in progress

	matched     bool
	matchcap    []int
	relcap      []int // matchcap relative to buf, for Expand
	runq, nextq *queue
	pool        []*thread
	ncap        int
}

const endOfText rune = -1

type thread struct {
	inst *syntax.Inst
	cap  []int
}

type entry struct {
	pc uint32
	t  *thread
}

// queue is a sparse set of program counters in priority order.
type queue struct {
	sparse []uint32
	dense  []entry
}

func newQueue(n int) *queue {
	return &queue{sparse: make([]uint32, n), dense: make([]entry, 0, n)}
}

func (q *queue) has(pc uint32) bool {
	j := q.sparse[pc]
	return j < uint32(len(q.dense)) && q.dense[j].pc == pc
}

// compileRegex compiles expr the way regexp.Compile does and refuses what a
// stream cannot sensibly carry: a pattern that matches the empty string
// would insert the replacement between every two characters.
func compileRegex(expr string) (*regexp.Regexp, *syntax.Prog, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, nil, err
	}
	tree, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil, nil, err
	}
	prog, err := syntax.Compile(tree.Simplify())
	if err != nil {
		return nil, nil, err
	}
	if matchesEmpty(prog) {
		return nil, nil, fmt.Errorf("%q can match the empty string; give a pattern that always consumes at least one character", expr)
	}
	return re, prog, nil
}

// matchesEmpty reports whether the program can reach a match without
// consuming a rune, taking every ^ $ \b as satisfiable.
func matchesEmpty(prog *syntax.Prog) bool {
	seen := make([]bool, len(prog.Inst))
	var walk func(pc uint32) bool
	walk = func(pc uint32) bool {
		if seen[pc] {
			return false
		}
		seen[pc] = true
		i := &prog.Inst[pc]
		switch i.Op {
		case syntax.InstMatch:
			return true
		case syntax.InstAlt, syntax.InstAltMatch:
			return walk(i.Out) || walk(i.Arg)
		case syntax.InstNop, syntax.InstCapture, syntax.InstEmptyWidth:
			return walk(i.Out)
		}
		return false
	}
	return walk(uint32(prog.Start))
}

func newRegex(re *regexp.Regexp, prog *syntax.Prog, template string, limit int) *regex {
	x := &regex{
		re:       re,
		template: []byte(template),
		prog:     prog,
		limit:    limit,
		anchored: prog.StartCond()&syntax.EmptyBeginText != 0,
		prev:     endOfText,
		ncap:     2 * (re.NumSubexp() + 1),
		runq:     newQueue(len(prog.Inst)),
		nextq:    newQueue(len(prog.Inst)),
	}
	if p, _ := prog.Prefix(); p != "" {
		x.prefix = []byte(p)
		x.prefixSearch = newLiteral(x.prefix, nil)
	}
	for i := range prog.Inst {
		if prog.Inst[i].Op == syntax.InstEmptyWidth {
			x.context = true
		}
	}
	x.matchcap = make([]int, x.ncap)
	x.relcap = make([]int, x.ncap)
	x.resetCaps()
	return x
}

func (x *regex) push(dst, src []byte) []byte {
	x.buf = append(x.buf, src...)
	return x.run(dst)
}

func (x *regex) end(dst []byte) []byte {
	x.eof = true
	dst = x.run(dst)
	dst = append(dst, x.buf[x.sent-x.base:]...)
	x.base += len(x.buf)
	x.sent = x.base
	x.buf = x.buf[:0]
	return dst
}

// flush sends what is held as it is and goes on with the stream. Threads
// still waiting for a rune get none: a match already found that waited
// only to see whether a higher-priority (longer, for a greedy pattern) one
// would win is replaced, and every unfinished match is not one. A match
// that needs the rune after it to be decided (\b, $ before the end) is
// not one either: the stream has not ended, and that rune has not come.
// The next bytes are searched afresh, as after a match; a rune cut short
// by the flush is invalid bytes on both sides, as in two separate texts.
func (x *regex) flush(dst []byte) []byte {
	x.cut = true
	defer func() { x.cut = false }()
	dst = x.run(dst)
	for !x.done && x.held() > 0 {
		if len(x.runq.dense) > 0 {
			x.step(x.pos, x.pos, endOfText, 0)
			x.clear(x.nextq)
		}
		if x.matched {
			dst = x.commit(dst)
			dst = x.run(dst) // the bytes after it may hold whole matches
			continue
		}
		end := x.base + len(x.buf)
		x.jump(end)
		dst = append(dst, x.buf[x.sent-x.base:]...)
		x.buf = x.buf[:0]
		x.base, x.sent = end, end
	}
	return dst
}

func (x *regex) held() int { return x.base + len(x.buf) - x.sent }

// runeAt decodes the rune at stream offset p as regexp does; ok is false
// when the bytes for it have not arrived yet. At the end of the stream it
// returns endOfText with width 0.
func (x *regex) runeAt(p int) (r rune, width int, ok bool) {
	i := p - x.base
	if i >= len(x.buf) {
		if x.eof {
			return endOfText, 0, true
		}
		return 0, 0, false
	}
	if c := x.buf[i]; c < utf8.RuneSelf {
		return rune(c), 1, true
	}
	if !x.eof && !x.cut && !utf8.FullRune(x.buf[i:]) {
		return 0, 0, false
	}
	r, width = utf8.DecodeRune(x.buf[i:])
	return r, width, true
}

// run steps the machine as far as the bytes allow (the same loop as
// regexp's pike matcher, restarted after each match at the match's end as
// ReplaceAll does), then sends everything no thread can claim any more.
func (x *regex) run(dst []byte) []byte {
	for !x.done {
		if len(x.runq.dense) == 0 {
			if x.matched {
				dst = x.commit(dst)
				continue
			}
			if x.anchored && x.pos != 0 {
				x.done = true // ^ without (?m): only the start of the stream could match
				break
			}
			if len(x.prefix) > 0 && !x.skipToPrefix() {
				break
			}
		}
		r, width, ok := x.runeAt(x.pos)
		r1 := endOfText
		if ok && width > 0 && x.context {
			r1, _, ok = x.runeAt(x.pos + width)
		}
		if !ok {
			if x.firstIsMatch() {
				continue
			}
			break
		}
		if !x.matched {
			x.matchcap[0] = x.pos
			x.add(x.runq, uint32(x.prog.Start), x.pos, x.matchcap, syntax.EmptyOpContext(x.prev, r), nil)
		}
		var next syntax.EmptyOp
		if x.context {
			next = syntax.EmptyOpContext(r, r1)
		}
		x.step(x.pos, x.pos+width, r, next)
		if width == 0 {
			x.clear(x.nextq)
			if !x.matched {
				x.done = true
			}
			continue
		}
		x.pos += width
		x.prev = r
		x.runq, x.nextq = x.nextq, x.runq
	}
	return x.emit(dst)
}

// skipToPrefix moves pos to the next place the literal prefix occurs, as
// regexp does when no thread is alive. It reports false when the bytes so
// far hold no such place (pos is then as far as it can safely go).
func (x *regex) skipToPrefix() bool {
	rest := x.buf[x.pos-x.base:]
	if i := bytes.Index(rest, x.prefix); i >= 0 {
		x.jump(x.pos + i)
		return true
	}
	if x.eof {
		x.jump(x.base + len(x.buf))
		x.done = true
		return false
	}
	// Only a tail that is itself a beginning of the prefix must wait.
	if i := len(rest) - x.prefixSearch.openPrefix(rest); i > 0 {
		x.jump(x.pos + i)
	}
	return false
}

// jump moves pos forward over bytes no thread needs. The rune before the new
// place only feeds ^ $ \b context, which a program with a literal prefix
// never tests before its first rune.
func (x *regex) jump(to int) {
	if to == x.pos {
		return
	}
	x.prev, _ = utf8.DecodeLastRune(x.buf[:to-x.base])
	x.pos = to
}

// firstIsMatch finishes a match that needs no further input: when the
// highest-priority thread has reached the end of the program, stepping
// would record its match and cut every thread after it, whatever the next
// rune is. Without this a match at the very end of a write would wait for
// the next write.
func (x *regex) firstIsMatch() bool {
	for _, d := range x.runq.dense {
		if d.t == nil {
			continue
		}
		if d.t.inst.Op != syntax.InstMatch {
			return false
		}
		d.t.cap[1] = x.pos
		copy(x.matchcap, d.t.cap)
		x.matched = true
		x.clear(x.runq)
		return true
	}
	return false
}

// commit sends the bytes before the match and the expanded replacement,
// then restarts the search at the match's end.
func (x *regex) commit(dst []byte) []byte {
	start, end := x.matchcap[0], x.matchcap[1]
	dst = append(dst, x.buf[x.sent-x.base:start-x.base]...)
	for i, c := range x.matchcap {
		if c >= 0 {
			c -= x.base
		}
		x.relcap[i] = c
	}
	dst = x.re.Expand(dst, x.template, x.buf, x.relcap)
	x.prev, _ = utf8.DecodeLastRune(x.buf[:end-x.base])
	x.sent = end
	x.pos = end
	x.matched = false
	x.resetCaps()
	x.clear(x.nextq)
	return dst
}

// resetCaps starts a search with no group set: the start thread copies
// matchcap, and a group that takes no part in a match must expand to "".
func (x *regex) resetCaps() {
	for i := range x.matchcap {
		x.matchcap[i] = -1
	}
}

// emit sends what no live thread and no pending match can still claim,
// and forgets it. Compacting here, once per push rather than per match,
// keeps a push with many matches linear.
func (x *regex) emit(dst []byte) []byte {
	keep := x.pos
	if x.done {
		keep = x.base + len(x.buf)
	}
	if x.matched && x.matchcap[0] < keep {
		keep = x.matchcap[0]
	}
	for _, d := range x.runq.dense {
		if d.t != nil && d.t.cap[0] < keep {
			keep = d.t.cap[0]
		}
	}
	dst = append(dst, x.buf[x.sent-x.base:keep-x.base]...)
	n := copy(x.buf, x.buf[keep-x.base:])
	x.buf = x.buf[:n]
	x.base = keep
	x.sent = keep
	return dst
}

func (x *regex) alloc(i *syntax.Inst) *thread {
	var t *thread
	if n := len(x.pool); n > 0 {
		t = x.pool[n-1]
		x.pool = x.pool[:n-1]
	} else {
		t = &thread{cap: make([]int, x.ncap)}
	}
	t.inst = i
	return t
}

func (x *regex) clear(q *queue) {
	for _, d := range q.dense {
		if d.t != nil {
			x.pool = append(x.pool, d.t)
		}
	}
	q.dense = q.dense[:0]
}

// add follows the empty transitions from pc and puts the threads that wait
// for a rune (or have matched) on q, in priority order: regexp's add.
func (x *regex) add(q *queue, pc uint32, pos int, cap []int, cond syntax.EmptyOp, t *thread) *thread {
again:
	if pc == 0 || q.has(pc) {
		return t
	}
	j := len(q.dense)
	q.dense = q.dense[:j+1]
	d := &q.dense[j]
	d.t = nil
	d.pc = pc
	q.sparse[pc] = uint32(j)
	i := &x.prog.Inst[pc]
	switch i.Op {
	case syntax.InstFail:
	case syntax.InstAlt, syntax.InstAltMatch:
		t = x.add(q, i.Out, pos, cap, cond, t)
		pc = i.Arg
		goto again
	case syntax.InstEmptyWidth:
		if syntax.EmptyOp(i.Arg)&^cond == 0 {
			pc = i.Out
			goto again
		}
	case syntax.InstNop:
		pc = i.Out
		goto again
	case syntax.InstCapture:
		if int(i.Arg) < len(cap) {
			old := cap[i.Arg]
			cap[i.Arg] = pos
			x.add(q, i.Out, pos, cap, cond, nil)
			cap[i.Arg] = old
		} else {
			pc = i.Out
			goto again
		}
	case syntax.InstMatch, syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
		if t == nil {
			t = x.alloc(i)
		} else {
			t.inst = i
		}
		if &t.cap[0] != &cap[0] {
			copy(t.cap, cap)
		}
		d.t = t
		t = nil
	default:
		panic("rewrite: unexpected regexp instruction")
	}
	return t
}

// step moves every thread on runq over rune c at pos: regexp's step, plus
// the limit on how long a thread may live.
func (x *regex) step(pos, nextPos int, c rune, nextCond syntax.EmptyOp) {
	for j := 0; j < len(x.runq.dense); j++ {
		t := x.runq.dense[j].t
		if t == nil {
			continue
		}
		i := t.inst
		add := false
		switch i.Op {
		case syntax.InstMatch:
			t.cap[1] = pos
			copy(x.matchcap, t.cap)
			// Leftmost-first: every lower-priority thread is cut.
			for _, d := range x.runq.dense[j+1:] {
				if d.t != nil {
					x.pool = append(x.pool, d.t)
				}
			}
			x.runq.dense = x.runq.dense[:0]
			x.matched = true
		case syntax.InstRune:
			add = i.MatchRune(c)
		case syntax.InstRune1:
			add = c == i.Rune[0]
		case syntax.InstRuneAny:
			add = true
		case syntax.InstRuneAnyNotNL:
			add = c != '\n'
		}
		if add && nextPos-t.cap[0] > x.limit {
			add = false // this match would be longer than max
		}
		if add {
			t = x.add(x.nextq, i.Out, nextPos, t.cap, nextCond, t)
		}
		if t != nil {
			x.pool = append(x.pool, t)
		}
	}
	x.runq.dense = x.runq.dense[:0]
}
